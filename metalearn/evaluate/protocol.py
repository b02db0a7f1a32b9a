"""The k-shot protocol: many seeded support draws per unseen task, scored in the property's unit.

For each task and draw a query set is fixed (the same for every k and every learner, so all
comparisons are paired); for each k a support set is drawn from the remaining rows. Regression
support targets are normalised with *support* statistics only, predictions are mapped back with
the same statistics, then ``inverse_transform`` puts both sides in the property's unit.
Classification supports are stratified (both classes when k >= 2).

Summaries, confidence intervals, paired comparisons and the report files live in
:mod:`metalearn.evaluate.report` and are re-exported here.

Example:
    >>> scores = evaluate(sampler.tasks("meta-test-property"), {"maml": maml, "rf": rf}, EvalConfig())
    >>> write_report(scores, out_dir)           # scores.csv, summary.md, kshot.png
    >>> paired_comparison(scores, "maml", "rf", metric="mae_mad", k=5).win_rate
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from metalearn.evaluate.report import (
    HIGHER_IS_BETTER,
    PairedComparison,
    paired_comparison,
    summarize,
    write_report,
)
from metalearn.learn.learners.base import Learner
from metalearn.learn.models import resolve_device
from metalearn.learn.sampling import Task, inverse_transform, support_stats

__all__ = [
    "HIGHER_IS_BETTER",
    "SCORE_COLUMNS",
    "EvalConfig",
    "PairedComparison",
    "classification_metrics",
    "episode_indices",
    "evaluate",
    "normalise_support",
    "paired_comparison",
    "regression_metrics",
    "summarize",
    "write_report",
]

SCORE_COLUMNS = ["task_id", "setting", "family", "k", "draw", "learner", "metric", "value"]


@dataclass(frozen=True)
class EvalConfig:
    """k-shot protocol settings.

    Args:
        ks: support sizes to score.
        n_draws: support/query draws per task and k.
        n_query: query rows per draw; None uses every row not needed for the largest support.
        seed: draws are a function of (seed, task_id, draw[, k]) only, so they reproduce across
            runs and do not depend on which other tasks or learners are evaluated.
        baselines: learner names that summaries compare against (paired win rates).
        device: "auto" | "cpu" | "cuda": where support/query tensors are placed.
    """

    ks: tuple[int, ...] = (1, 5, 10, 20)
    n_draws: int = 10
    n_query: int | None = 32
    seed: int = 0
    baselines: tuple[str, ...] = ("mean", "knn", "rf", "mlp", "pretrained_ridge")
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"EvalConfig.ks must be non-empty positive ints, got {self.ks}")
        if self.n_draws < 1 or (self.n_query is not None and self.n_query < 1):
            raise ValueError(f"EvalConfig needs n_draws >= 1 and n_query >= 1 (or None), got {self}")


def _rng(seed: int, task_id: str, *more: int) -> np.random.Generator:
    # crc32, not hash(): Python's str hash is salted per process, which would break reproducibility.
    return np.random.default_rng([seed, zlib.crc32(task_id.encode()), *more])


def episode_indices(task: Task, k: int, draw: int, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (support (k,), query (q,)) of one draw; disjoint, the query independent of k."""
    n, k_max = task.n_rows, max(cfg.ks)
    q = cfg.n_query if cfg.n_query is not None else n - k_max
    if q < 1 or n < k_max + q:
        raise ValueError(
            f"task {task.task_id!r} has {n} rows; need max(ks) + n_query = {k_max} + {q} = {k_max + q}"
        )
    perm = _rng(cfg.seed, task.task_id, draw).permutation(n)
    query, pool = np.sort(perm[:q]), perm[q:]
    rng = _rng(cfg.seed, task.task_id, draw, k)
    if task.task_type != "classification" or k < 2:
        return rng.choice(pool, size=k, replace=False), query
    labels = task.y[pool]
    pos, neg = pool[labels == 1], pool[labels != 1]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(
            f"task {task.task_id!r} draw {draw}: only one class outside the query set; "
            f"cannot draw a stratified k={k} support"
        )
    # Keep the pool's class ratio, but never drop a class: stratified as in FS-Mol.
    n_pos = int(np.clip(round(k * len(pos) / len(pool)), 1, k - 1))
    n_pos = int(np.clip(n_pos, k - len(neg), len(pos)))
    support = np.concatenate(
        [rng.choice(pos, n_pos, replace=False), rng.choice(neg, k - n_pos, replace=False)]
    )
    return rng.permutation(support), query


