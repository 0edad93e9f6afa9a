"""Weight penalties added to a training objective: lambda1 * sum|w| + lambda2 * sum w^2 (the paper's eq. 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from redblue.errors import require_non_negative


def penalized_parameters(model: nn.Module, *, include_bias: bool = False) -> list[Tensor]:
    """The tensors a weight penalty covers: weight matrices and kernels (dim >= 2), plus biases if asked.

    Biases (and other 1-D parameters such as norm scales) are left out by default, as in
    Goodfellow et al.'s and most L1/L2 weight-decay practice: they do not scale the input.
    """
    return [p for p in model.parameters() if include_bias or p.dim() >= 2]


def weight_penalty(model: nn.Module, *, l1: float, l2: float, include_bias: bool = False) -> Tensor:
    """lambda1 * sum|w| + lambda2 * sum w^2 over `penalized_parameters`, a scalar on the model's device.

    A zero lambda costs nothing: its term is skipped, and with both zero the result is a constant
    zero that carries no gradient.
    """
    require_non_negative("l1", l1)
    require_non_negative("l2", l2)
    params = penalized_parameters(model, include_bias=include_bias)
    if not params:
        return torch.zeros(())
    total = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    for p in params:
        if l1:
            total = total + l1 * p.abs().sum()
        if l2:
            total = total + l2 * p.square().sum()
    return total


@torch.no_grad()
def add_penalty_gradient_(params: list[Tensor], *, l1: float, l2: float) -> None:
    """Add the gradient of `weight_penalty` over `params` to their `.grad`, in place, without autograd.

    d/dw (l1 * |w| + l2 * w^2) = l1 * sign(w) + 2 * l2 * w, with sign(0) = 0 as autograd's abs.
    The training loop uses this instead of back-propagating through `weight_penalty`: the same
    numbers, in two fused passes over the weights instead of a graph of element-wise ops.
    A parameter without a gradient yet gets one.
    """
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    if l1:
        torch._foreach_add_(grads, torch._foreach_sign(params), alpha=l1)
    if l2:
        torch._foreach_add_(grads, params, alpha=2.0 * l2)
