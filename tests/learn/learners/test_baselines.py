"""Baselines: each fits on the support rows only and beats the support mean where it must."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from metalearn.learn.learners.baselines import (
    BASELINES,
    KNNBaseline,
    RandomForestBaseline,
    ScratchMLP,
    SupportMean,
)
from metalearn.learn.learners.episodes import episode_loss
from metalearn.learn.learners.pretrained import PretrainedRidge
from metalearn.learn.sampling import TaskBatch, support_stats

F = 3


def smooth_task(rng: np.random.Generator, n: int, scale: float = 1.0, shift: float = 0.0):
    """A smooth function of x shared by the family; tasks differ by scale and shift."""
    x = rng.normal(size=(n, F)).astype(np.float32)
    y = scale * (np.sin(2 * x[:, 0]) + x[:, 1] ** 2 - 0.5 * x[:, 2]) + shift
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))


def make_batch(
    rng: np.random.Generator, n_tasks: int, n_support: int, n_query: int, ids: list[str] | None = None
) -> TaskBatch:
    """TaskBatch from synthetic tasks, targets normalised with support statistics like the sampler."""
    xs, ys, task_ids = [], [], []
    for t in range(n_tasks):
        x, y = smooth_task(rng, n_support + n_query, scale=rng.uniform(0.5, 2.0), shift=rng.uniform(-1, 1))
        xs.append(x)
        ys.append(y)
        task_ids.append(ids[t] if ids else f"task-{t}")
    x, y = torch.stack(xs), torch.stack(ys)
    mean, std = support_stats(y[:, :n_support])
    y = (y - mean[:, None]) / std[:, None]
    return TaskBatch(
        x_support=x[:, :n_support],
        y_support=y[:, :n_support],
        x_query=x[:, n_support:],
        y_query=y[:, n_support:],
        task_ids=tuple(task_ids),
        y_mean=mean,
        y_std=std,
    )


@pytest.mark.parametrize("cls", [KNNBaseline, RandomForestBaseline, ScratchMLP])
def test_support_only_baseline_beats_support_mean(cls) -> None:
    batch = make_batch(np.random.default_rng(0), n_tasks=4, n_support=20, n_query=100)
    learner = cls(F, "regression", **({"n_estimators": 30} if cls is RandomForestBaseline else {}))
    assert episode_loss(learner, batch) < 0.85 * episode_loss(SupportMean(F), batch)


def test_pretrained_ridge_learns_the_shared_family() -> None:
    rng = np.random.default_rng(1)
    learner = PretrainedRidge(F, "regression", hidden=(32,), embed_dim=16, lr=3e-3, ridge_alpha=0.1)
    names = [f"train-{i}" for i in range(8)]
    val = make_batch(rng, n_tasks=6, n_support=10, n_query=50)
    with pytest.raises(RuntimeError, match="not been pretrained"):
        learner.meta_loss(val)
    for step in range(150):
        logs = learner.meta_train_step(
            make_batch(rng, 4, n_support=10, n_query=20, ids=list(rng.choice(names, 4, replace=False)))
        )
        if step == 0:
            before = learner.meta_loss(val)
    assert np.isfinite(logs["loss"]) and set(learner.task_rows_) <= set(names)
    after = learner.meta_loss(val)
    assert after < before
    assert after < 0.6 * episode_loss(SupportMean(F), val)


def test_pretrained_ridge_state_round_trip_and_config_check() -> None:
    rng = np.random.default_rng(2)
    a = PretrainedRidge(F, hidden=(8,), embed_dim=4, seed=3)
    a.meta_train_step(make_batch(rng, 2, n_support=5, n_query=5))
    b = PretrainedRidge(F, hidden=(8,), embed_dim=4, seed=3)  # same init; a has since taken a step
    b.load_state_dict(a.state_dict())
    x, y = smooth_task(rng, 12)
    pa, pb = a.predict(a.adapt(x[:6], y[:6]), x[6:]), b.predict(b.adapt(x[:6], y[:6]), x[6:])
    torch.testing.assert_close(pa.mean, pb.mean)
    batch = make_batch(rng, 2, n_support=5, n_query=5)  # the next step agrees too: optimiser state travelled
    assert a.meta_train_step(batch) == b.meta_train_step(batch)
    with pytest.raises(ValueError, match="does not match"):
        PretrainedRidge(F, hidden=(16,), embed_dim=4).load_state_dict(a.state_dict())


def test_support_mean_is_the_support_mean() -> None:
    x, y = smooth_task(np.random.default_rng(3), 9)
    pred = SupportMean(F).predict(SupportMean(F).adapt(x[:7], y[:7]), x[7:])
    np.testing.assert_allclose(pred.mean.numpy(), np.full(2, np.mean(y[:7].numpy())), rtol=1e-6)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    clf = SupportMean(F, "classification")
    np.testing.assert_allclose(clf.predict(clf.adapt(x[:5], labels), x[5:]).mean.numpy(), 0.6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("task_type", ["regression", "classification"])
def test_k1_and_single_class_supports(name: str, task_type: str) -> None:
    learner = BASELINES[name](F, task_type)
    if learner.meta_trainable:
        batch = make_batch(np.random.default_rng(8), 2, n_support=4, n_query=4)
        if task_type == "classification":
            batch = replace(
                batch,
                y_support=(batch.y_support > 0).float(),
                y_query=(batch.y_query > 0).float(),
                task_type="classification",
            )
        learner.meta_train_step(batch)
    x, y = smooth_task(np.random.default_rng(4), 10)
    supports = (
        [(x[:1], y[:1])] if task_type == "regression" else [(x[:1], torch.ones(1)), (x[:4], torch.zeros(4))]
    )
    for xs, ys in supports:
        pred = learner.predict(learner.adapt(xs, ys), x[4:]).mean
        assert pred.shape == (6,) and torch.isfinite(pred).all()
        if task_type == "classification":
            assert ((pred >= 0) & (pred <= 1)).all()


def test_classification_baselines_rank_the_query() -> None:
    rng = np.random.default_rng(5)
    tasks = []
    for _ in range(4):
        x, y = smooth_task(rng, 230)
        tasks.append((x, (y > y.median()).float()))
    for cls in (KNNBaseline, RandomForestBaseline, ScratchMLP):
        learner = cls(F, "classification")
        aucs = [
            roc_auc_score(
                labels[30:].numpy(), learner.predict(learner.adapt(x[:30], labels[:30]), x[30:]).mean
            )
            for x, labels in tasks
        ]
        assert np.mean(aucs) > 0.7, (cls.__name__, aucs)  # the support mean scores 0.5


def test_support_only_baselines_are_not_meta_trainable() -> None:
    batch = make_batch(np.random.default_rng(6), 2, n_support=3, n_query=3)
    for name in ("mean", "knn", "rf", "mlp"):
        learner = BASELINES[name](F, "regression")
        assert learner.meta_trainable is False and learner.name == name
        with pytest.raises(RuntimeError, match="not meta-trainable"):
            learner.meta_train_step(batch)
        learner.load_state_dict(learner.state_dict())
    assert BASELINES["pretrained_ridge"].meta_trainable is True
    with pytest.raises(ValueError, match="does not match"):
        KNNBaseline(F + 1).load_state_dict(KNNBaseline(F).state_dict())
    KNNBaseline(F, n_neighbors=3).load_state_dict(KNNBaseline(F, n_neighbors=5).state_dict())  # overrides win
    with pytest.raises(ValueError, match="need"):
        SupportMean(F).adapt(torch.zeros(3, F + 1), torch.zeros(3))


def test_scratch_mlp_is_deterministic_and_leaves_global_rng_alone() -> None:
    x, y = smooth_task(np.random.default_rng(7), 15)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    mlp = ScratchMLP(F, steps=20)
    first = mlp.predict(mlp.adapt(x[:10], y[:10]), x[10:]).mean
    assert torch.equal(torch.rand(1), expected_next)
    torch.testing.assert_close(first, mlp.predict(mlp.adapt(x[:10], y[:10]), x[10:]).mean)
