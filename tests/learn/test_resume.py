"""Resuming a killed ``meta_train`` run reproduces the uninterrupted run, for every torch learner.

Why this file exists: ``meta_train`` restores whatever ``learner.state_dict()`` holds, so a learner
that leaves its optimiser state out restarts Adam's moments on resume and drifts from the
uninterrupted run without any error. Each learner is checked end to end: train N steps in one go;
separately train, "kill" the run after a checkpoint, build a fresh learner through the factory
and resume from the same directory; weights, optimiser state and TrainResult must be identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metalearn.learn.learners import build_learner
from metalearn.learn.sampling import TaskBatch, make_batch
from metalearn.learn.train import CHECKPOINT, TrainConfig, meta_train

F, T, N_SUPPORT, N_QUERY = 4, 4, 6, 6
CFG = TrainConfig(
    max_steps=6,
    meta_batch_size=T,
    eval_every=1,
    patience=100,
    n_val_batches=1,
    device="cpu",
    seed=0,
    checkpoint_every=3,
)
KILL_AT = 5  # after the step-3 checkpoint: steps 4 and 5 are lost and must be redone identically
CASES = [
    ("maml", "regression"),
    ("fomaml", "regression"),
    ("metasgd", "regression"),
    ("anil", "regression"),
    ("metric", "regression"),
    ("protonet", "classification"),
]


class TinySampler:
    """``batch(split, step)`` deterministic in (split, step): a fresh sampler after a kill sees the same data."""

    def __init__(self, task_type: str) -> None:
        self.task_type = task_type

    def batch(self, split: str, step: int) -> TaskBatch:
        rng = np.random.default_rng([["meta-train", "meta-val"].index(split), step])
        x = rng.normal(size=(T, N_SUPPORT + N_QUERY, F)).astype(np.float32)
        slope = rng.uniform(0.5, 2.0, size=(T, 1))
        y = slope * np.sin(2 * x[..., 0]) + x[..., 1]
        if self.task_type == "classification":
            y = (y > 0).astype(np.float32)
        ids = tuple(f"{split}-{i}" for i in range(T))
        s, q = slice(None, N_SUPPORT), slice(N_SUPPORT, None)
        return make_batch(x[:, s], y[:, s], x[:, q], y[:, q], ids, self.task_type)


class Killed(RuntimeError):
    pass


def _learner(name: str, task_type: str) -> Any:
    # outer_lr well above the default so a restarted Adam visibly changes the trajectory.
    return build_learner(name, F, task_type, hidden=(16, 16), outer_lr=0.02, seed=0, device="cpu")


def _kill(step: int, logs: dict[str, float]) -> None:
    if step == KILL_AT:
        raise Killed(f"simulated kill at step {step}")


def _assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Recursive exact equality of nested dicts/lists of tensors and plain values."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize(("name", "task_type"), CASES, ids=[c[0] for c in CASES])
def test_resume_matches_uninterrupted_run(name: str, task_type: str, tmp_path: Path) -> None:
    sampler = TinySampler(task_type)
    straight = _learner(name, task_type)
    expected = meta_train(straight, sampler, CFG)

    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(Killed):
        meta_train(_learner(name, task_type), TinySampler(task_type), CFG, ckpt_dir, on_step=_kill)
    assert (ckpt_dir / CHECKPOINT).exists()

    resumed = _learner(name, task_type)
    result = meta_train(resumed, TinySampler(task_type), CFG, ckpt_dir)

    assert result.resumed_from == CFG.checkpoint_every
    assert result == expected  # steps, best step, best val loss and the whole val-loss history
    _assert_same(resumed.state_dict(), straight.state_dict())
    assert "optimizer" in straight.state_dict()


@pytest.mark.parametrize(("name", "task_type"), CASES, ids=[c[0] for c in CASES])
def test_state_without_optimizer_still_loads(name: str, task_type: str, tmp_path: Path) -> None:
    """Inference files written before the optimiser was saved (or stripped of it) must still load."""
    trained = _learner(name, task_type)
    trained.meta_train_step(TinySampler(task_type).batch("meta-train", 0))
    state = {k: v for k, v in trained.state_dict().items() if k != "optimizer"}
    torch.save(state, tmp_path / "state.pt")
    fresh = _learner(name, task_type)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    batch = TinySampler(task_type).batch("meta-val", 0)
    assert fresh.meta_loss(batch) == trained.meta_loss(batch)
