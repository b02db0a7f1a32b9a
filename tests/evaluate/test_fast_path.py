"""The fast evaluate path against the plain per-episode loop: same rows, same values, cache or not."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from eval_reference import F, make_task, reference_evaluate

from metalearn.evaluate import score_cache
from metalearn.evaluate.protocol import EvalConfig, evaluate, n_episodes
from metalearn.learn.learners import build_learner
from metalearn.learn.learners.base import Prediction
from metalearn.learn.learners.baselines import KNNBaseline, RandomForestBaseline, ScratchMLP, SupportMean
from metalearn.learn.sampling import TaskSampler

CFG = EvalConfig(n_support=(5, 10), n_draws=2, n_query=16, seed=3, device="cpu")
SUPPORT_ONLY = (SupportMean, KNNBaseline, RandomForestBaseline, ScratchMLP)


def real_tasks(shards: Path, task_type: str, n: int = 2) -> tuple[int, list]:
    """Up to n tasks of a type from real shards, meta-test first (the fast path does not care about splits)."""
    sampler = TaskSampler(shards, 1, 1, 1, task_type=task_type)
    need = max(CFG.n_support) + CFG.n_query
    splits = ("meta-test-property", "meta-test-chemistry", "meta-val", "meta-train")
    tasks = [t for split in splits for t in sampler.tasks(split, need)]
    return sampler.n_features, tasks[:n]


# Smaller than the stage's defaults where only speed changes: the comparison is of the evaluate paths.
OVERRIDES = {"rf": {"n_estimators": 10}, "mlp": {"steps": 20}, "fomaml": {"device": "cpu"},
             "metric": {"device": "cpu"}, "protonet": {"device": "cpu"}}


def learners_for(task_type: str, n_features: int) -> dict[str, Any]:
    names = ["mean", "knn", "rf", "mlp", "fomaml"] + (["metric"] if task_type == "regression" else ["protonet"])
    return {name: build_learner(name, n_features, task_type, **OVERRIDES.get(name, {})) for name in names}


@pytest.fixture
def refuse_support_only_fits(monkeypatch):
    """After this, a support-only baseline that fits raises: a run may only read their cached scores."""

    def install() -> None:
        def refuse(self, x_support, y_support):
            raise AssertionError(f"{self.name} was refitted although its scores are cached")

        for cls in SUPPORT_ONLY:
            monkeypatch.setattr(cls, "adapt", refuse)

    return install


BATCH_RTOL = 1e-5  # a learner's own adapt_batch may differ from its per-draw adapt by float32 rounding


def assert_same_scores(got: pd.DataFrame, expected: pd.DataFrame, learners: dict[str, Any]) -> None:
    """Same rows in the same order; values bit for bit, except learners that adapt draws in a batch
    (their batched matmuls round differently from one draw at a time) to BATCH_RTOL."""
    pd.testing.assert_frame_equal(got.drop(columns="value"), expected.drop(columns="value"))
    batched = got["learner"].isin([n for n, lrn in learners.items() if hasattr(lrn, "adapt_batch")]).to_numpy()
    pd.testing.assert_series_equal(got["value"][~batched], expected["value"][~batched], check_exact=True)
    np.testing.assert_allclose(got["value"][batched], expected["value"][batched], rtol=BATCH_RTOL, atol=1e-9)


@pytest.mark.parametrize("task_type", ["regression", "classification"])
def test_fast_path_equals_the_per_episode_loop_on_real_shards(small_shards, tmp_path, task_type,
                                                              refuse_support_only_fits):
    n_features, tasks = real_tasks(small_shards, task_type)
    assert tasks, f"no {task_type} tasks with enough rows in the small shards"
    learners = learners_for(task_type, n_features)
    expected = reference_evaluate(tasks, learners, CFG)
    assert len(expected) == len(tasks) * len(CFG.n_support) * CFG.n_draws * len(learners) * 2

    plain = evaluate(tasks, learners, CFG)
    cold = evaluate(tasks, learners, CFG, cache_dir=tmp_path / "cache")
    refuse_support_only_fits()
    warm = evaluate(tasks, learners, CFG, cache_dir=tmp_path / "cache")
    for got in (plain, cold, warm):
        assert_same_scores(got, expected, learners)


class Counting:
    """Counts adapt calls per task of the wrapped support-only baseline classes (monkeypatched)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, int]] = []
        for cls in (SupportMean, KNNBaseline):
            original = cls.adapt

            def counted(learner, x_support, y_support, original=original):
                self.calls.append((learner.name, int(x_support.shape[0])))
                return original(learner, x_support, y_support)

            monkeypatch.setattr(cls, "adapt", counted)

    def take(self) -> list[tuple[str, int]]:
        calls, self.calls = self.calls, []
        return calls


