"""The attack registry: a plain dict from name to (function, parameter dataclass, properties).

Text such as `pgd:eps=0.3,steps=40` is parsed with the dataclass field types; the same
dataclasses are the CLI options, the TOML schema and the record every run writes.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Generator, Tensor, nn

from redblue.attacks.core import check_inputs
from redblue.config import from_text_values, split_spec
from redblue.errors import ConfigError

Threat = Literal["white-box", "black-box", "transfer"]


@dataclass(frozen=True)
class AttackEntry:
    """One registered attack: what it is (norm, threat model) and how to call it."""

    name: str
    fn: Callable[..., Tensor]
    params_type: type
    norm: Literal["linf", "l2"]
    threat: Threat
    iterative: bool
    targeted: bool
    takes_generator: bool
    summary: str

    def params(self, **values: Any) -> Any:
        """Build this attack's parameter dataclass from Python values."""
        from redblue.config import construct

        return construct(self.params_type, values, what=f"attack {self.name!r}")

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, params: Any, *, generator: Generator | None = None
    ) -> Tensor:
        """Run the attack with validated inputs; returns x_adv under DESIGN.md's contract."""
        if not isinstance(params, self.params_type):
            raise ConfigError(f"attack {self.name!r} takes {self.params_type.__name__}, got {type(params).__name__}")
        check_inputs(x, y)
        kwargs = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
        if self.takes_generator:
            kwargs["generator"] = generator
        return self.fn(model, x, y, **kwargs)


ATTACKS: dict[str, AttackEntry] = {}


def register(
    name: str,
    params_type: type,
    *,
    norm: Literal["linf", "l2"],
    threat: Threat = "white-box",
    iterative: bool = True,
    targeted: bool = False,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register `fn(model, x, y, *, eps, ...) -> x_adv` under `name`."""

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is registered twice")
        if "eps" not in {f.name for f in dataclasses.fields(params_type)}:
            raise ValueError(f"{params_type.__name__} must have an eps field")
        summary = (inspect.getdoc(fn) or name).splitlines()[0]
        ATTACKS[name] = AttackEntry(
            name=name,
            fn=fn,
            params_type=params_type,
            norm=norm,
            threat=threat,
            iterative=iterative,
            targeted=targeted,
            takes_generator="generator" in inspect.signature(fn).parameters,
            summary=summary,
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
