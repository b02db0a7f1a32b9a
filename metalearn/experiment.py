"""Stage-level calls for training and evaluation: shards path + JSON-able config in, files out.

Why this module: Prefect tasks and the CLI pass paths and small dicts, not learners and
samplers. These two functions build the sampler and learners from a shards directory, run the
library's loop or protocol, and write their outputs to a directory keyed by the inputs' content
hashes, so a rerun with unchanged inputs finds the result and does nothing.
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
from metalearn.evaluate import EvalConfig, evaluate, summarize, write_report
from metalearn.learners import build_learner, load_learner, save_learner
from metalearn.sampling import TaskSampler
from metalearn.train import TrainConfig, meta_train

CLASSIFICATION_ALGORITHMS = ("protonet",)
REGRESSION_BASELINES = ("mean", "knn", "rf", "mlp")
CLASSIFICATION_BASELINES = ("mean", "knn", "rf")
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


def _baselines(sampler: TaskSampler, task_type: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Support-only baselines; meta-trainable ones (pretrained_ridge) come in through ``checkpoints``."""
    built = {name: build_learner(name, sampler.n_features, task_type) for name in names}
    return {name: lrn for name, lrn in built.items() if not lrn.meta_trainable}


def evaluate_learners(shards_dir: Path, checkpoints: dict[str, str], eval_cfg: dict | EvalConfig,
                      out_dir: Path, on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the k-shot protocol on both meta-test settings for the given learners plus baselines.

    Args:
        checkpoints: learner name -> ``learner.pt`` written by :func:`train_learner`
            (regression and classification learners may be mixed; each scores its own task type).
        eval_cfg: EvalConfig fields.
    Returns:
        JSON-able {"scores_csv", "summary_md", "plot_png", "headline", "cached"}.
    """
    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else from_dict(EvalConfig, eval_cfg)
    out = Path(out_dir)
    if (out / RESULT).exists():
        return {**json.loads((out / RESULT).read_text()), "cached": True}
    learners = {name: load_learner(path, trusted=True) for name, path in checkpoints.items()}
    scores = []
    for task_type, baselines in (("regression", REGRESSION_BASELINES), ("classification", CLASSIFICATION_BASELINES)):
        sampler = TaskSampler(shards_dir, 1, 1, 1, seed=cfg.seed, task_type=task_type)
        need = max(cfg.ks) + (cfg.n_query or 1)
        tasks = [t for split in ("meta-test-property", "meta-test-chemistry") for t in sampler.tasks(split, need)]
        chosen = {n: lrn for n, lrn in learners.items() if lrn.task_type == task_type}
        if not tasks or not chosen:
            continue
        chosen.update(_baselines(sampler, task_type, tuple(b for b in baselines if b in cfg.baselines)))
        scores.append(evaluate(tasks, chosen, cfg, on_progress=on_progress))
    if not scores:
        raise ValueError(f"nothing to evaluate in {shards_dir}: no meta-test tasks for learners {sorted(learners)}")
    import pandas as pd

    all_scores = pd.concat(scores, ignore_index=True)
    summary = summarize(all_scores, baselines=cfg.baselines)  # once: the report reuses it
    paths = write_report(all_scores, out, baselines=cfg.baselines, summary=summary)
    result = {"scores_csv": str(paths["scores"]), "summary_md": str(paths["summary"]),
              "plot_png": str(paths["kshot"]), "headline": headline(summary)}
    io.write_json_atomic(out / RESULT, result)
    return {**result, "cached": False}


def headline(summary) -> dict[str, float]:
    """Flat metric dict (``<setting>.<learner>.k<k>.<metric>_median``) for MLflow and artifacts."""
    out: dict[str, float] = {}
    for row in summary.to_dict("records"):
        stem = f"{row.get('setting')}.{row.get('learner')}.k{row.get('k')}.{row.get('metric')}"
        for stat in ("mean", "median"):
            if stat in row and row[stat] == row[stat]:
                out[f"{stem}_{stat}"] = float(row[stat])
    return out
