"""Summaries: per-task averaging, bootstrap CIs, paired win rates, and the report files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metalearn.evaluate.protocol import SCORE_COLUMNS
from metalearn.evaluate.report import (
    UNIT_FREE,
    bootstrap_ci,
    kshot_figure,
    paired_comparison,
    summarize,
    write_report,
)


def constructed_scores() -> pd.DataFrame:
    """Learner "a" has lower MAE than "b" on tasks t0..t2, ties on t3, loses on t4; two draws each."""
    a_mae = {"t0": 1.0, "t1": 1.0, "t2": 2.0, "t3": 3.0, "t4": 5.0}
    b_mae = {"t0": 2.0, "t1": 1.5, "t2": 4.0, "t3": 3.0, "t4": 4.0}
    rows = []
    for learner, values in (("a", a_mae), ("b", b_mae)):
        for task_id, value in values.items():
            for draw, jitter in enumerate((-0.1, 0.1)):  # draws average back to `value`
                for metric, v in (("mae", value + jitter), ("mae_mad", (value + jitter) / 10)):
                    rows.append((task_id, "meta-test-property", "band_gap", 5, draw, learner, metric, v))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def test_paired_comparison_on_a_constructed_case() -> None:
    cmp = paired_comparison(constructed_scores(), "a", "b", metric="mae", k=5)
    np.testing.assert_allclose(cmp.differences.sort_index().to_numpy(), [-1.0, -0.5, -2.0, 0.0, 1.0])
    assert cmp.n_tasks == 5
    assert cmp.win_rate == pytest.approx((3 + 0.5) / 5)  # a tie counts half
    assert cmp.mean_improvement == pytest.approx((1.0 + 0.5 + 2.0 + 0.0 - 1.0) / 5)
    assert cmp.ci_low <= cmp.mean_improvement <= cmp.ci_high
    reverse = paired_comparison(constructed_scores(), "b", "a", metric="mae", k=5)
    assert reverse.win_rate == pytest.approx(1 - cmp.win_rate)
    assert reverse.mean_improvement == pytest.approx(-cmp.mean_improvement)


def test_paired_comparison_direction_and_errors() -> None:
    scores = constructed_scores().assign(metric="roc_auc")  # now higher is better: b wins
    assert paired_comparison(scores, "a", "b", metric="roc_auc", k=5).win_rate == pytest.approx(1.5 / 5)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_comparison(scores, "a", "b", metric="r2", k=5)
    with pytest.raises(ValueError, match="learner 'c'"):
        paired_comparison(constructed_scores(), "a", "c", metric="mae", k=5)


def test_summarize_means_medians_cis_and_win_rates() -> None:
    summary = summarize(constructed_scores(), baselines=("b", "absent"), n_bootstrap=200)
    row = summary.query("learner == 'a' and metric == 'mae_mad'").iloc[0]
    assert row["n_tasks"] == 5
    assert row["mean"] == pytest.approx(np.mean([1, 1, 2, 3, 5]) / 10)
    assert row["median"] == pytest.approx(0.2)
    assert row["mean_lo"] <= row["mean"] <= row["mean_hi"]
    assert row["median_lo"] <= row["median"] <= row["median_hi"]
    assert row["win_rate_vs_b"] == pytest.approx(0.7)
    assert "win_rate_vs_absent" not in summary.columns
    assert np.isnan(summary.query("learner == 'b'")["win_rate_vs_b"]).all()


def test_raw_mae_is_never_averaged_over_tasks() -> None:
    """MAE is in each property's unit: the summary aggregates only unit-free metrics."""
    scores = pd.concat([constructed_scores(), constructed_scores().assign(metric="roc_auc", value=0.7)])
    summary = summarize(scores, baselines=("b",), n_bootstrap=50)
    assert set(summary["metric"]) == {"mae_mad", "roc_auc"} <= set(UNIT_FREE)
    assert "mae" not in set(summary["metric"]) and "mae" in set(scores["metric"])


