"""Few-shot heads on the transfer representation: the log rule, LOO ridge, robustness, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from metalearn.learn.learners.base import Learner
from metalearn.learn.learners.transfer_heads import HEADS, TransferHead, _ridge_path, log_rule


@pytest.mark.parametrize("values, expected", [
    ([1.0, 10.0], False),            # span exactly 10: not more than a decade
    ([1.0, 10.0001], True),
    ([0.5, 2.0, 50.0], True),
    ([0.0, 1.0, 100.0], False),      # a zero: not every value positive
    ([-1.0, 5.0, 100.0], False),
    ([2.0, 3.0, 19.9], False),
    ([1e-3, 1e-1], True),
])
def test_log_rule_triggers_exactly_as_specified(values, expected):
    assert log_rule(np.array(values)) is expected
    head = TransferHead(2, head="ridge")
    y = torch.tensor(values + values[:1] * 3, dtype=torch.float64)  # >= 3 rows so the head fits
    state = head.adapt(torch.randn(len(y), 2), y)
    assert state.space.log is log_rule(y.numpy())


def test_ridge_loo_matches_brute_force():
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(10, 25)), rng.normal(size=10)
    coef, _icpt, loo = _ridge_path(x, z, np.array([0.3, 3.0]))
    for a, alpha in enumerate([0.3, 3.0]):
        ref = [Ridge(alpha=alpha).fit(np.delete(x, i, 0), np.delete(z, i)).predict(x[i:i + 1])[0] for i in range(10)]
        np.testing.assert_allclose(loo[a], ref, atol=1e-9)
        np.testing.assert_allclose(coef[a], Ridge(alpha=alpha).fit(x, z).coef_, atol=1e-9)


def _mae_mad(pred, y):
    return np.mean(np.abs(pred - y)) / np.mean(np.abs(y - y.mean()))


def test_robust_head_beats_mean_head_on_heavy_tailed_family():
    """Mostly a weak linear signal, 8% Pareto outliers of both signs (so the log rule cannot help)."""
    rng = np.random.default_rng(1)
    scores = {"auto": [], "ridge": [], "mean": []}
    for _ in range(30):
        x = rng.normal(size=(110, 8))
        y = 0.5 * x[:, 0] + 0.3 * rng.normal(size=110)
        out = rng.random(110) < 0.08
        y[out] += rng.choice([-1, 1], out.sum()) * rng.pareto(1.0, out.sum()) * 30
        xs, ys, xq, yq = torch.tensor(x[:10]), torch.tensor(y[:10]), torch.tensor(x[10:]), y[10:]
        for name in ("auto", "ridge"):
            head = TransferHead(8, head=name)
            scores[name].append(_mae_mad(head.predict(head.adapt(xs, ys), xq).mean.numpy(), yq))
        scores["mean"].append(_mae_mad(np.full(len(yq), y[:10].mean()), yq))
    mean = {name: np.mean(values) for name, values in scores.items()}
    assert mean["auto"] < 0.8 * mean["mean"] and mean["auto"] < 0.8 * mean["ridge"]


def test_heads_follow_the_learner_protocol_and_are_fast():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(110, 30)))
    y = torch.tensor(np.exp(rng.normal(size=110)))
    for name in HEADS:
        head = TransferHead(30, head=name)
        assert isinstance(head, Learner)
        started = time.perf_counter()
        pred = head.predict(head.adapt(x[:10], y[:10]), x[10:])
        assert time.perf_counter() - started < 1.0
        assert pred.mean.shape == (100,) and torch.isfinite(pred.mean).all()
    clone = TransferHead(30, head="ridge")
    clone.load_state_dict(TransferHead(30, head="auto", ensemble=2).state_dict())
    assert clone.hyperparams["head"] == "auto" and clone.hyperparams["ensemble"] == 2


def test_meta_head_learns_weights_from_tasks_and_respects_masks():
    from metalearn.learn.learners.meta_transfer import MetaTransferHead, feature_relevance

    rng = np.random.default_rng(3)
    tasks = []
    for _ in range(5):  # column 0 carries signal in every task; column 2 is masked (own family) and perfect
        x = rng.normal(size=(200, 4))
        y = x[:, 0] + 0.5 * rng.normal(size=200)
        x[:, 2] = y
        tasks.append((x, y, np.array([True, True, False, True])))
    head = MetaTransferHead(4).meta_fit(tasks)
    w = np.asarray(head.hyperparams["feature_weights"])
    assert w[0] == w.max() and w[2] == 0.0 and np.isclose(w.mean(), 1.0)
    np.testing.assert_allclose(feature_relevance(tasks[0][0], tasks[0][1])[2], 1.0)
    clone = MetaTransferHead(4)
    clone.load_state_dict(head.state_dict())
    np.testing.assert_array_equal(clone.hyperparams["feature_weights"], w)
    pred = clone.predict(clone.adapt(torch.tensor(tasks[0][0][:10]), torch.tensor(tasks[0][1][:10])),
                         torch.tensor(tasks[0][0][10:]))
    assert pred.mean.shape == (190,)


def test_meta_learned_penalty_beats_loo_penalty_and_round_trips():
    """Many weak features, 5-10 rows: LOO picks the penalty from the support and overfits it; the
    episodes' choice (meta-train tasks of the same kind) predicts better on fresh tasks."""
    from metalearn.learn.learners.meta_transfer import META_ALPHAS, MetaTransferHead
    from metalearn.learn.learners.transfer_heads import alpha_for_k

    rng = np.random.default_rng(4)

    def task(n):
        x = rng.normal(size=(n, 20))
        return x, x[:, :6] @ rng.normal(0.4, 0.2, size=6) + rng.normal(size=n)

    meta = MetaTransferHead(20).meta_fit([(*task(150), None) for _ in range(6)], ks=(5, 10), n_episodes=4)
    by_k = meta.hyperparams["alpha_by_k"]
    assert [k for k, _ in by_k] == [5, 10] and all(a in META_ALPHAS for _, a in by_k)
    assert meta.alpha_loss_count_ == {5: 24, 10: 24}
    assert np.isclose(alpha_for_k(by_k, 7), np.exp(np.interp(np.log(7), np.log([5, 10]), np.log([a for _, a in by_k]))))
    assert alpha_for_k(by_k, 40) == by_k[-1][1] and alpha_for_k(by_k, 3) == by_k[0][1]
    loo = MetaTransferHead(20, meta_alpha=False).meta_fit([(*task(150), None) for _ in range(6)])
    assert loo.hyperparams["alpha_by_k"] is None and not loo.alpha_loss_sum_
    scores = {"meta": [], "loo": []}
    for _ in range(40):
        x, y = task(110)
        xs, ys, xq = torch.tensor(x[:8]), torch.tensor(y[:8]), torch.tensor(x[8:])
        for name, head in (("meta", meta), ("loo", loo)):
            scores[name].append(_mae_mad(head.predict(head.adapt(xs, ys), xq).mean.numpy(), y[8:]))
    assert np.mean(scores["meta"]) < np.mean(scores["loo"])
    clone = MetaTransferHead(20)
    clone.load_state_dict(meta.state_dict())
    assert clone.hyperparams["alpha_by_k"] == by_k and clone.fixed_alpha(10) == by_k[1][1]
    np.testing.assert_array_equal(clone.alpha_loss_sum_[5], meta.alpha_loss_sum_[5])
    # a plain head with a fixed penalty uses it for ridge and huber
    head = TransferHead(20, head="ridge", alpha=3.0)
    assert head.fixed_alpha(10) == 3.0 and TransferHead(20).fixed_alpha(10) is None
