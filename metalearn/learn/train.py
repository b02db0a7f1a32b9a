"""The outer loop: meta-train a learner on episodes, early-stop on meta-val, checkpoint, resume.

No logging backend lives here: progress goes to the ``on_step(step, logs)`` callback, and the
caller (a Prefect task, the CLI) decides where it is recorded.

Determinism: given the same learner init, sampler and ``TrainConfig``, the result is a function of
``seed`` only. A checkpoint holds the learner state (with its optimiser state), every RNG state,
the step, the early-stopping bookkeeping and the best state, so resuming a killed run reproduces
the uninterrupted run exactly.

Example:
    >>> result = meta_train(learner, sampler, TrainConfig(max_steps=2000, seed=0),
    ...                     checkpoint_dir=workdir / "checkpoints" / run_id,
    ...                     on_step=lambda step, logs: print(step, logs))
    >>> result.best_val_loss, result.best_step
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from metalearn.io import write_bytes_atomic
from metalearn.learn.learners.base import Learner
from metalearn.learn.learners.neural import amp_autocast, resolve_device
from metalearn.learn.sampling import TaskBatch
from metalearn.schema import META_TRAIN, META_VAL

CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Outer-loop settings.

    Args:
        max_steps: outer-loop updates (one meta-batch each).
        meta_batch_size: tasks per meta-train batch T; the sampler builds batches, and a batch of
            another size is an error, so the two configs cannot silently disagree.
        eval_every: steps between meta-val evaluations (also evaluated at the last step).
        patience: evaluations without improvement before stopping early.
        n_val_batches: meta-val batches per evaluation (``sampler.batch("meta-val", i)``,
            i < n_val_batches: the same episodes every time, so losses are comparable).
        min_delta: an improvement must beat the best meta-val loss by more than this.
        device: "auto" (cuda when available), "cpu" or "cuda".
        amp: bfloat16 autocast around the learner's step on CUDA; ignored on CPU.
        seed: seeds torch, NumPy and Python RNGs at the start of a fresh run.
        checkpoint_every: steps between checkpoints (when a checkpoint_dir is given).
    """

    max_steps: int = 2000
    meta_batch_size: int = 16
    eval_every: int = 100
    patience: int = 10
    n_val_batches: int = 4
    min_delta: float = 0.0
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "meta_batch_size",
            "eval_every",
            "patience",
            "n_val_batches",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass(frozen=True)
class TrainResult:
    """What ``meta_train`` returns; the learner itself is left holding the best meta-val state.

    ``history`` has one entry per evaluation: {"step", "train_loss", "val_loss"}.
    ``stopped`` is "max_steps", "early_stop" or "not_meta_trainable".
    """

    steps: int
    best_step: int
    best_val_loss: float
    stopped: str
    history: tuple[dict[str, float], ...] = ()
    resumed_from: int | None = field(default=None, compare=False)


class Sampler(Protocol):
    def batch(self, split: str, step: int) -> TaskBatch:
        """Deterministic given (sampler seed, split, step)."""
        ...


