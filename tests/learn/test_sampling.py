"""TaskSampler on real task shards: shapes, seeds, support-only normalisation, train-only feature stats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from metalearn import io
from metalearn.learn.sampling import TaskSampler, draw_batch_rows, draw_episode_rows, make_batch
from metalearn.shards.store import read_index, read_task_rows


def test_batch_shapes_and_task_type(small_shards):
    sampler = TaskSampler(small_shards, n_support=5, n_query=7, meta_batch_size=4, seed=0)
    batch = sampler.batch("meta-train", 0)
    F = sampler.n_features
    assert batch.x_support.shape == (4, 5, F) and batch.y_support.shape == (4, 5)
    assert batch.x_query.shape == (4, 7, F) and batch.y_query.shape == (4, 7)
    assert batch.x_support.dtype == torch.float32 and torch.isfinite(batch.x_support).all()
    index = read_index(small_shards).set_index("task_id")
    assert {index.at[t, "split"] for t in batch.task_ids} == {"meta-train"}
    clf = TaskSampler(small_shards, 5, 7, 4, seed=0, task_type="classification").batch("meta-train", 0)
    assert set(clf.y_support.unique().tolist()) <= {0.0, 1.0} and clf.y_mean is None


def test_batches_reproduce_per_seed_and_differ_across_steps(small_shards):
    a = TaskSampler(small_shards, 5, 7, 4, seed=1).batch("meta-train", 3)
    b = TaskSampler(small_shards, 5, 7, 4, seed=1).batch("meta-train", 3)
    c = TaskSampler(small_shards, 5, 7, 4, seed=1).batch("meta-train", 4)
    d = TaskSampler(small_shards, 5, 7, 4, seed=2).batch("meta-train", 3)
    assert torch.equal(a.x_support, b.x_support) and a.task_ids == b.task_ids
    assert not torch.equal(a.x_support, c.x_support)
    assert not torch.equal(a.x_support, d.x_support)


def test_normalisation_uses_support_only():
    rng = np.random.default_rng(0)
    xs, xq = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 4, 3))
    ys, yq = rng.normal(3, 2, size=(2, 5)), rng.normal(3, 2, size=(2, 4))
    base = make_batch(xs, ys, xq, yq, ("a", "b"), "regression")
    shifted = make_batch(xs, ys, xq, yq + 100.0, ("a", "b"), "regression")
    assert torch.equal(base.y_mean, shifted.y_mean) and torch.equal(base.y_std, shifted.y_std)
    assert torch.equal(base.y_support, shifted.y_support)
    np.testing.assert_allclose(base.y_support.mean(1).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(base.y_mean.numpy(), ys.mean(1), rtol=1e-5)


def test_support_and_query_disjoint_and_classification_support_has_both_classes():
    rng = np.random.default_rng(0)
    y = np.array([1.0] * 3 + [0.0] * 40)
    for _ in range(50):
        s, q = draw_episode_rows(rng, y, 4, 10, "classification")
        assert not set(s) & set(q)
        assert set(y[s]) == {0.0, 1.0}
    with pytest.raises(ValueError, match="need n_support"):
        draw_episode_rows(rng, y, 40, 10, "regression")


def test_feature_stats_come_from_meta_train_tasks_only(small_shards):
    shards = small_shards
    index = read_index(small_shards)
    stats = io.read_parquet(shards / "feature_stats.parquet")
    names = stats["feature"].tolist()
    train = read_task_rows(small_shards, index.loc[index["split"] == "meta-train", "task_key"].tolist())
    everything = read_task_rows(small_shards, index["task_key"].tolist())
    col = names[10]
    np.testing.assert_allclose(stats.loc[10, "mean"], np.nanmean(train[col].to_numpy(np.float64)), rtol=1e-5)
    assert not np.isclose(stats.loc[10, "mean"], np.nanmean(everything[col].to_numpy(np.float64)), rtol=1e-9)
    sampler = TaskSampler(small_shards, 5, 7, 4)
    task = sampler.tasks("meta-train")[0]
    rows = read_task_rows(small_shards, [index.set_index("task_id").at[task.task_id, "task_key"]]).sort_values("record_id")
    expected = (rows[col].to_numpy(np.float64) - stats.loc[10, "mean"]) / stats.loc[10, "std"]
    np.testing.assert_allclose(task.x[:, 10], np.nan_to_num(expected), rtol=1e-4, atol=1e-5)


def test_reads_only_requested_partitions(small_shards):
    index = read_index(small_shards)
    key = index["task_key"].iloc[0]
    rows = read_task_rows(small_shards, [key])
    assert set(rows["task_key"]) == {key} and len(rows) == index["n_rows"].iloc[0]
    assert isinstance(rows, pd.DataFrame)


def test_missing_split_is_a_clear_error(small_shards):
    sampler = TaskSampler(small_shards, 5, 7, 4, task_type="classification")
    with pytest.raises(ValueError, match="no classification tasks in split 'meta-val'"):
        sampler.batch("meta-val", 0)


def test_batch_supports_skip_constant_targets_and_queries_are_clipped():
    y = np.zeros(200)
    y[:30] = np.linspace(1.0, 3.0, 30)  # a metal-heavy band-gap-like task: 85% exact zeros
    rng = np.random.default_rng(0)

    def varied(draw) -> float:
        """Fraction of 100 five-row supports that are not constant."""
        return float(np.mean([np.std(y[draw(rng, y, 5, 10, "regression")[0]]) > 0 for _ in range(100)]))

    plain, redrawn = varied(draw_episode_rows), varied(draw_batch_rows)
    assert plain < 0.8 and redrawn > 0.95  # plain draws are constant ~44% of the time
    batch = make_batch(np.zeros((1, 2, 1)), np.array([[0.0, 1e-9]]), np.zeros((1, 3, 1)),
                       np.array([[0.0, 5.0, -5.0]]), ("t",), "regression", clip=10.0)
    assert batch.y_query.abs().max() == 10.0
