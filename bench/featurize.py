"""Formulas/s of metalearn's composition fast path against matminer's ``featurize_dataframe``.

Same feature set on both sides (Magpie ElementProperty, Stoichiometry, ValenceOrbital,
IonProperty(fast=True); 149 columns), same bundled formulas, one run. Conservative on purpose:

* the fast path starts from formula strings (pymatgen parsing included, its per-formula parse
  cache cleared before every repeat);
* matminer gets pre-built pymatgen ``Composition`` objects, so only ``featurize_dataframe`` is
  timed, once with ``n_jobs=1`` and once with matminer's default ``n_jobs`` (one process per CPU).

Also printed: the largest absolute difference between the fast path and each matminer run and
whether the NaN patterns agree.

Usage:
    .venv/bin/python bench/featurize.py --n 6000
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import pandas as pd

from metalearn.features import composition as ff
from metalearn.io import repo_data_dir


def bundled_formulas(n: int, seed: int) -> list[str]:
    """n distinct formulas drawn evenly from every bundled composition dataset."""
    files = sorted((repo_data_dir() / "composition").glob("*/*.csv.gz"))
    pool = pd.concat(
        [
            pd.read_csv(p, keep_default_na=False, usecols=["formula"])["formula"]
            .sample(frac=1.0, random_state=seed)
            .head(2 * n // len(files) + 1)
            for p in files
        ]
    ).drop_duplicates()
    return pool.sample(n, random_state=seed).tolist()


def time_fast(formulas: list[str], repeats: int) -> tuple[float, pd.DataFrame]:
    ff.featurize_compositions(["Fe2O3"])  # load the element tables once, as a long-lived worker would
    best, out = float("inf"), None
    for _ in range(repeats):
        ff.parse_formula.cache_clear()
        start = time.perf_counter()
        out, _errors = ff.featurize_compositions(formulas)
        best = min(best, time.perf_counter() - start)
    return best, out


def time_matminer(formulas: list[str], n_jobs: int | None) -> tuple[float, pd.DataFrame]:
    from matminer.featurizers.base import MultipleFeaturizer
    from pymatgen.core import Composition

    featurizer = MultipleFeaturizer(list(ff.matminer_featurizers()))
    if n_jobs is not None:
        featurizer.set_n_jobs(n_jobs)
    frame = pd.DataFrame({"composition": [Composition(f) for f in formulas]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = featurizer.featurize_dataframe(frame, "composition", pbar=False)
        elapsed = time.perf_counter() - start
    return elapsed, out[ff.composition_feature_names()].astype(float)


def compare(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, bool]:
    x, y = a.to_numpy(), b.to_numpy()
    same_nan = bool((np.isnan(x) == np.isnan(y)).all())
    return float(np.nanmax(np.abs(x - y))), same_nan


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=6000, help="number of distinct bundled formulas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="fast-path repeats (best is reported)")
    parser.add_argument("--skip-default-jobs", action="store_true", help="skip matminer's default n_jobs run")
    args = parser.parse_args()

    formulas = bundled_formulas(args.n, args.seed)
    parsed = [ff.parse_formula(f) for f in formulas]
    valid = [f for f, p in zip(formulas, parsed) if p.reason is None]  # matminer raises on the others
    n = len(valid)

    fast_s, fast = time_fast(valid, args.repeats)
    rows = [("metalearn fast path (NumPy)", fast_s, None)]
    one_s, one = time_matminer(valid, n_jobs=1)
    rows.append(("matminer featurize_dataframe n_jobs=1", one_s, compare(fast, one)))
    if not args.skip_default_jobs:
        default_s, default = time_matminer(valid, n_jobs=None)
        rows.append(
            (
                f"matminer featurize_dataframe n_jobs=default ({os.cpu_count()})",
                default_s,
                compare(fast, default),
            )
        )

    print(
        f"{n} distinct bundled formulas ({len(formulas) - n} unparseable skipped), "
        f"{len(fast.columns)} features, FEATURE_SET_VERSION={ff.FEATURE_SET_VERSION}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"| {'path':<48} | {'seconds':>8} | {'formulas/s':>10} | {'fast path speed-up':>18} | "
        f"{'max abs diff vs fast':>20} | {'NaN pattern equal':>17} |"
    )
    print(f"|{'-' * 50}|{'-' * 10}:|{'-' * 11}:|{'-' * 19}:|{'-' * 21}:|{'-' * 18}:|")
    for name, seconds, diff in rows:
        ratio = seconds / fast_s
        diff_s = "-" if diff is None else f"{diff[0]:.1e}"
        nan_s = "-" if diff is None else str(diff[1])
        print(
            f"| {name:<48} | {seconds:>8.3f} | {n / seconds:>10,.0f} | {ratio:>17.1f}x | {diff_s:>20} | {nan_s:>17} |"
        )


if __name__ == "__main__":
    main()
