"""Stage-level training and evaluation on real shards: outputs, caching by inputs, both task types."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from metalearn.evaluate.stage import evaluate_learners
from metalearn.learn.stage import ExperimentConfig, model_dir, train_learner

TINY = {"n_support": 5, "n_query": 7, "train": {"max_steps": 6, "meta_batch_size": 2, "eval_every": 3,
                                                 "n_val_batches": 1, "checkpoint_every": 3}}


def test_train_then_cached_rerun(small_shards):
    first = train_learner(small_shards, "fomaml", {**TINY, "hyperparams": {"hidden": [16, 16]}})
    assert not first["cached"] and Path(first["checkpoint"]).exists()
    assert first["metrics"]["steps"] == 6 and first["task_type"] == "regression"
    assert Path(first["out_dir"]) == model_dir(small_shards, "fomaml",
                                               ExperimentConfig(**{**TINY, "hyperparams": {"hidden": [16, 16]}}))
    again = train_learner(small_shards, "fomaml", {**TINY, "hyperparams": {"hidden": [16, 16]}})
    assert again["cached"] and again["checkpoint"] == first["checkpoint"]
    assert json.loads(Path(first["history"]).read_text())


def test_classification_without_meta_val_family_falls_back_to_train(small_shards):
    result = train_learner(small_shards, "protonet", TINY)
    assert result["task_type"] == "classification" and result["val_split"] == "meta-train"


def test_evaluate_writes_report_for_both_settings(small_shards, tmp_path):
    reg = train_learner(small_shards, "metric", TINY)
    clf = train_learner(small_shards, "protonet", TINY)
    out = evaluate_learners(small_shards, {"metric": reg["checkpoint"], "protonet": clf["checkpoint"]},
                            {"ks": [5], "n_draws": 2, "n_query": 8, "baselines": ["mean", "knn"]}, tmp_path / "eval")
    scores = pd.read_csv(out["scores_csv"])
    assert {"metric", "protonet", "mean", "knn"} <= set(scores["learner"])
    assert {"meta-test-property"} <= set(scores["setting"])
    assert Path(out["summary_md"]).read_text().startswith("#") and Path(out["plot_png"]).stat().st_size > 1000
    assert any(k.endswith("mae_mad_median") for k in out["headline"])
    assert evaluate_learners(small_shards, {}, {}, tmp_path / "eval")["cached"]
