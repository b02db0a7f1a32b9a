"""Thread counts are set deliberately inside every stage: read back while the stage runs, not timed."""

from __future__ import annotations

import pytest
import torch

from metalearn.evaluate.protocol import EvalConfig
from metalearn.evaluate.stage import evaluate_learners
from metalearn.layout import WorkDir
from metalearn.learn.stage import LearnerConfig, train_learner
from metalearn.threads import THREADS_ENV, configured_threads, effective_threads, limited

TINY = LearnerConfig.from_params({"n_support": 5, "n_query": 7, "max_steps": 4, "meta_batch_size": 2,
                                  "eval_every": 2, "n_val_batches": 1})


def test_limited_caps_torch_and_every_blas_pool_and_restores_torch():
    before = torch.get_num_threads()
    with limited(1) as n:
        assert n == 1 and set(effective_threads().values()) == {1}
    assert torch.get_num_threads() == before


def test_the_count_comes_from_the_environment_and_bad_values_name_it(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert configured_threads() == 3 and configured_threads(2) == 2
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=f"{THREADS_ENV}='many'"):
        configured_threads()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        configured_threads(0)


def test_training_and_evaluation_run_under_the_configured_count(small_shards, tmp_path, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "1")
    torch.set_num_threads(2)  # what an unconfigured process would use on this box
    work = WorkDir.resolve(tmp_path)
    seen: list[dict[str, int]] = []
    result = train_learner(work, small_shards, "fomaml", TINY, on_step=lambda step, logs: seen.append(effective_threads()))
    assert seen and all(set(s.values()) == {1} for s in seen)
    seen.clear()
    evaluate_learners(work, small_shards, {"fomaml": result["checkpoint"]},
                      EvalConfig(n_support=(5,), n_draws=1, n_query=8, baselines=("mean", "knn")),
                      on_progress=lambda done, total: seen.append(effective_threads()))
    assert seen and all(set(s.values()) == {1} for s in seen)
