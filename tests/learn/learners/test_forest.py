"""The fast forest builds scikit-learn's trees bit for bit, on real Magpie rows with their ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestRegressor

from metalearn.learn.learners.baselines import RandomForestBaseline
from metalearn.learn.learners.forest import FittedForest, fit_forest, resolve_max_features
from metalearn.learn.sampling import TaskSampler


def reference(x, y, n_estimators, seed, **kw) -> RandomForestRegressor:
    return RandomForestRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=1, **kw).fit(x, y)


@pytest.fixture(scope="module")
def real_rows(small_shards):
    """Real composition features (integer counts, repeated values) and targets of one meta-train task."""
    sampler = TaskSampler(small_shards, 1, 1, 1, seed=0, task_type="regression")
    task = max(sampler.tasks("meta-train", 120), key=lambda t: len(np.unique(t.y)))
    assert len(np.unique(task.y)) > 100
    return np.asarray(task.x, dtype=np.float32), np.asarray(task.y, dtype=np.float64)


@pytest.mark.parametrize("k", [2, 5, 10, 20])
@pytest.mark.parametrize("seed", [0, 7])
def test_trees_and_predictions_equal_the_library_on_real_rows(real_rows, k, seed):
    x, y = real_rows
    rows = np.random.default_rng(seed + k).choice(len(y), size=k + 100, replace=False)
    xs, ys, xq = x[rows[:k]], y[rows[:k]], x[rows[k:]]
    ref = reference(xs, ys, 50, seed)
    mine = fit_forest(xs, ys, 50, seed)
    assert isinstance(mine, FittedForest) and len(mine.trees) == 50
    for ours, theirs in zip(mine.trees, ref.estimators_):
        assert ours.node_count == theirs.tree_.node_count
        np.testing.assert_array_equal(ours.feature, theirs.tree_.feature)
        np.testing.assert_array_equal(ours.threshold, theirs.tree_.threshold)
    np.testing.assert_array_equal(mine.predict_per_tree(xq), np.stack([e.predict(xq) for e in ref.estimators_]))
    np.testing.assert_array_equal(mine.predict(xq), ref.predict(xq))


@pytest.mark.parametrize("kw", [{"min_samples_leaf": 2}, {"max_features": "sqrt"}, {"max_features": 0.3},
                                {"max_features": None}, {"max_features": 4}])
def test_hyperparameters_map_to_the_same_forest(real_rows, kw):
    x, y = real_rows
    xs, ys, xq = x[:12], y[:12], x[12:60]
    ref = reference(xs, ys, 20, 3, **kw)
    mine = fit_forest(xs, ys, 20, 3, kw.get("min_samples_leaf", 1), kw.get("max_features", 1.0))
    np.testing.assert_array_equal(mine.predict(xq), ref.predict(xq))
    assert ref.estimators_[0].max_features_ == resolve_max_features(kw.get("max_features", 1.0), x.shape[1])


def test_non_finite_inputs_leave_it_to_the_library():
    x = np.ones((5, 3), dtype=np.float32)
    x[0, 1] = np.nan
    assert fit_forest(x, np.arange(5.0), 10, 0) is None


def test_the_baseline_uses_it_and_predicts_what_the_estimator_would(real_rows):
    x, y = real_rows
    rows = np.random.default_rng(1).permutation(len(y))[:50]
    x, y = x[rows], y[rows]
    assert len(np.unique(y[:10])) > 1
    rf = RandomForestBaseline(x.shape[1], "regression", n_estimators=30, seed=5)
    state = rf.adapt(torch.from_numpy(x[:10]), torch.from_numpy(y[:10].astype(np.float32)))
    assert isinstance(state, FittedForest)
    pred = rf.predict(state, torch.from_numpy(x[10:50]))
    ref = reference(x[:10], y[:10].astype(np.float32), 30, 5)
    per_tree = np.stack([e.predict(x[10:50]) for e in ref.estimators_])
    np.testing.assert_allclose(pred.mean.numpy(), ref.predict(x[10:50]).astype(np.float32), rtol=0, atol=0)
    np.testing.assert_allclose(pred.std.numpy(), per_tree.std(0).astype(np.float32), rtol=0, atol=0)
