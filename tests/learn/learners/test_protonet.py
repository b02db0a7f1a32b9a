"""ProtoNet: prototypes and loss against NumPy loops, missing-class fallback, behaviour, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from learner_support import N_FEATURES, trained_and_reloaded
from learner_support import query_mse as brier  # on 0/1 labels and probabilities: the Brier score

from metalearn.learn.learners import build_learner
from metalearn.learn.learners.protonet import ProtoNet, ProtoNetConfig, get_prototypes, prototypical_loss
from metalearn.learn.sampling import TaskBatch


def numpy_prototypes(emb: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    b, _, d = emb.shape
    protos, counts = np.zeros((b, n_classes, d)), np.zeros((b, n_classes))
    for t in range(b):
        for c in range(n_classes):
            rows = [emb[t, i] for i in range(emb.shape[1]) if labels[t, i] == c]
            counts[t, c] = len(rows)
            if rows:
                protos[t, c] = np.mean(rows, axis=0)
    return protos, counts


def numpy_loss(protos: np.ndarray, query: np.ndarray, labels: np.ndarray) -> float:
    """Mean over tasks and query rows of -log softmax(-|e - p_c|^2)[label]; assumes every class present."""
    total, n = 0.0, 0
    for t in range(query.shape[0]):
        for i in range(query.shape[1]):
            logits = np.array([-np.sum((query[t, i] - p) ** 2) for p in protos[t]])
            log_norm = logits.max() + np.log(np.sum(np.exp(logits - logits.max())))
            total += log_norm - logits[labels[t, i]]
            n += 1
    return total / n


def test_prototypes_equal_a_numpy_loop_including_a_missing_class():
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor(
        [[0, 1, 2, 0, 1, 2], [2, 2, 0, 0, 0, 2], [1, 1, 1, 1, 1, 1]]
    )  # task 1 lacks class 1
    protos, counts = get_prototypes(emb, labels, num_classes=3)
    want_protos, want_counts = numpy_prototypes(emb.numpy(), labels.numpy(), 3)
    assert protos.shape == (3, 3, 4) and counts.shape == (3, 3)
    np.testing.assert_allclose(protos.numpy(), want_protos, atol=1e-12)
    np.testing.assert_allclose(counts.numpy(), want_counts)


def test_loss_equals_a_numpy_reference():
    gen = torch.Generator().manual_seed(1)
    support = torch.randn(4, 6, 5, generator=gen, dtype=torch.float64)
    support_labels = torch.tensor([[0, 1] * 3] * 4)
    query = torch.randn(4, 7, 5, generator=gen, dtype=torch.float64)
    query_labels = torch.randint(0, 2, (4, 7), generator=gen)
    protos, counts = get_prototypes(support, support_labels)
    loss, kept = prototypical_loss(protos, query, query_labels, counts)
    assert bool(kept.all())
    assert float(loss) == pytest.approx(
        numpy_loss(protos.numpy(), query.numpy(), query_labels.numpy()), abs=1e-10
    )


def test_loss_leaves_out_tasks_with_a_missing_class_and_stays_finite():
    gen = torch.Generator().manual_seed(2)
    support = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    support_labels = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0]])
    query = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    query_labels = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 1, 0]])
    protos, counts = get_prototypes(support, support_labels)
    loss, kept = prototypical_loss(protos, query, query_labels, counts)
    assert kept.tolist() == [True, False]
    only_first = numpy_loss(protos[:1].detach().numpy(), query[:1].numpy(), query_labels[:1].numpy())
    assert float(loss.detach()) == pytest.approx(only_first, abs=1e-10)
    loss.backward()
    assert torch.isfinite(support.grad).all() and float(support.grad[1].abs().sum()) == 0.0


def test_missing_class_falls_back_to_the_smoothed_prior():
    learner = ProtoNet(N_FEATURES, "classification", ProtoNetConfig(hidden=(8,), embed_dim=4, device="cpu"))
    learner.label_counts_ = torch.tensor([75.0, 25.0], dtype=torch.float64)  # meta-train prior 0.25
    x_query = torch.randn(5, N_FEATURES)
    all_neg = learner.predict(learner.adapt(torch.randn(4, N_FEATURES), torch.zeros(4)), x_query).mean
    torch.testing.assert_close(all_neg, torch.full((5,), 0.25 / 5))  # (0 + 1 * 0.25) / (4 + 1)
    all_pos = learner.predict(learner.adapt(torch.randn(4, N_FEATURES), torch.ones(4)), x_query).mean
    torch.testing.assert_close(all_pos, torch.full((5,), 4.25 / 5))


def test_predict_is_the_softmax_over_prototype_distances():
    learner = ProtoNet(N_FEATURES, "classification", ProtoNetConfig(hidden=(8,), embed_dim=4, device="cpu"))
    x_support, y_support = torch.randn(6, N_FEATURES), torch.tensor([0.0, 1, 0, 1, 1, 0])
    x_query = torch.randn(5, N_FEATURES)
    p = learner.predict(learner.adapt(x_support, y_support), x_query).mean
    with torch.no_grad():
        e_support, e_query = learner.model(x_support), learner.model(x_query)
    d0 = ((e_query - e_support[y_support == 0].mean(0)) ** 2).sum(-1)
    d1 = ((e_query - e_support[y_support == 1].mean(0)) ** 2).sum(-1)
    torch.testing.assert_close(p, torch.sigmoid(d0 - d1))


def test_regression_tasks_are_refused():
    with pytest.raises(ValueError, match="classification tasks only"):
        build_learner("protonet", N_FEATURES, "regression")


def angle_batch(gen: torch.Generator, n_tasks: int, n_support: int = 10, n_query: int = 10) -> TaskBatch:
    """y = 1[cos(a_t) x0 + sin(a_t) x1 > 0]: tasks share the 2-d subspace, differ in direction."""
    angle = 2 * math.pi * torch.rand(n_tasks, 1, generator=gen)
    x = torch.randn(n_tasks, n_support + n_query, N_FEATURES, generator=gen)
    y = ((torch.cos(angle) * x[..., 0] + torch.sin(angle) * x[..., 1]) > 0).float()
    ids = tuple(f"t{i}" for i in range(n_tasks))
    s, q = slice(None, n_support), slice(n_support, None)
    return TaskBatch(x[:, s], y[:, s], x[:, q], y[:, q], ids, "classification")


def test_meta_training_beats_the_support_mean_on_unseen_tasks():
    learner = build_learner(
        "protonet", N_FEATURES, "classification", hidden=(32, 32), outer_lr=3e-3, device="cpu"
    )
    unseen = angle_batch(torch.Generator().manual_seed(2), 100)
    untrained, baseline = brier(learner, unseen)
    gen = torch.Generator().manual_seed(1)
    for _ in range(250):
        logs = learner.meta_train_step(angle_batch(gen, 8))
    assert math.isfinite(logs["loss"]) and 0.0 < learner.prior_ < 1.0
    trained, _ = brier(learner, unseen)
    assert untrained > 0.8 * baseline
    assert trained < 0.6 * baseline


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    learner = build_learner(
        "protonet", N_FEATURES, "classification", hidden=(8,), embed_dim=4, seed=2, device="cpu"
    )
    batch = angle_batch(torch.Generator().manual_seed(0), 4)
    loaded = trained_and_reloaded(learner, batch, tmp_path / "protonet.pt")
    assert isinstance(loaded, ProtoNet) and loaded.cfg == learner.cfg and loaded.prior_ == learner.prior_
    x_support, x_query = torch.randn(6, N_FEATURES), torch.randn(5, N_FEATURES)
    for y_support in (
        torch.tensor([0.0, 1, 0, 1, 1, 0]),
        torch.zeros(6),
    ):  # both the distance and the fallback path
        assert torch.equal(
            loaded.predict(loaded.adapt(x_support, y_support), x_query).mean,
            learner.predict(learner.adapt(x_support, y_support), x_query).mean,
        )
