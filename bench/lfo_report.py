"""Markdown report of the leave-family-out benchmark (scores -> tables, CIs, paired win rates, targets).

Aggregation: per task (dataset) the mean MAE/MAD over draws; per family the mean over its tasks.
Headline: the median over families (bootstrap 95% CI), also the median over tasks. Paired win
rates compare two learners on the same (dataset, k, draw).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TARGETS = {5: 0.85, 10: 0.70, 20: 0.62}  # median MAE/MAD over families, issue #9


def _ci(values: np.ndarray, stat=np.median, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    boot = stat(values[rng.integers(0, len(values), size=(n, len(values)))], axis=1)
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def tables(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    per_task = scores.groupby(["family", "dataset_id", "k", "learner"], as_index=False)["mae_mad"].mean()
    per_family = per_task.groupby(["family", "k", "learner"], as_index=False)["mae_mad"].mean()
    return per_task, per_family


def win_rate(scores: pd.DataFrame, a: str, b: str, k: int) -> float:
    block = scores[scores["k"] == k].pivot_table(index=["dataset_id", "draw"], columns="learner", values="mae_mad")
    if a == b or a not in block or b not in block:
        return float("nan")
    pair = block[[a, b]].dropna()
    return float((pair[a] < pair[b]).mean())


def markdown_report(scores: pd.DataFrame, primary: str, protocol: str, seconds: float, argv) -> str:
    per_task, per_family = tables(scores)
    learners = list(dict.fromkeys(scores["learner"]))
    out = [f"## Leave-family-out k-shot, protocol `{protocol}` (MAE/MAD, lower is better)", "",
           (f"command: `.venv/bin/python bench/leave_family_out.py {' '.join(argv)}`; "
           f"{scores['dataset_id'].nunique()} tasks in {scores['family'].nunique()} families, "
           f"{scores['draw'].nunique()} draws, wall {seconds / 60:.1f} min"), ""]
    for k in sorted(scores["k"].unique()):
        wide = per_family[per_family["k"] == k].pivot(index="family", columns="learner", values="mae_mad")[learners]
        n_tasks = per_task[per_task["k"] == k].groupby("family")["dataset_id"].nunique()
        out += [f"### k = {k}: per family (mean over its tasks of the mean over draws)", "",
                "| family | tasks | " + " | ".join(learners) + " |", "|---|---:|" + "---:|" * len(learners)]
        for fam, row in wide.iterrows():
            best = row.min()
            cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in row]
            out.append(f"| {fam} | {n_tasks[fam]} | " + " | ".join(cells) + " |")
        out += ["", (f"| learner (k={k}) | median over families [95% CI] | median over tasks [95% CI] | "
                "win vs rf | win vs median |"), "|---|---|---|---:|---:|"]
        task_wide = per_task[per_task["k"] == k].pivot(index="dataset_id", columns="learner", values="mae_mad")
        for name in learners:
            fam_vals, task_vals = wide[name].dropna().to_numpy(), task_wide[name].dropna().to_numpy()
            lo, hi = _ci(fam_vals)
            tlo, thi = _ci(task_vals)
            out.append(f"| {name} | {np.median(fam_vals):.3f} [{lo:.3f}, {hi:.3f}] | "
                       f"{np.median(task_vals):.3f} [{tlo:.3f}, {thi:.3f}] | "
                       f"{win_rate(scores, name, 'rf', k):.2f} | {win_rate(scores, name, 'median', k):.2f} |")
        out.append("")
    out += _targets(per_family, primary)
    return "\n".join(out)


def _targets(per_family: pd.DataFrame, primary: str) -> list[str]:
    lines = [f"### Targets for `{primary}` (issue #9)", ""]
    wide = {k: per_family[per_family["k"] == k].pivot(index="family", columns="learner", values="mae_mad")
            for k in per_family["k"].unique()}
    for k, bound in TARGETS.items():
        if k in wide and primary in wide[k]:
            med = wide[k][primary].median()
            lines.append(f"- k={k}: median {med:.3f} (target <= {bound}): {'met' if med <= bound else 'NOT met'}")
    if 10 in wide and {primary, "rf"} <= set(wide[10].columns):
        w = wide[10]
        gain = 1 - w[primary] / w["rf"]
        lines.append(f"- k=10: beats RF by >= 20% on {int((gain >= 0.2).sum())}/{len(w)} families "
                     f"({(gain >= 0.2).mean():.0%}; target >= 50%); worse than RF by > 10% on "
                     f"{int((gain < -0.1).sum())} ({', '.join(w.index[gain < -0.1]) or 'none'}; target none)")
        if "median" in w:
            ok = w[primary].median() <= w["median"].median()
            lines.append(f"- k=10: median {w[primary].median():.3f} vs support median {w['median'].median():.3f}: "
                         f"{'met' if ok else 'NOT met'}")
    return lines
