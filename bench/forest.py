"""The RF baseline per evaluation episode: scikit-learn's ``RandomForestRegressor`` vs ``fit_forest``.

What a user (and this project's evaluate stage, before) would run for a random forest on a few-shot
support set is ``RandomForestRegressor(n_estimators=50, max_features=1.0, random_state=seed,
n_jobs=1).fit(support).predict(query)``; :func:`metalearn.learn.learners.forest.fit_forest` builds
the same trees with scikit-learn's own Cython builder and skips the per-tree Python around it.
Timed here on real rows (default-profile-sized shards of the bundled data, the 149 standardised
composition features the evaluate stage feeds the baseline), per episode = one fit on k support
rows and one predict on 100 query rows, k in 5/10/20, episodes drawn as the protocol draws them
(one task, one random support and query per draw), both paths interleaved on the same episodes,
once with the machine as it is ("quiet") and once with one busy-looping process per core
("busy"). Threads: 1 everywhere (the env vars below, ``limited(1)``, ``n_jobs=1``). Every
episode's predictions are checked bit-identical between the two paths before a time is printed.

Usage:
    .venv/bin/python bench/forest.py                          # 40 episodes per k (~2 min)
    .venv/bin/python bench/forest.py --episodes 10 --conditions quiet
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "METALEARN_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from competing_load import competing

from metalearn import schema as S
from metalearn.features.plan import FeaturizeConfig
from metalearn.features.stage import build_features
from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.layout import WorkDir
from metalearn.learn.learners.forest import fit_forest
from metalearn.learn.sampling import TaskSampler
from metalearn.pipeline import PROFILES
from metalearn.shards.define import ShardConfig
from metalearn.shards.stage import build_shards
from metalearn.threads import limited

N_QUERY, N_TREES = 100, 50


def prepare(root: Path, rows: int) -> Path:
    """Default-profile shards of ``rows`` bundled records per dataset under ``root`` (reused on a rerun)."""
    work = WorkDir.resolve(root)
    profile = PROFILES["default"]
    snapshot = ingest(work, IngestConfig(max_rows_per_dataset=rows)).path
    features = build_features(snapshot, work, FeaturizeConfig(**profile["featurize"]))
    return build_shards(snapshot, features, work, ShardConfig(**profile["shards"])).path


def episodes(shards: Path, k: int, n: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """``n`` (x_support, y_support, x_query) draws over the regression tasks with k + 100 rows."""
    sampler = TaskSampler(shards, 1, 1, 1, seed=seed, task_type="regression")
    tasks = [t for split in S.SPLITS for t in sampler.tasks(split, k + N_QUERY)]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        rows = rng.permutation(len(task.y))
        s, q = rows[:k], rows[k:k + N_QUERY]
        out.append((task.x[s], task.y[s], task.x[q]))
    return out


def sklearn_path(xs, ys, xq, seed):
    from sklearn.ensemble import RandomForestRegressor

    model = RandomForestRegressor(n_estimators=N_TREES, max_features=1.0, random_state=seed, n_jobs=1)
    return model.fit(xs, ys).predict(xq)


def fast_path(xs, ys, xq, seed):
    return fit_forest(xs, ys, N_TREES, seed).predict(xq)


def measure(draws: list[tuple[np.ndarray, ...]]) -> dict[str, float]:
    """Seconds per episode of each path (interleaved), CPU and wall, with the load around it."""
    totals = {("sklearn", "wall"): 0.0, ("sklearn", "cpu"): 0.0, ("fast", "wall"): 0.0, ("fast", "cpu"): 0.0}
    load = os.getloadavg()[0]
    with limited(1):
        for seed, (xs, ys, xq) in enumerate(draws):
            got = {}
            for name, path in (("sklearn", sklearn_path), ("fast", fast_path)):
                wall, cpu = time.perf_counter(), time.process_time()
                got[name] = path(xs, ys, xq, seed)
                totals[name, "wall"] += time.perf_counter() - wall
                totals[name, "cpu"] += time.process_time() - cpu
            if not np.array_equal(got["sklearn"], got["fast"]):
                raise AssertionError(f"episode {seed}: fit_forest predictions differ from RandomForestRegressor")
    out = {f"{name}_{kind}": 1000 * t / len(draws) for (name, kind), t in totals.items()}
    out["load"] = (load + os.getloadavg()[0]) / 2
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "metalearn-bench-forest"),
                        help="where the snapshot, features and shards are built (reused)")
    parser.add_argument("--rows", type=int, default=3000, help="bundled records per dataset")
    parser.add_argument("--episodes", type=int, default=40, help="episodes per k")
    parser.add_argument("--conditions", default="quiet,busy", help="quiet and/or busy (one spinner per core)")
    args = parser.parse_args()

    shards = prepare(Path(args.workdir), args.rows)
    draws = {k: episodes(shards, k, args.episodes, seed=k) for k in (5, 10, 20)}
    print(f"shards {shards.name}; {args.episodes} episodes per k, {N_TREES} trees, {N_QUERY} query rows, "
          f"{draws[5][0][0].shape[1]} features; {os.cpu_count()} CPUs, 1 thread; predictions bit-identical")
    print()
    print("| condition | k | load | sklearn ms/episode (wall / CPU) | fit_forest ms/episode (wall / CPU) | speed-up (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    for condition in args.conditions.split(","):
        with competing(os.cpu_count() if condition == "busy" else 0):
            for k, ds in draws.items():
                r = measure(ds)
                print(f"| {condition} | {k} | {r['load']:.1f} | {r['sklearn_wall']:.1f} / {r['sklearn_cpu']:.1f} "
                      f"| {r['fast_wall']:.1f} / {r['fast_cpu']:.1f} | **{r['sklearn_cpu'] / r['fast_cpu']:.1f}x** |",
                      flush=True)


if __name__ == "__main__":
    main()
