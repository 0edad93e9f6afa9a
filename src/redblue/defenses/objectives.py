"""Training objectives of the blue team: clean, Goodfellow FGSM, fast FGSM, PGD (Madry) and TRADES.

An objective maps (model, x, y, step) to the mean loss of one batch and the logits it was computed
on; `step` (`TrainStep`) carries the generator and where training stands. Each objective has its
own frozen params class with only its own keys, registered by name. The adversarial ones
craft their inputs from the red team's own pieces (`redblue.attacks.core`: the input gradient,
sign steps, L-inf projection, random starts), so training and evaluation cannot drift apart; the
FGSM images are exactly those of the attack `fgsm` (a test pins this). Crafting skips the
attacks' per-call finite-gradient check, a device sync per batch: a NaN gradient makes a NaN
loss, which the training loop reports at the end of the epoch. Crafting runs the model in eval
mode (dropout off) and restores train mode; the loss itself is computed in the model's current
mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    LossFn,
    ascent_step,
    ce_loss,
    check_eps,
    eval_mode,
    linf_project,
    linf_random_start,
    loss_and_input_gradient,
)
from redblue.config import from_dict, from_text_values, split_spec, to_dict
from redblue.errors import ConfigError, require_in_range, require_non_negative, require_positive

Objective = Callable[[nn.Module, Tensor, Tensor, "TrainStep"], tuple[Tensor, Tensor]]
"""`objective(model, x, y, step) -> (mean loss, logits)`: the loss of one batch (a scalar with a graph to
the weights) and the logits (N, classes) of the clean or adversarial batch it was computed on, for the
running training accuracy."""


@dataclass(frozen=True)
class TrainStep:
    """Where training stands, as an objective sees it.

    generator: the objective's randomness (random starts), seeded by the training loop.
    ramp: the eps warm-up factor in [0, 1] (linear over the first warm-up epochs, then 1):
      adversarial objectives attack at eps * ramp.
    progress: the fraction of all training steps done, in [0, 1], for schedules that span the
      run (IBP's kappa, CROWN-IBP's beta).
    """

    generator: Generator | None = None
    ramp: float = 1.0
    progress: float = 1.0


@dataclass(frozen=True)
class ObjectiveParams:
    """Base of every objective's parameters. `name` says which objective (fixed per class, not an
    argument); each subclass declares only the keys its objective uses, so `clean:beta=6` fails."""

    name: str = field(default="", init=False)

    @property
    def eps(self) -> float:
        """The attack radius the objective trains against (L-inf, pixel units); 0 for clean training."""
        return 0.0

    def resolved(self) -> ObjectiveParams:
        """The same objective with every derived default (such as a step size) filled in."""
        return self

    @classmethod
    def from_record(cls, data: Any, *, what: str = "objective") -> ObjectiveParams:
        """The hook `redblue.config.from_dict` uses for a field typed ObjectiveParams: a record or a spec."""
        return objective_from_record(data, what=what)


@dataclass(frozen=True)
class ObjectiveEntry:
    name: str
    params: type[ObjectiveParams]
    factory: Callable[[Any], Objective]
    adversarial: bool


OBJECTIVES: dict[str, ObjectiveEntry] = {}


def register_objective(
    name: str, params: type[ObjectiveParams], *, adversarial: bool = True
) -> Callable[[Callable[[Any], Objective]], Callable[[Any], Objective]]:
    """Register `factory(params) -> objective` under `name` with its params class."""

    def add(factory: Callable[[Any], Objective]) -> Callable[[Any], Objective]:
        if name in OBJECTIVES:
            raise ConfigError(f"objective {name!r} is registered twice")
        OBJECTIVES[name] = ObjectiveEntry(name, params, factory, adversarial)
        return factory

    return add


def _require_steps(steps: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")


@dataclass(frozen=True)
class CleanObjective(ObjectiveParams):
    """CE(x): no attack."""

    name: str = field(default="clean", init=False)


@dataclass(frozen=True)
class FGSMObjective(ObjectiveParams):
    """alpha * CE(x) + (1 - alpha) * CE(fgsm(x, eps)) (Goodfellow et al., 2015). clip: keep the FGSM
    image in [0, 1]; False follows the paper's equation (3)."""

    name: str = field(default="fgsm", init=False)
    eps: float = 0.1  # type: ignore[assignment]  # a field here, a property on the base
    alpha: float = 0.5
    clip: bool = True

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        require_in_range("alpha", self.alpha, 0.0, 1.0)


