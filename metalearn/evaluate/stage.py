"""The evaluate stage: trained learners + shards in, scores/report files out, keyed by content.

Why a stage function: Prefect tasks and the CLI pass paths and small dicts. This builds the
samplers and baselines, runs the k-shot protocol on both meta-test settings and writes the report
to a directory keyed by its inputs, so a rerun with unchanged inputs finds it and does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from metalearn import io
from metalearn.config import from_dict
from metalearn.evaluate.protocol import EvalConfig, evaluate
from metalearn.evaluate.report import summarize, write_report
from metalearn.learn.learners import build_learner, load_learner
from metalearn.learn.sampling import TaskSampler
from metalearn.learn.stage import RESULT

REGRESSION_BASELINES = ("mean", "knn", "rf", "mlp")
CLASSIFICATION_BASELINES = ("mean", "knn", "rf")


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
