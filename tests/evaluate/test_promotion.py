"""metalearn.evaluate.gate: the paired champion/challenger gate on score tables, without MLflow."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from score_tables import scores_table as _scores_table

from metalearn.evaluate.gate import (
    RegistryConfig,
    compare_versions,
    decision_record,
    eval_protocol,
    paired_gate,
)


def scores_table(values, draws: int = 2):
    """Constructed scores at the support sizes the protocol evaluates (the gate's default n_support among them)."""
    return _scores_table(values, ks=(5, RegistryConfig().n_support), draws=draws)


def version(number: int, learner: str, protocol: str = "p0") -> SimpleNamespace:
    """What compare_versions reads of a registered model version: ``.version`` and ``.tags``."""
    return SimpleNamespace(version=str(number), tags={"metalearn.learner": learner,
                                                      "metalearn.eval_protocol": protocol})


def test_paired_gate_margin_is_relative_to_the_reference_median():
    cfg = RegistryConfig(min_improvement=0.05)
    scores = scores_table({"cand": [0.96] * 4, "ref": [1.0] * 4})
    gate = paired_gate(scores, "cand", "ref", cfg)
    assert gate["win_rate"] == 1.0 and gate["relative_improvement"] == pytest.approx(0.04, abs=1e-3)
    assert not gate["passed"]
    assert paired_gate(scores, "cand", "ref", RegistryConfig(min_improvement=0.03))["passed"]
    missing = paired_gate(scores, "cand", "knn", cfg)
    assert not missing["passed"] and "knn" in missing["reason"]


def test_first_version_is_compared_with_the_baseline_in_its_own_scores():
    scores = {"1": scores_table({"metric": [0.5] * 4, "mean": [1.0] * 4})}
    gate = compare_versions(version(1, "metric"), None, RegistryConfig(), lambda v: scores[v.version])
    assert gate["passed"] and gate["compared_to"] == "baseline mean" and gate["n_tasks"] == 4
    no_baseline = compare_versions(version(1, "metric"), None, RegistryConfig(baseline="knn"),
                                   lambda v: scores[v.version])
    assert not no_baseline["passed"] and "'knn' baseline" in no_baseline["reason"]


def test_champion_comparison_uses_only_the_draws_both_versions_have():
    cand_scores = scores_table({"metric": [0.5, 0.6, 0.7, 0.8]}, draws=3)
    champ_scores = scores_table({"fomaml": [0.9, 1.0]}, draws=2)  # tasks 0-1, draws 0-1 only
    scores = {"2": cand_scores, "1": champ_scores}
    gate = compare_versions(version(2, "metric"), version(1, "fomaml"), RegistryConfig(), lambda v: scores[v.version])
    assert gate["passed"] and gate["compared_to"] == "version 1" and gate["n_tasks"] == 2


def test_comparisons_that_cannot_be_made_are_rejections_with_a_reason():
    scores = {"2": scores_table({"metric": [0.5] * 4}), "1": scores_table({"fomaml": [1.0] * 4})}
    cfg = RegistryConfig()
    other_draws = compare_versions(version(2, "metric", "p1"), version(1, "fomaml", "p0"), cfg,
                                   lambda v: scores[v.version])
    assert not other_draws["passed"] and "protocols differ" in other_draws["reason"]
    unscored = compare_versions(version(2, "metric"), None, cfg, lambda v: None)
    assert not unscored["passed"] and unscored["reason"] == "candidate has no scores.csv artifact"
    wrong_name = compare_versions(version(2, "knn"), None, cfg, lambda v: scores[v.version])
    assert not wrong_name["passed"] and "no rows of 'knn'" in wrong_name["reason"]


def test_decision_record_names_the_champion_after_the_decision():
    cfg = RegistryConfig()
    won = decision_record("3", "2", {"passed": True, "compared_to": "version 2", "reason": "r"}, cfg)
    assert won["decision"] == "promoted" and won["champion"] == "3" and won["previous_champion"] == "2"
    assert "passed" not in won and won["min_win_rate"] == cfg.min_win_rate
    lost = decision_record("3", None, {"passed": False, "compared_to": None, "reason": "r"}, cfg)
    assert lost["decision"] == "rejected" and lost["champion"] is None


def test_eval_protocol_is_fixed_by_shards_seed_and_query_size_only():
    base = eval_protocol("shards1", {"seed": 0, "n_query": 16, "n_draws": 10})
    assert base == eval_protocol("shards1", {"seed": 0, "n_query": 16, "n_draws": 50})
    assert base != eval_protocol("shards1", {"seed": 1, "n_query": 16})
    assert base != eval_protocol("shards2", {"seed": 0, "n_query": 16})
    assert len(base) == 16