def rf_scores(ratios: dict[str, float]) -> pd.DataFrame:
    """Learner "a" with MAE = ratio x rf's MAE on each task (rf's MAE differs per task, as units do)."""
    rows = []
    for i, (task_id, ratio) in enumerate(ratios.items()):
        rf_mae = 10.0 ** i  # eV, GPa, ...: scales that must not be averaged
        for learner, mae in (("rf", rf_mae), ("a", ratio * rf_mae)):
            for metric, v in (("mae", mae), ("mae_mad", mae / (2 * rf_mae))):
                rows.append((task_id, "meta-test-property", "f", 10, 0, learner, metric, v))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def test_shares_of_tasks_beating_or_losing_to_the_random_forest() -> None:
    # 0.5 and 0.8 beat rf by >= 20%; 0.9 and 1.1 are neither; 1.5 and 2.0 are worse by > 10%
    ratios = {"t0": 0.5, "t1": 0.8, "t2": 0.9, "t3": 1.1, "t4": 1.5, "t5": 2.0, "t6": 0.7, "t7": 1.0}
    summary = summarize(rf_scores(ratios), baselines=("rf",), n_bootstrap=50)
    row = summary.query("learner == 'a' and metric == 'mae_mad'").iloc[0]
    assert row["beats_rf_20pct"] == pytest.approx(3 / 8)
    assert row["worse_than_rf_10pct"] == pytest.approx(2 / 8)
    assert np.isnan(summary.query("learner == 'rf'")["beats_rf_20pct"]).all()
    without_rf = summarize(rf_scores(ratios).query("learner != 'rf'"), baselines=("rf",), n_bootstrap=50)
    assert "beats_rf_20pct" not in without_rf.columns


def test_nan_draws_are_skipped_per_task() -> None:
    scores = constructed_scores()
    scores.loc[(scores["task_id"] == "t4") & (scores["learner"] == "a"), "value"] = np.nan
    cmp = paired_comparison(scores, "a", "b", metric="mae", k=5)
    assert cmp.n_tasks == 4 and "t4" not in cmp.differences.index


def test_bootstrap_ci_brackets_the_statistic_and_is_seeded() -> None:
    values = np.random.default_rng(0).normal(loc=3.0, size=50)
    lo, hi = bootstrap_ci(values, n_bootstrap=500, seed=1)
    assert lo < values.mean() < hi and hi - lo < 1.0
    assert bootstrap_ci(values, n_bootstrap=500, seed=1) == (lo, hi)


def test_write_report_writes_the_files(tmp_path: Path) -> None:
    scores = constructed_scores()
    chemistry = scores.assign(setting="meta-test-chemistry", k=10)
    paths = write_report(
        pd.concat([scores, chemistry, rf_scores({"t0": 0.5, "t1": 1.5})]), tmp_path / "report",
        baselines=("b", "rf"), n_bootstrap=50,
    )
    assert set(paths) == {"scores", "per_task", "summary", "kshot"}
    assert len(pd.read_csv(paths["scores"])) == 2 * len(scores) + 8
    per_task = pd.read_csv(paths["per_task"])
    assert "mae" in set(per_task["metric"])  # raw MAE: per task only
    text = paths["summary"].read_text()
    assert [line for line in text.splitlines() if line.startswith("# ")] == ["# k-shot evaluation"]
    assert "## meta-test-property: mae_mad (lower is better)" in text
    assert "## meta-test-chemistry: mae_mad" in text and "| win vs b |" in text
    assert ": mae (" not in text  # no table averages raw MAE
    assert "| beats rf by >= 20% | worse than rf by > 10% |" in text and "| 50% | 50% |" in text
    assert paths["kshot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "report").glob(".tmp-*"))


def test_kshot_plot_has_the_evaluated_k_as_ticks_and_separate_error_bars() -> None:
    scores = pd.concat([constructed_scores().assign(k=k) for k in (5, 10, 20)])
    scores = pd.concat([scores, scores.assign(setting="meta-test-chemistry")])
    learners = pd.concat([scores.query("learner == 'a'").assign(learner=name, value=lambda d, f=f: d["value"] * f)
                          for name, f in (("fomaml", 0.9), ("metric", 0.95))])
    summary = summarize(pd.concat([scores, learners]), baselines=("a", "b"), n_bootstrap=50)
    fig = kshot_figure(summary, baselines=("a", "b"))
    axes = fig.get_axes()
    assert sorted(ax.get_title().split(" (")[0] for ax in axes) == ["meta-test-chemistry", "meta-test-property"]
    for ax in axes:
        assert ax.get_xscale() == "linear"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "20"]
        labels = ax.get_legend_handles_labels()[1]
        assert labels == ["fomaml", "metric", "a (best baseline)"]  # a's MAE/MAD is below b's
        bars = ax.containers
        assert len(bars) == 3
        xs = [np.asarray(bar.lines[0].get_xdata()) for bar in bars]  # data line of each errorbar
        assert all(np.all(np.diff(x) > 0.5) for x in xs)  # one point per k, in k order
        assert len({round(float(x[0]), 6) for x in xs}) == 3  # offset from each other at every k
        assert all(np.all(np.abs(x - np.round(x)) < 0.5) for x in xs)  # but each near its k's tick
