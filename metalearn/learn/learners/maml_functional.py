"""The MAML family as pure functions of (params, tensors): no optimiser, no learner state.

One ``task_loss``; ``inner_adapt`` takes ``torch.func.grad`` steps on the support loss;
``adapted_query_loss`` is one task's query loss after adaptation. ``query_losses`` ``vmap``s it over
the T tasks of a meta-batch, and ``meta_gradients`` ``vmap``s its ``grad`` (the outer gradient as
a transform too: the torch.compile path). Why a separate module: these are what the tests check
against a plain autograd loop and what benchmarks time, independent of the ``MAML`` learner.
Second order comes for free from nesting the transforms; first order is a ``detach`` of the
inner gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

Params = dict[str, torch.Tensor]
Rates = dict[str, torch.Tensor | float]  # inner lr per adapted key: a scalar, or per element (Meta-SGD)


def task_loss(
    model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, task_type: str
) -> torch.Tensor:
    """Mean loss of one task: x (n, F), y (n,) -> scalar. MSE, or BCE-with-logits for 0/1 targets."""
    out = functional_call(model, params, (x,)).squeeze(-1)
    if out.dtype in (torch.bfloat16, torch.float16):  # autocast output: take the loss in float32
        out = out.float()
    if task_type == "regression":
        return F.mse_loss(out, y)
    return F.binary_cross_entropy_with_logits(out, y)


def _partial_loss(
    adapted: Params, fast: Params, model: nn.Module, x: torch.Tensor, y: torch.Tensor, task_type: str
) -> torch.Tensor:
    """task_loss as a function of the adapted subset only (what ``grad`` differentiates)."""
    return task_loss(model, {**fast, **adapted}, x, y, task_type)


def inner_adapt(
    model: nn.Module,
    params: Params,
    lrs: Rates,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    *,
    task_type: str,
    steps: int,
    first_order: bool = False,
) -> Params:
    """``steps`` gradient steps on the support loss of x_support (n_support, F), y_support (n_support,).

    Only the keys of ``lrs`` are adapted (all of them for MAML, the head for ANIL); a value is a
    scalar lr or a tensor shaped like its parameter (Meta-SGD).
    """
    fast = dict(params)
    for _ in range(steps):
        adapted = {k: fast[k] for k in lrs}
        grads = grad(_partial_loss)(adapted, fast, model, x_support, y_support, task_type)
        if first_order:
            # Why detach: the outer gradient then treats the inner gradient as a constant (FOMAML).
            grads = {k: g.detach() for k, g in grads.items()}
        fast = {**fast, **{k: adapted[k] - lrs[k] * grads[k] for k in lrs}}
    return fast


def adapted_query_loss(
    model: nn.Module,
    params: Params,
    lrs: Rates,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor,
    *,
    task_type: str,
    steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """One task: adapt on (n_support, F), (n_support,); score (n_query, F), (n_query,) -> scalar loss."""
    fast = inner_adapt(
        model, params, lrs, x_support, y_support, task_type=task_type, steps=steps, first_order=first_order
    )
    return task_loss(model, fast, x_query, y_query, task_type)


def query_losses(
    model: nn.Module,
    params: Params,
    lrs: Rates,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor,
    *,
    task_type: str,
    steps: int,
    first_order: bool = False,
    randomness: str = "error",
) -> torch.Tensor:
    """:func:`adapted_query_loss` of every task at once.

    Args:
        x_support (T, n_support, F), y_support (T, n_support), x_query (T, n_query, F), y_query (T, n_query).
        randomness: ``vmap`` randomness; "different" when the model has dropout.

    Returns:
        (T,) query loss per task, differentiable w.r.t. ``params`` and tensor ``lrs``.
    """

    def one_task(*task: torch.Tensor) -> torch.Tensor:
        return adapted_query_loss(
            model, params, lrs, *task, task_type=task_type, steps=steps, first_order=first_order
        )

    return vmap(one_task, randomness=randomness)(x_support, y_support, x_query, y_query)


def meta_gradients(
    model: nn.Module,
    params: Params,
    lrs: Rates,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor,
    *,
    task_type: str,
    steps: int,
    first_order: bool = False,
    randomness: str = "error",
) -> tuple[Params, Params, torch.Tensor]:
    """The meta-gradient of :func:`query_losses`' mean, with the outer gradient a ``grad`` transform too.

    Same values as autograd through ``query_losses``; the difference is speed. Under torch.compile
    the whole meta-step (inner and outer gradients) becomes one graph that bypasses the autograd
    engine: on CPU 1.5-1.9x the steps/s of compiled ``query_losses`` + ``backward`` (bench/meta_step.py).
    Eager, the nested transforms cost a little more than autograd, so eager training uses ``query_losses``.

    Args: as :func:`query_losses`; ``params`` and tensor ``lrs`` should be detached.

    Returns:
        (mean gradient w.r.t. params, mean gradient w.r.t. the tensor lrs (Meta-SGD; else empty),
        (T,) query losses).
    """
    learned = {k: v for k, v in lrs.items() if isinstance(v, torch.Tensor)}

    def one_task(p: Params, lr: Params, *task: torch.Tensor) -> torch.Tensor:
        return adapted_query_loss(
            model, p, {**lrs, **lr}, *task, task_type=task_type, steps=steps, first_order=first_order
        )

    per_task = vmap(
        grad_and_value(one_task, argnums=(0, 1)), in_dims=(None, None, 0, 0, 0, 0), randomness=randomness
    )
    (g_params, g_lrs), losses = per_task(params, learned, x_support, y_support, x_query, y_query)
    return {k: g.mean(0) for k, g in g_params.items()}, {k: g.mean(0) for k, g in g_lrs.items()}, losses
