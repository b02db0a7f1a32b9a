"""MAML family: the vmapped torch.func path against a plain per-task autograd loop, and behaviour."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from learner_support import N_FEATURES, query_mse, sine_batch, trained_and_reloaded

from metalearn.learn.learners import build_learner
from metalearn.learn.learners.maml import MAML, MAMLConfig
from metalearn.learn.learners.maml_functional import meta_gradients, query_losses
from metalearn.learn.models import MLP, head_keys, param_dict
from metalearn.learn.sampling import TaskBatch
from metalearn.learn.train import TrainConfig, meta_train

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


def reference_losses(params, lrs, x_support, y_support, x_query, y_query, *, task_type, steps, first_order):
    """Per-task inner loop with torch.autograd.grad (create_graph for second order) -> (T,)."""
    loss_fn = F.mse_loss if task_type == "regression" else F.binary_cross_entropy_with_logits
    out = []
    for t in range(x_support.shape[0]):
        fast = dict(params)
        for _ in range(steps):
            inner = loss_fn(manual_forward(fast, x_support[t]), y_support[t])
            keys = list(lrs)
            grads = torch.autograd.grad(inner, [fast[k] for k in keys], create_graph=not first_order)
            fast = {**fast, **{k: fast[k] - lrs[k] * g for k, g in zip(keys, grads)}}
        out.append(loss_fn(manual_forward(fast, x_query[t]), y_query[t]))
    return torch.stack(out)


def make_problem(variant: str, task_type: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(N_FEATURES, hidden=(16, 12)).double()
    params = param_dict(model)
    keys = head_keys(params) if variant == "anil" else tuple(params)
    if variant == "metasgd":
        lrs = {k: (0.05 + 0.1 * torch.rand_like(params[k])).requires_grad_() for k in keys}
    else:
        lrs = {k: 0.1 for k in keys}
    T, n_support, n_query = 4, 5, 7
    x_support, x_query = (
        torch.randn(T, n_support, N_FEATURES, dtype=torch.float64),
        torch.randn(T, n_query, N_FEATURES, dtype=torch.float64),
    )
    y_support = torch.randn(T, n_support, dtype=torch.float64)
    y_query = torch.randn(T, n_query, dtype=torch.float64)
    if task_type == "classification":
        y_support, y_query = (y_support > 0).double(), (y_query > 0).double()
    return model, params, lrs, (x_support, y_support, x_query, y_query)


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


@pytest.mark.parametrize("variant,first_order,task_type", CASES)
def test_vmapped_losses_and_meta_gradients_equal_the_per_task_loop(variant, first_order, task_type):
    model, params, lrs, data = make_problem(variant, task_type)
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
    assert list(g_params) == list(params) and list(g_lrs) == [k for k in lrs if variant == "metasgd"]
    for got, want in zip([*g_params.values(), *g_lrs.values()], ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["maml", "metasgd"])
def test_second_order_terms_matter_here(variant):
    """Guards the comparison above: it could not tell first from second order if they agreed."""
    model, params, lrs, data = make_problem(variant, "regression")
    second = meta_grads(query_losses(model, params, lrs, *data, task_type="regression", steps=3), params, lrs)
    first = meta_grads(
        query_losses(model, params, lrs, *data, task_type="regression", steps=3, first_order=True),
        params,
        lrs,
    )
    assert max(float((a - b).abs().max()) for a, b in zip(second, first)) > 1e-4


class SineSampler:
    """``batch(split, step)``: sine-family episodes, deterministic in (split, step)."""

    def batch(self, split: str, step: int) -> TaskBatch:
        return sine_batch(torch.Generator().manual_seed(1000 * (split == "meta-val") + step), 4)


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil"])
def test_meta_train_follows_the_per_task_reference_loop(name):
    """A short meta_train run: its per-step losses and final weights are those of the plain loop + AdamW."""
    learner = build_learner(
        name, N_FEATURES, "regression", hidden=(8,), inner_steps=2, inner_lr=0.1, device="cpu"
    )
    cfg = TrainConfig(max_steps=4, meta_batch_size=4, eval_every=4, n_val_batches=1, device="cpu")
    params = {k: v.detach().clone().requires_grad_() for k, v in learner.model.named_parameters()}
    lrs = {
        k: v.detach().clone().requires_grad_() if torch.is_tensor(v) else v for k, v in learner.lrs.items()
    }
    learned = [v for v in lrs.values() if torch.is_tensor(v)]
    optimizer = torch.optim.AdamW([*params.values(), *learned], lr=learner.cfg.outer_lr, weight_decay=0.0)
    sampler, want = SineSampler(), []
    for step in range(cfg.max_steps):
        b = sampler.batch("meta-train", step)
        loss = reference_losses(
            params, lrs, b.x_support, b.y_support, b.x_query, b.y_query,
            task_type="regression", steps=learner.cfg.inner_steps, first_order=learner.cfg.first_order,
        ).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), learner.cfg.max_grad_norm)
        optimizer.step()
        want.append(float(loss.detach()))

    got: list[float] = []
    meta_train(learner, sampler, cfg, on_step=lambda step, logs: got.append(logs["loss"]))
    assert got == pytest.approx(want, rel=1e-5)
    for k, p in learner.model.named_parameters():
        torch.testing.assert_close(p.detach(), params[k].detach(), atol=1e-5, rtol=1e-4)
    for k, lr in learner.lrs.items():
        want_lr = torch.as_tensor(lrs[k]).detach()
        torch.testing.assert_close(torch.as_tensor(lr).detach(), want_lr, atol=1e-5, rtol=1e-4)


def test_metasgd_learns_its_inner_rates():
    learner = build_learner("metasgd", N_FEATURES, "regression", hidden=(8,), inner_steps=2, device="cpu")
    start = {k: v.detach().clone() for k, v in learner.lrs.items()}
    assert all(torch.equal(v, torch.full_like(v, learner.cfg.inner_lr)) for v in start.values())
    learner.meta_train_step(sine_batch(torch.Generator().manual_seed(0), 4))
    for k, lr in learner.lrs.items():  # Adam's first step moves every rate with a gradient by ~outer_lr
        assert float((lr.detach() - start[k]).abs().max()) > 0.5 * learner.cfg.outer_lr, k


def test_anil_adapts_only_the_head():
    learner = MAML(
        N_FEATURES, "regression", MAMLConfig(variant="anil", hidden=(8,), inner_lr=0.5, device="cpu")
    )
    before = param_dict(learner.model)
    adapted = learner.adapt(torch.randn(6, N_FEATURES), torch.randn(6))
    for k, v in adapted.items():
        assert torch.equal(v, before[k]) != k.startswith("head."), k


@pytest.mark.parametrize("name", ["maml", "metasgd", "anil"])
def test_zero_inner_steps_is_no_adaptation(name):
    learner = build_learner(name, N_FEATURES, "regression", hidden=(8,), inner_steps=0, device="cpu")
    x_support, y_support = torch.randn(6, N_FEATURES), torch.randn(6)
    x_query = torch.randn(9, N_FEATURES)
    state = learner.adapt(x_support, y_support)
    with torch.no_grad():
        expected = learner.model(x_query).squeeze(-1)
    assert torch.equal(learner.predict(state, x_query).mean, expected)
    # and an adapting learner does move away from it
    moved = build_learner(
        name, N_FEATURES, "regression", hidden=(8,), inner_steps=2, inner_lr=0.1, device="cpu"
    )
    assert not torch.equal(moved.predict(moved.adapt(x_support, y_support), x_query).mean, expected)


def test_classification_predicts_probabilities():
    learner = build_learner("fomaml", N_FEATURES, "classification", hidden=(8,), device="cpu")
    x_support, y_support = torch.randn(6, N_FEATURES), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    p = learner.predict(learner.adapt(x_support, y_support), torch.randn(9, N_FEATURES)).mean
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
    x_support, y_support, x_query = torch.randn(6, N_FEATURES), torch.randn(6), torch.randn(5, N_FEATURES)
    assert torch.equal(
        loaded.predict(loaded.adapt(x_support, y_support), x_query).mean,
        learner.predict(learner.adapt(x_support, y_support), x_query).mean,
    )


def test_bad_config_values_raise():
    with pytest.raises(ValueError, match="variant"):
        MAMLConfig(variant="reptile")
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            a, b = eager.meta_train_step(batch)["loss"], compiled.meta_train_step(batch)["loss"]
            assert a == pytest.approx(b, rel=1e-5)
    # still compiled: the fallback to eager announces itself with this warning
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    for p, q in zip(
        [*eager.model.parameters(), *eager.lrs.values()],
        [*compiled.model.parameters(), *compiled.lrs.values()],
    ):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    init = compiled.cfg.inner_lr
    for lr in compiled.lrs.values():  # the learned rates were trained too, away from their start
        assert float((lr.detach() - init).abs().max()) > 0.5 * compiled.cfg.outer_lr


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
    x_support, y_support, x_query = batch.x_support[0], batch.y_support[0], batch.x_query[0]
    assert torch.equal(
        learner.predict(learner.adapt(x_support, y_support), x_query).mean,
        learner.predict(learner.adapt(x_support, y_support), x_query).mean,
    )
