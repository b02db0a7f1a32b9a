"""The meta-train stage: shards path + JSON-able config in, a trained learner's files out.

Why this module: Prefect tasks and the CLI pass paths and small dicts, not learners and
samplers. :func:`train_learner` builds the sampler and learner from a shards directory, runs the
training loop and writes its outputs to a directory keyed by the inputs' content hashes, so a
rerun with unchanged inputs finds the result and does nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from metalearn import io
from metalearn import schema as S
from metalearn.config import from_dict, to_jsonable
from metalearn.layout import WorkDir
from metalearn.learn.learners import build_learner, save_learner, uses_representation
from metalearn.learn.sampling import TaskSampler, inverse_transform
from metalearn.learn.train import TrainConfig, TrainResult, meta_train
from metalearn.represent.vectors import Vectors
from metalearn.threads import limited

CLASSIFICATION_LEARNERS = ("protonet", "protonet_rep")
RESULT = "result.json"
LEARNER_FILE = "learner.pt"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class LearnerConfig:
    """One learner's meta-training: episode shape, the learner's hyperparameters, the loop settings.

    The flow parameter ``train`` holds ``n_support``, ``n_query`` and the :class:`TrainConfig`
    fields side by side (``{"n_support": 10, "max_steps": 600}``); :meth:`from_params` splits them.
    """

    n_support: int = 10
    n_query: int = 20
    hyperparams: dict[str, Any] = field(default_factory=dict)
    loop: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.n_support < 1 or self.n_query < 1:
            raise ValueError(f"train.n_support and train.n_query must be >= 1, got {self.n_support}, {self.n_query}")

    @classmethod
    def from_params(cls, params: dict[str, Any], hyperparams: dict[str, Any] | None = None) -> LearnerConfig:
        """``{"n_support", "n_query", <TrainConfig fields>}`` -> LearnerConfig; unknown keys raise."""
        params = dict(params)
        episode = {k: params.pop(k) for k in ("n_support", "n_query") if k in params}
        loop_fields = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(params) - loop_fields)
        if unknown:
            raise ValueError(f"unknown train parameter(s) {unknown}; valid: "
                             f"{sorted(loop_fields | {'n_support', 'n_query'})}")
        return from_dict(cls, {**episode, "hyperparams": dict(hyperparams or {}), "loop": from_dict(TrainConfig, params)})

    def cache_key(self, learner: str) -> str:
        return io.hash_json({"learner": learner, **to_jsonable(self)})[:12]


def task_type_of(learner: str) -> str:
    return "classification" if learner in CLASSIFICATION_LEARNERS else "regression"


def model_dir(work: WorkDir, shards_dir: Path, learner: str, cfg: LearnerConfig,
              vectors_dir: Path | None = None) -> Path:
    """``models/<shards hash>/<learner>-<config hash>[-<vectors hash>]``: the cache key of a training run."""
    shards_hash = io.read_manifest(Path(shards_dir)).content_hash[:12]
    suffix = f"-{io.read_manifest(Path(vectors_dir)).content_hash[:8]}" if vectors_dir else ""
    return work.models(shards_hash) / f"{learner}-{cfg.cache_key(learner)}{suffix}"


class _ValFallback:
    """Serve meta-train episodes for meta-val when a task type has no meta-val family.

    Why: classification has two property families (metallicity, glass forming); one is held out
    for meta-test, so none is left for meta-val. Early stopping then sees training episodes (the
    result records ``val_split: meta-train``) rather than peeking at test tasks.
    """

    def __init__(self, sampler: TaskSampler) -> None:
        self.sampler = sampler

    def batch(self, split: str, step: int):
        return self.sampler.batch(S.META_TRAIN if split == S.META_VAL else split, step + 10_000_000)


def train_learner(work: WorkDir, shards_dir: Path, learner: str, cfg: LearnerConfig,
                  on_step: Callable[[int, dict[str, float]], None] | None = None,
                  vectors_dir: Path | None = None) -> dict[str, Any]:
    """Meta-train ``learner`` on the meta-train tasks of ``shards_dir``; early-stop on meta-val.

    Returns:
        JSON-able {"learner", "task_type", "checkpoint", "history", "metrics", "cached", "out_dir"}.
        A finished run with the same inputs is returned as is (``cached=True``); a killed run resumes
        from its last checkpoint.
    """
    shards_dir = Path(shards_dir)
    if uses_representation(learner) and vectors_dir is None:
        raise ValueError(f"learner {learner!r} reads the transfer representation: pass its vectors directory")
    vectors_dir = Path(vectors_dir) if uses_representation(learner) else None
    out = model_dir(work, shards_dir, learner, cfg, vectors_dir)
    if (out / RESULT).exists():
        return {**json.loads((out / RESULT).read_text()), "cached": True}
    train_cfg = cfg.loop
    task_type = task_type_of(learner)
    vectors = Vectors.load(vectors_dir) if vectors_dir else None
    sampler = TaskSampler(shards_dir, cfg.n_support, cfg.n_query, train_cfg.meta_batch_size,
                          seed=train_cfg.seed, task_type=task_type, vectors=vectors)
    val_split = S.META_VAL if sampler.tasks(S.META_VAL) else S.META_TRAIN
    model = build_learner(learner, sampler.n_features, task_type, **cfg.hyperparams)
    started = time.perf_counter()
    with limited():
        if hasattr(model, "meta_fit"):  # a closed-form statistic over every meta-train task, no loop
            tasks = sampler.tasks(S.META_TRAIN, min_rows=3)
            # in the property's unit, as the head sees a support at evaluation and predict time
            model.meta_fit((t.x, inverse_transform(t.y, t.transform), vectors.mask_for(t.family) if vectors else None)
                           for t in tasks)
            result = TrainResult(steps=0, best_step=0, best_val_loss=float("nan"), stopped="meta_fit")
        elif not model.meta_trainable:  # a support-only head: nothing to meta-train, saved as configured
            result = TrainResult(steps=0, best_step=0, best_val_loss=float("nan"), stopped="support_only")
        else:
            result = meta_train(model, sampler if val_split == S.META_VAL else _ValFallback(sampler), train_cfg,
                                checkpoint_dir=out / "checkpoints", on_step=on_step)
    save_learner(model, out / LEARNER_FILE)
    history = [dict(h) for h in result.history]
    io.write_json_atomic(out / HISTORY_FILE, history)
    summary = {
        "learner": learner, "task_type": task_type, "checkpoint": str(out / LEARNER_FILE),
        "history": str(out / HISTORY_FILE), "out_dir": str(out),
        "metrics": {"steps": result.steps, "best_step": result.best_step, "best_val_loss": result.best_val_loss,
                    "train_seconds": round(time.perf_counter() - started, 2)},
        "stopped": result.stopped, "val_split": val_split, "n_features": sampler.n_features,
        "config": to_jsonable(cfg), "vectors": str(vectors_dir) if vectors_dir else None,
    }
    io.write_json_atomic(out / RESULT, summary)  # last: its presence marks the run as finished
    return {**summary, "cached": False}
