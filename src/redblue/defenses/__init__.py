"""The blue team: training objectives (clean, FGSM, fast FGSM, PGD, TRADES) and weight penalties."""

from redblue.defenses.objectives import (
    OBJECTIVES,
    CleanObjective,
    FastFGSMObjective,
    FGSMObjective,
    Objective,
    ObjectiveParams,
    PGDObjective,
    TRADESObjective,
    TrainStep,
    is_adversarial,
    make_objective,
    objective_from_record,
    objective_record,
    parse_objective,
    register_objective,
)
from redblue.defenses.penalties import penalized_parameters, weight_penalty

__all__ = [
    "OBJECTIVES",
    "CleanObjective",
    "FGSMObjective",
    "FastFGSMObjective",
    "Objective",
    "ObjectiveParams",
    "PGDObjective",
    "TRADESObjective",
    "TrainStep",
    "is_adversarial",
    "make_objective",
    "objective_from_record",
    "objective_record",
    "parse_objective",
    "penalized_parameters",
    "register_objective",
    "weight_penalty",
]
