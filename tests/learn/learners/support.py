"""Shared by the learner tests: a synthetic regression task family, the support-mean comparison and a
save/load round trip.

Imported as ``learner_support``, found by path through tests/conftest.py (tests/ is not a package).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from metalearn.learn.learners import load_learner, save_learner
from metalearn.learn.sampling import TaskBatch, support_stats

N_FEATURES = 8


def sine_batch(gen: torch.Generator, n_tasks: int, n_support: int = 10, n_query: int = 10) -> TaskBatch:
    """y = a_t sin(w . x + b_t), w shared by the family; targets normalised with support stats."""
    w = torch.zeros(N_FEATURES)
    w[0], w[1] = 1.0, 0.5
    a = 0.5 + 1.5 * torch.rand(n_tasks, 1, generator=gen)
    b = math.pi * torch.rand(n_tasks, 1, generator=gen)
    x = torch.randn(n_tasks, n_support + n_query, N_FEATURES, generator=gen)
    y = a * torch.sin(x @ w + b)
    mean, std = support_stats(y[:, :n_support])
    y = (y - mean[:, None]) / std[:, None]
    ids = tuple(f"t{i}" for i in range(n_tasks))
    return TaskBatch(x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:], ids)


def query_mse(learner, batch: TaskBatch) -> tuple[float, float]:
    """(learner's query MSE, support-mean query MSE), averaged over the batch's tasks.

    On 0/1 labels with predicted probabilities this is the Brier score.
    """
    ours, base = [], []
    for t in range(batch.n_tasks):
        pred = learner.predict(learner.adapt(batch.x_support[t], batch.y_support[t]), batch.x_query[t]).mean
        ours.append(float(((pred - batch.y_query[t]) ** 2).mean()))
        base.append(float(((batch.y_support[t].mean() - batch.y_query[t]) ** 2).mean()))
    return sum(ours) / len(ours), sum(base) / len(base)


def trained_and_reloaded(learner, batch: TaskBatch, path: Path):
    """One meta-training step on ``batch``, then save the learner to ``path`` and load it back."""
    learner.meta_train_step(batch)
    save_learner(learner, path)
    return load_learner(path)
