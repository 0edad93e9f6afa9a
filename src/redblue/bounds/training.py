"""Differentiable bounds for certified training: IBP (Gowal et al., 2018) and CROWN-IBP (Zhang et al., 2020).

They are the bounds `redblue.certify` certifies with (the same `margin_bounds`), computed in the
model's dtype with autograd through them and without the float64 rounding allowance, which
only certification needs. Every function bounds the network in eval mode (dropout is the
identity), the network that is certified, whatever mode the model is in.

x: (N, *input_shape) pixels in [0, 1]; y: (N,) labels; eps: L-inf radius in pixel units.
"""

from __future__ import annotations

from torch import Tensor, nn

from redblue.attacks.core import check_eps
from redblue.bounds.network import linearize
from redblue.bounds.propagate import MarginBounds, input_box, interval_step, margin_bounds


def ibp_logit_bounds(model: nn.Module, x: Tensor, *, eps: float) -> tuple[Tensor, Tensor]:
    """IBP bounds (lower, upper), each (N, classes), on the logits over the clipped eps-ball."""
    check_eps(eps, "linf")
    lower, upper = input_box(x, eps)
    for op in linearize(model, x):
        lower, upper = interval_step(op, lower, upper)
    return lower, upper


def _margins(model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str) -> MarginBounds:
    check_eps(eps, "linf")
    return margin_bounds(linearize(model, x), *input_box(x, eps), y, method=method)


def ibp_margins(model: nn.Module, x: Tensor, y: Tensor, *, eps: float) -> Tensor:
    """IBP lower bounds (N, classes) on z_y - z_j, the last affine layers elided; column y is 0."""
    bounds = _margins(model, x, y, eps, "ibp")
    return bounds.spread(bounds.ibp, fill=0.0)


def crown_ibp_margins(model: nn.Module, x: Tensor, y: Tensor, *, eps: float) -> tuple[Tensor, Tensor]:
    """(CROWN-IBP, IBP) lower bounds, each (N, classes), on z_y - z_j; column y is 0.

    CROWN-IBP: IBP bounds for every ReLU's pre-activations, then one CROWN backward pass from
    the margin specification, batched over samples and margins. Zhang et al. train on
    beta * crown_ibp + (1 - beta) * ibp. Max-pooling raises ModelError (no relaxation for it).
    """
    bounds = _margins(model, x, y, eps, "crown-ibp")
    assert bounds.crown is not None
    return bounds.spread(bounds.crown, fill=0.0), bounds.spread(bounds.ibp, fill=0.0)


def worst_case_logits(margins: Tensor) -> Tensor:
    """Worst-case logits for the margin specification: z_hat_j = -m_j, z_hat_y = 0 (N, classes).

    m: lower bounds on z_y - z_j with column y = 0. For every logits z in the box,
    CE(z, y) = log sum_j exp(-(z_y - z_j)) <= CE(z_hat, y): the robust loss of Gowal et al.
    """
    return -margins
