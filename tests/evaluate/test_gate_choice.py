"""Choosing tonight's candidate from the evaluate stage's summary rows (data, not dotted keys)."""

from __future__ import annotations

import pytest

from metalearn.evaluate.gate import RegistryConfig, choose_candidate


def row(setting: str, learner: str, median: float, k: int = 5, metric: str = "mae_mad") -> dict:
    return {"setting": setting, "learner": learner, "k": k, "metric": metric, "median": median, "mean": median + 0.1}


def test_the_regressor_with_the_best_mean_of_its_medians_over_settings_wins():
    summary = [row("meta-test-property", "fomaml", 0.9), row("meta-test-chemistry", "fomaml", 0.7),
               row("meta-test-property", "metric", 0.85), row("meta-test-chemistry", "metric", 0.6),
               row("meta-test-property", "metric", 0.1, k=10),  # another n_support: not the gate's
               row("meta-test-property", "fomaml", 0.1, metric="mae")]  # another metric
    best, evidence = choose_candidate(summary, ["fomaml", "metric"], RegistryConfig(n_support=5))
    assert best == "metric" and evidence["median_by_learner"]["fomaml"] == pytest.approx(0.8)
    assert evidence["median_by_learner"]["metric"] == pytest.approx(0.725)


def test_no_scores_at_the_gate_size_falls_back_to_the_first_learner_and_says_so():
    first, why = choose_candidate([row("meta-test-property", "metric", 0.5, k=10)], ["fomaml", "metric"],
                                  RegistryConfig(n_support=5))
    assert first == "fomaml" and "no mae_mad at n_support=5" in why["reason"]


def test_nan_medians_are_ignored():
    summary = [row("meta-test-property", "fomaml", float("nan")), row("meta-test-property", "metric", 0.9)]
    assert choose_candidate(summary, ["fomaml", "metric"], RegistryConfig(n_support=5))[0] == "metric"
