"""The k-shot protocol: disjoint seeded draws, support-only normalisation, metrics in the unit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from eval_reference import F, make_task
from sklearn.metrics import average_precision_score, roc_auc_score

from metalearn.evaluate.protocol import (
    SCORE_COLUMNS,
    EvalConfig,
    classification_metrics,
    episode_indices,
    evaluate,
    normalise_support,
)
from metalearn.learn.learners.base import Prediction
from metalearn.learn.learners.baselines import KNNBaseline, SupportMean


class Recorder:
    """Predicts 0 in normalised space (= the support mean in the unit) and records what adapt saw."""

    name, task_type, meta_trainable = "recorder", "regression", False

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Any:
        self.seen.append(y_support.numpy().copy())

    def predict(self, state: Any, x_query: torch.Tensor) -> Prediction:
        return Prediction(mean=torch.zeros(x_query.shape[0]))


class FirstFeatureScorer:
    """Classification learner whose P(y=1) is sigmoid(x0): an easy closed form to check metrics against."""

    name, task_type, meta_trainable = "x0", "classification", False

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Any:
        return None

    def predict(self, state: Any, x_query: torch.Tensor) -> Prediction:
        return Prediction(mean=torch.sigmoid(x_query[:, 0]))


CFG = EvalConfig(n_support=(2, 5, 10), n_draws=3, n_query=20, seed=0)


def test_draws_are_disjoint_reproducible_and_share_the_query_across_k() -> None:
    task = make_task("t")
    for draw in range(CFG.n_draws):
        queries = []
        for k in CFG.n_support:
            support, query = episode_indices(task, k, draw, CFG)
            assert len(support) == k and len(query) == CFG.n_query
            assert len(set(support)) == k and not set(support) & set(query)
            np.testing.assert_array_equal(support, episode_indices(task, k, draw, CFG)[0])
            queries.append(query)
        assert all(np.array_equal(queries[0], q) for q in queries)
    other_seed = episode_indices(task, 5, 0, replace(CFG, seed=1))
    assert not np.array_equal(other_seed[1], episode_indices(task, 5, 0, CFG)[1])
    assert not np.array_equal(episode_indices(task, 5, 0, CFG)[1], episode_indices(task, 5, 1, CFG)[1])


def test_classification_supports_are_stratified() -> None:
    task = make_task("c", task_type="classification")
    for draw in range(10):
        for k in (2, 5, 10):
            support, _ = episode_indices(task, k, draw, CFG)
            assert set(task.y[support]) == {0.0, 1.0}


def test_too_small_task_fails_loudly() -> None:
    with pytest.raises(
        ValueError, match=r"task 'tiny' has 25 rows; need max\(n_support\) \+ n_query = 10 \+ 20 = 30"
    ):
        episode_indices(make_task("tiny", n=25), 2, 0, CFG)


@pytest.mark.parametrize("n_support", [(1, 5), (0,), (), (5, 5)])
def test_degenerate_support_sizes_are_refused(n_support) -> None:
    with pytest.raises(ValueError, match="n_support"):
        EvalConfig(n_support=n_support)
    if 1 in n_support:  # the reason is in the message, not only the rule
        with pytest.raises(ValueError, match="all fall back\\s+to the mean"):
            EvalConfig(n_support=n_support)


def test_normalisation_uses_support_statistics_only() -> None:
    task = make_task("t")
    cfg = replace(CFG, n_draws=1)  # one draw: another draw's query may hold this draw's support rows
    first, second = Recorder(), Recorder()
    scores = evaluate([task], {"recorder": first}, cfg)
    y = task.y.copy()
    y[episode_indices(task, 2, 0, cfg)[1]] += 100.0  # perturb every query target
    perturbed = evaluate([replace(task, y=y)], {"recorder": second}, cfg)
    assert len(first.seen) == len(second.seen) == len(cfg.n_support)
    for a, b in zip(first.seen, second.seen):
        np.testing.assert_array_equal(a, b)  # what adapt sees depends on the support only
    assert (perturbed.query("metric == 'mae'")["value"].to_numpy() > 90).all()  # while the query scores moved
    for k in cfg.n_support:
        support, _ = episode_indices(task, k, 0, cfg)
        expected = (task.y[support] - task.y[support].mean()) / task.y[support].std()
        np.testing.assert_allclose(first.seen[cfg.n_support.index(k)], expected, rtol=1e-4, atol=1e-5)
    normed, _, _ = normalise_support(torch.tensor([3.0, 3.0, 3.0]))  # constant support: floored std, no NaN
    assert torch.equal(normed, torch.zeros(3))
    assert set(scores.columns) == set(SCORE_COLUMNS)


def test_mae_and_mae_over_mad_match_numpy_in_the_unit() -> None:
    task = make_task("log", transform="log10")  # y is log10 of the property; scores are in the unit
    scores = evaluate([task], {"recorder": Recorder()}, CFG).set_index(["k", "draw", "metric"])["value"]
    for draw in range(CFG.n_draws):
        for k in CFG.n_support:
            support, query = episode_indices(task, k, draw, CFG)
            pred = np.full(len(query), 10 ** np.mean(task.y[support].astype(np.float32)))
            truth = 10 ** task.y[query]
            mae = np.mean(np.abs(pred - truth))
            np.testing.assert_allclose(scores[(k, draw, "mae")], mae, rtol=1e-5)
            np.testing.assert_allclose(
                scores[(k, draw, "mae_mad")], mae / np.mean(np.abs(truth - truth.mean())), rtol=1e-5
            )


def test_auc_and_delta_auprc_match_sklearn() -> None:
    task = make_task("c", task_type="classification")
    scores = evaluate([task], {"x0": FirstFeatureScorer()}, CFG).set_index(["k", "draw", "metric"])["value"]
    for draw in range(CFG.n_draws):
        _, query = episode_indices(task, 5, draw, CFG)
        prob, labels = 1 / (1 + np.exp(-task.x[query, 0])), task.y[query]
        np.testing.assert_allclose(scores[(5, draw, "roc_auc")], roc_auc_score(labels, prob), rtol=1e-6)
        np.testing.assert_allclose(
            scores[(5, draw, "delta_auprc")], average_precision_score(labels, prob) - labels.mean(), rtol=1e-6
        )
    one_class = classification_metrics(np.array([0.2, 0.9]), np.array([1.0, 1.0]))
    assert all(np.isnan(v) for v in one_class.values())


def test_settings_learner_types_and_seeds() -> None:
    tasks = [
        make_task("p", split="meta-test-property"),
        make_task("c", split="meta-test-chemistry", seed=1),
        make_task("cls", task_type="classification", seed=2),
    ]
    learners = {"mean": SupportMean(F), "knn": KNNBaseline(F), "x0": FirstFeatureScorer()}
    progress: list[tuple[int, int]] = []
    scores = evaluate(tasks, learners, CFG, on_progress=lambda done, total: progress.append((done, total)))
    total = 3 * len(CFG.n_support) * CFG.n_draws  # episodes: tasks x k x draws
    assert progress == [(n, total) for n in range(CFG.n_draws, total + 1, CFG.n_draws)]
    by_task = scores.groupby("task_id")
    assert set(by_task.get_group("p")["setting"]) == {"meta-test-property"}
    assert set(by_task.get_group("c")["setting"]) == {"meta-test-chemistry"}
    assert set(by_task.get_group("cls")["learner"]) == {"x0"}  # learners score only their task type
    assert set(by_task.get_group("p")["learner"]) == {"mean", "knn"}
    assert len(scores) == (2 * 2 * 2 + 1 * 2) * len(CFG.n_support) * CFG.n_draws
    again = evaluate(tasks, learners, CFG)
    assert again.equals(scores)
    assert not evaluate(tasks, learners, replace(CFG, seed=5))["value"].equals(scores["value"])
