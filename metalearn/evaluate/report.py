"""Summaries of k-shot scores: bootstrap confidence intervals, paired comparisons, report files.

Input is the long score table from :func:`metalearn.evaluate.protocol.evaluate` (columns task_id, setting,
family, k, draw, learner, metric, value). The unit of analysis is the *task*: draws are averaged
per task first (NaN draws skipped), so a task with many draws does not count more, and
confidence intervals resample tasks.

Only unit-free metrics (:data:`UNIT_FREE`: MAE/MAD, ROC-AUC, ΔAUPRC) are aggregated over tasks:
raw MAE is in each property's own unit (eV next to GPa), so it appears per task only
(``per_task.csv``) and, as a per-task ratio to the random forest's MAE, in the shares of tasks a
learner beats ``rf`` by >= 20% or loses to it by > 10% (the columns ``beats_rf_20pct`` and
``worse_than_rf_10pct`` of the regression rows).

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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from metalearn.io import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Direction of every metric evaluate.py emits; an unknown metric is an error, not a guess.
HIGHER_IS_BETTER = {"mae": False, "mae_mad": False, "roc_auc": True, "delta_auprc": True}
UNIT_FREE = ("mae_mad", "roc_auc", "delta_auprc")  # the metrics summaries average over tasks
PLOT_METRIC = "mae_mad"
RF = "rf"  # the reference of the "beats random forest by >= 20%" reading
BEAT_RATIO, WORSE_RATIO = 0.8, 1.1  # MAE / MAE(rf) at most 0.8: beats by >= 20%; above 1.1: worse by > 10%
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
    """Per (setting, learner, k, unit-free metric): task count, mean and median over tasks with
    bootstrap CIs, ``win_rate_vs_<b>`` (paired per task) for each baseline b present in ``scores``,
    and on regression rows (metric ``mae_mad``), when ``rf`` was scored, ``beats_rf_20pct`` /
    ``worse_than_rf_10pct``: the share of tasks whose mean MAE is <= 0.8x / > 1.1x rf's."""
    table = per_task(scores)
    present = [b for b in baselines if b in set(table["learner"])]
    versus_rf = _versus_rf(table)
    rows = []
    for (setting, k, metric), block in table[table["metric"].isin(UNIT_FREE)].groupby(["setting", "k", "metric"]):
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
            if versus_rf is not None:
                shares = versus_rf.get((setting, k, learner)) if metric == "mae_mad" else None
                row["beats_rf_20pct"], row["worse_than_rf_10pct"] = shares or (float("nan"), float("nan"))
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
    if versus_rf is not None:
        columns += ["beats_rf_20pct", "worse_than_rf_10pct"]
    summary = pd.DataFrame(rows, columns=columns)
    return summary.sort_values(["setting", "metric", "learner", "k"], ignore_index=True)


def _versus_rf(table: pd.DataFrame) -> dict[tuple[str, int, str], tuple[float, float]] | None:
    """(setting, k, learner) -> (share of tasks with MAE <= 0.8 x rf's, share with MAE > 1.1 x rf's).

    Per task, MAE / MAE(rf) is unit-free, so tasks of different properties may be counted together.
    Tasks where either MAE is missing or rf's is 0 are left out. None when rf has no MAE scores.
    """
    mae = table[table["metric"] == "mae"]
    if RF not in set(mae["learner"]):
        return None
    out = {}
    for (setting, k), block in mae.groupby(["setting", "k"]):
        wide = block.pivot_table(index="task_id", columns="learner", values="value")
        if RF not in wide.columns:
            continue
        for learner in wide.columns.drop(RF):
            pair = wide[[learner, RF]].dropna()
            pair = pair[pair[RF] > 0]
            ratio = (pair[learner] / pair[RF]).to_numpy()
            out[(setting, k, learner)] = (
                (float(np.mean(ratio <= BEAT_RATIO)), float(np.mean(ratio > WORSE_RATIO))) if len(ratio)
                else (float("nan"), float("nan"))
            )
    return out


def _share(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.0%}"


