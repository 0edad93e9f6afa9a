"""Projected gradient attacks in L-inf and L2: BIM, PGD with random restarts, MIM, PGD on the
Carlini-Wagner margin, and their targeted variants.

All of them share one loop (`_ascend`): take steepest-ascent steps on a per-sample objective,
project into the eps-ball and [0, 1], and keep, per sample, the best iterate seen: a fooled
iterate beats any that is not, and among equals the higher objective wins. The logits of the
gradient's own forward pass judge each iterate, so tracking costs no extra forward per step
(one extra forward judges the last iterate). Restarts run only on the samples no earlier
restart fooled, and the only device syncs are between restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    LossFn,
    ce_loss,
    check_eps,
    check_target,
    dlr_loss,
    eval_mode,
    l2_normalize,
    l2_project,
    linf_random_start,
    loss_logits_and_gradient,
    margin_loss,
    per_sample,
    pick_targets,
    random_start as draw_random_start,
    targeted_dlr_loss,
)
from redblue.attacks.registry import register
from redblue.errors import AttackError, ConfigError, require_choice, require_non_negative, require_positive

LossName = Literal["ce", "margin", "dlr"]
LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}

MADRY_STEP = 2.5  # default step_size = 2.5 * eps / steps (Madry et al., 2018, appendix)


def check_iterative_params(params: Any, norm: str) -> None:
    """Validate the fields an iterative attack's parameter dataclass has (eps, steps, ...)."""
    check_eps(params.eps, norm)
    require_positive("steps", params.steps)
    if params.step_size is not None:
        require_positive("step_size", params.step_size)
    if hasattr(params, "restarts"):
        require_positive("restarts", params.restarts)
        if params.restarts > 1 and not params.random_start:
            raise ConfigError("restarts > 1 without random_start repeats one deterministic run; set random_start=true")
    if hasattr(params, "decay"):
        require_non_negative("decay", params.decay)
    if hasattr(params, "loss"):
        require_choice("loss", params.loss, tuple(LOSSES))
    check_target(params.target)


@dataclass(frozen=True)
class PGDParams:
    """PGD in L-inf; step_size None means 2.5 * eps / steps."""

    eps: float
    steps: int = 40
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: LossName = "ce"
    target: str = "none"

    def __post_init__(self) -> None:
        check_iterative_params(self, "linf")


@dataclass(frozen=True)
class PGDL2Params(PGDParams):
    """PGD in L2; eps is the radius of the L2 ball in pixel units."""

    def __post_init__(self) -> None:
        check_iterative_params(self, "l2")


@dataclass(frozen=True)
class PGDTargetedParams(PGDParams):
    """Targeted L-inf PGD: towards a random other class unless told otherwise."""

    target: str = "random"

    def __post_init__(self) -> None:
        check_iterative_params(self, "linf")
        if self.target == "none":
            raise ConfigError("pgd-t is targeted; set target=random, least-likely or a class index, or use pgd")


@dataclass(frozen=True)
class PGDCWParams:
    """L-inf PGD on the Carlini-Wagner margin loss."""

    eps: float
    steps: int = 40
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    target: str = "none"

    def __post_init__(self) -> None:
        check_iterative_params(self, "linf")


@dataclass(frozen=True)
class BIMParams:
    """Basic iterative method: PGD without random start; step_size None means 2.5 * eps / steps."""

    eps: float
    steps: int = 10
    step_size: float | None = None
    loss: LossName = "ce"
    target: str = "none"

    def __post_init__(self) -> None:
        check_iterative_params(self, "linf")


@dataclass(frozen=True)
class MIMParams:
    """Momentum iterative method in L-inf; step_size None means eps / steps (Dong et al., 2018)."""

    eps: float
    steps: int = 10
    step_size: float | None = None
    decay: float = 1.0
    target: str = "none"

    def __post_init__(self) -> None:
        check_iterative_params(self, "linf")


@dataclass(frozen=True)
class MIML2Params(MIMParams):
    """Momentum iterative method in L2."""

    def __post_init__(self) -> None:
        check_iterative_params(self, "l2")


def _objective(loss: str, target: Tensor | None) -> LossFn:
    """The per-sample quantity to maximise: the loss, or for a target minus the loss towards it."""
    base = LOSSES[loss]
    if target is None:
        return base
    if loss == "dlr":
        return lambda logits, y: targeted_dlr_loss(logits, y, target)
    return lambda logits, y: -base(logits, target)


