"""MAML family: the vmapped torch.func path against a plain per-task autograd loop, and behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from learner_support import N_FEATURES, query_mse, sine_batch, trained_and_reloaded

from metalearn.learn.learners import LEARNERS, Learner, build_learner, load_learner
from metalearn.learn.learners.maml import MAML, MAMLConfig, meta_gradients, query_losses
from metalearn.learn.models import MLP, head_keys, param_dict

# --- the reference: a plain loop over tasks with torch.autograd.grad --------------------------------


def manual_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Linear/ReLU stack written out by hand (no functional_call), (n, F) -> (n,)."""
    weights = [v for k, v in params.items() if k.endswith("weight")]
    biases = [v for k, v in params.items() if k.endswith("bias")]
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.T + b
        if i < len(weights) - 1:
            h = torch.relu(h)
    return h.squeeze(-1)


def reference_losses(params, lrs, xs, ys, xq, yq, *, task_type, steps, first_order):
    """Per-task inner loop with torch.autograd.grad (create_graph for second order) -> (T,)."""
    loss_fn = F.mse_loss if task_type == "regression" else F.binary_cross_entropy_with_logits
    out = []
    for t in range(xs.shape[0]):
        fast = dict(params)
        for _ in range(steps):
            inner = loss_fn(manual_forward(fast, xs[t]), ys[t])
            keys = list(lrs)
            grads = torch.autograd.grad(inner, [fast[k] for k in keys], create_graph=not first_order)
            fast = {**fast, **{k: fast[k] - lrs[k] * g for k, g in zip(keys, grads)}}
        out.append(loss_fn(manual_forward(fast, xq[t]), yq[t]))
    return torch.stack(out)


