"""The fast gradient sign method (Goodfellow et al., 2015), the paper's red team."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Generator, Tensor, nn

from redblue.attacks.core import all_finite, check_eps, eval_mode, loss_logits_and_gradient
from redblue.attacks.registry import register, run_attack


@dataclass(frozen=True)
class FGSMParams:
    eps: float
    # The paper's equation (3) does not clip; clip=False leaves [0, 1] and is reported as such.
    clip: bool = True

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")


def run_fgsm(model: nn.Module, x: Tensor, y: Tensor, params: FGSMParams, generator: Generator | None) -> tuple[Tensor, Tensor]:
    """FGSM's runner (see `registry`): x_adv and whether the input gradient was finite."""
    with eval_mode(model):
        _, _, grad = loss_logits_and_gradient(model, x, y)
    finite = all_finite(grad)
    # in place on the fresh tensors: these passes are FGSM's only cost beyond the model's
    x_adv = x.add(grad.sign_(), alpha=params.eps)
    return (x_adv.clamp_(0.0, 1.0) if params.clip else x_adv).detach(), finite


@register("fgsm", FGSMParams, run=run_fgsm, norm="linf", iterative=False)
def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, clip: bool = FGSMParams.clip) -> Tensor:
    """Fast gradient sign method: x + eps * sign(grad_x CE(model(x), y)).

    x: (N, C, H, W) pixels in [0, 1]; y: (N,) labels. Returns x_adv: detached, on x's
    device, within eps of x in L-inf, and in [0, 1] unless clip=False. A NaN or infinite
    gradient, or pixels that are not finite values in [0, 1], raise AttackError.
    """
    return run_attack("fgsm", run_fgsm, model, x, y, FGSMParams(eps=eps, clip=clip), None)
