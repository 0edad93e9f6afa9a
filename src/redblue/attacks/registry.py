"""The attack registry: a plain dict from name to (function, parameter dataclass, properties).

Text such as `pgd:eps=0.3,steps=40` is parsed with the dataclass field types; the same
dataclasses are the CLI options, the TOML schema and the record every run writes.

Each attack has one runner, `run(model, x, y, params, generator) -> (x_adv, finite)`, which
works from an already validated parameter dataclass and checks nothing itself; `run_attack` is
the one call path around it (shapes checked, then the run, then one device sync for the input's
pixel range and the run's finiteness). The registry calls it with the params it parsed; the
attack's keyword function (`pgd(model, x, y, eps=0.1)`, the Python API) builds the params (which
validates them) and calls it too. Defaults live in the parameter dataclass only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import check_run, check_shapes
from redblue.config import construct, from_text_values, split_spec
from redblue.errors import ConfigError

Threat = Literal["white-box", "black-box", "transfer"]
# (model, x, y, params, generator) -> (x_adv, finite: 0-dim bool tensor, no device sync)
Runner = Callable[[nn.Module, Tensor, Tensor, Any, "Generator | None"], tuple[Tensor, Tensor]]


def run_attack(
    name: str, run: Runner, model: nn.Module, x: Tensor, y: Tensor, params: Any, generator: Generator | None
) -> Tensor:
    """Run an attack with validated params under DESIGN.md's contract; the one device sync is here.

    Bad pixels (NaN, infinite, outside [0, 1]) and a NaN or infinite loss or gradient raise
    AttackError after the run, read in one sync with the run's own finiteness flag.
    """
    check_shapes(x, y)
    x_adv, finite = run(model, x, y, params, generator)
    check_run(x, finite, what=f"attack {name!r}")
    return x_adv.detach()


@dataclass(frozen=True)
class AttackEntry:
    """One registered attack: what it is (norm, threat model) and how to call it.

    `fn` is the keyword function of the Python API; `run` the runner the registry calls.
    """

    name: str
    fn: Callable[..., Tensor]
    run: Runner
    params_type: type
    norm: Literal["linf", "l2"]
    threat: Threat
    iterative: bool
    targeted: bool
    summary: str

    def params(self, **values: Any) -> Any:
        """Build this attack's parameter dataclass from Python values."""
        return construct(self.params_type, values, what=f"attack {self.name!r}")

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, params: Any, *, generator: Generator | None = None
    ) -> Tensor:
        """Run the attack with validated inputs; returns x_adv under DESIGN.md's contract."""
        if not isinstance(params, self.params_type):
            raise ConfigError(f"attack {self.name!r} takes {self.params_type.__name__}, got {type(params).__name__}")
        return run_attack(self.name, self.run, model, x, y, params, generator)


ATTACKS: dict[str, AttackEntry] = {}


def keyword_runner(fn: Callable[..., Tensor]) -> Runner:
    """The runner of an attack registered as a keyword function alone (as a user or a test may):
    fn is called with the params' fields, and the generator when it takes one; it checks its own
    finiteness, so the run counts as finite."""
    takes_generator = "generator" in inspect.signature(fn).parameters

    def run(model: nn.Module, x: Tensor, y: Tensor, params: Any, generator: Generator | None) -> tuple[Tensor, Tensor]:
        values = {f.name: getattr(params, f.name) for f in fields(params)}
        x_adv = fn(model, x, y, **values, **({"generator": generator} if takes_generator else {}))
        return x_adv, torch.ones((), dtype=torch.bool, device=x.device)

    return run


def register(
    name: str,
    params_type: type,
    *,
    run: Runner | None = None,
    norm: Literal["linf", "l2"],
    threat: Threat = "white-box",
    iterative: bool = True,
    targeted: bool = False,
    summary: str | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register the keyword function `fn(model, x, y, *, eps, ...) -> x_adv` and its
    runner (default: `keyword_runner(fn)`) under `name`; the summary is the first line of fn's
    docstring unless given."""

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is registered twice")
        if "eps" not in {f.name for f in fields(params_type)}:
            raise ValueError(f"{params_type.__name__} must have an eps field")
        ATTACKS[name] = AttackEntry(
            name=name,
            fn=fn,
            run=run or keyword_runner(fn),
            params_type=params_type,
            norm=norm,
            threat=threat,
            iterative=iterative,
            targeted=targeted,
            summary=summary or (inspect.getdoc(fn) or name).splitlines()[0],
        )
        return fn

    return decorate


def get_attack(name: str) -> AttackEntry:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(sorted(ATTACKS))}") from None


def parse_attack(text: str, **fixed: Any) -> tuple[AttackEntry, Any]:
    """`pgd:eps=0.3,steps=40` -> (entry, PGDParams(eps=0.3, steps=40)); `fixed` overrides text."""
    name, values = split_spec(text)
    entry = get_attack(name)
    for key in fixed:
        values.pop(key, None)
    return entry, from_text_values(entry.params_type, values, what=f"attack {name!r}", **fixed)


def split_attack_list(text: str) -> list[str]:
    """Split `fgsm,pgd:steps=40,restarts=5,apgd-ce` into one spec per attack.

    A comma-separated item without '=' starts a new attack; one with '=' continues the last.
    """
    specs: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" in item and ":" not in item.split("=", 1)[0]:
            if not specs:
                raise ConfigError(f"{item!r} comes before any attack name in {text!r}")
            specs[-1] += ("," if ":" in specs[-1] else ":") + item
        else:
            specs.append(item)
    if not specs:
        raise ConfigError("no attack given; name at least one, for example fgsm")
    return specs