def _fooled(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    predicted = logits.argmax(dim=1)
    return predicted != y if target is None else predicted == target


Best = tuple[Tensor, Tensor, Tensor]  # x_best (N, ...), best objective (N,), best fooled (N,) bool


def _keep_better(best: Best, x_adv: Tensor, objective: Tensor, fooled: Tensor) -> Best:
    """Per sample, keep the better of `best` and the candidate: fooled first, then higher objective."""
    x_best, best_objective, best_fooled = best
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (objective > best_objective))
    return (
        torch.where(per_sample(better, x_adv), x_adv, x_best),
        torch.where(better, objective, best_objective),
        best_fooled | fooled,
    )


OnIterate = Callable[[Tensor, Tensor, Tensor], None]  # (x_k, objective (N,), logits (N, C)) of an iterate


def _ascent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_start: Tensor,
    *,
    loss: LossFn,
    eps: float,
    norm: str,
    steps: int,
    step_size: float,
    decay: float | None = None,
    on_iterate: OnIterate | None = None,
) -> Tensor:
    """The one implementation of the projected steepest-ascent step; returns the last iterate.

    From x_start, `steps` times: the loss and its input gradient at x_k (in the model's current
    mode, no device sync), then x_{k+1} = project(x_k + step_size * direction) into the eps-ball
    around x and [0, 1]; direction is sign(grad) in L-inf, grad / |grad|_2 in L2. With `decay`,
    the steps follow the momentum of L1-normalised gradients (Dong et al., 2018).
    `on_iterate(x_k, loss_k, logits_k)` sees every point a gradient was taken at (k = 0..steps-1),
    from the forward pass the gradient needed anyway.
    """
    x_adv = x_start
    if norm == "linf":  # the L-inf ball within [0, 1], as bounds per pixel, once
        lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    momentum = torch.zeros_like(x) if decay is not None else None
    for _ in range(steps):
        objective, logits, grad = loss_logits_and_gradient(model, x_adv, y, loss=loss)
        if on_iterate is not None:
            on_iterate(x_adv, objective, logits)
        if momentum is not None:
            # the mean, not the sum, of |grad|: the same direction (the dimension is fixed), and a
            # momentum of ordinary magnitude whatever the image size
            l1_mean = grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12)
            momentum = decay * momentum + grad / per_sample(l1_mean, grad)
            grad = momentum
        if norm == "linf":
            # = linf_project(ascent_step(...)) with the ball's bounds computed once; in place on
            # fresh tensors, since these elementwise passes are PGD's only cost beyond the model
            x_adv = x_adv.add(grad.sign() if momentum is not None else grad.sign_(), alpha=step_size).clamp_(lower, upper)
        else:
            x_adv = l2_project(x_adv.add(l2_normalize(grad), alpha=step_size), center=x, eps=eps)
    return x_adv


def pgd_last_iterate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    loss: LossFn = ce_loss,
    generator: Generator | None = None,
    x_start: Tensor | None = None,
) -> Tensor:
    """L-inf PGD returning its last iterate, as Madry et al. (2018) train on: for training objectives.

    x: (N, ...) pixels in [0, 1]; y: (N,) labels (passed to `loss`, any per-sample
    `LossFn(logits, y) -> (N,)`, e.g. TRADES' KL to the clean prediction). Starts from x_start
    when given (e.g. TRADES' x + 0.001 * N(0, 1)), else from a uniform random point of the ball
    when random_start, else from x. The same step as `pgd` (one implementation, `_ascent`), but
    no best-iterate tracking, no input validation, no device sync, and the model runs in the
    mode the caller set. Only the input gradient is computed: no parameter's `.grad` changes.
    Returns a detached tensor shaped like x, in [0, 1] and within eps of x in L-inf.
    """
    if x_start is None:
        x_start = linf_random_start(x, eps, generator) if random_start else x
    return _ascent(model, x, y, x_start, loss=loss, eps=eps, norm="linf", steps=steps, step_size=step_size).detach()


