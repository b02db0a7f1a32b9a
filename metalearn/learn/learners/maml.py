"""The MAML-family learner: ``MAMLConfig`` and the ``MAML`` class (optimiser, device, state).

The maths lives in ``maml_functional.py`` as pure torch.func functions. Variants
(``MAMLConfig.variant``):

- ``"maml"``: all parameters adapted with one scalar inner lr (``first_order=True`` is FOMAML);
- ``"metasgd"``: a learned inner lr per parameter element (Li et al. 2017);
- ``"anil"``: only the head is adapted (Raghu et al. 2020).

learn2learn is not used: it does not build on Python 3.11 (see NOTES-ecosystem).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from metalearn.learn.learners.base import Prediction
from metalearn.learn.learners.episodes import check_task_type
from metalearn.learn.learners.maml_functional import Params, Rates, inner_adapt, meta_gradients, query_losses
from metalearn.learn.learners.neural import (
    adamw,
    amp_autocast,
    load_state,
    resolve_device,
    save_state,
    seeded,
)
from metalearn.learn.models import MLP, head_keys, param_dict
from metalearn.learn.sampling import TaskBatch

VARIANTS = ("maml", "metasgd", "anil")


@dataclass(frozen=True)
class MAMLConfig:
    """Hyperparameters of the MAML family; every field is JSON-able (MLflow params, CLI flags)."""

    variant: str = "maml"  # "maml" | "metasgd" | "anil"
    first_order: bool = False  # drop second-order terms (FOMAML when variant="maml")
    inner_steps: int = 10  # 10 x 0.05 chosen on meta-val (bench/RESULTS.md, tuning)
    inner_lr: float = 0.05  # Meta-SGD: the initial value of every learned lr
    test_inner_steps: int | None = None  # adaptation steps at test time; None -> inner_steps
    outer_lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW, on network weights only (never on Meta-SGD lrs)
    max_grad_norm: float | None = 1.0  # stopped a diverging run in tuning
    hidden: tuple[int, ...] = (128, 128)
    dropout: float = 0.0
    layer_norm: bool = False
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = False  # bfloat16 autocast for the forward passes; CUDA only (ignored on CPU)
    compile: bool = False  # torch.compile the meta-batch loss; falls back to eager if it fails

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))  # lists from JSON
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown MAML variant {self.variant!r}; expected one of {VARIANTS}")
        if self.inner_steps < 0 or (self.test_inner_steps is not None and self.test_inner_steps < 0):
            raise ValueError(f"inner steps must be >= 0; got {self.inner_steps}, {self.test_inner_steps}")


def _tensors(b: TaskBatch) -> tuple[torch.Tensor, ...]:
    return b.x_support, b.y_support, b.x_query, b.y_query


class MAML:
    """MAML / FOMAML / Meta-SGD / ANIL learner following the ``Learner`` protocol.

    Example:
        >>> learner = MAML(132, "regression", MAMLConfig(inner_steps=5))
        >>> logs = learner.meta_train_step(batch)          # batch: TaskBatch (T, n_support, F)
        >>> params = learner.adapt(x_support, y_support)   # (n_support, F), (n_support,)
        >>> learner.predict(params, x_query).mean.shape    # (n_query,)
    """

    meta_trainable = True

    def __init__(
        self, n_features: int, task_type: str = "regression", cfg: MAMLConfig = MAMLConfig()
    ) -> None:
        self.n_features, self.task_type, self.cfg = int(n_features), check_task_type(task_type), cfg
        self.device = resolve_device(cfg.device)
        self.model = seeded(
            cfg.seed, lambda: MLP(n_features, cfg.hidden, 1, cfg.dropout, cfg.layer_norm)
        ).to(self.device)
        params = param_dict(self.model)
        keys = head_keys(params) if cfg.variant == "anil" else tuple(params)
        # Meta-SGD learns one lr per parameter element; the others use a fixed scalar.
        learned = cfg.variant == "metasgd"
        self.lrs: Rates = {
            k: nn.Parameter(torch.full_like(params[k], cfg.inner_lr)) if learned else cfg.inner_lr
            for k in keys
        }
        # fused: one kernel for all parameters; at ~5 ms per meta-step the foreach loop's overhead shows.
        self.optimizer = adamw(
            self.model.parameters(),
            self.lrs.values() if learned else (),
            lr=cfg.outer_lr,
            weight_decay=cfg.weight_decay,
            fused=True,
        )
        # compile: the one-graph torch.func meta-gradient; eager: autograd through query_losses (faster eager).
        self._grads_fn = self._build_grads_fn() if cfg.compile else None

    @property
    def name(self) -> str:
        """The preset's name (``fomaml``, ``anil``, ...), unless a wrapper renamed it (``fomaml_rep``)."""
        if getattr(self, "_renamed", None):
            return self._renamed
        if self.cfg.variant == "maml":
            return "fomaml" if self.cfg.first_order else "maml"
        return self.cfg.variant

    @name.setter
    def name(self, value: str) -> None:
        self._renamed = value

    def _kwargs(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "steps": self.cfg.inner_steps,
            "first_order": self.cfg.first_order,
            "randomness": "different" if self.cfg.dropout > 0 else "error",
        }

    def _build_grads_fn(self) -> Callable[..., tuple[Params, Params, torch.Tensor]]:
        """:func:`meta_gradients` under torch.compile, falling back to eager if compilation fails."""

        def eager(params: Params, lrs: Rates, *tensors: torch.Tensor) -> tuple[Params, Params, torch.Tensor]:
            return meta_gradients(self.model, params, lrs, *tensors, **self._kwargs())

        compiled = torch.compile(eager)

        def guarded(*args: Any) -> tuple[Params, Params, torch.Tensor]:
            # Why a guard: compilation needs a working C++ toolchain (CPU) or Triton (CUDA) and
            # errors only at the first call; training must still run without one.
            try:
                return compiled(*args)
            except Exception as err:  # noqa: BLE001 - re-raised by the eager call if it is not a compile error
                warnings.warn(
                    f"torch.compile failed ({type(err).__name__}: {err}); running eager", stacklevel=2
                )
                self._grads_fn = eager
                return eager(*args)

        return guarded

    def _frozen(self) -> tuple[Params, Rates]:
        """Detached parameters and lrs: inputs for torch.func transforms that own the gradient."""
        lrs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in self.lrs.items()}
        return {k: p.detach() for k, p in self.model.named_parameters()}, lrs

    def _autocast(self) -> torch.autocast:
        return amp_autocast(self.device, self.cfg.amp)

    def _batch_losses(self, batch: TaskBatch) -> torch.Tensor:
        """(T,) query losses of a meta-batch, differentiable by autograd (the eager training path)."""
        b = batch.to(self.device)
        with self._autocast():
            params = param_dict(self.model)
            return query_losses(self.model, params, self.lrs, *_tensors(b), **self._kwargs())

    def meta_train_step(self, batch: TaskBatch) -> dict[str, float]:
        """One outer AdamW step on the mean query loss of the meta-batch."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self._grads_fn is None:
            loss = self._batch_losses(batch).mean()
            loss.backward()
        else:
            params, lrs = self._frozen()
            with self._autocast():
                grads, lr_grads, losses = self._grads_fn(params, lrs, *_tensors(batch.to(self.device)))
            for k, p in self.model.named_parameters():
                p.grad = grads[k]
            for k, g in lr_grads.items():
                self.lrs[k].grad = g
            loss = losses.mean()
        logs = {"loss": float(loss.detach())}
        if self.cfg.max_grad_norm is not None:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            logs["grad_norm"] = float(norm)
        self.optimizer.step()
        return logs

    def meta_loss(self, batch: TaskBatch) -> float:
        """Mean query loss after adaptation; no parameter is updated."""
        self.model.eval()
        with torch.no_grad():  # the inner torch.func.grad still runs: it ignores an outer no_grad
            return float(self._batch_losses(batch).mean())

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Params:
        """x_support (n_support, F), y_support (n_support,) -> adapted params (detached, on the device)."""
        self.model.eval()
        steps = self.cfg.inner_steps if self.cfg.test_inner_steps is None else self.cfg.test_inner_steps
        params, lrs = self._frozen()
        x, y = x_support.to(self.device, torch.float32), y_support.to(self.device, torch.float32)
        with self._autocast():
            fast = inner_adapt(
                self.model, params, lrs, x, y, task_type=self.task_type, steps=steps, first_order=True
            )
        return {k: v.detach() for k, v in fast.items()}

    def predict(self, state: Params, x_query: torch.Tensor) -> Prediction:
        """x_query (n_query, F) -> Prediction(mean (n_query,)) on CPU; classification mean is P(y=1)."""
        self.model.eval()
        with torch.no_grad(), self._autocast():
            out = (
                functional_call(self.model, state, (x_query.to(self.device, torch.float32),))
                .squeeze(-1)
                .float()
            )
        if self.task_type == "classification":
            out = torch.sigmoid(out)
        return Prediction(mean=out.cpu())

    def state_dict(self) -> dict[str, Any]:
        """Weights, learned lrs, optimiser state and hyperparameters, as plain containers on CPU.

        Meta-SGD's lrs are the optimiser's second param group, so their moments are in here too.
        """
        lrs = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else float(v) for k, v in self.lrs.items()}
        return save_state(self.n_features, self.task_type, self.cfg, self.model, self.optimizer, lrs=lrs)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load in place (the optimiser and a compiled step keep their tensors); the optimiser if saved."""
        with torch.no_grad():
            for k, v in state["lrs"].items():
                if isinstance(self.lrs[k], torch.Tensor):
                    self.lrs[k].copy_(v)
                else:
                    self.lrs[k] = float(v)
        load_state(state, self.model, self.optimizer)
