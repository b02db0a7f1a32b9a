"""Summaries of k-shot scores: bootstrap confidence intervals, paired comparisons, report files.

Input is the long score table from :func:`metalearn.evaluate.protocol.evaluate` (columns task_id, setting,
family, k, draw, learner, metric, value). The unit of analysis is the *task*: draws are averaged
per task first (NaN draws skipped), so a task with many draws does not count more, and
confidence intervals resample tasks.

Example:
    >>> summary = summarize(scores, baselines=("mean", "rf"))
    >>> cmp = paired_comparison(scores, "maml", "rf", metric="mae_mad", k=5)
    >>> cmp.win_rate, cmp.mean_improvement, (cmp.ci_low, cmp.ci_high)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metalearn.io import write_bytes_atomic

# Direction of every metric evaluate.py emits; an unknown metric is an error, not a guess.
HIGHER_IS_BETTER = {"mae": False, "mae_mad": False, "roc_auc": True, "delta_auprc": True}
PLOT_METRICS = ("mae_mad", "delta_auprc")  # unit-free, so tasks of different properties average
TASK_KEYS = ["setting", "task_id", "learner", "k", "metric"]


def _direction(metric: str) -> float:
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(HIGHER_IS_BETTER)}")
    return 1.0 if HIGHER_IS_BETTER[metric] else -1.0


def per_task(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean over draws per (setting, task_id, learner, k, metric); tasks with no finite draw dropped."""
    table = scores.groupby(TASK_KEYS, as_index=False)["value"].mean()
    return table[np.isfinite(table["value"])]


