"""The torch learners' shared helpers: device, seeding, AdamW groups, optimiser snapshots, state."""

from __future__ import annotations

import pytest
import torch

from metalearn.learn.learners.maml import MAMLConfig
from metalearn.learn.learners.neural import (
    adamw,
    amp_autocast,
    load_state,
    optimizer_state_cpu,
    resolve_device,
    save_state,
    seeded,
)
from metalearn.learn.models import MLP


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


def test_seeded_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = seeded(5, lambda: MLP(4, hidden=(6,)))
    assert torch.equal(torch.rand(1), expected_next)
    b = seeded(5, lambda: MLP(4, hidden=(6,)))
    c = seeded(6, lambda: MLP(4, hidden=(6,)))
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_amp_is_off_on_cpu_whatever_the_setting():
    with amp_autocast(torch.device("cpu"), amp=True):
        assert not torch.is_autocast_enabled("cpu")
        assert MLP(4, hidden=(6,))(torch.randn(2, 4)).dtype == torch.float32


def test_adamw_decays_only_the_first_group():
    net, scale = MLP(4, hidden=(6,)), torch.nn.Parameter(torch.ones(()))
    two = adamw(net.parameters(), [scale], lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in two.param_groups] == [0.5, 0.0]
    one = adamw(net.parameters(), lr=0.1, weight_decay=0.5)
    assert len(one.param_groups) == 1  # no empty second group in the saved optimiser state
    scale.grad = torch.zeros(())
    two.step()  # a zero gradient and no decay: the scale stays exactly where it was
    assert float(scale.detach()) == 1.0


def test_optimizer_snapshot_does_not_follow_later_steps():
    net = MLP(4, hidden=(6,))
    opt = adamw(net.parameters(), lr=0.1, weight_decay=0.0)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(3, 4)).sum().backward()
        opt.step()
        if _ == 0:
            snapshot = optimizer_state_cpu(opt)
            first = {k: v.clone() for k, v in snapshot["state"][0].items()}
    assert all(torch.equal(snapshot["state"][0][k], first[k]) for k in first)
    assert not torch.equal(snapshot["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_save_state_round_trip_with_and_without_the_optimiser():
    cfg = MAMLConfig(hidden=(6,))
    a, b = MLP(4, hidden=(6,)), MLP(4, hidden=(6,))
    opt_a = adamw(a.parameters(), lr=0.1, weight_decay=0.0)
    opt_b = adamw(b.parameters(), lr=0.1, weight_decay=0.0)
    opt_a.zero_grad()
    a(torch.randn(3, 4)).sum().backward()
    opt_a.step()
    state = save_state(4, "regression", cfg, a, opt_a, extra=1)
    assert state["hyperparams"]["hidden"] == [6] and state["extra"] == 1
    load_state({k: v for k, v in state.items() if k != "optimizer"}, b, opt_b)
    assert torch.equal(a.head.weight, b.head.weight) and not opt_b.state
    load_state(state, b, opt_b)
    assert torch.equal(opt_b.state_dict()["state"][0]["exp_avg"], opt_a.state_dict()["state"][0]["exp_avg"])
