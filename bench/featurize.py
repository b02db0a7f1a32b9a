"""The whole features stage (``build_features``) against matminer's ``featurize_dataframe``.

What is timed, in one run, once with the machine as it is ("quiet": no competing process started
by this script) and once with one busy-looping process per core ("busy"):

* the stage, cold: ``build_features`` on a real bundled snapshot of N records into an empty work
  directory (reading the snapshot, material keys, cache lookup, featurizing every distinct
  material, cache shards, features.parquet / errors / record keys, digests, manifest), with
  ``structure_features=False`` (the default);
* its no-op rerun (the nightly path: the output is verified against its manifest's digests);
* the composition fast path alone on the same distinct formulas (context);
* matminer ``featurize_dataframe`` (``n_jobs=1``, the fastest setting on this machine) on a
  seeded sample of the same distinct formulas, timed before and after every stage run, then
  extrapolated linearly (matminer's cost is per row) to the snapshot's D distinct materials and
  to its N records. Each side's best run counts (the least disturbed by other processes). Conservative: matminer gets pre-built pymatgen Compositions
  (parsing is not timed on its side) and only the valid formulas.

The ratio that counts is "vs D": a matminer user who deduplicates formulas first. "vs N" is what
``featurize_dataframe`` on the records table itself would cost. Threads: 1 everywhere (BLAS,
OpenMP and Arrow reads); matminer runs in this process.

Usage:
    .venv/bin/python bench/featurize.py                        # every bundled record (~1.4M)
    .venv/bin/python bench/featurize.py --max-rows-per-dataset 3000 --sample 1000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from competing_load import competing

from metalearn.chemistry import parse_composition
from metalearn.features import composition as ff
from metalearn.features.plan import FeaturizeConfig
from metalearn.features.stage import build_features
from metalearn.ingest.snapshot import RECORDS
from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.io import read_manifest
from metalearn.layout import WorkDir
from metalearn.schema import FEATURES_FILE, FORMULA


def distinct_formulas(snapshot: Path) -> list[str]:
    formulas = pq.read_table(snapshot / f"{RECORDS}.parquet", columns=[FORMULA]).column(0)
    return pd.unique(formulas.to_numpy()).tolist()


def time_matminer(formulas: list[str]) -> tuple[float, pd.DataFrame]:
    from matminer.featurizers.base import MultipleFeaturizer
    from pymatgen.core import Composition

    featurizer = MultipleFeaturizer(list(ff.matminer_featurizers()))
    featurizer.set_n_jobs(1)
    frame = pd.DataFrame({"composition": [Composition(f) for f in formulas]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = featurizer.featurize_dataframe(frame, "composition", pbar=False)
        elapsed = time.perf_counter() - start
    return elapsed, out[ff.composition_feature_names()].astype(float)


def time_stage(snapshot: Path, chunk_size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-features-") as root:
        work = WorkDir.resolve(root)
        cfg = FeaturizeConfig(chunk_size=chunk_size)
        start = time.perf_counter()
        out = build_features(snapshot, work, cfg)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        build_features(snapshot, work, cfg)
        rerun = time.perf_counter() - start
        manifest = read_manifest(out)
        size = sum(p.stat().st_size for p in out.iterdir())
        return {"cold": cold, "rerun": rerun, "materials": manifest.counts["n_materials"],
                "records": manifest.counts["n_records"], "hash": manifest.content_hash,
                "output_mb": size / 1e6, "features_mb": (out / FEATURES_FILE).stat().st_size / 1e6}


def time_fast_path(formulas: list[str]) -> float:
    parse_composition.cache_clear()
    start = time.perf_counter()
    ff.featurize_compositions(formulas)
    return time.perf_counter() - start


def measure(snapshot: Path, formulas: list[str], sample: list[str], chunk_size: int, repeats: int) -> dict:
    """Interleaved: matminer, stage, fast path, ..., matminer; each side's best (least disturbed) run."""
    matminer, stages, fast = [time_matminer(sample)], [], []
    for _ in range(repeats):
        stages.append(time_stage(snapshot, chunk_size))
        fast.append(time_fast_path(formulas))
        matminer.append(time_matminer(sample))
    reference = matminer[0][1]
    fast_sample, _ = ff.featurize_compositions(sample)
    diff = float(np.nanmax(np.abs(fast_sample.to_numpy() - reference.to_numpy())))
    same_nan = bool((np.isnan(fast_sample.to_numpy()) == np.isnan(reference.to_numpy())).all())
    per_row = min(t for t, _ in matminer) / len(sample)
    best = min(stages, key=lambda r: r["cold"])
    return {**best, "rerun": min(r["rerun"] for r in stages), "fast": min(fast), "matminer_rate": 1 / per_row,
            "matminer_spread": max(t for t, _ in matminer) / min(t for t, _ in matminer) - 1,
            "stage_spread": max(r["cold"] for r in stages) / best["cold"] - 1,
            "matminer_d": per_row * best["materials"], "matminer_n": per_row * best["records"],
            "diff": diff, "same_nan": same_nan, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-rows-per-dataset", type=int, default=None,
                        help="bundled records per dataset in the snapshot (default: all, ~1.4M records)")
    parser.add_argument("--sample", type=int, default=2000, help="distinct formulas matminer featurizes (x2)")
    parser.add_argument("--chunk-size", type=int, default=FeaturizeConfig().chunk_size)
    parser.add_argument("--conditions", default="quiet,busy", help="quiet and/or busy (one spinner per core)")
    parser.add_argument("--snapshot-workdir", default=str(Path(tempfile.gettempdir()) / "metalearn-bench"),
                        help="where the bundled snapshot is ingested (reused while the bundle is unchanged)")
    parser.add_argument("--repeats", type=int, default=2, help="stage runs per condition (the best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    snapshot = ingest(WorkDir.resolve(args.snapshot_workdir), IngestConfig(max_rows_per_dataset=args.max_rows_per_dataset)).path
    formulas = distinct_formulas(snapshot)
    valid = [f for f in formulas if parse_composition(f).reason is None]  # matminer raises on the others
    rng = np.random.default_rng(args.seed)
    sample = [valid[i] for i in rng.choice(len(valid), size=min(args.sample, len(valid)), replace=False)]
    ff.featurize_compositions(["Fe2O3"])  # element tables and featurizers loaded once, as in a worker

    results = {}
    for condition in args.conditions.split(","):
        n_busy = os.cpu_count() if condition == "busy" else 0
        with competing(n_busy):
            results[condition] = measure(snapshot, formulas, sample, args.chunk_size, args.repeats)

    first = next(iter(results.values()))
    print(f"snapshot {snapshot.name}: N = {first['records']:,} records, D = {first['materials']:,} distinct "
          f"materials; matminer sample {len(sample):,} formulas (x2); {os.cpu_count()} CPUs; "
          f"FEATURE_SET_VERSION={ff.FEATURE_SET_VERSION}; features content hash {first['hash'][:16]}")
    print(f"fast path vs matminer on the sample: max abs diff {first['diff']:.1e}, NaN pattern equal {first['same_nan']}")
    print()
    header = ("| condition | load (1 min) | stage cold s | materials/s | fast path only s | matminer materials/s "
              "| matminer on D s (extrapolated) | **ratio vs D** | ratio vs N | no-op rerun s | output MB |")
    print(header)
    print("|" + "|".join("---:" if i else "---" for i in range(header.count("|") - 1)) + "|")
    for condition, r in results.items():
        print(f"| {condition} | {r['load']:.1f} | {r['cold']:.1f} (+{100 * r['stage_spread']:.0f}%) "
              f"| {r['materials'] / r['cold']:,.0f} | {r['fast']:.1f} "
              f"| {r['matminer_rate']:,.0f} (+{100 * r['matminer_spread']:.0f}%) | {r['matminer_d']:,.0f} "
              f"| **{r['matminer_d'] / r['cold']:.0f}x** | {r['matminer_n'] / r['cold']:.0f}x "
              f"| {r['rerun']:.2f} | {r['output_mb']:.0f} |")
    print("\nBest of each side's runs; (+x%) is how much slower the worst run was (the machine's noise).")

if __name__ == "__main__":
    main()
