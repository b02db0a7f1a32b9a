"""Check the k-shot targets of issue 4 on an evaluation's scores.csv (meta-test, reported once).

Usage: .venv/bin/python bench/kshot_targets.py <scores.csv> [--k 10]
Targets (unseen property families, k=10): median MAE/MAD <= 0.6; the best learner beats
random-forest-at-the-same-k by >= 20% MAE on >= 75% of tasks; never worse than the support mean
on the median.
"""

from __future__ import annotations

import argparse

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scores")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    scores = pd.read_csv(args.scores)
    scores = scores[scores["k"] == args.k]
    for setting, part in scores.groupby("setting"):
        per_task = part.groupby(["metric", "task_id", "learner"])["value"].mean().unstack("learner")
        print(f"\n## {setting}, k={args.k}\n")
        for metric in per_task.index.get_level_values("metric").unique():
            table = per_task.loc[metric]
            medians = table.dropna(axis=1, how="all").median().sort_values()
            print(f"{metric}: median over {len(table)} tasks: " + ", ".join(f"{k}={v:.3f}" for k, v in medians.items()))
        if "mae" not in per_task.index.get_level_values("metric"):
            continue
        mae = per_task.loc["mae"]
        mae_mad = per_task.loc["mae_mad"]
        for learner in [c for c in mae.columns if c not in ("rf", "mean") and mae[c].notna().any()]:
            gain = 1 - mae[learner] / mae["rf"]
            print(f"  {learner}: beats rf by >= 20% MAE on {(gain >= 0.2).mean():.0%} of tasks "
                  f"(median gain {gain.median():+.1%}); median MAE/MAD {mae_mad[learner].median():.3f} "
                  f"vs support mean {mae_mad['mean'].median():.3f}")


if __name__ == "__main__":
    main()
