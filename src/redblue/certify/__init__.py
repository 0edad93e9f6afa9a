"""Certified lower bounds on robust accuracy (engine layer): `certify` issues per-sample certificates
under an L-inf box with IBP, CROWN or CROWN-IBP, computed by the core package `redblue.bounds`.
"""

from redblue.bounds import input_box
from redblue.certify.certificates import (
    DEFAULT_BATCH,
    certified_accuracy,
    certify,
    choose_method,
    interval_bounds,
    margin_lower_bounds,
)

__all__ = ["DEFAULT_BATCH", "certified_accuracy", "certify", "choose_method", "input_box", "interval_bounds",
           "margin_lower_bounds"]
