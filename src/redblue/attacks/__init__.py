"""The red team: every attack is a plain function registered by name (see `registry`)."""

from redblue.attacks.registry import ATTACKS, AttackEntry, get_attack, parse_attack, register, split_attack_list
from redblue.attacks import fgsm as _fgsm  # noqa: E402,F401  (registers the attack)
from redblue.attacks.fgsm import FGSMParams, fgsm

__all__ = [
    "ATTACKS",
    "AttackEntry",
    "FGSMParams",
    "fgsm",
    "get_attack",
    "parse_attack",
    "register",
    "split_attack_list",
]
