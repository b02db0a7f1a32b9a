"""The evaluate stage on real shards: report files, summary rows as data, caching by the learners' content."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metalearn.evaluate.protocol import EvalConfig
from metalearn.evaluate.stage import evaluate_learners
from metalearn.layout import WorkDir
from metalearn.learn.stage import LearnerConfig, train_learner

TINY = LearnerConfig.from_params({"n_support": 5, "n_query": 7, "max_steps": 6, "meta_batch_size": 2,
                                  "eval_every": 3, "n_val_batches": 1, "checkpoint_every": 3})


def test_evaluate_writes_report_and_summary_rows_for_both_settings(small_shards, tmp_path):
    work = WorkDir.resolve(tmp_path)
    reg = train_learner(work, small_shards, "metric", TINY)
    clf = train_learner(work, small_shards, "protonet", TINY)
    cfg = EvalConfig(n_support=(5,), n_draws=2, n_query=8, baselines=("mean", "knn"))
    checkpoints = {"metric": reg["checkpoint"], "protonet": clf["checkpoint"]}
    out = evaluate_learners(work, small_shards, checkpoints, cfg)
    scores = pd.read_csv(out["scores_csv"])
    assert {"metric", "protonet", "mean", "knn"} <= set(scores["learner"])
    assert {"meta-test-property"} <= set(scores["setting"])
    assert Path(out["summary_md"]).read_text().startswith("#") and Path(out["plot_png"]).stat().st_size > 1000
    rows = out["summary"]
    assert rows and all({"setting", "learner", "k", "metric", "median"} <= set(r) for r in rows)
    metric_rows = [r for r in rows if r["learner"] == "metric" and r["metric"] == "mae_mad"]
    assert metric_rows and all(r["k"] == 5 for r in metric_rows)
    assert Path(out["out_dir"]).is_relative_to(work.root / "evaluations")
    again = evaluate_learners(work, small_shards, checkpoints, cfg)
    assert again["cached"] and again["summary"] == rows
    fewer = evaluate_learners(work, small_shards, {"metric": reg["checkpoint"]}, cfg)
    assert not fewer["cached"] and fewer["out_dir"] != out["out_dir"]
