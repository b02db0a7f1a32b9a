"""Few-shot episodes: ``Task`` (one task's rows) and ``TaskBatch`` (fixed-size tensors over T tasks).

The TaskSampler that reads shards and builds these lives further down this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metalearn import schema as S
from metalearn.represent.vectors import Vectors
from metalearn.shards import store as shard_io


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of T episodes of one task type, all with the same n_support and n_query.

    Targets are already normalised with *support* statistics only (regression) or are 0/1 floats
    (classification); ``y_mean``/``y_std`` undo the normalisation for reporting in the unit.
    """

    x_support: torch.Tensor  # (T, n_support, F) float32
    y_support: torch.Tensor  # (T, n_support) float32
    x_query: torch.Tensor  # (T, n_query, F) float32
    y_query: torch.Tensor  # (T, n_query) float32
    task_ids: tuple[str, ...]  # (T,)
    task_type: str = "regression"  # "regression" | "classification"
    y_mean: torch.Tensor | None = None  # (T,) support mean, in the transformed unit
    y_std: torch.Tensor | None = None  # (T,) support std (floored), in the transformed unit

    @property
    def n_tasks(self) -> int:
        return int(self.x_support.shape[0])

    def to(self, device: torch.device | str) -> TaskBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return TaskBatch(
            x_support=self.x_support.to(device),
            y_support=self.y_support.to(device),
            x_query=self.x_query.to(device),
            y_query=self.y_query.to(device),
            task_ids=self.task_ids,
            task_type=self.task_type,
            y_mean=move(self.y_mean),
            y_std=move(self.y_std),
        )


@dataclass(frozen=True)
class Task:
    """All rows of one task (one property on one group of materials), features already standardised.

    ``y`` is in the transformed unit (e.g. log10 GPa for a "log10" task); :func:`inverse_transform`
    maps back to the property's unit for reporting.
    """

    task_id: str
    x: np.ndarray  # (n, F) float32, standardised with meta-train statistics
    y: np.ndarray  # (n,) float64, transformed target (0/1 for classification)
    task_type: str = "regression"
    unit: str = ""
    transform: str = "none"  # "none" | "log10"
    family: str = ""
    group: str = ""
    split: str = ""  # "meta-train" | "meta-val" | "meta-test-property" | "meta-test-chemistry"
    formulas: tuple[str, ...] = ()  # (n,) for reporting and leakage checks

    @property
    def n_rows(self) -> int:
        return int(self.y.shape[0])


STD_FLOOR = 1e-6


