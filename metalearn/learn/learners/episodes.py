"""Small helpers every learner may use: the task-type check, NumPy conversion, per-episode losses.

``episode_loss`` is the reference meta-val loss: adapt on each support set, score the query set.
The baselines use it directly; learners with a vectorised fast path (MAML over vmap) should agree
with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metalearn.learn.sampling import TaskBatch
from metalearn.schema import TASK_TYPES

PROB_EPS = 1e-6  # keeps the log-loss finite when a learner predicts exactly 0 or 1


def check_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type {task_type!r} is not one of {TASK_TYPES}")
    return task_type


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Tensor on any device -> float64 NumPy array (scikit-learn's preferred dtype)."""
    return t.detach().to("cpu", torch.float64).numpy()


def query_loss(pred: torch.Tensor, y: torch.Tensor, task_type: str) -> torch.Tensor:
    """MSE for regression (normalised targets), binary cross-entropy on P(y=1) for classification.

    Args:
        pred: (n_query,) predictions; y: (n_query,) targets.
    """
    pred, y = pred.float(), y.float().to(pred.device)
    if task_type == "regression":
        return torch.mean((pred - y) ** 2)
    p = pred.clamp(PROB_EPS, 1 - PROB_EPS)
    return -torch.mean(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def episode_loss(learner: Any, batch: TaskBatch) -> float:
    """Mean query loss over the T episodes of ``batch``, each adapted on its own support set.

    Args:
        learner: anything with ``adapt``/``predict``/``task_type`` (the Learner protocol).
        batch: x_support (T, n_support, F), y_support (T, n_support), x_query (T, n_query, F),
            y_query (T, n_query).
    """
    if batch.task_type != learner.task_type:
        raise ValueError(f"{learner.name!r} is a {learner.task_type} learner; batch is {batch.task_type}")
    losses = []
    for t in range(batch.n_tasks):
        state = learner.adapt(batch.x_support[t], batch.y_support[t])
        pred = learner.predict(state, batch.x_query[t]).mean
        losses.append(float(query_loss(pred, batch.y_query[t], learner.task_type)))
    return float(np.mean(losses))
