"""The red team: every attack is a plain function registered by name (see `registry`)."""

from redblue.attacks.registry import ATTACKS, AttackEntry, get_attack, parse_attack, register, split_attack_list
from redblue.attacks import fgsm as _fgsm  # noqa: E402,F401  (registers the attack)
from redblue.attacks import apgd as _apgd  # noqa: E402,F401  (registers apgd-ce, apgd-dlr, apgd-t and -l2)
from redblue.attacks import square as _square  # noqa: E402,F401  (registers square, square-l2)
from redblue.attacks import pgd as _pgd  # noqa: E402,F401  (registers pgd, pgd-l2, pgd-t, pgd-cw)
from redblue.attacks import bim as _bim  # noqa: E402,F401  (registers bim, mim, mim-l2)
from redblue.attacks import cw as _cw  # noqa: E402,F401  (registers cw-l2)
from redblue.attacks import deepfool as _deepfool  # noqa: E402,F401  (registers deepfool, deepfool-l2)
from redblue.attacks import fab as _fab  # noqa: E402,F401  (registers fab, fab-t and -l2)
from redblue.attacks import transfer as _transfer  # noqa: E402,F401  (registers transfer, transfer-l2)
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
