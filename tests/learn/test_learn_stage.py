"""Stage-level training on real shards: outputs under the work directory, caching by inputs, both task types."""

from __future__ import annotations

import json
from pathlib import Path

from metalearn.layout import WorkDir
from metalearn.learn.stage import LearnerConfig, model_dir, train_learner

TINY = LearnerConfig.from_params({"n_support": 5, "n_query": 7, "max_steps": 6, "meta_batch_size": 2,
                                  "eval_every": 3, "n_val_batches": 1, "checkpoint_every": 3})


def test_train_then_cached_rerun(small_shards, tmp_path):
    work = WorkDir.resolve(tmp_path / "work")
    cfg = LearnerConfig.from_params({"n_support": 5, "n_query": 7, "max_steps": 6, "meta_batch_size": 2,
                                     "eval_every": 3, "n_val_batches": 1}, {"hidden": (16, 16)})
    first = train_learner(work, small_shards, "fomaml", cfg)
    assert not first["cached"] and Path(first["checkpoint"]).exists()
    assert first["metrics"]["steps"] == 6 and first["task_type"] == "regression" and first["learner"] == "fomaml"
    assert Path(first["out_dir"]) == model_dir(work, small_shards, "fomaml", cfg)
    assert Path(first["out_dir"]).is_relative_to(work.root / "models")  # the work directory owns the path
    again = train_learner(work, small_shards, "fomaml", cfg)
    assert again["cached"] and again["checkpoint"] == first["checkpoint"]
    assert json.loads(Path(first["history"]).read_text())
    other = LearnerConfig.from_params({"n_support": 5, "n_query": 7, "max_steps": 7, "meta_batch_size": 2,
                                       "eval_every": 3, "n_val_batches": 1}, {"hidden": (16, 16)})
    assert model_dir(work, small_shards, "fomaml", other) != model_dir(work, small_shards, "fomaml", cfg)


def test_classification_without_meta_val_family_falls_back_to_train(small_shards, tmp_path):
    result = train_learner(WorkDir.resolve(tmp_path), small_shards, "protonet", TINY)
    assert result["task_type"] == "classification" and result["val_split"] == "meta-train"