def _ascend(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    *,
    eps: float,
    norm: str,
    steps: int,
    step_size: float,
    start_random: bool,
    loss: str,
    decay: float | None,
    generator: Generator | None,
) -> tuple[Best, Tensor]:
    """One run of projected steepest ascent; returns the per-sample best and a 'stayed finite' flag.

    The start is no candidate, only the iterates after each step are: so one step of size eps
    from x is exactly FGSM. The caller runs the model in eval mode.
    """
    objective_fn = _objective(loss, target)
    x_start = draw_random_start(x, eps, norm=norm, generator=generator) if start_random else x
    best: Best = (x, torch.full((len(x),), -torch.inf, device=x.device, dtype=x.dtype), torch.zeros_like(y, dtype=torch.bool))
    seen = 0

    def keep(x_k: Tensor, objective: Tensor, logits: Tensor) -> None:
        nonlocal best, seen
        if seen > 0:
            best = _keep_better(best, x_k, objective, _fooled(logits, y, target))
        seen += 1

    x_adv = _ascent(model, x, y, x_start, loss=objective_fn, eps=eps, norm=norm, steps=steps, step_size=step_size,
                    decay=decay, on_iterate=keep)  # fmt: skip
    with torch.no_grad():
        logits = model(x_adv)
    objective = objective_fn(logits, y)
    best = _keep_better(best, x_adv, objective, _fooled(logits, y, target))
    finite = torch.isfinite(objective).all() & torch.isfinite(x_adv).all()
    return best, finite


def attack_with_restarts(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    step_size: float,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    target: str = "none",
    decay: float | None = None,
    generator: Generator | None = None,
) -> Tensor:
    """The loop behind every attack of this module; see the module docstring.

    A sample counts as fooled as soon as any iterate of any restart fools it (that iterate is
    returned); otherwise the iterate with the highest objective is. Later restarts run only on
    samples not yet fooled, and stop early once all are.
    """
    if len(x) == 0:  # an evaluation cascade may leave no sample to attack
        return x.detach().clone()
    with eval_mode(model):
        targets = pick_targets(model, x, y, target, generator)
        best: Best | None = None
        todo: Tensor | None = None  # indices still to attack; None: all
        for _ in range(restarts):
            pick = (lambda t: t) if todo is None else (lambda t: t[todo])
            run_best, finite = _ascend(
                model, pick(x), pick(y), None if targets is None else pick(targets),
                eps=eps, norm=norm, steps=steps, step_size=step_size, start_random=random_start,
                loss=loss, decay=decay, generator=generator,
            )  # fmt: skip
            if best is None or todo is None:
                best = run_best
            else:
                merged = _keep_better(tuple(t[todo] for t in best), *run_best)  # type: ignore[arg-type]
                for kept, new in zip(best, merged):
                    kept[todo] = new
            if not bool(finite):
                raise AttackError(
                    "the attack met a NaN or infinite loss or gradient; check the model for log(0), "
                    "division by zero or overflow before attacking it"
                )
            todo = (~best[2]).nonzero().squeeze(1)
            if len(todo) == 0:
                break
    assert best is not None
    return best[0].detach()


def default_step_size(step_size: float | None, eps: float, steps: int, *, factor: float = MADRY_STEP) -> float:
    return factor * eps / steps if step_size is None else step_size


@register("pgd", PGDParams, norm="linf")
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: LossName = "ce",
    target: str = "none",
    generator: Generator | None = None,
) -> Tensor:
    """L-inf projected gradient descent (Madry et al., 2018) with random restarts.

    x: (N, 1, 28, 28) pixels in [0, 1]; y: (N,) labels. Returns x_adv: detached, on x's device,
    in [0, 1], within eps of x in L-inf; per sample the best iterate of all restarts (see
    `attack_with_restarts`). step_size None: 2.5 * eps / steps. loss: "ce", "margin" or "dlr";
    target: "none", "random", "least-likely" or a class index such as "3".
    """
    PGDParams(eps=eps, steps=steps, step_size=step_size, restarts=restarts, random_start=random_start, loss=loss, target=target)
    return attack_with_restarts(
        model, x, y, eps=eps, norm="linf", steps=steps, step_size=default_step_size(step_size, eps, steps),
        restarts=restarts, random_start=random_start, loss=loss, target=target, generator=generator,
    )  # fmt: skip