def synthetic() -> tuple[list, dict[str, Any]]:
    tasks = [make_task("p", transform="log10"), make_task("c", split="meta-test-chemistry", seed=1)]
    return tasks, {"mean": SupportMean(F), "knn": KNNBaseline(F)}


def test_a_second_run_recomputes_no_baseline_score_and_changed_inputs_do(tmp_path, monkeypatch):
    tasks, learners = synthetic()
    cache, calls = tmp_path / "cache", Counting(monkeypatch)
    per_task = len(CFG.n_support) * CFG.n_draws * len(learners)
    first = evaluate(tasks, learners, CFG, cache_dir=cache)
    assert len(calls.take()) == len(tasks) * per_task
    assert evaluate(tasks, learners, CFG, cache_dir=cache).equals(first) and calls.take() == []

    changed = [replace(tasks[0], y=tasks[0].y + 0.5), tasks[1]]  # new rows: a new key for that task only
    evaluate(changed, learners, CFG, cache_dir=cache)
    assert len(calls.take()) == per_task
    evaluate(tasks, {"mean": SupportMean(F), "knn": KNNBaseline(F, n_neighbors=3)}, CFG, cache_dir=cache)
    assert {name for name, _ in calls.take()} == {"knn"}  # another hyperparameter: another key
    for protocol in (replace(CFG, seed=4), replace(CFG, n_query=12)):  # other draws
        evaluate(tasks, learners, protocol, cache_dir=cache)
        assert len(calls.take()) == len(tasks) * per_task


def test_an_edit_to_a_baselines_code_invalidates_its_scores(tmp_path, monkeypatch):
    tasks, learners = synthetic()
    cache, calls = tmp_path / "cache", Counting(monkeypatch)
    evaluate(tasks, learners, CFG, cache_dir=cache)
    calls.take()
    real = score_cache.code_hash
    monkeypatch.setattr(score_cache, "code_hash", lambda module: real(module) + ("edited" if "baselines" in module else ""))
    evaluate(tasks, learners, CFG, cache_dir=cache)
    assert len(calls.take()) == len(tasks) * len(CFG.n_support) * CFG.n_draws * len(learners)


def test_more_draws_or_another_k_compute_only_what_is_new(tmp_path, monkeypatch):
    tasks, learners = synthetic()
    cache, calls = tmp_path / "cache", Counting(monkeypatch)
    evaluate(tasks, learners, CFG, cache_dir=cache)
    calls.take()
    more = evaluate(tasks, learners, replace(CFG, n_draws=3), cache_dir=cache)
    assert len(calls.take()) == len(tasks) * len(CFG.n_support) * len(learners)  # draw 2 only
    pd.testing.assert_frame_equal(more, reference_evaluate(tasks, learners, replace(CFG, n_draws=3)), check_exact=True)
    calls.take()  # the reference loop's own fits
    other_k = replace(CFG, n_support=(2, 5, 10))
    evaluate(tasks, learners, other_k, cache_dir=cache)
    assert {k for _, k in calls.take()} == {2}


