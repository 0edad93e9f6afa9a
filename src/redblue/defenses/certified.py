"""Certified training losses: IBP (Gowal et al., 2018) and CROWN-IBP (Zhang et al., 2020).

Both train on the worst-case logits that `redblue.bounds` derives over the clipped L-inf ball,
the very bounds `redblue.certify` certifies with (there in float64 with a rounding allowance):

    loss = kappa * CE(z(x), y) + (1 - kappa) * CE(z_hat, y),  z_hat_j = -m_j,

m_j a lower bound on the margin z_y - z_j (elision of the last layer), so CE(z_hat, y) bounds
the cross-entropy of every input in the ball from above. Gowal et al. ramp eps up from 0 and
kappa from 1 down to 0.5, and train at 1.1-1.33 x the test eps; Zhang et al. mix
m = beta * m_crown_ibp + (1 - beta) * m_ibp with beta from 1 down to 0. The schedules belong to
the caller (the training loop's objective); these functions take the values of one step.

The clean term runs the model in its current mode (dropout on while training); the bounds are
those of the network in eval mode (dropout the identity), the network that gets certified.
x: (N, ...) pixels in [0, 1]; y: (N,) labels; eps in pixel units.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from redblue.attacks.core import check_eps
from redblue.bounds import crown_ibp_margins, ibp_margins, worst_case_logits
from redblue.errors import require_in_range


def ibp_loss(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, kappa: float) -> tuple[Tensor, Tensor]:
    """(mean loss, clean logits (N, classes)): kappa * CE(z(x)) + (1 - kappa) * CE(IBP worst case)."""
    check_eps(eps, "linf")
    require_in_range("kappa", kappa, 0.0, 1.0)
    clean_logits = model(x)
    loss = kappa * F.cross_entropy(clean_logits, y)
    if kappa < 1:  # at kappa = 1 (the start of Gowal et al.'s schedule) the bound has no weight
        margins = ibp_margins(model, x, y, eps=eps)
        loss = loss + (1 - kappa) * F.cross_entropy(worst_case_logits(margins), y)
    return loss, clean_logits


def crown_ibp_loss(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, kappa: float, beta: float
) -> tuple[Tensor, Tensor]:
    """(mean loss, clean logits (N, classes)) with the margin bound beta * CROWN-IBP + (1 - beta) * IBP.

    beta = 0 is plain IBP (no backward pass); max-pooling models raise ModelError unless beta = 0.
    """
    check_eps(eps, "linf")
    require_in_range("kappa", kappa, 0.0, 1.0)
    require_in_range("beta", beta, 0.0, 1.0)
    if beta == 0:
        return ibp_loss(model, x, y, eps=eps, kappa=kappa)
    clean_logits = model(x)
    loss = kappa * F.cross_entropy(clean_logits, y)
    if kappa < 1:
        crown_ibp, ibp = crown_ibp_margins(model, x, y, eps=eps)
        margins = beta * crown_ibp + (1 - beta) * ibp
        loss = loss + (1 - kappa) * F.cross_entropy(worst_case_logits(margins), y)
    return loss, clean_logits
