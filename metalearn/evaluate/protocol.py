"""The k-shot protocol: many seeded support draws per unseen task, scored in the property's unit.

For each task and draw a query set is fixed (the same for every k and every learner, so all
comparisons are paired); for each k a support set is drawn from the remaining rows. Regression
support targets are normalised with *support* statistics only, predictions are mapped back with
the same statistics, then ``inverse_transform`` puts both sides in the property's unit.
Classification supports are stratified (both classes when k >= 2). k=1 is refused: every
regression learner then predicts the one support value and all score the same.

Speed without changing a value: support-only baselines' scores persist in a content-keyed cache
(:mod:`metalearn.evaluate.score_cache`), and a learner with ``adapt_batch`` / ``predict_batch``
adapts all draws of a (task, k) at once. Rows and values are those of the plain per-episode loop
(:func:`predict_episode` for each draw, k and learner), bit for bit (a batched learner's to float32
rounding); the tests check the two against each other on real shards.

Summaries, confidence intervals, paired comparisons and the report files live in
:mod:`metalearn.evaluate.report`.

Example:
    >>> scores = evaluate(sampler.tasks("meta-test-property"), {"maml": maml, "rf": rf}, EvalConfig(),
    ...                   cache_dir=work.baseline_cache())
    >>> write_report(scores, out_dir)           # scores.csv, summary.md, kshot.png
    >>> paired_comparison(scores, "maml", "rf", metric="mae_mad", k=5).win_rate
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metalearn.evaluate.score_cache import Entries, ScoreCache
from metalearn.learn.learners.base import Learner
from metalearn.learn.learners.neural import resolve_device
from metalearn.learn.sampling import Task, inverse_transform, support_stats
from metalearn.threads import limited

MIN_SUPPORT = 2  # k=1 cannot tell learners apart (see EvalConfig)
SCORE_COLUMNS = ["task_id", "setting", "family", "k", "draw", "learner", "metric", "value"]


@dataclass(frozen=True)
class EvalConfig:
    """k-shot protocol settings.

    Args:
        n_support: support sizes to score (k in the score tables: the k of k-shot); each >= 2.
        n_draws: support/query draws per task and k.
        n_query: query rows per draw; None uses every row not needed for the largest support.
        seed: draws are a function of (seed, task_id, draw[, k]) only, so they reproduce across
            runs and do not depend on which other tasks or learners are evaluated.
        baselines: learner names that summaries compare against (paired win rates).
        device: "auto" | "cpu" | "cuda": where support/query tensors are placed.
    """

    n_support: tuple[int, ...] = (5, 10, 20)
    n_draws: int = 10
    n_query: int | None = 32
    seed: int = 0
    baselines: tuple[str, ...] = ("mean", "knn", "rf", "mlp", "pretrained_ridge")
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_support", tuple(int(k) for k in self.n_support))  # lists from JSON
        if not self.n_support or min(self.n_support) < MIN_SUPPORT:
            raise ValueError(
                f"evaluate.n_support must be non-empty ints >= {MIN_SUPPORT}, got {self.n_support}: at k=1 every "
                "regression learner predicts the one support value (its normalised target is 0, so all fall back "
                "to the mean and score the same), and a one-row classification support has one class"
            )
        if len(set(self.n_support)) != len(self.n_support):
            raise ValueError(f"evaluate.n_support has repeated sizes: {self.n_support}")
        if self.n_draws < 1 or (self.n_query is not None and self.n_query < 1):
            raise ValueError(f"EvalConfig needs n_draws >= 1 and n_query >= 1 (or None), got {self}")


def _rng(seed: int, task_id: str, *more: int) -> np.random.Generator:
    # crc32, not hash(): Python's str hash is salted per process, which would break reproducibility.
    return np.random.default_rng([seed, zlib.crc32(task_id.encode()), *more])


def episode_indices(task: Task, k: int, draw: int, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (support (k,), query (q,)) of one draw; disjoint, the query independent of k."""
    n, k_max = task.n_rows, max(cfg.n_support)
    q = cfg.n_query if cfg.n_query is not None else n - k_max
    if q < 1 or n < k_max + q:
        raise ValueError(
            f"task {task.task_id!r} has {n} rows; need max(n_support) + n_query = {k_max} + {q} = {k_max + q}"
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
    # deferred: importing scikit-learn costs ~1.5 s, which a nightly served from cache never needs
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        "roc_auc": float(roc_auc_score(y, prob)),
        "delta_auprc": float(average_precision_score(y, prob) - y.mean()),
    }


