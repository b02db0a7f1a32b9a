"""MLP encoders: shapes, the encoder/head split and functional use."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metalearn.learn.models import MLP, head_keys, param_dict


def test_shapes_and_embedding():
    net = MLP(7, hidden=(16, 8), out=3)
    x = torch.randn(5, 7)
    assert net(x).shape == (5, 3)
    assert net.embed(x).shape == (5, 8)
    assert net.embed_dim == 8
    torch.testing.assert_close(net.head(net.embed(x)), net(x))


def test_batched_leading_dims():
    net = MLP(4, hidden=(6,), out=1)
    assert net(torch.randn(3, 5, 4)).shape == (3, 5, 1)


def test_no_buffers_so_functional_calls_are_pure():
    net = MLP(4, hidden=(6, 6), layer_norm=True, dropout=0.1)
    assert list(net.buffers()) == []
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in net.modules())
    assert any(isinstance(m, nn.LayerNorm) for m in net.modules())
    assert any(isinstance(m, nn.Dropout) for m in net.modules())


def test_functional_call_with_param_dict_matches_forward_and_uses_given_params():
    net = MLP(4, hidden=(6,))
    x = torch.randn(3, 4)
    params = param_dict(net)
    torch.testing.assert_close(functional_call(net, params, (x,)), net(x))
    shifted = {k: (v + 1.0 if k == "head.bias" else v) for k, v in params.items()}
    torch.testing.assert_close(functional_call(net, shifted, (x,)), net(x) + 1.0)


def test_head_keys_are_the_last_linear_only():
    params = param_dict(MLP(4, hidden=(6, 6)))
    assert set(head_keys(params)) == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="head"):
        head_keys({"encoder.0.weight": torch.zeros(1)})


def test_bad_sizes_raise():
    with pytest.raises(ValueError):
        MLP(0)
    with pytest.raises(ValueError):
        MLP(4, hidden=())
