"""Shared by the evaluate tests: the plain per-episode k-shot loop and a synthetic task.

``reference_evaluate`` is the loop as the evaluate stage ran before its fast path (no cache, no
batching): :func:`metalearn.evaluate.protocol.evaluate` must reproduce it row for row and value for
value, and ``bench/evaluate.py`` times it as the old path. Imported as ``eval_reference``
(registered by path in tests/evaluate/conftest.py; the bench loads it by path too).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from metalearn.evaluate.protocol import (
    SCORE_COLUMNS,
    EvalConfig,
    episode_indices,
    predict_episode,
    query_targets,
)
from metalearn.learn.learners.base import Learner
from metalearn.learn.learners.neural import resolve_device
from metalearn.learn.sampling import Task

F = 3


def make_task(
    task_id: str,
    n: int = 60,
    task_type: str = "regression",
    transform: str = "none",
    split: str = "meta-test-property",
    seed: int = 0,
) -> Task:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F)).astype(np.float32)
    y = np.sin(2 * x[:, 0]) + x[:, 1] + 0.1 * rng.normal(size=n)
    if task_type == "classification":
        y = (y > np.quantile(y, 0.7)).astype(float)  # 30% positives
    return Task(
        task_id=task_id,
        x=x,
        y=y,
        task_type=task_type,
        unit="eV",
        transform=transform,
        family="band_gap",
        group="g",
        split=split,
    )


def reference_evaluate(tasks: list[Task], learners: Mapping[str, Learner], cfg: EvalConfig) -> pd.DataFrame:
    """One adapt + predict per (task, draw, k, learner), in that loop order; columns SCORE_COLUMNS."""
    device = resolve_device(cfg.device)
    rows: list[tuple] = []
    for task in tasks:
        chosen = {name: lrn for name, lrn in learners.items() if lrn.task_type == task.task_type}
        for draw in range(cfg.n_draws):
            for k in cfg.n_support:
                support, query = episode_indices(task, k, draw, cfg)
                y_q, score = query_targets(task, query)
                for name, learner in chosen.items():
                    pred = predict_episode(learner, task, support, query, device)
                    for metric, value in score(pred, y_q).items():
                        rows.append((task.task_id, task.split or "unspecified", task.family, k, draw, name,
                                     metric, value))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
