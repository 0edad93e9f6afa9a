"""Training objectives of the blue team: the interface, the registry, and clean training.

An objective maps (model, x, y, step) to the mean loss of one batch and the logits it was computed
on; `step` (`TrainStep`) carries the generator and where training stands. Each objective has its
own frozen params class with only its own keys, registered by name with `register_objective`
together with its kind (`KINDS`), which is what the training loop reads to choose its defaults:

    clean        no attack (the paper's protocol)
    single-step  one attack step per batch (fgsm, fast-fgsm): can overfit catastrophically, so the
                 loop's guard watches it
    multi-step   an iterative attack per batch (pgd, trades, mart)
    certified    a bound over the whole eps-ball (ibp, crown-ibp): validated by certified accuracy
The adversarial objectives (FGSM, fast FGSM, PGD, TRADES, MART) live in
`redblue.defenses.adversarial`; importing `redblue.defenses` registers them all.

The loop's side of the contract: call `loss, logits = objective(model, x, y, step)` with grad
mode on, then `loss.backward()` once on that loss; `loss` is the objective's full value (for the
history) and its backward delivers the objective's full weight gradient. An objective never
touches `.grad` itself: it may hand autograd gradients it has already computed through the
returned loss's graph (the FGSM mix does, see `adversarial.py`), so where the loop zeroes the
gradients, scales the loss (AMP) or clips the gradients does not matter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch.nn.functional as F
from torch import Generator, Tensor, nn

from redblue.config import from_dict, from_text_values, split_spec, to_dict
from redblue.errors import ConfigError

Objective = Callable[[nn.Module, Tensor, Tensor, "TrainStep"], tuple[Tensor, Tensor]]
"""`objective(model, x, y, step) -> (mean loss, logits)`: the loss of one batch (a scalar with a graph to
the weights) and the logits (N, classes) of the clean or adversarial batch it was computed on, for the
running training accuracy."""


@dataclass(frozen=True)
class TrainStep:
    """Where training stands, as an objective sees it.

    generator: the objective's randomness (random starts), seeded by the training loop.
    ramp: the eps warm-up factor in [0, 1] (linear over the first warm-up epochs, then 1):
      adversarial objectives attack at eps * ramp; IBP's kappa and CROWN-IBP's beta follow it too.
    progress: the fraction of all training steps done, in [0, 1], for schedules that span the
      whole run.
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

    def schedule(self, step: TrainStep) -> dict[str, float]:
        """The values the objective's own schedules take at `step`, for the training history (IBP's
        train_eps and kappa, CROWN-IBP's beta too); {} where there are none beyond eps * ramp."""
        return {}

    @classmethod
    def from_record(cls, data: Any, *, what: str = "objective") -> ObjectiveParams:
        """The hook `redblue.config.from_dict` uses for a field typed ObjectiveParams: a record or a spec."""
        return objective_from_record(data, what=what)


ObjectiveKind = Literal["clean", "single-step", "multi-step", "certified"]
KINDS: tuple[ObjectiveKind, ...] = ("clean", "single-step", "multi-step", "certified")


@dataclass(frozen=True)
class ObjectiveEntry:
    name: str
    params: type[ObjectiveParams]
    factory: Callable[[Any], Objective]
    kind: ObjectiveKind

    @property
    def adversarial(self) -> bool:
        return self.kind != "clean"


OBJECTIVES: dict[str, ObjectiveEntry] = {}


def register_objective(
    name: str, params: type[ObjectiveParams], *, kind: ObjectiveKind
) -> Callable[[Callable[[Any], Objective]], Callable[[Any], Objective]]:
    """Register `factory(params) -> objective` under `name` with its params class and its kind (one
    of `KINDS`, see the module's docstring): said, not guessed from the params' fields."""
    if kind not in KINDS:
        raise ConfigError(f"unknown objective kind {kind!r}; choose one of: {', '.join(KINDS)}")

    def add(factory: Callable[[Any], Objective]) -> Callable[[Any], Objective]:
        if name in OBJECTIVES:
            raise ConfigError(f"objective {name!r} is registered twice")
        OBJECTIVES[name] = ObjectiveEntry(name, params, factory, kind)
        return factory

    return add


def require_steps(steps: Any) -> None:
    """steps must be a positive int (not a bool); one line otherwise."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")


@dataclass(frozen=True)
class CleanObjective(ObjectiveParams):
    """CE(x): no attack."""

    name: str = field(default="clean", init=False)


def clean_objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
    """CE(x), the mean over the batch, and the logits (N, classes)."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


@register_objective("clean", CleanObjective, kind="clean")
def _clean_objective(params: CleanObjective) -> Objective:
    return clean_objective


def make_objective(params: ObjectiveParams) -> Objective:
    """`objective(model, x, y, step) -> (mean loss, logits)` for registered params (see `Objective`)."""
    if not isinstance(params, ObjectiveParams) or params.name not in OBJECTIVES:
        raise ConfigError(f"not a registered objective: {params!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[params.name].factory(params)


def objective_kind(params: ObjectiveParams) -> ObjectiveKind:
    """The registered kind of the objective: clean, single-step, multi-step or certified."""
    return _entry(params.name).kind


def is_adversarial(params: ObjectiveParams) -> bool:
    """Whether the objective trains against an eps-ball (attacked inputs or certified bounds; then a
    robust validation and an eps warm-up make sense): every kind but clean."""
    return _entry(params.name).adversarial


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