@register("pgd-l2", PGDL2Params, norm="l2")
def pgd_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: LossName = "ce",
    target: str = "none",
    generator: Generator | None = None,
) -> Tensor:
    """L2 projected gradient descent (Madry et al., 2018): steps along the normalised gradient.

    Same contract as `pgd`, with eps the L2 radius in pixel units and a random start drawn
    uniformly from the L2 ball.
    """
    PGDL2Params(eps=eps, steps=steps, step_size=step_size, restarts=restarts, random_start=random_start, loss=loss, target=target)
    return attack_with_restarts(
        model, x, y, eps=eps, norm="l2", steps=steps, step_size=default_step_size(step_size, eps, steps),
        restarts=restarts, random_start=random_start, loss=loss, target=target, generator=generator,
    )  # fmt: skip


@register("pgd-t", PGDTargetedParams, norm="linf", targeted=True)
def pgd_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: LossName = "ce",
    target: str = "random",
    generator: Generator | None = None,
) -> Tensor:
    """Targeted L-inf PGD: descends the loss towards a target class (random other class by default).

    A sample counts as fooled when the model predicts its target. Same contract as `pgd`.
    """
    PGDTargetedParams(
        eps=eps, steps=steps, step_size=step_size, restarts=restarts, random_start=random_start, loss=loss, target=target
    )
    return pgd(
        model, x, y, eps=eps, steps=steps, step_size=step_size, restarts=restarts,
        random_start=random_start, loss=loss, target=target, generator=generator,
    )  # fmt: skip


@register("pgd-cw", PGDCWParams, norm="linf")
def pgd_cw(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    target: str = "none",
    generator: Generator | None = None,
) -> Tensor:
    """L-inf PGD on the Carlini-Wagner margin max_{j != y} z_j - z_y (Carlini & Wagner, 2017).

    The margin ignores softmax saturation, where cross-entropy's gradient vanishes. Same
    contract as `pgd`.
    """
    PGDCWParams(eps=eps, steps=steps, step_size=step_size, restarts=restarts, random_start=random_start, target=target)
    return pgd(
        model, x, y, eps=eps, steps=steps, step_size=step_size, restarts=restarts,
        random_start=random_start, loss="margin", target=target, generator=generator,
    )  # fmt: skip


@register("bim", BIMParams, norm="linf")
def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    loss: LossName = "ce",
    target: str = "none",
    generator: Generator | None = None,
) -> Tensor:
    """Basic iterative method (Kurakin et al., 2017): iterated FGSM from x, projected to the ball.

    Deterministic unless target="random". step_size None: 2.5 * eps / steps. Same contract as `pgd`.
    """
    BIMParams(eps=eps, steps=steps, step_size=step_size, loss=loss, target=target)
    return attack_with_restarts(
        model, x, y, eps=eps, norm="linf", steps=steps, step_size=default_step_size(step_size, eps, steps),
        random_start=False, loss=loss, target=target, generator=generator,
    )  # fmt: skip


@register("mim", MIMParams, norm="linf")
def mim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    decay: float = 1.0,
    target: str = "none",
    generator: Generator | None = None,
) -> Tensor:
    """Momentum iterative FGSM (Dong et al., 2018): g <- decay * g + grad / |grad|_1, x <- x + a * sign(g).

    Starts from x; step_size None: eps / steps as in the paper. Same contract as `pgd`.
    """
    MIMParams(eps=eps, steps=steps, step_size=step_size, decay=decay, target=target)
    return attack_with_restarts(
        model, x, y, eps=eps, norm="linf", steps=steps, step_size=default_step_size(step_size, eps, steps, factor=1.0),
        random_start=False, target=target, decay=decay, generator=generator,
    )  # fmt: skip


@register("mim-l2", MIML2Params, norm="l2")
def mim_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    decay: float = 1.0,
    target: str = "none",
    generator: Generator | None = None,
) -> Tensor:
    """Momentum iterative method in L2 (Dong et al., 2018): steps of length a along g / |g|_2.

    Starts from x; step_size None: eps / steps. Same contract as `pgd-l2`.
    """
    MIML2Params(eps=eps, steps=steps, step_size=step_size, decay=decay, target=target)
    return attack_with_restarts(
        model, x, y, eps=eps, norm="l2", steps=steps, step_size=default_step_size(step_size, eps, steps, factor=1.0),
        random_start=False, target=target, decay=decay, generator=generator,
    )  # fmt: skip
