"""The evaluation plan: attack lists parsed from text, the presets, each attack's label and the cascade's cost order."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redblue.attacks.core import check_eps
from redblue.attacks.registry import ATTACKS, AttackEntry, get_attack
from redblue.config import split_spec
from redblue.errors import ConfigError

MODES = ("worst-case", "per-attack")

# AutoAttack's "standard" version (Croce & Hein, 2020), in its order: fixed budgets, so numbers are
# comparable across models without tuning. Square as AutoAttack runs it (`autoattack.py`: p_init 0.8,
# 5,000 queries, one restart, resc_schedule=False: p halves at the iterations counted on 10,000
# queries, not rescaled to 5,000). `fast` is a quick first look, not a robustness claim.
PRESETS: dict[str, tuple[str, ...]] = {
    "standard": (
        "apgd-ce:n_iter=100,restarts=1,rho=0.75",
        "apgd-t:n_iter=100,restarts=1,rho=0.75,n_target_classes=9",
        "fab-t:n_iter=100,restarts=1,alpha_max=0.1,eta=1.05,beta=0.9,n_target_classes=9",
        "square:n_queries=5000,p_init=0.8,restarts=1,rescale=false",
    ),
    "fast": ("fgsm", "pgd:steps=40"),
}

_COST_FIELDS = ("steps", "iterations", "n_iter", "max_iter", "iters")
_MULTIPLIER_FIELDS = ("restarts", "n_restarts", "n_target_classes", "n_targets")
_QUERY_FIELDS = ("queries", "n_queries", "max_queries")


def parse_attack_list(text: str, *, eps: float) -> tuple[list[tuple[AttackEntry, Any]], bool]:
    """`fgsm,pgd:steps=40,standard` -> [(entry, params), ...] with params.eps = eps, and whether a preset was used.

    eps comes from the eps list (`--eps`), so an eps inside an attack spec is an error rather than a
    silent override; a preset name expands to its fixed attacks.
    """
    from redblue.attacks.registry import split_attack_list

    unprintable = sorted({ch for ch in text if not ch.isprintable()})
    if unprintable:  # a newline in the text would break the one-line error every other mistake gets
        shown = "".join(unprintable).encode("unicode_escape").decode("ascii")
        raise ConfigError(f"the attack list holds characters that cannot be printed ({shown}); write it on one line")
    plan: list[tuple[AttackEntry, Any]] = []
    used_preset = False
    for spec in split_attack_list(text):
        name, values = split_spec(spec)
        if name in PRESETS:
            if values:
                raise ConfigError(f"preset {name!r} takes no parameters; list the attacks yourself to change them")
            used_preset = True
            for preset_spec in PRESETS[name]:
                preset_name, _ = split_spec(preset_spec)
                if preset_name not in ATTACKS:
                    raise ConfigError(f"preset {name!r} needs attack {preset_name!r}, which is not registered")
                plan.append(_parse_one(preset_spec, eps))
            continue
        if "eps" in values:
            raise ConfigError(f"attack spec {spec!r} sets eps; give eps values with --eps instead")
        if name not in ATTACKS:
            get_attack(name)  # raises the one-line "unknown attack" error listing the valid names
        plan.append(_parse_one(spec, eps))
    return plan, used_preset


def _parse_one(spec: str, eps: float) -> tuple[AttackEntry, Any]:
    from redblue.attacks.registry import parse_attack

    name, _ = split_spec(spec)
    check_eps(eps, get_attack(name).norm)
    return parse_attack(spec, eps=eps)


def attack_label(entry: AttackEntry, params: Any) -> str:
    """`pgd:steps=100` — the name and the parameters that differ from their defaults (eps left out)."""
    changed = []
    for f in dataclasses.fields(params):
        if f.name == "eps":
            continue
        value = getattr(params, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            changed.append(f"{f.name}={value}")
    return entry.name + (":" + ",".join(changed) if changed else "")


def estimated_cost(entry: AttackEntry, params: Any) -> float:
    """Rough gradient evaluations per sample, to run cheap attacks first in the cascade.

    Steps x restarts x targets for gradient attacks, times the gradient evaluations of one step where
    the params say (`passes_per_step`, a class attribute: FAB's extra forward pass); a third of the
    queries for black-box ones (a forward pass costs about a third of a forward + backward).
    """
    if not entry.iterative:
        return 1.0
    names = {f.name for f in dataclasses.fields(params)}
    cost = 1.0
    for name in _COST_FIELDS:
        if name in names:
            cost *= max(1, getattr(params, name))
    for name in _MULTIPLIER_FIELDS:
        if name in names and isinstance(getattr(params, name), int):
            cost *= max(1, getattr(params, name))
    cost *= getattr(params, "passes_per_step", 1.0)
    for name in _QUERY_FIELDS:
        if name in names:
            cost *= max(1, getattr(params, name)) / 3
    threat_rank = {"white-box": 1.0, "transfer": 1.01, "black-box": 1.02}[entry.threat]
    return cost * threat_rank


@dataclass(frozen=True)
class PlannedAttack:
    """One attack of an evaluation: its unique label, its registry entry and its parameters.

    params.eps is a placeholder: `at(eps)` gives the parameters for each eps of the evaluation.
    """

    label: str
    entry: AttackEntry
    params: Any

    @property
    def norm(self) -> str:
        return self.entry.norm

    @property
    def threat(self) -> str:
        return self.entry.threat

    def at(self, eps: float) -> Any:
        return dataclasses.replace(self.params, eps=eps)


def cascade_order(planned: PlannedAttack) -> tuple[bool, float]:
    """White-box attacks before black-box and transfer ones, cheapest first within each."""
    return (planned.threat != "white-box", estimated_cost(planned.entry, planned.params))


def make_plan(attacks: Sequence[tuple[AttackEntry, Any]], *, mode: str) -> tuple[PlannedAttack, ...]:
    """Label each attack (`pgd:steps=100`, a repeat gets `#2`); in worst-case mode, sort into cascade
    order (stable: attacks of equal cost keep the order they were given in)."""
    plan = [PlannedAttack(label, entry, params) for label, (entry, params) in zip(_unique_labels(attacks), attacks)]
    if mode == "worst-case":
        plan.sort(key=cascade_order)
    return tuple(plan)


def _unique_labels(attacks: Sequence[tuple[AttackEntry, Any]]) -> list[str]:
    labels: list[str] = []
    for entry, params in attacks:
        label = attack_label(entry, params)
        if label in labels:
            label = f"{label}#{sum(1 for seen in labels if seen.split('#')[0] == label) + 1}"
        labels.append(label)
    return labels


def norms_of(plan: Sequence[PlannedAttack]) -> list[str]:
    """The norms of the plan, in the order they first appear."""
    return list(dict.fromkeys(planned.norm for planned in plan))
