"""What every torch learner shares: device, seeded init, AdamW, amp and the state_dict round trip.

Why one module: MAML, ProtoNet, the deep-kernel GP and the pretrained encoder each need the same
few steps, and copies drift apart (a snapshot that aliases the live optimiser moments, a resume
that forgets them). A learner's state holds ``n_features``, ``task_type`` and ``hyperparams`` (what
``load_learner`` rebuilds it from), its weights under ``"model"`` and the optimiser under
``"optimizer"``; the last is absent in inference-only files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, TypeVar

import torch
from torch import nn

Built = TypeVar("Built")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``"auto"`` to cuda when available, else cpu; pass anything else to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def seeded(seed: int, build: Callable[[], Built]) -> Built:
    """``build()`` under a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def amp_autocast(device: torch.device, amp: bool) -> torch.autocast:
    """bfloat16 autocast when ``amp`` is set and the device is CUDA; a disabled context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


class LazyOptimizer:
    """An optimiser built on first use, with any loaded state applied then.

    Why: constructing ``torch.optim.AdamW`` imports torch's compiler machinery (0.7-2 s), which a
    model that is only loaded to predict never needs. Training code uses it as the optimiser itself
    (attribute access builds it); ``state_dict``/``load_state_dict`` work without building it.
    """

    def __init__(self, build: Callable[[], torch.optim.Optimizer]) -> None:
        self._build = build
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None

    def get(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = self._build()
            if self._pending is not None:
                self._optimizer.load_state_dict(self._pending)
                self._pending = None
        return self._optimizer

    def state_dict(self) -> dict[str, Any]:
        if self._optimizer is None and self._pending is not None:
            return self._pending
        return self.get().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._optimizer is None:
            self._pending = state
        else:
            self._optimizer.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:  # zero_grad, step, state, param_groups, ...
        return getattr(self.get(), name)


def adamw(
    decayed: Iterable[nn.Parameter],
    undecayed: Iterable[nn.Parameter] = (),
    *,
    lr: float,
    weight_decay: float,
    fused: bool | None = None,
) -> LazyOptimizer:
    """AdamW with weight decay on ``decayed`` only (network weights, not lrs or kernel scales), built lazily.

    The second param group exists only when ``undecayed`` is non-empty, so a learner with one group
    keeps a one-group optimiser state. ``fused=None`` is torch's default implementation.
    """
    groups = [{"params": list(decayed), "weight_decay": weight_decay}]
    rest = list(undecayed)
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return LazyOptimizer(lambda: torch.optim.AdamW(groups, lr=lr, fused=fused))


def optimizer_state_cpu(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with its state tensors copied to CPU.

    Why a copy: ``state_dict()`` returns the live moment tensors, which the next step updates in
    place; a saved snapshot must not change afterwards. ``Optimizer.load_state_dict`` casts them
    back to each parameter's device (a fused optimiser's ``step`` included).
    """
    saved = optimizer.state_dict()
    saved["state"] = {
        i: {k: (v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v) for k, v in s.items()}
        for i, s in saved["state"].items()
    }
    return saved


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device | str) -> None:
    """Move Adam's moments next to their parameters after the parameters moved.

    ``step`` stays where it is: a non-fused Adam keeps it on CPU.
    """
    for per_param in optimizer.state.values():
        for key, value in per_param.items():
            if torch.is_tensor(value) and key != "step":
                per_param[key] = value.to(device)


def config_hyperparams(cfg: Any) -> dict[str, Any]:
    """A config dataclass as JSON-able hyperparameters (tuples of widths become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def save_state(
    n_features: int,
    task_type: str,
    cfg: Any,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    **fitted: Any,
) -> dict[str, Any]:
    """A torch learner's state as plain containers on CPU: config, weights, ``fitted`` extras, optimiser.

    Why the optimiser: ``meta_train`` resumes from this dict, and AdamW moments that restart at
    zero would make a resumed run drift from the uninterrupted one.
    """
    return {
        "n_features": int(n_features),
        "task_type": task_type,
        "hyperparams": config_hyperparams(cfg),
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **fitted,
        "optimizer": optimizer_state_cpu(optimizer),
    }


def load_state(state: dict[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the weights and, when the file has it, the optimiser (moments go to the params' device)."""
    module.load_state_dict(state["model"])
    if "optimizer" in state:  # absent in inference-only files
        optimizer.load_state_dict(state["optimizer"])