@dataclass(frozen=True)
class FastFGSMObjective(ObjectiveParams):
    """CE(x_adv), one FGSM step of step_size (default 1.25 * eps) from a uniform random start in the
    eps-ball, projected back (Wong et al., 2020)."""

    name: str = field(default="fast-fgsm", init=False)
    eps: float = 0.1  # type: ignore[assignment]
    step_size: float | None = None

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        if self.step_size is not None:
            require_positive("step_size", self.step_size)

    def resolved(self) -> FastFGSMObjective:
        return self if self.step_size is not None else dataclasses.replace(self, step_size=1.25 * self.eps)


@dataclass(frozen=True)
class PGDObjective(ObjectiveParams):
    """CE(pgd(x, eps, step_size, steps)) from a random start (Madry et al., 2018); step_size defaults
    to 2.5 * eps / steps."""

    name: str = field(default="pgd", init=False)
    eps: float = 0.1  # type: ignore[assignment]
    steps: int = 7
    step_size: float | None = None

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        _require_steps(self.steps)
        if self.step_size is not None:
            require_positive("step_size", self.step_size)

    def resolved(self) -> PGDObjective:
        return self if self.step_size is not None else dataclasses.replace(self, step_size=2.5 * self.eps / self.steps)


@dataclass(frozen=True)
class TRADESObjective(ObjectiveParams):
    """CE(x) + beta * KL(p(x) || p(x_adv)), x_adv maximising that KL by `steps` sign steps of step_size
    (default 2.5 * eps / steps) from x + 0.001 * N(0, 1) (Zhang et al., 2019)."""

    name: str = field(default="trades", init=False)
    eps: float = 0.1  # type: ignore[assignment]
    steps: int = 7
    step_size: float | None = None
    beta: float = 6.0

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        _require_steps(self.steps)
        if self.step_size is not None:
            require_positive("step_size", self.step_size)
        require_non_negative("beta", self.beta)

    def resolved(self) -> TRADESObjective:
        return self if self.step_size is not None else dataclasses.replace(self, step_size=2.5 * self.eps / self.steps)


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor, loss: LossFn = ce_loss) -> Tensor:
    return loss_and_input_gradient(model, x, y, loss=loss, check_finite=False)[2]


def fgsm_images(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, clip: bool = True) -> Tensor:
    """The attack `fgsm`'s images, x + eps * sign(grad_x CE), clipped to [0, 1] unless clip=False;
    without its finite-gradient check, for the training loop (see the module docstring)."""
    x_adv = x + eps * _input_gradient(model, x, y).sign()
    return (x_adv.clamp(0.0, 1.0) if clip else x_adv).detach()


def clean_objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
    logits = model(x)
    return _ce(logits, y), logits


@register_objective("clean", CleanObjective, adversarial=False)
def _clean_objective(params: CleanObjective) -> Objective:
    return clean_objective


@register_objective("fgsm", FGSMObjective)
def _fgsm_objective(params: FGSMObjective) -> Objective:
    alpha, eps, clip = params.alpha, params.eps, params.clip

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        if alpha == 1.0:
            return clean_objective(model, x, y)
        x_adv = fgsm_images(model, x, y, eps=eps * step.ramp, clip=clip)
        if alpha == 0.0:
            logits_adv = model(x_adv)
            return _ce(logits_adv, y), logits_adv
        # one forward pass over both halves: the same arithmetic as two, with one kernel launch each
        logits_both = model(torch.cat([x, x_adv]))
        logits, logits_adv = logits_both[: len(x)], logits_both[len(x) :]
        return alpha * _ce(logits, y) + (1.0 - alpha) * _ce(logits_adv, y), logits

    return objective


@register_objective("fast-fgsm", FastFGSMObjective)
def _fast_fgsm_objective(params: FastFGSMObjective) -> Objective:
    eps, step_size = params.eps, params.resolved().step_size
    assert step_size is not None

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        ramp = step.ramp  # the warm-up scales the radius and the step alike
        x_start = linf_random_start(x, eps * ramp, step.generator)
        grad = _input_gradient(model, x_start, y)
        x_adv = linf_project(ascent_step(x_start, grad, step_size=step_size * ramp, norm="linf"), center=x, eps=eps * ramp)
        logits_adv = model(x_adv)
        return _ce(logits_adv, y), logits_adv

    return objective