def make_problem(algorithm: str, task_type: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(N_FEATURES, hidden=(16, 12)).double()
    params = param_dict(model)
    keys = head_keys(params) if algorithm == "anil" else tuple(params)
    if algorithm == "metasgd":
        lrs = {k: (0.05 + 0.1 * torch.rand_like(params[k])).requires_grad_() for k in keys}
    else:
        lrs = {k: 0.1 for k in keys}
    T, k, q = 4, 5, 7
    xs, xq = (
        torch.randn(T, k, N_FEATURES, dtype=torch.float64),
        torch.randn(T, q, N_FEATURES, dtype=torch.float64),
    )
    ys, yq = torch.randn(T, k, dtype=torch.float64), torch.randn(T, q, dtype=torch.float64)
    if task_type == "classification":
        ys, yq = (ys > 0).double(), (yq > 0).double()
    return model, params, lrs, (xs, ys, xq, yq)


def meta_grads(losses, params, lrs):
    wrt = list(params.values()) + [v for v in lrs.values() if isinstance(v, torch.Tensor)]
    return torch.autograd.grad(losses.mean(), wrt)


CASES = [
    ("maml", False, "regression"),
    ("maml", True, "regression"),  # FOMAML
    ("metasgd", False, "regression"),
    ("metasgd", True, "regression"),
    ("anil", False, "regression"),
    ("maml", False, "classification"),
    ("anil", True, "classification"),
]


@pytest.mark.parametrize("algorithm,first_order,task_type", CASES)
def test_vmapped_losses_and_meta_gradients_equal_the_per_task_loop(algorithm, first_order, task_type):
    model, params, lrs, data = make_problem(algorithm, task_type)
    kw = {"task_type": task_type, "steps": 3, "first_order": first_order}
    ref_losses = reference_losses(params, lrs, *data, **kw)
    ref_grads = meta_grads(ref_losses, params, lrs)

    # eager training path: autograd through the vmapped query losses
    fast_losses = query_losses(model, params, lrs, *data, **kw)
    assert fast_losses.shape == (4,)
    torch.testing.assert_close(fast_losses, ref_losses, atol=1e-6, rtol=0)
    for got, want in zip(meta_grads(fast_losses, params, lrs), ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)

    # compiled training path: the outer gradient as a torch.func transform too
    detached = {k: v.detach() for k, v in params.items()}
    detached_lrs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in lrs.items()}
    g_params, g_lrs, losses = meta_gradients(model, detached, detached_lrs, *data, **kw)
    torch.testing.assert_close(losses, ref_losses, atol=1e-6, rtol=0)
    assert list(g_params) == list(params) and list(g_lrs) == [k for k in lrs if algorithm == "metasgd"]
    for got, want in zip([*g_params.values(), *g_lrs.values()], ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_second_order_terms_matter_here(algorithm):
    """Guards the comparison above: it could not tell first from second order if they agreed."""
    model, params, lrs, data = make_problem(algorithm, "regression")
    second = meta_grads(query_losses(model, params, lrs, *data, task_type="regression", steps=3), params, lrs)
    first = meta_grads(
        query_losses(model, params, lrs, *data, task_type="regression", steps=3, first_order=True),
        params,
        lrs,
    )
    assert max(float((a - b).abs().max()) for a, b in zip(second, first)) > 1e-4


def test_anil_adapts_only_the_head():
    learner = MAML(
        N_FEATURES, "regression", MAMLConfig(algorithm="anil", hidden=(8,), inner_lr=0.5, device="cpu")
    )
    before = param_dict(learner.model)
    adapted = learner.adapt(torch.randn(6, N_FEATURES), torch.randn(6))
    for k, v in adapted.items():
        assert torch.equal(v, before[k]) != k.startswith("head."), k


@pytest.mark.parametrize("name", ["maml", "metasgd", "anil"])
def test_zero_inner_steps_is_no_adaptation(name):
    learner = build_learner(name, N_FEATURES, "regression", hidden=(8,), inner_steps=0, device="cpu")
    x_s, y_s, x_q = torch.randn(6, N_FEATURES), torch.randn(6), torch.randn(9, N_FEATURES)
    state = learner.adapt(x_s, y_s)
    with torch.no_grad():
        expected = learner.model(x_q).squeeze(-1)
    assert torch.equal(learner.predict(state, x_q).mean, expected)
    # and an adapting learner does move away from it
    moved = build_learner(
        name, N_FEATURES, "regression", hidden=(8,), inner_steps=2, inner_lr=0.1, device="cpu"
    )
    assert not torch.equal(moved.predict(moved.adapt(x_s, y_s), x_q).mean, expected)


def test_classification_predicts_probabilities():
    learner = build_learner("fomaml", N_FEATURES, "classification", hidden=(8,), device="cpu")
    x_s, y_s = torch.randn(6, N_FEATURES), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    p = learner.predict(learner.adapt(x_s, y_s), torch.randn(9, N_FEATURES)).mean
    assert p.shape == (9,) and bool(((p > 0) & (p < 1)).all())


# --- behaviour on a family of related tasks ----------------------------------------------------------


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil"])
def test_meta_training_beats_the_support_mean_on_unseen_tasks(name):
    learner = build_learner(
        name,
        N_FEATURES,
        "regression",
        hidden=(32, 32),
        inner_steps=3,
        inner_lr=0.1,
        outer_lr=3e-3,
        max_grad_norm=None,
        device="cpu",
    )
    unseen = sine_batch(torch.Generator().manual_seed(2), 100)
    untrained, baseline = query_mse(learner, unseen)
    train_gen = torch.Generator().manual_seed(1)
    for _ in range(250):
        logs = learner.meta_train_step(sine_batch(train_gen, 8))
    assert math.isfinite(logs["loss"])
    trained, _ = query_mse(learner, unseen)
    assert untrained > 0.8 * baseline  # the win comes from meta-training, not from the start
    assert trained < 0.6 * baseline


# --- factory and persistence ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil"])
def test_save_load_round_trip_gives_identical_predictions(name, tmp_path):
    learner = build_learner(
        name, N_FEATURES, "regression", hidden=(8, 8), inner_steps=2, seed=3, device="cpu"
    )
    batch = sine_batch(torch.Generator().manual_seed(0), 4)
    loaded = trained_and_reloaded(learner, batch, tmp_path / "learner.pt")
    assert loaded.name == name and isinstance(loaded, MAML) and loaded.cfg == learner.cfg
    x_s, y_s, x_q = torch.randn(6, N_FEATURES), torch.randn(6), torch.randn(5, N_FEATURES)
    assert torch.equal(
        loaded.predict(loaded.adapt(x_s, y_s), x_q).mean, learner.predict(learner.adapt(x_s, y_s), x_q).mean
    )


def test_presets_name_and_pin_their_variant():
    assert build_learner("fomaml", N_FEATURES, "regression", hidden=(4,)).cfg.first_order is True
    assert build_learner("maml", N_FEATURES, "regression", hidden=(4,)).name == "maml"
    assert build_learner("metasgd", N_FEATURES, "regression", hidden=(4,)).cfg.algorithm == "metasgd"
    with pytest.raises(ValueError, match="fixes"):
        build_learner("fomaml", N_FEATURES, "regression", first_order=False)
    with pytest.raises(TypeError):
        build_learner("maml", N_FEATURES, "regression", inner_step=3)  # typo'd key fails at once


@pytest.mark.parametrize(
    "name,task_type",
    [(n, "regression") for n in ("maml", "fomaml", "metasgd", "anil", "metric")]
    + [("protonet", "classification")],
)
def test_every_meta_learner_follows_the_protocol(name, task_type):
    learner = build_learner(name, N_FEATURES, task_type, hidden=(4,), device="cpu")
    assert isinstance(learner, Learner) and learner.name == name and learner.meta_trainable


class NotATensor:
    pass


def test_load_refuses_arbitrary_pickles_unless_trusted(tmp_path):
    learner = build_learner("maml", N_FEATURES, "regression", hidden=(4,), device="cpu")
    torch.save(
        {"name": "maml", "state": {**learner.state_dict(), "extra": NotATensor()}}, tmp_path / "odd.pt"
    )
    with pytest.raises(ValueError, match="trusted=True"):
        load_learner(tmp_path / "odd.pt")
    assert load_learner(tmp_path / "odd.pt", trusted=True).name == "maml"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names") as err:
        build_learner("reptile", N_FEATURES, "regression")
    for name in ("maml", "fomaml", "metasgd", "anil", "protonet", "metric", "mean", "knn", "rf", "mlp"):
        assert name in str(err.value) and name in LEARNERS


def test_bad_config_values_raise():
    with pytest.raises(ValueError, match="algorithm"):
        MAMLConfig(algorithm="reptile")
    with pytest.raises(ValueError, match="inner steps"):
        MAMLConfig(inner_steps=-1)
    with pytest.raises(ValueError, match="task_type"):
        MAML(N_FEATURES, "ranking", MAMLConfig(hidden=(4,)))


@pytest.mark.slow
def test_compiled_path_matches_eager_on_cpu():
    """compile=True trains through meta_gradients, eager through autograd: the two must agree."""
    cfg = {"hidden": (8,), "inner_steps": 1, "seed": 1, "first_order": True, "device": "cpu"}
    eager = build_learner("metasgd", N_FEATURES, "regression", **cfg)
    compiled = build_learner("metasgd", N_FEATURES, "regression", compile=True, **cfg)
    batch = sine_batch(torch.Generator().manual_seed(0), 4)
    for _ in range(2):
        a, b = eager.meta_train_step(batch)["loss"], compiled.meta_train_step(batch)["loss"]
        assert a == pytest.approx(b, rel=1e-5)
    for p, q in zip(
        [*eager.model.parameters(), *eager.lrs.values()],
        [*compiled.model.parameters(), *compiled.lrs.values()],
    ):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert not torch.equal(compiled.lrs["head.weight"], torch.full_like(compiled.lrs["head.weight"], 0.01))
    assert compiled._grads_fn.__name__ == "guarded"  # still compiled: no silent fallback to eager


def test_dropout_and_layer_norm_train_under_vmap_and_predict_deterministically():
    learner = build_learner(
        "maml",
        N_FEATURES,
        "regression",
        hidden=(8,),
        dropout=0.2,
        layer_norm=True,
        inner_steps=2,
        device="cpu",
    )
    batch = sine_batch(torch.Generator().manual_seed(0), 4)
    assert math.isfinite(learner.meta_train_step(batch)["loss"])  # vmap randomness="different"
    assert math.isfinite(learner.meta_loss(batch))
    x_s, y_s, x_q = batch.x_support[0], batch.y_support[0], batch.x_query[0]
    assert torch.equal(
        learner.predict(learner.adapt(x_s, y_s), x_q).mean, learner.predict(learner.adapt(x_s, y_s), x_q).mean
    )