def support_stats(y_support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the support targets only (never the query): (..., n_support) -> (...,), (...,).

    The std is floored so a constant support set does not divide by zero.
    """
    mean = y_support.mean(dim=-1)
    std = y_support.std(dim=-1, unbiased=False).clamp_min(STD_FLOOR)
    return mean, std


def inverse_transform(y: np.ndarray, transform: str) -> np.ndarray:
    """Transformed target -> property unit."""
    if transform == "none":
        return y
    if transform == "log10":
        return np.power(10.0, y)
    raise ValueError(f"unknown target transform {transform!r}; expected 'none' or 'log10'")


def forward_transform(y: np.ndarray, transform: str) -> np.ndarray:
    """Property unit -> transformed target (log10 needs strictly positive values)."""
    if transform == "none":
        return y
    if transform == "log10":
        if np.any(y <= 0):
            raise ValueError("log10 transform needs strictly positive targets")
        return np.log10(y)
    raise ValueError(f"unknown target transform {transform!r}; expected 'none' or 'log10'")


MIN_SUPPORT_SPREAD = 0.1  # training supports must span >= 10% of their task's target std
MAX_REDRAWS = 10
TARGET_CLIP = 10.0  # |normalised query target| bound in training batches
_SPLIT_CODES = {split: i for i, split in enumerate(S.SPLITS)}


def draw_episode_rows(rng: np.random.Generator, y: np.ndarray, n_support: int, n_query: int,
                      task_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint support and query rows; a classification support holds both classes when n_support >= 2.

    Returns:
        (support_idx (n_support,), query_idx (n_query,))
    """
    n = len(y)
    if n < n_support + n_query:
        raise ValueError(f"task has {n} rows; need n_support + n_query = {n_support + n_query}")
    order = rng.permutation(n)
    if task_type == "classification" and n_support >= 2:
        pos = order[y[order] >= 0.5]
        neg = order[y[order] < 0.5]
        if len(pos) and len(neg):
            first = np.array([pos[0], neg[0]])
            order = np.concatenate([first, order[~np.isin(order, first)]])
            order = np.concatenate([rng.permutation(order[:n_support]), order[n_support:]])
    return order[:n_support], order[n_support:n_support + n_query]


def draw_batch_rows(rng: np.random.Generator, y: np.ndarray, n_support: int, n_query: int,
                    task_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Episode rows for a ``TaskSampler`` batch: :func:`draw_episode_rows`, redrawing flat supports.

    A regression support whose spread is under MIN_SUPPORT_SPREAD of its task's is redrawn, up to
    MAX_REDRAWS times.

    Why: some training tasks are mostly one value (band gaps of metals are exactly 0), so many
    10-shot supports are constant; normalising by their near-zero spread turned query targets
    into 1e5-sized numbers whose squared errors dominated whole meta-batches (seen in meta-val
    tuning). Degenerate supports teach nothing about adaptation, so training skips them.
    """
    s_idx, q_idx = draw_episode_rows(rng, y, n_support, n_query, task_type)
    if task_type != "regression" or n_support < 2:
        return s_idx, q_idx
    floor = MIN_SUPPORT_SPREAD * float(np.std(y))
    for _ in range(MAX_REDRAWS):
        if float(np.std(y[s_idx])) >= floor:
            break
        s_idx, q_idx = draw_episode_rows(rng, y, n_support, n_query, task_type)
    return s_idx, q_idx


class TaskSampler:
    """Seeded fixed-size episodes from task shards: ``batch(split, step) -> TaskBatch``.

    Reads only the partitions of the tasks it serves; features are standardised with meta-train
    statistics (from the shards), targets with each episode's support statistics only. With
    ``vectors`` (the transfer representation of these shards), a task's inputs are its
    materials' representation vectors (already standardised) instead of the composition features.

    Example:
        >>> sampler = TaskSampler(shards_dir, n_support=10, n_query=20, meta_batch_size=16, seed=0)
        >>> batch = sampler.batch("meta-train", step=0)   # x_support (16, 10, F)
    """

    def __init__(self, shards: Path | str, n_support: int, n_query: int, meta_batch_size: int = 16,
                 seed: int = 0, task_type: str = "regression", vectors: Vectors | None = None) -> None:
        self.shards = Path(shards)
        self.n_support, self.n_query = n_support, n_query
        self.meta_batch_size, self.seed, self.task_type = meta_batch_size, seed, task_type
        self.vectors = vectors
        self.index = shard_io.read_index(self.shards)
        stats = shard_io.read_feature_stats(self.shards)
        self.feature_names: list[str] = stats["feature"].tolist()
        self._mean = stats["mean"].to_numpy(np.float64)
        self._std = stats["std"].to_numpy(np.float64)
        self._tasks: dict[str, list[Task]] = {}

    @property
    def n_features(self) -> int:
        return self.vectors.n_features if self.vectors is not None else len(self.feature_names)

    def _inputs(self, part, family: str, split: str) -> np.ndarray:
        """(n, F) float32 inputs of a task's rows: representation vectors, or standardised features.

        On meta-train and meta-val tasks, representation columns of the task's own family are
        zeroed (the standardised mean), as ``meta_fit`` does: a member of the task's own property
        would predict it, and a new property never has one, so nothing meta-trained on these
        episodes may learn to lean on it. Meta-test inputs are what a consumer's formulas get:
        a meta-test-property family has no member (the leakage rule), and a meta-test-chemistry
        task keeps its family's member, fitted without its materials."""
        if self.vectors is not None:
            x = self.vectors.matrix(part[S.REDUCED_FORMULA].to_numpy())
            own = ~self.vectors.mask_for(family) if split in (S.META_TRAIN, S.META_VAL) else None
            if own is not None and own.any():
                x = x.copy()
                x[:, own] = 0.0
            return x
        x = (part[self.feature_names].to_numpy(np.float64) - self._mean) / self._std
        return np.nan_to_num(x, nan=0.0).astype(np.float32)

    def tasks(self, split: str, min_rows: int | None = None) -> list[Task]:
        """All tasks of ``split`` and this sampler's task type with at least ``min_rows`` rows."""
        if split not in self._tasks:
            sel = self.index[(self.index["split"] == split) & (self.index["task_type"] == self.task_type)]
            rows = shard_io.read_task_rows(self.shards, sel[S.TASK_KEY].tolist()) if len(sel) else None
            built = []
            for meta in sel.itertuples(index=False):
                part = rows[rows[S.TASK_KEY] == meta.task_key].sort_values(S.RECORD_ID)
                built.append(Task(
                    task_id=meta.task_id, x=self._inputs(part, meta.family, split),
                    y=part["y"].to_numpy(np.float64), task_type=meta.task_type, unit=meta.unit,
                    transform=meta.transform, family=meta.family, group=meta.group, split=split,
                    formulas=tuple(part["formula"]),
                ))
            self._tasks[split] = built
        need = min_rows if min_rows is not None else self.n_support + self.n_query
        return [t for t in self._tasks[split] if t.n_rows >= need]

    def batch(self, split: str, step: int) -> TaskBatch:
        """Episode batch number ``step`` of ``split``; the same (seed, split, step) gives the same batch."""
        tasks = self.tasks(split)
        if not tasks:
            raise ValueError(f"no {self.task_type} tasks in split {split!r} with at least "
                             f"n_support + n_query = {self.n_support + self.n_query} rows")
        rng = np.random.default_rng([self.seed, _SPLIT_CODES.get(split, 9), step])
        chosen = rng.choice(len(tasks), size=self.meta_batch_size, replace=len(tasks) < self.meta_batch_size)
        xs, ys, xq, yq = [], [], [], []
        for i in chosen:
            task = tasks[i]
            s_idx, q_idx = draw_batch_rows(rng, task.y, self.n_support, self.n_query, self.task_type)
            xs.append(task.x[s_idx]); ys.append(task.y[s_idx]); xq.append(task.x[q_idx]); yq.append(task.y[q_idx])
        return make_batch(np.stack(xs), np.stack(ys), np.stack(xq), np.stack(yq),
                          tuple(tasks[i].task_id for i in chosen), self.task_type, clip=TARGET_CLIP)


def make_batch(x_support: np.ndarray, y_support: np.ndarray, x_query: np.ndarray, y_query: np.ndarray,
               task_ids: tuple[str, ...], task_type: str, clip: float | None = None) -> TaskBatch:
    """Tensors from arrays; regression targets normalised by support statistics only.

    Args: x_support (T, n_support, F), y_support (T, n_support), x_query (T, n_query, F),
        y_query (T, n_query).
        clip: bound on |normalised target| (training batches), so one query far outside its
            support's spread cannot dominate the meta-gradient; None leaves targets as they are.
    """
    ys = torch.as_tensor(y_support, dtype=torch.float32)
    yq = torch.as_tensor(y_query, dtype=torch.float32)
    mean = std = None
    if task_type == "regression":
        mean, std = support_stats(ys)  # (T,), (T,)
        ys = (ys - mean[:, None]) / std[:, None]
        yq = (yq - mean[:, None]) / std[:, None]
        if clip is not None:
            yq = yq.clamp(-clip, clip)
    return TaskBatch(torch.as_tensor(x_support, dtype=torch.float32), ys,
                     torch.as_tensor(x_query, dtype=torch.float32), yq, task_ids, task_type, mean, std)
