"""Iterated FGSM from x, without random start: the basic iterative method (Kurakin et al., 2017)
and the momentum iterative method (Dong et al., 2018) in L-inf and L2.

They run on PGD's loop (`redblue.attacks.pgd.run_ascent`): the same projected step, the same
per-sample best iterate; their parameter dataclasses fix what they do not let a user set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Generator, Tensor, nn

from redblue.attacks.pgd import MADRY_STEP, LossName, check_iterative_params, run_ascent
from redblue.attacks.registry import register, run_attack


@dataclass(frozen=True)
class BIMParams:
    """Basic iterative method: PGD without random start; step_size None means 2.5 * eps / steps."""

    eps: float
    steps: int = 10
    step_size: float | None = None
    loss: LossName = "ce"
    target: str = "none"

    norm: ClassVar[str] = "linf"
    restarts: ClassVar[int] = 1
    random_start: ClassVar[bool] = False
    decay: ClassVar[float | None] = None
    step_factor: ClassVar[float] = MADRY_STEP

    def __post_init__(self) -> None:
        check_iterative_params(self)


@dataclass(frozen=True)
class MIMParams:
    """Momentum iterative method in L-inf; step_size None means eps / steps (Dong et al., 2018)."""

    eps: float
    steps: int = 10
    step_size: float | None = None
    decay: float = 1.0
    target: str = "none"

    norm: ClassVar[str] = "linf"
    restarts: ClassVar[int] = 1
    random_start: ClassVar[bool] = False
    loss: ClassVar[str] = "ce"
    step_factor: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        check_iterative_params(self)


@dataclass(frozen=True)
class MIML2Params(MIMParams):
    """Momentum iterative method in L2."""

    norm: ClassVar[str] = "l2"


@register("bim", BIMParams, run=run_ascent, norm="linf")
def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = BIMParams.steps,
    step_size: float | None = BIMParams.step_size,
    loss: LossName = BIMParams.loss,
    target: str = BIMParams.target,
    generator: Generator | None = None,
) -> Tensor:
    """Basic iterative method (Kurakin et al., 2017): iterated FGSM from x, projected to the ball.

    Deterministic unless target="random". step_size None: 2.5 * eps / steps. Same contract as `pgd`.
    """
    params = BIMParams(eps=eps, steps=steps, step_size=step_size, loss=loss, target=target)
    return run_attack("bim", run_ascent, model, x, y, params, generator)


@register("mim", MIMParams, run=run_ascent, norm="linf")
def mim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = MIMParams.steps,
    step_size: float | None = MIMParams.step_size,
    decay: float = MIMParams.decay,
    target: str = MIMParams.target,
    generator: Generator | None = None,
) -> Tensor:
    """Momentum iterative FGSM (Dong et al., 2018): g <- decay * g + grad / |grad|_1, x <- x + a * sign(g).

    Starts from x; step_size None: eps / steps as in the paper. Same contract as `pgd`.
    """
    params = MIMParams(eps=eps, steps=steps, step_size=step_size, decay=decay, target=target)
    return run_attack("mim", run_ascent, model, x, y, params, generator)


@register("mim-l2", MIML2Params, run=run_ascent, norm="l2")
def mim_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = MIML2Params.steps,
    step_size: float | None = MIML2Params.step_size,
    decay: float = MIML2Params.decay,
    target: str = MIML2Params.target,
    generator: Generator | None = None,
) -> Tensor:
    """Momentum iterative method in L2 (Dong et al., 2018): steps of length a along g / |g|_2.

    Starts from x; step_size None: eps / steps. Same contract as `pgd-l2`.
    """
    params = MIML2Params(eps=eps, steps=steps, step_size=step_size, decay=decay, target=target)
    return run_attack("mim-l2", run_ascent, model, x, y, params, generator)
