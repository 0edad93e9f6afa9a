"""The fast gradient sign method (Goodfellow et al., 2015), the paper's red team."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from redblue.attacks.core import check_eps, input_gradient
from redblue.attacks.registry import register


@dataclass(frozen=True)
class FGSMParams:
    eps: float
    # The paper's equation (3) does not clip; clip=False leaves [0, 1] and is reported as such.
    clip: bool = True

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")


@register("fgsm", FGSMParams, norm="linf", iterative=False)
def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, clip: bool = True) -> Tensor:
    """Fast gradient sign method: x + eps * sign(grad_x CE(model(x), y)).

    x: (N, 1, 28, 28) pixels in [0, 1]; y: (N,) labels. Returns x_adv: detached, on x's
    device, within eps of x in L-inf, and in [0, 1] unless clip=False.
    """
    grad = input_gradient(model, x, y)
    x_adv = x + eps * grad.sign()
    return (x_adv.clamp(0.0, 1.0) if clip else x_adv).detach()
