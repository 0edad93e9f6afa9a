"""Projected gradient attacks in L-inf and L2: PGD with random restarts, PGD on the Carlini-Wagner
margin, targeted PGD; and the loop that BIM and MIM (`bim.py`) run on too.

All of them share one step (`_ascent`): steepest ascent on a per-sample objective, projected
into the eps-ball and [0, 1]. The attacks keep, per sample, the best iterate seen (the random
start included): a fooled iterate beats any that is not, and among equals the higher objective
wins. The logits of the gradient's own forward pass judge each iterate, so tracking costs no
extra forward per step (one extra forward judges the last iterate). Restarts run only on the
samples no earlier restart fooled. Training objectives call `pgd_last_iterate`, the same step
without the tracking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    LossFn,
    all_finite,
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
from redblue.attacks.registry import register, run_attack
from redblue.errors import ConfigError, require_choice, require_non_negative, require_positive

LossName = Literal["ce", "margin", "dlr"]
LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}

MADRY_STEP = 2.5  # default step_size = 2.5 * eps / steps (Madry et al., 2018, appendix)


def check_iterative_params(params: Any) -> None:
    """Validate an iterative attack's parameter dataclass (its fields and its fixed ClassVars)."""
    check_eps(params.eps, params.norm)
    require_positive("steps", params.steps)
    if params.step_size is not None:
        require_positive("step_size", params.step_size)
    require_positive("restarts", params.restarts)
    if params.restarts > 1 and not params.random_start:
        raise ConfigError("restarts > 1 without random_start repeats one deterministic run; set random_start=true")
    if params.decay is not None:
        require_non_negative("decay", params.decay)
    require_choice("loss", params.loss, tuple(LOSSES))
    check_target(params.target)


# Each dataclass holds the fields a user may set; the ClassVars are what its attack fixes (the
# norm, no momentum, no restarts, ...), so that one runner (`run_ascent`) serves them all.


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

    norm: ClassVar[str] = "linf"
    decay: ClassVar[float | None] = None
    step_factor: ClassVar[float] = MADRY_STEP

    def __post_init__(self) -> None:
        check_iterative_params(self)


@dataclass(frozen=True)
class PGDL2Params(PGDParams):
    """PGD in L2; eps is the radius of the L2 ball in pixel units."""

    norm: ClassVar[str] = "l2"


