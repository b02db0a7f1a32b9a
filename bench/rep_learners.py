"""Do the meta-learners gain from the transfer representation? Scored on meta-val only.

Issue #9 asks to "run MAML/ANIL/ProtoNet/the metric GP on the representation too". This meta-trains
``fomaml_rep``, ``anil_rep`` and ``metric_rep`` (and ``protonet_rep`` for classification) on the
vectors of a finished nightly's work directory, with the default profile's train settings, next to
what the nightly ships (``fomaml``, ``metric`` on the composition features, ``meta_transfer`` and
``transfer_huber`` on the vectors) and the baselines (support mean and median, kNN, RF on Magpie,
RF on the representation), and scores them all with the k-shot protocol on the **meta-val** tasks:
the split learners are chosen on, never reported elsewhere as a test. Draws depend only on (seed,
task_id, draw, k), so every learner meets the same episodes. A learner joins the nightly's default
list only if it wins here.

Usage (after ``metalearn run --workdir /tmp/full-q``):
    .venv/bin/python bench/rep_learners.py --workdir /tmp/full-q
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "METALEARN_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import time
from pathlib import Path

import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.evaluate.protocol import EvalConfig, evaluate
from metalearn.evaluate.report import per_task, summarize
from metalearn.layout import WorkDir
from metalearn.learn.learners import build_learner, load_learner, uses_representation
from metalearn.learn.sampling import TaskSampler
from metalearn.learn.stage import LearnerConfig, train_learner
from metalearn.pipeline import PROFILES
from metalearn.represent.vectors import VECTORS_FILE, Vectors
from metalearn.threads import limited

REGRESSORS = ("fomaml", "metric", "meta_transfer", "transfer_huber", "fomaml_rep", "anil_rep", "metric_rep")
CLASSIFIERS = ("protonet", "protonet_rep")
BASELINES = ("mean", "median", "knn", "rf")


def newest(paths: list[Path]) -> Path:
    if not paths:
        raise SystemExit("no finished nightly in --workdir: run `metalearn run --workdir <dir>` first")
    return max(paths, key=lambda p: p.stat().st_mtime)


def find_inputs(work: WorkDir) -> tuple[Path, Path]:
    """The newest shards and representation vectors directories of a nightly's work directory."""
    shards = newest(work.all_shards())
    vectors = newest([p.parent for p in work.representations().rglob(VECTORS_FILE)])
    return shards, vectors


def scores_for(shards: Path, vectors: Vectors, learners: dict, task_type: str, cfg: EvalConfig) -> pd.DataFrame:
    need = max(cfg.n_support) + (cfg.n_query or 1)
    plain_sampler = TaskSampler(shards, 1, 1, 1, seed=cfg.seed, task_type=task_type)
    rep_sampler = TaskSampler(shards, 1, 1, 1, seed=cfg.seed, task_type=task_type, vectors=vectors)
    plain = {n: lrn for n, lrn in learners.items() if not uses_representation(n)}
    on_vectors = {n: lrn for n, lrn in learners.items() if uses_representation(n)}
    names = BASELINES if task_type == "regression" else ("mean", "knn", "rf")
    plain.update({b: build_learner(b, plain_sampler.n_features, task_type) for b in names})
    on_vectors.update({f"{b}_rep": build_learner(b, vectors.n_features, task_type) for b in ("rf",)})
    out = []
    for sampler, chosen in ((plain_sampler, plain), (rep_sampler, on_vectors)):
        tasks = sampler.tasks(S.META_VAL, need)  # the only split this script reads
        if tasks:
            out.append(evaluate(tasks, chosen, cfg, threads=1))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/full-q", help="a finished default nightly's work directory")
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()

    work = WorkDir.resolve(args.workdir)
    shards, vectors_dir = find_inputs(work)
    print(f"shards {shards}\nvectors {vectors_dir} ({io.read_manifest(vectors_dir).content_hash[:12]})")
    cfg_train = LearnerConfig.from_params({**PROFILES["default"]["train"], "device": "cpu"})
    checkpoints, train_s = {}, {}
    with limited(1):
        for name in REGRESSORS + CLASSIFIERS:
            t = time.perf_counter()
            result = train_learner(work, shards, name, cfg_train, vectors_dir=vectors_dir)
            checkpoints[name], train_s[name] = result["checkpoint"], time.perf_counter() - t
            print(f"trained {name} in {train_s[name]:.1f} s", flush=True)
    learners = {n: load_learner(p, trusted=True) for n, p in checkpoints.items()}
    vectors = Vectors.load(vectors_dir)
    base = PROFILES["default"]["evaluate"]
    cfg = EvalConfig(**{**base, "n_draws": args.draws, "baselines": BASELINES}, device="cpu")
    all_scores = []
    for task_type in ("regression", "classification"):
        chosen = {n: lrn for n, lrn in learners.items() if lrn.task_type == task_type}
        all_scores.append(scores_for(shards, vectors, chosen, task_type, cfg))
    scores = pd.concat(all_scores, ignore_index=True)
    summary = summarize(scores, baselines=BASELINES + ("rf_rep",))
    tab = per_task(scores)
    n_tasks = tab.groupby("metric")["task_id"].nunique().to_dict()
    print(f"\nmeta-val tasks: {n_tasks}; k in {cfg.n_support}; {cfg.n_draws} draws; {cfg.n_query} query rows\n")
    for metric in ("mae_mad", "roc_auc"):
        block = summary[summary["metric"] == metric]
        if block.empty:
            continue
        wide = block.pivot_table(index="learner", columns="k", values="median")
        rf_win = block.pivot_table(index="learner", columns="k", values="win_rate_vs_rf") if "win_rate_vs_rf" in block else None
        order = wide.mean(axis=1).sort_values(ascending=(metric == "mae_mad")).index
        ks = list(wide.columns)
        print(f"| {metric} median (meta-val) | " + " | ".join(f"k={k}" for k in ks)
              + (" | " + " | ".join(f"wins vs rf k={k}" for k in ks) if rf_win is not None else "") + " |")
        print("|---|" + "---:|" * (len(ks) * (2 if rf_win is not None else 1)))
        for learner in order:
            cells = [f"{wide.loc[learner, k]:.3f}" for k in ks]
            if rf_win is not None:
                cells += [f"{rf_win.loc[learner, k]:.0%}" if learner in rf_win.index and pd.notna(rf_win.loc[learner, k])
                          else "" for k in ks]
            print(f"| {learner} | " + " | ".join(cells) + " |")
        print()
    print("train seconds: " + ", ".join(f"{n} {s:.0f}" for n, s in train_s.items()))


if __name__ == "__main__":
    main()