def normalise_support(y_support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k,) transformed targets -> (normalised (k,), mean (), std ()) from the support only."""
    mean, std = support_stats(y_support)
    return (y_support - mean) / std, mean, std


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """MAE in the property's unit, and MAE / MAD (MAD: mean |y - mean(y)| of the query targets).

    Args: pred, y: (q,) in the property's unit. MAE/MAD is NaN when the query targets are constant.
    """
    mae = float(np.mean(np.abs(pred - y)))
    mad = float(np.mean(np.abs(y - np.mean(y))))
    return {"mae": mae, "mae_mad": mae / mad if mad > 0 else float("nan")}


def classification_metrics(prob: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ROC-AUC and ΔAUPRC (average precision minus the query positive fraction, as in FS-Mol).

    Args: prob: (q,) P(y=1); y: (q,) 0/1. Both are NaN when the query holds one class only.
    """
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return {"roc_auc": float("nan"), "delta_auprc": float("nan")}
    return {
        "roc_auc": float(roc_auc_score(y, prob)),
        "delta_auprc": float(average_precision_score(y, prob) - y.mean()),
    }


def _predict(
    learner: Learner, task: Task, support: np.ndarray, query: np.ndarray, device: torch.device
) -> np.ndarray:
    """Adapt on the support rows, predict the query rows; (q,) in the property's unit (or P(y=1))."""
    x_s = torch.as_tensor(task.x[support], dtype=torch.float32, device=device)  # (k, F)
    x_q = torch.as_tensor(task.x[query], dtype=torch.float32, device=device)  # (q, F)
    y_s = torch.as_tensor(task.y[support], dtype=torch.float32, device=device)  # (k,)
    if task.task_type == "classification":
        state = learner.adapt(x_s, y_s)
        return learner.predict(state, x_q).mean.detach().cpu().double().numpy()
    y_norm, mean, std = normalise_support(y_s)
    state = learner.adapt(x_s, y_norm)
    pred = learner.predict(state, x_q).mean.detach().double() * std.double() + mean.double()
    return inverse_transform(pred.cpu().numpy(), task.transform)


def evaluate(
    tasks: list[Task],
    learners: Mapping[str, Learner],
    cfg: EvalConfig = EvalConfig(),
    on_progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Score every learner on every task, k and draw.

    Args:
        tasks: meta-test Tasks; the setting reported is ``task.split`` ("meta-test-property",
            "meta-test-chemistry"). A learner scores only tasks of its own ``task_type``.
        learners: name -> Learner, already meta-trained; baselines included by the caller.
        cfg: the protocol settings.
        on_progress: called as ``on_progress(tasks_done, n_tasks)`` after each task.

    Returns:
        Long DataFrame with columns SCORE_COLUMNS, one row per (task, k, draw, learner, metric):
        "mae" (property unit), "mae_mad" for regression; "roc_auc", "delta_auprc" for
        classification. Undefined scores (one-class query, constant query) are NaN, not dropped.
    """
    device = resolve_device(cfg.device)
    rows: list[tuple] = []
    for done, task in enumerate(tasks, start=1):
        chosen = {name: lrn for name, lrn in learners.items() if lrn.task_type == task.task_type}
        setting = task.split or "unspecified"
        for draw in range(cfg.n_draws):
            for k in cfg.ks:
                support, query = episode_indices(task, k, draw, cfg)
                if task.task_type == "classification":
                    y_q, score = task.y[query], classification_metrics
                else:
                    y_q, score = (
                        inverse_transform(np.asarray(task.y[query], float), task.transform),
                        regression_metrics,
                    )
                for name, learner in chosen.items():
                    pred = _predict(learner, task, support, query, device)
                    for metric, value in score(pred, y_q).items():
                        rows.append((task.task_id, setting, task.family, k, draw, name, metric, value))
        if on_progress is not None:
            on_progress(done, len(tasks))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
