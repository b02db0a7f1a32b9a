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
from metalearn import schema as S
from metalearn.config import to_jsonable
from metalearn.evaluate.protocol import EvalConfig, evaluate, n_episodes
from metalearn.evaluate.report import summarize, write_report
from metalearn.layout import WorkDir
from metalearn.learn.learners import build_learner, load_learner, uses_representation
from metalearn.learn.sampling import TaskSampler
from metalearn.learn.stage import RESULT
from metalearn.represent.vectors import Vectors

REGRESSION_BASELINES = ("mean", "median", "knn", "rf", "mlp")
CLASSIFICATION_BASELINES = ("mean", "knn", "rf")
# Baselines scored on the representation's vectors too, under "<name>_rep" (RF on the representation).
REPRESENTATION_BASELINES = ("rf",)


def _baselines(n_features: int, task_type: str, names: tuple[str, ...], suffix: str = "") -> dict[str, Any]:
    """Support-only baselines; meta-trainable ones (pretrained_ridge) come in through ``checkpoints``."""
    built = {name + suffix: build_learner(name, n_features, task_type) for name in names}
    return {name: lrn for name, lrn in built.items() if not lrn.meta_trainable}


def evaluation_dir(work: WorkDir, shards_dir: Path, checkpoints: dict[str, str], cfg: EvalConfig,
                   vectors_dir: Path | None = None) -> Path:
    """``evaluations/<shards hash>/<hash of the learners' file contents + config + vectors>``: the cache key."""
    contents = {name: io.hash_bytes(Path(path).read_bytes()) for name, path in sorted(checkpoints.items())}
    vectors = io.read_manifest(Path(vectors_dir)).content_hash if vectors_dir else None
    key = io.hash_json({"checkpoints": contents, "config": to_jsonable(cfg), "vectors": vectors})[:12]
    return work.evaluations(io.read_manifest(Path(shards_dir)).content_hash[:12]) / key


class _Progress:
    """One episode count over several evaluate() calls (composition and representation inputs)."""

    def __init__(self, total: int, on_progress: Callable[[int, int], None] | None) -> None:
        self.total, self.offset, self.on_progress = total, 0, on_progress

    def part(self) -> Callable[[int, int], None]:
        start = self.offset

        def report(done: int, total: int) -> None:
            self.offset = start + done
            if self.on_progress is not None:
                self.on_progress(self.offset, self.total)

        return report


def evaluate_learners(work: WorkDir, shards_dir: Path, checkpoints: dict[str, str], cfg: EvalConfig,
                      on_progress: Callable[[int, int], None] | None = None,
                      vectors_dir: Path | None = None) -> dict[str, Any]:
    """Run the k-shot protocol on both meta-test settings for the given learners plus baselines.

    Every learner is scored on the same draws (task, k, draw); learners of the transfer
    representation see the tasks' representation vectors, the others (and the baselines) the
    composition features; RF is scored on both (``rf`` and ``rf_rep``). Support-only baseline
    scores are cached under ``WorkDir.baseline_cache()`` across nights.

    Args:
        checkpoints: learner name -> ``learner.pt`` written by ``train_learner``
            (regression and classification learners may be mixed; each scores its own task type).
        vectors_dir: the representation vectors of these shards (needed by representation learners).
    Returns:
        JSON-able {"scores_csv", "summary_md", "plot_png", "summary" (rows: setting, learner, k,
        metric, n_tasks, mean, median, CIs, win rates), "out_dir", "cached"}.
    """
    out = evaluation_dir(work, Path(shards_dir), checkpoints, cfg, vectors_dir)
    if (out / RESULT).exists():
        return {**json.loads((out / RESULT).read_text()), "cached": True}
    learners = {name: load_learner(path, trusted=True) for name, path in checkpoints.items()}
    if any(uses_representation(n) for n in learners) and vectors_dir is None:
        raise ValueError(f"learners {sorted(n for n in learners if uses_representation(n))} read the transfer "
                         "representation: pass its vectors directory")
    vectors = Vectors.load(vectors_dir) if vectors_dir else None
    need = max(cfg.n_support) + (cfg.n_query or 1)
    runs = []  # (tasks, learners) pairs scored on the same draws
    for task_type, baselines in (("regression", REGRESSION_BASELINES), ("classification", CLASSIFICATION_BASELINES)):
        chosen = {n: lrn for n, lrn in learners.items() if lrn.task_type == task_type}
        if not chosen:
            continue
        wanted = tuple(b for b in baselines if b in cfg.baselines)
        plain = {n: lrn for n, lrn in chosen.items() if not uses_representation(n)}
        on_vectors = {n: lrn for n, lrn in chosen.items() if uses_representation(n)}
        sampler = TaskSampler(shards_dir, 1, 1, 1, seed=cfg.seed, task_type=task_type)
        tasks = [t for split in S.META_TEST_SPLITS for t in sampler.tasks(split, need)]
        if not tasks:
            continue
        runs.append((tasks, {**plain, **_baselines(sampler.n_features, task_type, wanted)}))
        if vectors is not None:
            rep_sampler = TaskSampler(shards_dir, 1, 1, 1, seed=cfg.seed, task_type=task_type, vectors=vectors)
            rep_tasks = [t for split in S.META_TEST_SPLITS for t in rep_sampler.tasks(split, need)]
            rep_baselines = tuple(b for b in REPRESENTATION_BASELINES if b in wanted)
            runs.append((rep_tasks, {**on_vectors, **_baselines(vectors.n_features, task_type, rep_baselines, "_rep")}))
    runs = [(tasks, chosen) for tasks, chosen in runs if chosen]
    if not runs:
        raise ValueError(f"nothing to evaluate in {shards_dir}: no meta-test tasks for learners {sorted(learners)}")
    progress = _Progress(sum(n_episodes(tasks, cfg) for tasks, _ in runs), on_progress)
    scores = [evaluate(tasks, chosen, cfg, on_progress=progress.part(), cache_dir=work.baseline_cache())
              for tasks, chosen in runs]
    all_scores = pd.concat(scores, ignore_index=True)
    compared = tuple(cfg.baselines) + tuple(f"{b}_rep" for b in REPRESENTATION_BASELINES
                                            if vectors is not None and b in cfg.baselines)
    summary = summarize(all_scores, baselines=compared)  # once: the report reuses it
    paths = write_report(all_scores, out, baselines=compared, summary=summary)
    result = {"scores_csv": str(paths["scores"]), "summary_md": str(paths["summary"]),
              "plot_png": str(paths["kshot"]), "per_task_csv": str(paths["per_task"]), "out_dir": str(out),
              "summary": summary_rows(summary)}
    io.write_json_atomic(out / RESULT, result)
    return {**result, "cached": False}


def summary_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The summary table as JSON-able rows (NaN -> None), for MLflow, artifacts and the gate."""
    rows = summary.astype(object).where(summary.notna(), None).to_dict("records")
    return [{k: (int(v) if k in ("k", "n_tasks") and v is not None else v) for k, v in row.items()} for row in rows]