def pgd_linf(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step_size: float, steps: int, generator: Generator | None
) -> Tensor:
    """L-inf PGD from a uniform random start, returning the last iterate, as Madry et al. train on.

    (The evaluator's `pgd` keeps each sample's best iterate instead, and validates its inputs on
    every call; neither is wanted inside a training step.)
    """
    x_adv = linf_random_start(x, eps, generator)
    for _ in range(steps):
        grad = _input_gradient(model, x_adv, y)
        x_adv = linf_project(ascent_step(x_adv, grad, step_size=step_size, norm="linf"), center=x, eps=eps)
    return x_adv.detach()


@register_objective("pgd", PGDObjective)
def _pgd_objective(params: PGDObjective) -> Objective:
    eps, step_size, steps = params.eps, params.resolved().step_size, params.steps
    assert step_size is not None

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        ramp = step.ramp
        x_adv = pgd_linf(model, x, y, eps=eps * ramp, step_size=step_size * ramp, steps=steps, generator=step.generator)
        logits_adv = model(x_adv)
        return _ce(logits_adv, y), logits_adv

    return objective


def _kl_from(probs_clean: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-sample KL(p_clean || softmax(logits)), as an attack loss (the labels are not used)."""
    log_clean = probs_clean.clamp_min(1e-12).log()

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        return (probs_clean * (log_clean - logits.log_softmax(dim=1))).sum(dim=1)

    return loss


@register_objective("trades", TRADESObjective)
def _trades_objective(params: TRADESObjective) -> Objective:
    eps, step_size, steps, beta = params.eps, params.resolved().step_size, params.steps, params.beta
    assert step_size is not None

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        ramp = step.ramp
        with torch.no_grad(), eval_mode(model):
            probs_clean = model(x).softmax(dim=1)
        kl_loss = _kl_from(probs_clean)
        noise = torch.randn(x.shape, generator=step.generator, device=x.device, dtype=x.dtype)
        x_adv = (x + 0.001 * noise).clamp(0.0, 1.0)
        for _ in range(steps):
            grad = _input_gradient(model, x_adv, y, loss=kl_loss)
            x_adv = linf_project(
                ascent_step(x_adv, grad, step_size=step_size * ramp, norm="linf"), center=x, eps=eps * ramp
            )
        logits_both = model(torch.cat([x, x_adv]))
        logits, logits_adv = logits_both[: len(x)], logits_both[len(x) :]
        robust = F.kl_div(logits_adv.log_softmax(dim=1), logits.softmax(dim=1), reduction="batchmean")
        return _ce(logits, y) + beta * robust, logits

    return objective


def make_objective(params: ObjectiveParams) -> Objective:
    """`objective(model, x, y, step) -> (mean loss, logits)` for registered params (see `Objective`)."""
    if not isinstance(params, ObjectiveParams) or params.name not in OBJECTIVES:
        raise ConfigError(f"not a registered objective: {params!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[params.name].factory(params)


def is_adversarial(params: ObjectiveParams) -> bool:
    """Whether the objective trains on attacked inputs (then a robust validation makes sense)."""
    return OBJECTIVES[params.name].adversarial


def objective_record(params: ObjectiveParams) -> dict[str, Any]:
    """The values the objective actually uses (derived defaults filled in), as a plain dict with its name;
    `objective_from_record` reads it back."""
    return to_dict(params.resolved())


def objective_from_record(data: dict[str, Any] | str, *, what: str = "objective") -> ObjectiveParams:
    """Params from a record (`{"name": "pgd", "eps": 0.1, ...}`) or a text spec (`"pgd:eps=0.1"`)."""
    if isinstance(data, str):
        return parse_objective(data)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ConfigError(f"{what} must be a spec such as 'pgd:eps=0.1' or a table with a name, got {data!r}")
    values = dict(data)
    name = values.pop("name")
    entry = _entry(name)
    return from_dict(entry.params, values, what=f"objective {name!r}")


def _entry(name: str) -> ObjectiveEntry:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def parse_objective(text: str) -> ObjectiveParams:
    """`fgsm:eps=0.1,alpha=0.5` -> FGSMObjective(eps=0.1, alpha=0.5); each objective takes only its own keys."""
    name, values = split_spec(text)
    entry = _entry(name)
    if "name" in values:
        raise ConfigError(f"write the objective name before the colon, as in {name}:eps=0.1")
    return from_text_values(entry.params, values, what=f"objective {name!r}")
