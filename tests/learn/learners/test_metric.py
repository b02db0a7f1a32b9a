"""Deep-kernel GP: closed-form posterior against NumPy, uncertainty, behaviour, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from learner_support import N_FEATURES, sine_batch, trained_and_reloaded

from metalearn.learn.learners import build_learner
from metalearn.learn.learners.metric import MetricConfig, MetricGP, gaussian_nll, gp_posterior, rbf_kernel
from metalearn.learn.sampling import TaskBatch


def numpy_gp(z_support, y_support, z_query, ls, os_, noise):
    """Textbook GP regression with prior mean = support mean: mean (q,), predictive var (q,)."""

    def k(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return os_ * np.exp(-0.5 * sq / ls**2)

    mu = y_support.mean()
    gram = k(z_support, z_support) + noise * np.eye(len(z_support))
    k_qs = k(z_query, z_support)
    mean = mu + k_qs @ np.linalg.solve(gram, y_support - mu)
    var = os_ - np.einsum("qi,qi->q", k_qs, np.linalg.solve(gram, k_qs.T).T) + noise
    return mean, var


def test_posterior_equals_numpy_closed_form_on_a_fixed_embedding():
    rng = np.random.default_rng(0)
    z_support, z_query = rng.normal(size=(2, 7, 3)), rng.normal(size=(2, 5, 3))
    y_support = rng.normal(size=(2, 7))
    ls, os_, noise = 1.3, 0.8, 0.05
    t = [torch.tensor(a, dtype=torch.float64) for a in (z_support, y_support, z_query, ls, os_, noise)]
    mean, var = gp_posterior(*t, jitter=0.0)
    for b in range(2):
        want_mean, want_var = numpy_gp(z_support[b], y_support[b], z_query[b], ls, os_, noise)
        np.testing.assert_allclose(mean[b].numpy(), want_mean, atol=1e-10)
        np.testing.assert_allclose(var[b].numpy(), want_var, atol=1e-10)


def test_kernel_and_nll_match_their_formulas():
    a, b = torch.randn(1, 3, 2, dtype=torch.float64), torch.randn(1, 4, 2, dtype=torch.float64)
    got = rbf_kernel(a, b, torch.tensor(0.7), torch.tensor(2.0))
    want = 2.0 * torch.exp(-(torch.cdist(a, b) ** 2) / (2 * 0.49))
    torch.testing.assert_close(got, want)
    y, m, v = torch.tensor([0.5, -1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 4.0])
    want_nll = np.mean(
        [0.5 * math.log(2 * math.pi * vi) + 0.5 * (yi - mi) ** 2 / vi for yi, mi, vi in zip(y, m, v)]
    )
    assert float(gaussian_nll(y, m, v)) == pytest.approx(want_nll)


def test_predictions_have_positive_std_and_far_points_revert_to_the_support_mean():
    learner = MetricGP(N_FEATURES, "regression", MetricConfig(hidden=(16,), embed_dim=4, device="cpu"))
    x_support, y_support = torch.randn(6, N_FEATURES), torch.randn(6)
    x_query = torch.cat([x_support[:2], 1e4 * torch.ones(1, N_FEATURES)])
    pred = learner.predict(learner.adapt(x_support, y_support), x_query)
    assert pred.std is not None and pred.std.shape == (3,) and bool((pred.std > 0).all())
    assert float(pred.mean[2]) == pytest.approx(float(y_support.mean()), abs=1e-5)  # kernel ~0 far away
    assert bool((pred.std[:2] < pred.std[2]).all())  # less uncertain at the support rows


def test_classification_regresses_labels_and_clips_to_probabilities():
    learner = build_learner("metric", N_FEATURES, "classification", hidden=(16,), embed_dim=4, device="cpu")
    x_support, y_support = torch.randn(6, N_FEATURES), torch.tensor([0.0, 1, 1, 0, 1, 1])
    x_query = torch.cat([x_support, 3 * torch.randn(20, N_FEATURES)])
    p = learner.predict(learner.adapt(x_support, y_support), x_query).mean
    assert bool(((p >= 0) & (p <= 1)).all())


def scores(learner, batch: TaskBatch) -> tuple[float, float, float]:
    """(query MSE, support-mean query MSE, fraction of query rows within 2 predicted std)."""
    ours, base, covered = [], [], []
    for t in range(batch.n_tasks):
        pred = learner.predict(learner.adapt(batch.x_support[t], batch.y_support[t]), batch.x_query[t])
        ours.append(float(((pred.mean - batch.y_query[t]) ** 2).mean()))
        base.append(float(((batch.y_support[t].mean() - batch.y_query[t]) ** 2).mean()))
        covered.append(float(((pred.mean - batch.y_query[t]).abs() < 2 * pred.std).float().mean()))
    n = batch.n_tasks
    return sum(ours) / n, sum(base) / n, sum(covered) / n


def test_meta_training_beats_the_support_mean_with_sensible_uncertainty():
    learner = build_learner("metric", N_FEATURES, "regression", hidden=(32, 32), outer_lr=3e-3, device="cpu")
    unseen = sine_batch(torch.Generator().manual_seed(2), 100)
    untrained, baseline, _ = scores(learner, unseen)
    gen = torch.Generator().manual_seed(1)
    for _ in range(250):
        logs = learner.meta_train_step(sine_batch(gen, 8))
    assert math.isfinite(logs["loss"]) and logs["noise"] > 0
    trained, _, coverage = scores(learner, unseen)
    assert untrained > 0.8 * baseline
    assert trained < 0.6 * baseline
    assert 0.85 < coverage <= 1.0  # ~95% nominal (0.38 untrained); loose because training is short


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    learner = build_learner(
        "metric", N_FEATURES, "regression", hidden=(16,), embed_dim=4, seed=4, device="cpu"
    )
    batch = sine_batch(torch.Generator().manual_seed(0), 4)
    loaded = trained_and_reloaded(learner, batch, tmp_path / "metric.pt")
    assert isinstance(loaded, MetricGP) and loaded.cfg == learner.cfg
    x_support, y_support, x_query = torch.randn(6, N_FEATURES), torch.randn(6), torch.randn(5, N_FEATURES)
    a = loaded.predict(loaded.adapt(x_support, y_support), x_query)
    b = learner.predict(learner.adapt(x_support, y_support), x_query)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
