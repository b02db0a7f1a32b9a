"""Summaries: per-task averaging, bootstrap CIs, paired win rates, and the report files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metalearn.evaluate.protocol import SCORE_COLUMNS
from metalearn.evaluate.report import bootstrap_ci, paired_comparison, summarize, write_report


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
    row = summary.query("learner == 'a' and metric == 'mae'").iloc[0]
    assert row["n_tasks"] == 5
    assert row["mean"] == pytest.approx(np.mean([1, 1, 2, 3, 5]))
    assert row["median"] == pytest.approx(2.0)
    assert row["mean_lo"] <= row["mean"] <= row["mean_hi"]
    assert row["win_rate_vs_b"] == pytest.approx(0.7)
    assert "win_rate_vs_absent" not in summary.columns
    assert np.isnan(summary.query("learner == 'b'")["win_rate_vs_b"]).all()


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


def test_write_report_writes_the_three_files(tmp_path: Path) -> None:
    scores = constructed_scores()
    chemistry = scores.assign(setting="meta-test-chemistry", k=10)
    paths = write_report(
        pd.concat([scores, chemistry]), tmp_path / "report", baselines=("b",), n_bootstrap=50
    )
    assert set(paths) == {"scores", "summary", "kshot"}
    assert len(pd.read_csv(paths["scores"])) == 2 * len(scores)
    text = paths["summary"].read_text()
    assert "## meta-test-property: mae_mad (lower is better)" in text
    assert "## meta-test-chemistry: mae" in text and "| win vs b |" in text
    assert paths["kshot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "report").glob(".tmp-*"))