def _cpu_copy(obj: Any) -> Any:
    """Deep copy with every tensor cloned to CPU: a snapshot that later in-place updates cannot touch."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        # NumPy's state holds an ndarray; store plain ints so the checkpoint loads with weights_only.
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _save(path: Path, learner: Learner, loop: dict[str, Any], cfg: TrainConfig, device: torch.device) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "learner_name": learner.name,
            "config": asdict(cfg),
            "learner": _cpu_copy(learner.state_dict()),
            "loop": _cpu_copy(loop),
            "rng": _rng_state(device),
        },
        buffer,
    )
    write_bytes_atomic(path, buffer.getvalue())


def _val_loss(learner: Learner, sampler: Sampler, cfg: TrainConfig, device: torch.device) -> float:
    losses = [learner.meta_loss(sampler.batch(META_VAL, i).to(device)) for i in range(cfg.n_val_batches)]
    return float(np.mean(losses))


def meta_train(
    learner: Learner,
    sampler: Sampler,
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Meta-train ``learner`` in place; on return it holds the best meta-val state.

    Args:
        learner: a Learner; one with ``to(device)`` is moved to the device first. Learners with
            ``meta_trainable=False`` return at once (nothing to train).
        sampler: ``sampler.batch(split, step) -> TaskBatch`` over "meta-train" and "meta-val".
        cfg: the loop settings.
        checkpoint_dir: where ``last.pt`` is written every ``cfg.checkpoint_every`` steps and at
            the end; if it already holds one, training resumes from it (a finished run returns
            its result without training again).
        on_step: called after every step with the learner's logs, plus "val_loss" and
            "best_val_loss" on evaluation steps.

    Returns:
        TrainResult (steps done, best step and meta-val loss, why it stopped, eval history).
    """
    if not learner.meta_trainable:
        return TrainResult(steps=0, best_step=0, best_val_loss=math.nan, stopped="not_meta_trainable")
    device = resolve_device(cfg.device)
    if hasattr(learner, "to"):
        learner.to(device)
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    loop: dict[str, Any] = {
        "step": 0,
        "best_val_loss": math.inf,
        "best_step": 0,
        "bad_evals": 0,
        "best_state": None,
        "history": [],
        "stopped": None,
    }
    resumed_from = None
    if path is not None and path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt["learner_name"] != learner.name or ckpt["config"]["seed"] != cfg.seed:
            raise ValueError(
                f"checkpoint {path} is for learner {ckpt['learner_name']!r} seed "
                f"{ckpt['config']['seed']}; this run is {learner.name!r} seed {cfg.seed}"
            )
        learner.load_state_dict(ckpt["learner"])
        loop = ckpt["loop"]
        _set_rng_state(ckpt["rng"], device)
        resumed_from = loop["step"]
    else:
        _seed_everything(cfg.seed)

    while loop["stopped"] is None and loop["step"] < cfg.max_steps:
        batch = sampler.batch(META_TRAIN, loop["step"])
        if batch.n_tasks != cfg.meta_batch_size:
            raise ValueError(
                f"sampler gave a meta-train batch of {batch.n_tasks} tasks at step {loop['step']}; "
                f"TrainConfig.meta_batch_size is {cfg.meta_batch_size}"
            )
        with amp_autocast(device, cfg.amp):
            logs = dict(learner.meta_train_step(batch.to(device)))
        loop["step"] += 1
        step = loop["step"]
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = _val_loss(learner, sampler, cfg, device)
            if not math.isfinite(val):
                raise FloatingPointError(f"meta-val loss is {val} at step {step}")
            if val < loop["best_val_loss"] - cfg.min_delta:
                loop.update(
                    best_val_loss=val, best_step=step, bad_evals=0, best_state=_cpu_copy(learner.state_dict())
                )
            else:
                loop["bad_evals"] += 1
            loop["history"].append(
                {"step": step, "train_loss": float(logs.get("loss", math.nan)), "val_loss": val}
            )
            logs.update(val_loss=val, best_val_loss=loop["best_val_loss"])
            if loop["bad_evals"] >= cfg.patience:
                loop["stopped"] = "early_stop"
        if on_step is not None:
            on_step(step, logs)
        if path is not None and step % cfg.checkpoint_every == 0 and loop["stopped"] is None:
            _save(path, learner, loop, cfg, device)

    loop["stopped"] = loop["stopped"] or "max_steps"
    if loop["best_state"] is not None:
        learner.load_state_dict(loop["best_state"])
    if path is not None:
        _save(path, learner, loop, cfg, device)  # marks the run finished; a rerun returns at once
    return TrainResult(
        steps=loop["step"],
        best_step=loop["best_step"],
        best_val_loss=loop["best_val_loss"],
        stopped=loop["stopped"],
        history=tuple(loop["history"]),
        resumed_from=resumed_from,
    )
