"""The evaluate stage's k-shot protocol: the per-episode loop as it was vs the new path (cold / warm cache).

What is timed, once with the machine as it is ("quiet": no competing process started by this
script) and once with one busy-looping process per core ("busy"), on real default-profile-sized
shards (bundled data, ``max_rows_per_dataset=3000``, the default ShardConfig) and the default
profile's learners (fomaml, metric, protonet, pretrained_ridge, meta-trained with the default
profile's train settings) plus the stage's baselines (mean, knn, rf, mlp; mean, knn, rf for
classification), on both meta-test settings, with the default profile's EvalConfig:

* old: the plain loop, one adapt + predict per (task, draw, k, learner)
  (``tests/evaluate/reference.py``, the protocol as the stage ran it before);
* new, cold cache: :func:`metalearn.evaluate.protocol.evaluate` with an empty baseline score cache
  (the first night, or a night where every meta-test task changed);
* new, warm cache: the same call again (a night whose meta-test tasks did not change: only the
  meta-trained learners adapt).

Every new-path score table is checked equal (rows, order, values) to the old one. Threads: 1 for
torch, BLAS and OpenMP (``limited(1)``, and the env vars below before numpy loads). Wall and CPU
seconds are both printed: this machine is shared, so wall time also measures whoever else ran;
the process's CPU time does not, and its ratio is the one to read. The share of a quiet nightly
puts the quiet wall time next to what issue #10 measured for every other stage of the default
nightly on quiet 2 cores (667 s - 372 s of evaluate = 295 s).

Usage:
    .venv/bin/python bench/evaluate.py                           # default-profile-sized (~25 min)
    .venv/bin/python bench/evaluate.py --rows 400 --draws 2      # a quick look
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "METALEARN_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import importlib.util
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
from competing_load import competing

from metalearn import schema as S
from metalearn.evaluate.protocol import EvalConfig, evaluate
from metalearn.evaluate.stage import CLASSIFICATION_BASELINES, REGRESSION_BASELINES
from metalearn.features.plan import FeaturizeConfig
from metalearn.features.stage import build_features
from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.layout import WorkDir
from metalearn.learn.learners import build_learner, load_learner
from metalearn.learn.sampling import TaskSampler
from metalearn.learn.stage import LearnerConfig, train_learner
from metalearn.pipeline import PROFILES
from metalearn.shards.define import ShardConfig
from metalearn.shards.stage import build_shards
from metalearn.threads import limited

REPO = Path(__file__).resolve().parent.parent
LEARNERS = ("fomaml", "metric", "protonet", "pretrained_ridge")
NIGHTLY_S, EVALUATE_S = 667.0, 372.0  # issue #10: default-profile nightly on quiet 2 cores, and its evaluate stage


def _reference():
    spec = importlib.util.spec_from_file_location("eval_reference", REPO / "tests" / "evaluate" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_evaluate


def prepare(root: Path, rows: int) -> tuple[Path, dict[str, str]]:
    """Default-profile-sized shards and meta-trained learners under ``root`` (reused on a rerun)."""
    work = WorkDir.resolve(root)
    profile = PROFILES["default"]
    snapshot = ingest(work, IngestConfig(max_rows_per_dataset=rows)).path
    features = build_features(snapshot, work, FeaturizeConfig(**profile["featurize"]))
    shards = build_shards(snapshot, features, work, ShardConfig(**profile["shards"])).path
    cfg = LearnerConfig.from_params({**profile["train"], "device": "cpu"})
    return shards, {name: train_learner(work, shards, name, cfg)["checkpoint"] for name in LEARNERS}


def workload(shards: Path, checkpoints: dict[str, str], cfg: EvalConfig) -> list[tuple[list, dict]]:
    """(tasks, learners) per task type, chosen as the evaluate stage chooses them."""
    trained = {name: load_learner(path, trusted=True) for name, path in checkpoints.items()}
    out = []
    for task_type, baselines in (("regression", REGRESSION_BASELINES), ("classification", CLASSIFICATION_BASELINES)):
        sampler = TaskSampler(shards, 1, 1, 1, seed=cfg.seed, task_type=task_type)
        need = max(cfg.n_support) + (cfg.n_query or 1)
        tasks = [t for split in S.META_TEST_SPLITS for t in sampler.tasks(split, need)]
        learners = {n: lrn for n, lrn in trained.items() if lrn.task_type == task_type}
        for name in (b for b in baselines if b in cfg.baselines):
            learners[name] = build_learner(name, sampler.n_features, task_type)
        if tasks and learners:
            out.append((tasks, learners))
    return out


def timed(run, work: list[tuple[list, dict]]) -> tuple[dict[str, float], pd.DataFrame]:
    """Wall and CPU seconds of ``run(tasks, learners)`` over every task type, the load average around
    it (other users of the machine show up there), and the concatenated scores."""
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    with limited(1):
        scores = pd.concat([run(tasks, learners) for tasks, learners in work], ignore_index=True)
    times = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
             "load": (load + os.getloadavg()[0]) / 2}
    return times, scores


def measure(cfg: EvalConfig, work: list[tuple[list, dict]]) -> dict[str, dict[str, float]]:
    reference = _reference()
    old, expected = timed(lambda tasks, learners: reference(tasks, learners, cfg), work)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-cache-") as cache:
        def new(tasks, learners):
            return evaluate(tasks, learners, cfg, cache_dir=cache, threads=1)

        cold, first = timed(new, work)
        warm, second = timed(new, work)
    for got in (first, second):
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    return {"old": old, "cold": cold, "warm": warm, "rows": len(expected)}


def _percent(x: float) -> str:
    return "" if math.isnan(x) else f"{100 * x:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "metalearn-bench-evaluate"),
                        help="where the snapshot, features, shards and learners are built (reused)")
    parser.add_argument("--rows", type=int, default=PROFILES["default"]["ingest"]["max_rows_per_dataset"],
                        help="bundled records per dataset (the default profile's)")
    parser.add_argument("--draws", type=int, default=None, help="EvalConfig.n_draws (default: the default profile's)")
    parser.add_argument("--conditions", default="quiet,busy", help="quiet and/or busy (one spinner per core)")
    args = parser.parse_args()

    shards, checkpoints = prepare(Path(args.workdir), args.rows)
    cfg = EvalConfig(**PROFILES["default"]["evaluate"], device="cpu")
    cfg = cfg if args.draws is None else replace(cfg, n_draws=args.draws)
    work = workload(shards, checkpoints, cfg)
    results = {}
    for condition in args.conditions.split(","):
        with competing(os.cpu_count() if condition == "busy" else 0):
            results[condition] = measure(cfg, work)

    n_tasks = sum(len(tasks) for tasks, _ in work)
    episodes = n_tasks * len(cfg.n_support) * cfg.n_draws
    names = sorted({name for _, learners in work for name in learners})
    print(f"shards {shards.name}: {n_tasks} meta-test tasks x k in {cfg.n_support} x {cfg.n_draws} draws = "
          f"{episodes:,} episodes; learners {', '.join(names)}; {os.cpu_count()} CPUs, 1 thread; "
          f"{next(iter(results.values()))['rows']:,} score rows, new == old exactly (rows, order, values)")
    print()
    print("| condition | path | load | wall s | wall vs old | CPU s | CPU vs old | evaluate share of a quiet nightly |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    other = NIGHTLY_S - EVALUATE_S
    paths = {"old": "old: per-episode loop", "cold": "new, cold cache", "warm": "new, warm cache"}
    for condition, r in results.items():
        for path, label in paths.items():
            t, base = r[path], r["old"]
            share = t["wall"] if condition == "quiet" else float("nan")  # beside the other stages' quiet 295 s
            print(f"| {condition} | {label} | {t['load']:.1f} | {t['wall']:.1f} | {base['wall'] / t['wall']:.2f}x "
                  f"| {t['cpu']:.1f} | **{base['cpu'] / t['cpu']:.2f}x** | {_percent(share / (other + share))} |")

if __name__ == "__main__":
    main()