def bootstrap_ci(
    values: np.ndarray, stat: Callable = np.mean, n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` over ``values`` (n,) resampled with replacement."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = stat(values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))], axis=1)
    tail = (1 - ci) / 2 * 100
    return float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


@dataclass(frozen=True)
class PairedComparison:
    """Learner ``a`` vs ``b`` on the tasks both scored.

    ``differences``: a − b per task (metric's own sign, indexed by task_id). ``win_rate``: share of
    tasks where a is better (ties count half). ``mean_improvement``: mean of the differences signed
    so that positive means a is better, with its bootstrap CI over tasks.
    """

    a: str
    b: str
    metric: str
    k: int
    differences: pd.Series
    win_rate: float
    mean_improvement: float
    ci_low: float
    ci_high: float
    n_tasks: int


def paired_comparison(
    scores: pd.DataFrame,
    a: str,
    b: str,
    metric: str,
    k: int,
    setting: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> PairedComparison:
    """Per-task paired comparison of learners ``a`` and ``b`` at one k (all settings if setting is None)."""
    sign = _direction(metric)
    table = per_task(scores[(scores["metric"] == metric) & (scores["k"] == k)])
    if setting is not None:
        table = table[table["setting"] == setting]
    wide = table.pivot_table(index="task_id", columns="learner", values="value")
    for name in (a, b):
        if name not in wide.columns:
            raise ValueError(
                f"no {metric!r} scores at k={k} for learner {name!r}; have {sorted(wide.columns)}"
            )
    wide = wide[[a, b]].dropna()
    diff = (wide[a] - wide[b]).rename(f"{a}-{b}")
    improvement = sign * diff.to_numpy()
    lo, hi = bootstrap_ci(improvement, n_bootstrap=n_bootstrap, seed=seed)
    win_rate = _win_rate(wide[a].to_numpy(), wide[b].to_numpy(), sign)
    return PairedComparison(
        a=a,
        b=b,
        metric=metric,
        k=k,
        differences=diff,
        win_rate=win_rate,
        mean_improvement=float(np.mean(improvement)) if len(diff) else float("nan"),
        ci_low=lo,
        ci_high=hi,
        n_tasks=len(diff),
    )


def _win_rate(a: np.ndarray, b: np.ndarray, sign: float) -> float:
    """Share of tasks where ``a`` beats ``b`` (sign +1: higher is better), ties counted half.

    Near-equal scores are ties: at k=1 every regression learner predicts the support value, and
    float noise must not turn that into wins.
    """
    if len(a) == 0:
        return float("nan")
    tie = np.isclose(a, b, rtol=1e-6, atol=1e-12)
    return float(np.mean(np.where(tie, 0.5, sign * (a - b) > 0)))


def summarize(
    scores: pd.DataFrame,
    baselines: Sequence[str] = ("mean", "knn", "rf", "mlp", "pretrained_ridge"),
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (setting, learner, k, metric): task count, mean and median over tasks with bootstrap CIs,
    and ``win_rate_vs_<b>`` (paired per task) for each baseline b present in ``scores``."""
    table = per_task(scores)
    present = [b for b in baselines if b in set(table["learner"])]
    rows = []
    for (setting, k, metric), block in table.groupby(["setting", "k", "metric"]):
        sign = _direction(metric)
        wide = block.pivot_table(index="task_id", columns="learner", values="value")  # (tasks, learners)
        for learner in wide.columns:
            values = wide[learner].dropna().to_numpy()
            row = {
                "setting": setting,
                "learner": learner,
                "k": k,
                "metric": metric,
                "n_tasks": len(values),
                "mean": float(np.mean(values)),
                "median": float(np.median(values)),
            }
            row["mean_lo"], row["mean_hi"] = bootstrap_ci(values, np.mean, n_bootstrap, ci, seed)
            row["median_lo"], row["median_hi"] = bootstrap_ci(values, np.median, n_bootstrap, ci, seed)
            for b in present:
                pair = wide[[learner, b]].dropna() if b in wide.columns and b != learner else None
                row[f"win_rate_vs_{b}"] = (
                    float("nan")
                    if pair is None
                    else _win_rate(pair[learner].to_numpy(), pair[b].to_numpy(), sign)
                )
            rows.append(row)
    columns = [
        "setting",
        "learner",
        "k",
        "metric",
        "n_tasks",
        "mean",
        "mean_lo",
        "mean_hi",
        "median",
        "median_lo",
        "median_hi",
    ] + [f"win_rate_vs_{b}" for b in present]
    summary = pd.DataFrame(rows, columns=columns)
    return summary.sort_values(["setting", "metric", "learner", "k"], ignore_index=True)


def _markdown(summary: pd.DataFrame) -> str:
    """One table per (setting, metric); no tabulate dependency."""
    wins = [c for c in summary.columns if c.startswith("win_rate_vs_")]
    header = ["learner", "k", "tasks", "mean [95% CI]", "median [95% CI]"] + [
        f"win vs {c[12:]}" for c in wins
    ]
    lines = ["# k-shot evaluation", ""]
    for (setting, metric), group in summary.groupby(["setting", "metric"]):
        better = "higher" if HIGHER_IS_BETTER.get(metric, False) else "lower"
        lines += [
            f"## {setting}: {metric} ({better} is better)",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for r in group.sort_values(["k", "learner"]).itertuples(index=False):
            cells = [
                r.learner,
                str(r.k),
                str(r.n_tasks),
                f"{r.mean:.4g} [{r.mean_lo:.4g}, {r.mean_hi:.4g}]",
                f"{r.median:.4g} [{r.median_lo:.4g}, {r.median_hi:.4g}]",
            ]
            cells += ["" if np.isnan(getattr(r, c)) else f"{getattr(r, c):.2f}" for c in wins]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _kshot_png(summary: pd.DataFrame) -> bytes:
    """Mean over tasks vs k with the bootstrap CI band, one panel per (setting, unit-free metric)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no global pyplot state
    from matplotlib.figure import Figure

    panels = summary[summary["metric"].isin(PLOT_METRICS)]
    keys = sorted(set(zip(panels["setting"], panels["metric"]))) or [("no scores", "")]
    fig = Figure(figsize=(5 * len(keys), 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    for ax, (setting, metric) in zip(np.atleast_1d(fig.subplots(1, len(keys))), keys):
        group = panels[(panels["setting"] == setting) & (panels["metric"] == metric)]
        for learner, rows in group.groupby("learner"):
            rows = rows.sort_values("k")
            ax.plot(rows["k"], rows["mean"], marker="o", label=learner)
            ax.fill_between(rows["k"], rows["mean_lo"], rows["mean_hi"], alpha=0.2)
        ax.set(title=setting, xlabel="k (support size)", ylabel=metric)
        if len(group):
            ax.set_xscale("log")
            ax.set_xticks(sorted(group["k"].unique()), labels=[str(k) for k in sorted(group["k"].unique())])
            ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_report(
    scores: pd.DataFrame,
    out_dir: Path,
    baselines: Sequence[str] = ("mean", "knn", "rf", "mlp", "pretrained_ridge"),
    n_bootstrap: int = 1000,
    seed: int = 0,
    summary: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write scores.csv, summary.md and kshot.png (each atomically) under ``out_dir``; returns their paths.

    ``summary``: a :func:`summarize` result the caller already has (its bootstrap is the costly part).
    """
    out_dir = Path(out_dir)
    if summary is None:
        summary = summarize(scores, baselines=baselines, n_bootstrap=n_bootstrap, seed=seed)
    paths = {
        "scores": out_dir / "scores.csv",
        "summary": out_dir / "summary.md",
        "kshot": out_dir / "kshot.png",
    }
    write_bytes_atomic(paths["scores"], scores.to_csv(index=False).encode())
    write_bytes_atomic(paths["summary"], _markdown(summary).encode())
    write_bytes_atomic(paths["kshot"], _kshot_png(summary))
    return paths
