"""The blue team: training objectives (clean, FGSM, fast FGSM, PGD, TRADES) and weight penalties."""

from redblue.defenses.objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveConfig,
    make_objective,
    make_objective_with_logits,
    parse_objective,
)
from redblue.defenses.penalties import penalized_parameters, weight_penalty

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveConfig",
    "make_objective",
    "make_objective_with_logits",
    "parse_objective",
    "penalized_parameters",
    "weight_penalty",
]
