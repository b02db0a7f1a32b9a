"""Plain MLP encoders that meta-learners call functionally (``torch.func.functional_call``).

Why no BatchNorm: running statistics are buffers that change on every forward pass, which breaks
the "pure function of (params, tensors)" contract MAML relies on and leaks statistics between the
tasks of a meta-batch. LayerNorm normalises within one row and has only parameters, so it is safe.

The network is split into ``encoder`` (everything but the last layer) and ``head`` (the last
Linear) so ANIL can adapt only the head and metric learners can use the encoder output as an
embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

HEAD_PREFIX = "head."


class MLP(nn.Module):
    """Encoder (Linear-ReLU[-LayerNorm][-Dropout] blocks) followed by a Linear head.

    Args:
        n_features: input width F.
        hidden: widths of the hidden layers; ``hidden[-1]`` is the embedding width.
        out: width of the head's output (1 for a regression value or a logit).
        dropout: dropout probability after each hidden block (0 disables it).
        layer_norm: add a LayerNorm after each hidden activation.

    Example:
        >>> net = MLP(132, hidden=(128, 128), out=1)
        >>> net(torch.zeros(5, 132)).shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int] = (128, 128),
        out: int = 1,
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_features < 1 or out < 1 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"MLP needs positive sizes; got n_features={n_features}, hidden={hidden}, out={out}"
            )
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(width, out)
        self.n_features = n_features
        self.embed_dim = width

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (..., hidden[-1])."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (..., out)."""
        return self.head(self.encoder(x))


def param_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters as a plain ``{name: tensor}`` dict, the input of ``functional_call``."""
    return dict(module.named_parameters())


def head_keys(params: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Names of the head's parameters (what ANIL adapts in the inner loop)."""
    keys = tuple(k for k in params if k.startswith(HEAD_PREFIX))
    if not keys:
        raise ValueError(f"no parameters start with {HEAD_PREFIX!r}; got {sorted(params)}")
    return keys