def _markdown(summary: pd.DataFrame) -> str:
    """One heading, then one table per (setting, metric); no tabulate dependency."""
    wins = [c for c in summary.columns if c.startswith("win_rate_vs_")]
    versus_rf = "beats_rf_20pct" in summary.columns
    lines = [
        "# k-shot evaluation",
        "",
        "Mean and median over tasks (draws averaged per task first), with 95% bootstrap CIs over tasks. "
        "`win vs b`: share of tasks where the learner beats baseline b on the same draws (ties count half). "
        "Raw MAE is in each property's own unit, so it is not averaged over tasks here (see `per_task.csv`)"
        + (
            "; `beats rf by >= 20%` / `worse than rf by > 10%`: share of tasks whose MAE is at most 0.8x / "
            "more than 1.1x the random forest's at the same k."
            if versus_rf else "."
        ),
        "",
    ]
    for (setting, metric), group in summary.groupby(["setting", "metric"]):
        better = "higher" if HIGHER_IS_BETTER.get(metric, False) else "lower"
        rf_columns = versus_rf and metric == "mae_mad"
        header = ["learner", "k", "tasks", "mean [95% CI]", "median [95% CI]"] + [f"win vs {c[12:]}" for c in wins]
        header += ["beats rf by >= 20%", "worse than rf by > 10%"] if rf_columns else []
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
            if rf_columns:
                cells += [_share(r.beats_rf_20pct), _share(r.worse_than_rf_10pct)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _plotted(group: pd.DataFrame, baselines: Sequence[str]) -> list[tuple[str, str]]:
    """(learner, label) of one panel: every learner that is not a baseline, then the best baseline.

    The best baseline has the lowest median MAE/MAD averaged over the panel's k values. With no
    learner but baselines, every baseline is drawn.
    """
    names = sorted(group["learner"].unique())
    learners = [n for n in names if n not in baselines]
    present = [n for n in names if n in baselines]
    if not learners:
        return [(n, n) for n in present]
    if not present:
        return [(n, n) for n in learners]
    best = min(present, key=lambda n: (group.loc[group["learner"] == n, "median"].mean(), n))
    return [(n, n) for n in learners] + [(best, f"{best} (best baseline)")]


def kshot_figure(summary: pd.DataFrame, baselines: Sequence[str] = ()) -> Figure:
    """Median MAE/MAD over tasks per k with its bootstrap CI as error bars; one panel per setting.

    The x axis is categorical: exactly the evaluated k values, evenly spaced. Each learner's points
    sit at a small horizontal offset of their own so the error bars do not hide each other.
    """
    # deferred: matplotlib costs ~0.5 s to import, and gate.py (every CLI call) imports this module
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no global pyplot state
    from matplotlib.figure import Figure

    panels = summary[summary["metric"] == PLOT_METRIC]
    settings = sorted(panels["setting"].unique()) or ["no regression scores"]
    fig = Figure(figsize=(5.5 * len(settings), 4.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    for ax, setting in zip(np.atleast_1d(fig.subplots(1, len(settings))), settings):
        group = panels[panels["setting"] == setting]
        ks = sorted(int(k) for k in group["k"].unique())
        series = _plotted(group, baselines)
        half = min(0.06 * (len(series) - 1), 0.3)  # 0.12 apart, the spread capped: points stay by their tick
        offsets = np.linspace(-half, half, len(series))
        for (learner, label), offset in zip(series, offsets):
            rows = group[group["learner"] == learner].sort_values("k")
            x = np.array([ks.index(int(k)) for k in rows["k"]]) + offset
            err = np.vstack([rows["median"] - rows["median_lo"], rows["median_hi"] - rows["median"]])
            baseline = learner in baselines
            ax.errorbar(x, rows["median"], yerr=np.clip(err, 0, None), label=label, capsize=3, linewidth=1,
                        marker="s" if baseline else "o", linestyle="--" if baseline else "-")
        n_tasks = int(group["n_tasks"].max()) if len(group) else 0
        ax.set(title=f"{setting} ({n_tasks} tasks)", xlabel="k (support size)",
               ylabel="median MAE/MAD over tasks (95% CI)")
        ax.set_xticks(range(len(ks)), labels=[str(k) for k in ks])
        ax.set_xlim(-0.6, max(len(ks), 1) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        if series:
            ax.legend(fontsize="small")
    return fig


def _kshot_png(summary: pd.DataFrame, baselines: Sequence[str] = ()) -> bytes:
    buffer = io.BytesIO()
    kshot_figure(summary, baselines).savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_report(
    scores: pd.DataFrame,
    out_dir: Path,
    baselines: Sequence[str] = ("mean", "knn", "rf", "mlp", "pretrained_ridge"),
    n_bootstrap: int = 1000,
    seed: int = 0,
    summary: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write scores.csv, per_task.csv (every metric, raw MAE included, averaged over draws per task),
    summary.md and kshot.png (each atomically) under ``out_dir``; returns their paths.

    ``summary``: a :func:`summarize` result the caller already has (its bootstrap is the costly part).
    """
    out_dir = Path(out_dir)
    if summary is None:
        summary = summarize(scores, baselines=baselines, n_bootstrap=n_bootstrap, seed=seed)
    paths = {
        "scores": out_dir / "scores.csv",
        "per_task": out_dir / "per_task.csv",
        "summary": out_dir / "summary.md",
        "kshot": out_dir / "kshot.png",
    }
    write_bytes_atomic(paths["scores"], scores.to_csv(index=False).encode())
    write_bytes_atomic(paths["per_task"], per_task(scores).to_csv(index=False).encode())
    write_bytes_atomic(paths["summary"], _markdown(summary).encode())
    write_bytes_atomic(paths["kshot"], _kshot_png(summary, baselines))
    return paths