@dataclass(frozen=True)
class PGDTargetedParams(PGDParams):
    """Targeted L-inf PGD: towards a random other class unless told otherwise."""

    target: str = "random"

    def __post_init__(self) -> None:
        check_iterative_params(self)
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

    norm: ClassVar[str] = "linf"
    loss: ClassVar[str] = "margin"
    decay: ClassVar[float | None] = None
    step_factor: ClassVar[float] = MADRY_STEP

    def __post_init__(self) -> None:
        check_iterative_params(self)


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
    """Per sample, keep the better of `best` and the candidate: fooled first, then higher objective.

    x_best (best[0]) is overwritten in place (no new image-sized tensor per step): pass one you own.
    """
    x_best, best_objective, best_fooled = best
    # = (fooled & ~best_fooled) | ((fooled == best_fooled) & (objective > best_objective)), in 3 operations
    # instead of 6: on a GPU each is a kernel launch, and this runs at every step
    better = torch.where(fooled == best_fooled, objective > best_objective, fooled)
    return (
        torch.where(per_sample(better, x_adv), x_adv, x_best, out=x_best),
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
    from the forward pass the gradient needed anyway; x_k is valid during the call only (the loop
    then updates it in place).
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
            # = linf_project(ascent_step(...)) with the ball's bounds computed once; in place after
            # the first step (x_start is the caller's), since these elementwise passes are PGD's
            # only cost beyond the model: 3 instead of 5 per step
            direction = grad.sign() if momentum is not None else grad.sign_()
            x_adv = x_adv.add(direction, alpha=step_size) if x_adv is x_start else x_adv.add_(direction, alpha=step_size)
            x_adv.clamp_(lower, upper)
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

    Every iterate is a candidate, a random start included (a sample fooled only there is kept);
    x itself is not (it is no attack), so one step of size eps from x is exactly FGSM. The
    caller runs the model in eval mode.
    """
    objective_fn = _objective(loss, target)
    x_start = draw_random_start(x, eps, norm=norm, generator=generator) if start_random else x
    best: Best = (x.clone(), torch.full((len(x),), -torch.inf, device=x.device, dtype=x.dtype), torch.zeros_like(y, dtype=torch.bool))

    is_candidate = start_random  # the start is a candidate when it is random; x itself is not

    def keep(x_k: Tensor, objective: Tensor, logits: Tensor) -> None:
        nonlocal best, is_candidate
        if is_candidate:
            best = _keep_better(best, x_k, objective, _fooled(logits, y, target))
        is_candidate = True

    x_adv = _ascent(model, x, y, x_start, loss=objective_fn, eps=eps, norm=norm, steps=steps, step_size=step_size,
                    decay=decay, on_iterate=keep)  # fmt: skip
    with torch.no_grad():
        logits = model(x_adv)
    objective = objective_fn(logits, y)
    best = _keep_better(best, x_adv, objective, _fooled(logits, y, target))
    return best, all_finite(objective) & all_finite(x_adv)


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
) -> tuple[Tensor, Tensor]:
    """The loop behind every attack of this module; returns (x_adv, finite), see the module docstring.

    A sample counts as fooled as soon as any iterate of any restart fools it (that iterate is
    returned); otherwise the iterate with the highest objective is. The first run attacks every
    sample without a device sync; each later restart costs one sync, to run only the samples not
    yet fooled (and to stop once all are), which on a CPU saves the fooled fraction of its work.
    """
    if len(x) == 0:  # an evaluation cascade may leave no sample to attack
        return x.detach().clone(), torch.ones((), dtype=torch.bool, device=x.device)
    settings = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "start_random": random_start,
                "loss": loss, "decay": decay, "generator": generator}  # fmt: skip
    with eval_mode(model):
        targets = pick_targets(model, x, y, target, generator)
        best, finite = _ascend(model, x, y, targets, **settings)
        for _ in range(restarts - 1):
            todo = (~best[2]).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            run_best, run_finite = _ascend(model, x[todo], y[todo], None if targets is None else targets[todo], **settings)
            finite = finite & run_finite
            merged = _keep_better((best[0][todo], best[1][todo], best[2][todo]), *run_best)
            for kept, new in zip(best, merged):
                kept[todo] = new
    return best[0].detach(), finite


def resolved_step_size(params: Any) -> float:
    """The step size an iterative attack uses: the given one, or step_factor * eps / steps."""
    return params.step_factor * params.eps / params.steps if params.step_size is None else params.step_size


def run_ascent(model: nn.Module, x: Tensor, y: Tensor, params: Any, generator: Generator | None) -> tuple[Tensor, Tensor]:
    """The runner (see `registry`) of every attack of this module, from its validated params."""
    return attack_with_restarts(
        model, x, y, eps=params.eps, norm=params.norm, steps=params.steps, step_size=resolved_step_size(params),
        restarts=params.restarts, random_start=params.random_start, loss=params.loss, target=params.target,
        decay=params.decay, generator=generator,
    )  # fmt: skip


@register("pgd", PGDParams, run=run_ascent, norm="linf")
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = PGDParams.steps,
    step_size: float | None = PGDParams.step_size,
    restarts: int = PGDParams.restarts,
    random_start: bool = PGDParams.random_start,
    loss: LossName = PGDParams.loss,
    target: str = PGDParams.target,
    generator: Generator | None = None,
) -> Tensor:
    """L-inf projected gradient descent (Madry et al., 2018) with random restarts.

    x: (N, C, H, W) pixels in [0, 1]; y: (N,) labels. Returns x_adv: detached, on x's device,
    in [0, 1], within eps of x in L-inf; per sample the best iterate of all restarts (see
    `attack_with_restarts`). step_size None: 2.5 * eps / steps. loss: "ce", "margin" or "dlr";
    target: "none", "random", "least-likely" or a class index such as "3".
    """
    params = PGDParams(eps=eps, steps=steps, step_size=step_size, restarts=restarts, random_start=random_start,
                       loss=loss, target=target)  # fmt: skip
    return run_attack("pgd", run_ascent, model, x, y, params, generator)


@register("pgd-l2", PGDL2Params, run=run_ascent, norm="l2")
def pgd_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = PGDL2Params.steps,
    step_size: float | None = PGDL2Params.step_size,
    restarts: int = PGDL2Params.restarts,
    random_start: bool = PGDL2Params.random_start,
    loss: LossName = PGDL2Params.loss,
    target: str = PGDL2Params.target,
    generator: Generator | None = None,
) -> Tensor:
    """L2 projected gradient descent (Madry et al., 2018): steps along the normalised gradient.

    Same contract as `pgd`, with eps the L2 radius in pixel units and a random start drawn
    uniformly from the L2 ball.
    """
    params = PGDL2Params(eps=eps, steps=steps, step_size=step_size, restarts=restarts, random_start=random_start,
                         loss=loss, target=target)  # fmt: skip
    return run_attack("pgd-l2", run_ascent, model, x, y, params, generator)


@register("pgd-t", PGDTargetedParams, run=run_ascent, norm="linf", targeted=True)
def pgd_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = PGDTargetedParams.steps,
    step_size: float | None = PGDTargetedParams.step_size,
    restarts: int = PGDTargetedParams.restarts,
    random_start: bool = PGDTargetedParams.random_start,
    loss: LossName = PGDTargetedParams.loss,
    target: str = PGDTargetedParams.target,
    generator: Generator | None = None,
) -> Tensor:
    """Targeted L-inf PGD: descends the loss towards a target class (random other class by default).

    A sample counts as fooled when the model predicts its target. Same contract as `pgd`.
    """
    params = PGDTargetedParams(eps=eps, steps=steps, step_size=step_size, restarts=restarts,
                               random_start=random_start, loss=loss, target=target)  # fmt: skip
    return run_attack("pgd-t", run_ascent, model, x, y, params, generator)


@register("pgd-cw", PGDCWParams, run=run_ascent, norm="linf")
def pgd_cw(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = PGDCWParams.steps,
    step_size: float | None = PGDCWParams.step_size,
    restarts: int = PGDCWParams.restarts,
    random_start: bool = PGDCWParams.random_start,
    target: str = PGDCWParams.target,
    generator: Generator | None = None,
) -> Tensor:
    """L-inf PGD on the Carlini-Wagner margin max_{j != y} z_j - z_y (Carlini & Wagner, 2017).

    The margin ignores softmax saturation, where cross-entropy's gradient vanishes. Same
    contract as `pgd`.
    """
    params = PGDCWParams(eps=eps, steps=steps, step_size=step_size, restarts=restarts, random_start=random_start,
                         target=target)  # fmt: skip
    return run_attack("pgd-cw", run_ascent, model, x, y, params, generator)