def test_corrupted_cache_files_are_ignored_recomputed_and_rewritten(tmp_path, monkeypatch):
    tasks, learners = synthetic()
    cache, calls = tmp_path / "cache", Counting(monkeypatch)
    expected = evaluate(tasks, learners, CFG, cache_dir=cache)
    files = sorted(cache.rglob("*.json"))
    assert len(files) == len(tasks) * len(learners)
    files[0].write_text(files[0].read_text()[:40])  # truncated: does not parse
    blob = json.loads(files[1].read_text())
    blob["entries"][0][2][0][1] += 1.0  # a changed value: parses, fails its checksum
    files[1].write_text(json.dumps(blob))
    calls.take()
    again = evaluate(tasks, learners, CFG, cache_dir=cache)
    pd.testing.assert_frame_equal(again, expected, check_exact=True)
    assert len(calls.take()) == 2 * len(CFG.n_support) * CFG.n_draws  # the two bad files' scores
    evaluate(tasks, learners, CFG, cache_dir=cache)
    assert calls.take() == []  # rewritten valid
    assert not [p for p in cache.rglob("*") if p.name.startswith(".tmp")]


class Tracking:
    """A meta-trainable regression learner (never cached) that predicts the support mean; counts adapts."""

    name, task_type, meta_trainable = "tracking", "regression", True

    def __init__(self) -> None:
        self.adapts = 0
        self.threads: list[int] = []

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Any:
        self.adapts += 1
        self.threads.append(torch.get_num_threads())
        return float(y_support.mean())

    def predict(self, state: Any, x_query: torch.Tensor) -> Prediction:
        return Prediction(mean=torch.full((x_query.shape[0],), state))


def test_meta_trained_learners_are_never_cached_and_run_with_the_thread_limit(tmp_path):
    tasks, _ = synthetic()
    learner = Tracking()
    before = torch.get_num_threads()
    for _ in range(2):
        evaluate(tasks, {"tracking": learner}, CFG, cache_dir=tmp_path / "cache", threads=1)
    assert learner.adapts == 2 * len(tasks) * len(CFG.n_support) * CFG.n_draws
    assert not list((tmp_path / "cache").rglob("*.json"))
    assert set(learner.threads) == {1} and torch.get_num_threads() == before


def test_progress_counts_episodes_often_and_ends_at_the_total():
    tasks, learners = synthetic()
    cfg = replace(CFG, n_support=(2, 5, 10), n_draws=3)
    calls: list[tuple[int, int]] = []
    evaluate(tasks, learners, cfg, on_progress=lambda done, total: calls.append((done, total)))
    total = len(tasks) * 3 * 3
    assert n_episodes(tasks, cfg) == total
    assert {t for _, t in calls} == {total} and calls[-1][0] == total
    done = [d for d, _ in calls]
    assert all(b > a for a, b in itertools.pairwise(done))
    assert len(calls) > len(tasks)  # finer than one call per task: enough for a terminal bar


class LoopBatched:
    """Wraps a learner with adapt_batch / predict_batch that loop over the draws: must equal the plain path."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.task_type = inner, inner.name, inner.task_type
        self.meta_trainable = True  # not cached, so every run goes through adapt_batch
        self.batch_shapes: list[tuple[int, ...]] = []

    def adapt(self, x_support, y_support):
        return self.inner.adapt(x_support, y_support)

    def predict(self, state, x_query):
        return self.inner.predict(state, x_query)

    def adapt_batch(self, x_support: torch.Tensor, y_support: torch.Tensor) -> list:
        self.batch_shapes.append(tuple(x_support.shape))
        return [self.inner.adapt(x, y) for x, y in zip(x_support, y_support)]

    def predict_batch(self, states: list, x_query: torch.Tensor) -> Prediction:
        return Prediction(mean=torch.stack([self.inner.predict(s, x).mean for s, x in zip(states, x_query)]))


@pytest.mark.parametrize("task_type", ["regression", "classification"])
def test_batched_learners_get_all_draws_at_once_with_the_same_scores(task_type):
    tasks = [make_task("b", task_type=task_type, transform="log10" if task_type == "regression" else "none")]
    batched = LoopBatched(KNNBaseline(F, task_type))
    got = evaluate(tasks, {"knn": batched}, CFG)
    pd.testing.assert_frame_equal(got, reference_evaluate(tasks, {"knn": KNNBaseline(F, task_type)}, CFG),
                                  check_exact=True)
    assert batched.batch_shapes == [(CFG.n_draws, k, F) for k in CFG.n_support]
    assert np.isfinite(got["value"]).any()