def _tensors(task: Task, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., F) float32 and y (...,) float32 of ``rows`` (any shape) on ``device``."""
    return (torch.as_tensor(task.x[rows], dtype=torch.float32, device=device),
            torch.as_tensor(task.y[rows], dtype=torch.float32, device=device))


def predict_episode(
    learner: Learner, task: Task, support: np.ndarray, query: np.ndarray, device: torch.device
) -> np.ndarray:
    """Adapt on the support rows, predict the query rows; (q,) in the property's unit (or P(y=1)).

    The reference for one episode: every faster path in :func:`evaluate` must give these values.
    """
    x_s, y_s = _tensors(task, support, device)  # (k, F), (k,)
    x_q = torch.as_tensor(task.x[query], dtype=torch.float32, device=device)  # (q, F)
    if task.task_type == "classification":
        state = learner.adapt(x_s, y_s)
        return learner.predict(state, x_q).mean.detach().cpu().double().numpy()
    if getattr(learner, "wants_raw_targets", False):  # a head that picks its own transform from the support
        y_unit = torch.as_tensor(inverse_transform(np.asarray(task.y[support], float), task.transform),
                                 dtype=torch.float64, device=device)
        return learner.predict(learner.adapt(x_s, y_unit), x_q).mean.detach().cpu().double().numpy()
    y_norm, mean, std = normalise_support(y_s)
    state = learner.adapt(x_s, y_norm)
    pred = learner.predict(state, x_q).mean.detach().double() * std.double() + mean.double()
    return inverse_transform(pred.cpu().numpy(), task.transform)


def predict_draws(
    learner: Learner, task: Task, supports: np.ndarray, queries: np.ndarray, device: torch.device
) -> list[np.ndarray]:
    """:func:`predict_episode` for D draws of one k: supports (D, k), queries (D, q) -> D arrays (q,).

    A learner with ``adapt_batch(x_support (D, k, F), y_support (D, k))`` and
    ``predict_batch(state, x_query (D, q, F)) -> Prediction(mean (D, q))`` adapts all draws at once;
    support statistics are still taken per draw (torch's batched std differs in the last bit).
    """
    adapt_batch = getattr(learner, "adapt_batch", None)
    if adapt_batch is None or getattr(learner, "wants_raw_targets", False):
        return [predict_episode(learner, task, s, q, device) for s, q in zip(supports, queries)]
    x_s, y_s = _tensors(task, supports, device)  # (D, k, F), (D, k)
    x_q = torch.as_tensor(task.x[queries], dtype=torch.float32, device=device)  # (D, q, F)
    if task.task_type == "classification":
        out = learner.predict_batch(adapt_batch(x_s, y_s), x_q).mean.detach().cpu().double().numpy()
        return list(out)
    normed, means, stds = zip(*(normalise_support(y) for y in y_s))
    mean, std = torch.stack(means).double()[:, None], torch.stack(stds).double()[:, None]  # (D, 1)
    pred = learner.predict_batch(adapt_batch(x_s, torch.stack(normed)), x_q).mean.detach().double()
    pred = (pred * std + mean).cpu().numpy()  # (D, q), transformed unit
    return [inverse_transform(row, task.transform) for row in pred]


def query_targets(task: Task, query: np.ndarray) -> tuple[np.ndarray, Callable[..., dict[str, float]]]:
    """The query targets as scored ((q,) in the property's unit, or 0/1) and the metric function."""
    if task.task_type == "classification":
        return task.y[query], classification_metrics
    return inverse_transform(np.asarray(task.y[query], float), task.transform), regression_metrics


def n_episodes(tasks: list[Task], cfg: EvalConfig) -> int:
    """Episodes :func:`evaluate` scores (tasks x n_support x n_draws): the unit of its progress."""
    return len(tasks) * len(cfg.n_support) * cfg.n_draws


def evaluate(
    tasks: list[Task],
    learners: Mapping[str, Learner],
    cfg: EvalConfig = EvalConfig(),
    on_progress: Callable[[int, int], None] | None = None,
    *,
    cache_dir: Path | str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Score every learner on every task, k and draw.

    Args:
        tasks: meta-test Tasks; the setting reported is ``task.split`` ("meta-test-property",
            "meta-test-chemistry"). A learner scores only tasks of its own ``task_type``.
        learners: name -> Learner, already meta-trained; baselines included by the caller.
        cfg: the protocol settings.
        on_progress: called as ``on_progress(episodes_done, n_episodes)`` after each (task, k), in
            episodes (task x k x draw, all learners scored); the last call has done == total.
        cache_dir: where support-only baselines' scores persist across runs
            (:mod:`metalearn.evaluate.score_cache`); None computes everything.
        threads: torch / BLAS threads for the run (:func:`metalearn.threads.limited`; None:
            ``$METALEARN_THREADS``, else 1).

    Returns:
        Long DataFrame with columns SCORE_COLUMNS, one row per (task, k, draw, learner, metric):
        "mae" (property unit), "mae_mad" for regression; "roc_auc", "delta_auprc" for
        classification. Undefined scores (one-class query, constant query) are NaN, not dropped.
        Rows and values are those of the plain loop over draws, k and learners calling
        :func:`predict_episode`, whether a score was computed or read from the cache; a learner's
        ``adapt_batch`` (used when it has one) must match its per-draw ``adapt`` (the tests allow
        float32 rounding there, rtol 1e-5, since batched matmuls round differently).
    """
    device = resolve_device(cfg.device)
    cache = None if cache_dir is None else ScoreCache(Path(cache_dir), cfg.seed, device.type)
    total, done = n_episodes(tasks, cfg), 0

    def tick() -> None:  # after each (task, k): every learner has scored its n_draws episodes
        nonlocal done
        done += cfg.n_draws
        if on_progress is not None:
            on_progress(done, total)

    rows: list[tuple] = []
    with limited(threads):
        for task in tasks:
            chosen = {name: lrn for name, lrn in learners.items() if lrn.task_type == task.task_type}
            rows += _score_task(task, chosen, cfg, device, cache, tick)
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _score_task(task: Task, learners: Mapping[str, Learner], cfg: EvalConfig, device: torch.device,
                cache: ScoreCache | None, tick: Callable[[], None]) -> list[tuple]:
    """One task's score rows, in the plain loop's order (draw, k, learner, metric)."""
    draws = range(cfg.n_draws)
    episodes = {k: [episode_indices(task, k, d, cfg) for d in draws] for k in cfg.n_support}
    targets = [query_targets(task, query) for _, query in episodes[cfg.n_support[0]]]  # the same for every k
    keys = {name: None if cache is None else cache.key(name, lrn, task, len(targets[0][0]))
            for name, lrn in learners.items()}
    known = {name: {} if key is None else cache.load(key) for name, key in keys.items()}
    values: dict[str, Entries] = {name: {} for name in learners}
    for k in cfg.n_support:
        for name, learner in learners.items():
            values[name].update(_score_k(learner, task, k, episodes[k], targets, known[name], device))
            if keys[name] is not None:
                cache.count(known[name], k, cfg.n_draws)
        tick()
    for name, key in keys.items():
        if key is not None and values[name].keys() - known[name].keys():
            cache.store(key, {**known[name], **values[name]})
    setting = task.split or "unspecified"
    return [(task.task_id, setting, task.family, k, d, name, metric, value)
            for d in draws for k in cfg.n_support for name in learners
            for metric, value in values[name][(k, d)].items()]


def _score_k(learner: Learner, task: Task, k: int, episodes: list[tuple[np.ndarray, np.ndarray]],
             targets: list[tuple[np.ndarray, Callable]], known: Entries, device: torch.device) -> Entries:
    """{(k, draw): {metric: value}} of one learner at one k: the cached draws, the others computed."""
    out = {(k, d): known[(k, d)] for d in range(len(episodes)) if (k, d) in known}
    missing = [d for d in range(len(episodes)) if (k, d) not in known]
    if missing:
        supports = np.stack([episodes[d][0] for d in missing])  # (M, k)
        queries = np.stack([episodes[d][1] for d in missing])  # (M, q)
        for d, pred in zip(missing, predict_draws(learner, task, supports, queries, device)):
            y_q, score = targets[d]
            out[(k, d)] = score(pred, y_q)
    return out
