"""The rules of the game, on numbers alone: red's pick, blue's fine-tuning objective, who won each round and overall.

Red's pick for a model is the attack of its roster with the lowest robust accuracy at the budget
eps (the one that fools it most; ties go to the attack listed first). Red breaks a defense while
that accuracy is below the threshold. A round: every broken defense is fine-tuned by blue against
red's pick, then red picks again on the fine-tuned model; blue wins the round for a defense when
red can no longer push its robust accuracy below the threshold. The game ends when red breaks no
defense, or after the declared rounds; blue wins the game when red breaks no defense at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redblue.config import split_spec
from redblue.defenses import FGSMObjective, ObjectiveParams, PGDObjective

# red's attack -> the objective blue fine-tunes with: the attack itself where an objective of that
# name exists; every other attack (APGD, Square, transfer...) gets PGD adversarial training, the
# generic defense against L-inf attacks (Madry et al., 2018)
OBJECTIVE_OF_ATTACK = {"fgsm": "fgsm", "pgd": "pgd", "bim": "pgd"}


@dataclass(frozen=True)
class Pick:
    """Red's choice on one model: the attack (red roster name) and the robust accuracy it leaves."""

    red: str
    accuracy: float


def strongest(accuracies: Mapping[str, float], order: Sequence[str]) -> Pick:
    """The attack with the lowest robust accuracy (ties: the first in `order`, the roster's order)."""
    candidates = [name for name in order if name in accuracies]
    if not candidates:
        raise ValueError("no attack scored this model at the budget eps")
    best = min(candidates, key=lambda name: (accuracies[name], candidates.index(name)))
    return Pick(best, accuracies[best])


def fine_tune_objective(attack: str, eps: float) -> tuple[ObjectiveParams, str]:
    """Blue's objective against red's attack spec at the budget eps, and why it is that one."""
    name, _ = split_spec(attack)
    if OBJECTIVE_OF_ATTACK.get(name) == "fgsm":
        return FGSMObjective(eps=eps), f"FGSM adversarial training against {name}"
    if name in OBJECTIVE_OF_ATTACK:
        return PGDObjective(eps=eps), f"PGD adversarial training against {name}"
    return PGDObjective(eps=eps), f"PGD adversarial training ({name} has no training objective of its own)"


def winner(red_wins: int, blue_wins: int) -> str:
    if red_wins == blue_wins:
        return "draw"
    return "red" if red_wins > blue_wins else "blue"


def round_row(number: int, entries: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """One line of the scoreboard from the round's per-defense entries (each with robust_before/after, winner).

    red_success_before / after: the mean over the defenses of 1 - red's best robust accuracy before
    blue's fine-tuning and after it.
    """
    red_wins = sum(1 for e in entries if e["winner"] == "red")
    blue_wins = len(entries) - red_wins
    return {
        "round": number,
        "fine_tuned": [e["defense"] for e in entries if e["fine_tuned"]],
        "red_success_before": sum(1 - e["robust_before"] for e in entries) / len(entries),
        "red_success_after": sum(1 - e["robust_after"] for e in entries) / len(entries),
        "red_wins": red_wins,
        "blue_wins": blue_wins,
        "winner": winner(red_wins, blue_wins),
        "threshold": threshold,
    }


def round_entry(defense: str, before: Pick, after: Pick, *, fine_tuned: bool, threshold: float,
                objective: str | None = None, why: str | None = None, cell: str | None = None) -> dict[str, Any]:
    """One defense in one round: red's pick before and after blue's fine-tuning, and who won."""
    return {
        "defense": defense,
        "attack_before": before.red,
        "robust_before": before.accuracy,
        "fine_tuned": fine_tuned,
        "objective": objective,
        "why": why,
        "fine_tune_cell": cell,
        "attack_after": after.red,
        "robust_after": after.accuracy,
        "winner": "red" if after.accuracy < threshold else "blue",
    }


def scoreboard(initial: Mapping[str, Pick], final: Mapping[str, Pick], rounds: Sequence[Sequence[dict[str, Any]]],
               *, threshold: float, max_rounds: int) -> dict[str, Any]:
    """Who won each round and the game. initial / final: red's pick on each defense's first and last model."""
    lines = [round_row(i, entries, threshold) for i, entries in enumerate(rounds, start=1)]
    broken = [d for d, pick in final.items() if pick.accuracy < threshold]
    held = [d for d, pick in final.items() if pick.accuracy >= threshold]
    if not broken:
        ended = "red cannot push any defense's robust accuracy below the threshold"
    elif len(lines) >= max_rounds:
        ended = f"after {max_rounds} round{'s' if max_rounds != 1 else ''} (the limit)"
    else:
        ended = "no rounds were declared"
    return {
        "threshold": threshold,
        "rounds": lines,
        "rounds_played": len(lines),
        "red_success_initial": sum(1 - p.accuracy for p in initial.values()) / len(initial),
        "red_success_final": sum(1 - p.accuracy for p in final.values()) / len(final),
        "rounds_won": {"red": sum(1 for r in lines if r["winner"] == "red"), "blue": sum(1 for r in lines if r["winner"] == "blue")},
        "held": held,
        "broken": broken,
        "ended": ended,
        "winner": "blue" if not broken else "red",
    }
