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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metalearn import io
from metalearn.config import from_dict
from metalearn.learn.learners import build_learner, save_learner
from metalearn.learn.sampling import TaskSampler
from metalearn.learn.train import TrainConfig, meta_train

CLASSIFICATION_ALGORITHMS = ("protonet",)
RESULT = "result.json"
LEARNER_FILE = "learner.pt"


@dataclass(frozen=True)
class ExperimentConfig:
    """One learner's meta-training: episode shape, learner hyperparameters, loop settings."""

    n_support: int = 10
    n_query: int = 20
    hyperparams: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields

    def train_config(self) -> TrainConfig:
        return from_dict(TrainConfig, self.train)


def task_type_of(algorithm: str) -> str:
    return "classification" if algorithm in CLASSIFICATION_ALGORITHMS else "regression"


def model_dir(shards_dir: Path, algorithm: str, cfg: ExperimentConfig) -> Path:
    """``<workdir>/models/<shards hash>/<algorithm>-<config hash>``: the cache key of a training run."""
    shards_hash = io.read_manifest(shards_dir).content_hash[:12]
    key = io.hash_json({"algorithm": algorithm, **asdict(cfg)})[:12]
    return Path(shards_dir).parents[3] / "models" / shards_hash / f"{algorithm}-{key}"


class _ValFallback:
    """Serve meta-train episodes for meta-val when a task type has no meta-val family.

    Why: classification has two property families (metallicity, glass forming); one is held out
    for meta-test, so none is left for meta-val. Early stopping then sees training episodes (the
    result records ``val_split: meta-train``) rather than peeking at test tasks.
    """

    def __init__(self, sampler: TaskSampler) -> None:
        self.sampler = sampler

    def batch(self, split: str, step: int):
        return self.sampler.batch("meta-train" if split == "meta-val" else split, step + 10_000_000)


def train_learner(shards_dir: Path, algorithm: str, cfg: dict | ExperimentConfig, out_dir: Path | None = None,
                  on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Meta-train ``algorithm`` on the meta-train tasks of ``shards_dir``; early-stop on meta-val.

    Returns:
        JSON-able {"algorithm", "task_type", "checkpoint", "history", "metrics", "cached", "out_dir"}.
        A finished run with the same inputs is returned as is (``cached=True``); a killed run resumes
        from its last checkpoint.
    """
    cfg = cfg if isinstance(cfg, ExperimentConfig) else from_dict(ExperimentConfig, cfg)
    shards_dir = Path(shards_dir)
    out = Path(out_dir) if out_dir else model_dir(shards_dir, algorithm, cfg)
    if (out / RESULT).exists():
        return {**json.loads((out / RESULT).read_text()), "cached": True}
    train_cfg = cfg.train_config()
    task_type = task_type_of(algorithm)
    sampler = TaskSampler(shards_dir, cfg.n_support, cfg.n_query, train_cfg.meta_batch_size,
                          seed=train_cfg.seed, task_type=task_type)
    val_split = "meta-val" if sampler.tasks("meta-val") else "meta-train"
    learner = build_learner(algorithm, sampler.n_features, task_type, **cfg.hyperparams)
    started = time.perf_counter()
    result = meta_train(learner, sampler if val_split == "meta-val" else _ValFallback(sampler), train_cfg,
                        checkpoint_dir=out / "checkpoints", on_step=on_step)
    save_learner(learner, out / LEARNER_FILE)
    history = [dict(h) for h in result.history]
    io.write_json_atomic(out / "history.json", history)
    summary = {
        "algorithm": algorithm, "task_type": task_type, "checkpoint": str(out / LEARNER_FILE),
        "history": str(out / "history.json"), "out_dir": str(out),
        "metrics": {"steps": result.steps, "best_step": result.best_step, "best_val_loss": result.best_val_loss,
                    "train_seconds": round(time.perf_counter() - started, 2)},
        "stopped": result.stopped, "val_split": val_split, "n_features": sampler.n_features,
        "config": asdict(cfg),
    }
    io.write_json_atomic(out / RESULT, summary)  # last: its presence marks the run as finished
    return {**summary, "cached": False}
