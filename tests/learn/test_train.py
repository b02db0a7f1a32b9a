"""meta_train: seeded, resumable after a kill, early stopping keeps the best meta-val state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metalearn.learn.learners.baselines import SupportMean
from metalearn.learn.learners.pretrained import PretrainedRidge
from metalearn.learn.sampling import TaskBatch, support_stats
from metalearn.learn.train import CHECKPOINT, TrainConfig, TrainResult, meta_train

F = 3


class SyntheticSampler:
    """``batch(split, step)`` deterministic in (seed, split, step), like the real TaskSampler."""

    def __init__(self, seed: int = 0, n_tasks: int = 4, n_support: int = 5, n_query: int = 8) -> None:
        self.seed, self.n_tasks, self.n_support, self.n_query = seed, n_tasks, n_support, n_query
        self.calls = 0

    def batch(self, split: str, step: int) -> TaskBatch:
        self.calls += 1
        rng = np.random.default_rng([self.seed, ["meta-train", "meta-val"].index(split), step])
        x = rng.normal(size=(self.n_tasks, self.n_support + self.n_query, F)).astype(np.float32)
        scale = rng.uniform(0.5, 2.0, size=(self.n_tasks, 1))
        y = torch.from_numpy((scale * (np.sin(2 * x[..., 0]) + x[..., 1])).astype(np.float32))
        s, q = slice(None, self.n_support), slice(self.n_support, None)
        mean, std = support_stats(y[:, s])
        y = (y - mean[:, None]) / std[:, None]
        x = torch.from_numpy(x)
        ids = tuple(f"{split}-{i}" for i in rng.integers(0, 10, self.n_tasks))
        return TaskBatch(x[:, s], y[:, s], x[:, q], y[:, q], ids, y_mean=mean, y_std=std)


class TinyLearner:
    """A protocol learner: linear model, Adam, and noise from the global torch RNG (so RNG restore matters)."""

    name = "tiny"
    task_type = "regression"
    meta_trainable = True

    def __init__(self, n_features: int = F) -> None:
        self.w_ = torch.nn.Parameter(torch.zeros(n_features))
        self.opt_ = torch.optim.Adam([self.w_], lr=0.05)
        self.steps_ = 0

    def meta_train_step(self, batch: TaskBatch) -> dict[str, float]:
        x = batch.x_query + 0.1 * torch.randn_like(batch.x_query)
        loss = torch.mean((x @ self.w_ - batch.y_query) ** 2)
        self.opt_.zero_grad()
        loss.backward()
        self.opt_.step()
        self.steps_ += 1
        return {"loss": float(loss.detach())}

    def meta_loss(self, batch: TaskBatch) -> float:
        with torch.no_grad():
            return float(torch.mean((batch.x_query @ self.w_ - batch.y_query) ** 2))

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Any:
        return None

    def predict(self, state: Any, x_query: torch.Tensor) -> Any:
        return x_query @ self.w_

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w_.detach(), "opt": self.opt_.state_dict(), "steps": self.steps_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w_.copy_(state["w"])
        self.opt_.load_state_dict(state["opt"])
        self.steps_ = state["steps"]


class ScriptedValLearner(TinyLearner):
    """Meta-val loss is (steps - 7)^2: the best state is the one after step 7."""

    def meta_loss(self, batch: TaskBatch) -> float:
        return float((self.steps_ - 7) ** 2)


class Killed(Exception):
    pass


def assert_same_state(a: Any, b: Any) -> None:
    if torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


@pytest.mark.parametrize(
    "make",
    [TinyLearner, lambda: PretrainedRidge(F, hidden=(16,), embed_dim=8)],
    ids=["tiny", "pretrained_ridge"],
)
def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path, make) -> None:
    cfg = TrainConfig(
        max_steps=30,
        meta_batch_size=4,
        eval_every=5,
        patience=100,
        n_val_batches=2,
        checkpoint_every=10,
        seed=7,
    )
    full = make()
    full_result = meta_train(full, SyntheticSampler(), cfg, checkpoint_dir=tmp_path / "full")

    def kill_at_23(step: int, logs: dict) -> None:
        if step == 23:
            raise Killed

    with pytest.raises(Killed):
        meta_train(make(), SyntheticSampler(), cfg, checkpoint_dir=tmp_path / "killed", on_step=kill_at_23)
    torch.manual_seed(12345)  # a fresh process would start from some other RNG state
    resumed = make()
    result = meta_train(resumed, SyntheticSampler(), cfg, checkpoint_dir=tmp_path / "killed")
    assert result.resumed_from == 20
    assert result == full_result and result.steps == 30
    assert_same_state(resumed.state_dict(), full.state_dict())


def test_seed_determines_the_run() -> None:
    cfg = TrainConfig(max_steps=6, meta_batch_size=4, eval_every=3, seed=1)
    a, b, c = TinyLearner(), TinyLearner(), TinyLearner()
    assert meta_train(a, SyntheticSampler(), cfg) == meta_train(b, SyntheticSampler(), cfg)
    meta_train(c, SyntheticSampler(), TrainConfig(max_steps=6, meta_batch_size=4, eval_every=3, seed=2))
    assert torch.equal(a.w_, b.w_) and not torch.equal(a.w_, c.w_)


def test_early_stopping_restores_best_state_and_calls_on_step(tmp_path: Path) -> None:
    calls: list[tuple[int, dict]] = []
    learner = ScriptedValLearner()
    cfg = TrainConfig(max_steps=100, meta_batch_size=4, eval_every=1, patience=3, checkpoint_every=50)
    result = meta_train(
        learner,
        SyntheticSampler(),
        cfg,
        checkpoint_dir=tmp_path,
        on_step=lambda step, logs: calls.append((step, logs)),
    )
    assert result.stopped == "early_stop" and result.steps == 10
    assert result.best_step == 7 and result.best_val_loss == 0.0
    assert learner.steps_ == 7  # weights and counter are those after step 7, not step 10
    assert [step for step, _ in calls] == list(range(1, 11))
    assert all("loss" in logs and "val_loss" in logs for _, logs in calls)
    assert [h["val_loss"] for h in result.history] == [float((s - 7) ** 2) for s in range(1, 11)]
    # A finished run's checkpoint makes a rerun return at once with the same result.
    sampler = SyntheticSampler()
    again = ScriptedValLearner()
    assert meta_train(again, sampler, cfg, checkpoint_dir=tmp_path) == result
    assert sampler.calls == 0 and again.steps_ == 7
    assert (tmp_path / CHECKPOINT).exists() and not list(tmp_path.glob(".tmp-*"))


def test_non_meta_trainable_learner_returns_at_once() -> None:
    sampler = SyntheticSampler()
    result = meta_train(SupportMean(F), sampler, TrainConfig())
    assert result == TrainResult(
        steps=0, best_step=0, best_val_loss=result.best_val_loss, stopped="not_meta_trainable"
    )
    assert math.isnan(result.best_val_loss) and sampler.calls == 0


def test_config_errors_are_specific(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="meta_batch_size is 8"):
        meta_train(TinyLearner(), SyntheticSampler(n_tasks=4), TrainConfig(max_steps=2, meta_batch_size=8))
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)
    cfg = TrainConfig(max_steps=2, meta_batch_size=4, seed=0)
    meta_train(TinyLearner(), SyntheticSampler(), cfg, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="seed"):
        meta_train(
            TinyLearner(),
            SyntheticSampler(),
            TrainConfig(max_steps=2, meta_batch_size=4, seed=1),
            checkpoint_dir=tmp_path,
        )
