"""Bounds on a ReLU classifier over an L-inf box: the chain of operators, IBP and CROWN propagation,
the float64 rounding allowance that makes them sound, and their differentiable training forms.

Core layer: knows tensors and modules only. `redblue.certify` (engine) issues certificates with
these bounds; `redblue.defenses.certified` trains with them.
"""

from redblue.bounds.network import SUPPORTED, Chain, linearize
from redblue.bounds.propagate import METHODS, MarginBounds, input_box, interval_step, margin_bounds
from redblue.bounds.rounding import classical, outward_box
from redblue.bounds.training import crown_ibp_margins, ibp_logit_bounds, ibp_margins, worst_case_logits

__all__ = [
    "METHODS",
    "SUPPORTED",
    "Chain",
    "MarginBounds",
    "classical",
    "crown_ibp_margins",
    "ibp_logit_bounds",
    "ibp_margins",
    "input_box",
    "interval_step",
    "linearize",
    "margin_bounds",
    "outward_box",
    "worst_case_logits",
]
