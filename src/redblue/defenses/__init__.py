"""The blue team: training objectives (clean, FGSM, fast FGSM, PGD, TRADES, MART; certified: IBP,
CROWN-IBP) and weight penalties.

Any `nn.Module` that maps pixels in [0, 1] of shape (N, C, H, W) to logits trains with any
objective through the Python API, and is evaluated as the CLI evaluates the built-in models::

    import torch
    from torch import nn
    from redblue.data import load_dataset
    from redblue.defenses import parse_objective
    from redblue.evaluate import evaluate
    from redblue.train import TrainConfig, train

    model = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
    mnist, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    config = TrainConfig(epochs=5, objective=parse_objective("pgd:eps=0.1"))
    result = train(model, mnist.x, mnist.y, config)   # in place; result.history: one dict per epoch
    report = evaluate(model.eval(), test.x, test.y, "standard", [0.1])   # AutoAttack's attacks

Put any normalisation inside the model (as its first layer), never in the data. An objective can
also drive a loop of your own: `loss, logits = make_objective(params)(model, x, y, TrainStep(generator=g))`,
then `loss.backward()` once (the contract is in `redblue.defenses.objectives`).
"""

from redblue.defenses.adversarial import (
    FastFGSMObjective,
    FGSMObjective,
    MARTObjective,
    PGDObjective,
    TRADESObjective,
    mart_loss,
)
from redblue.defenses.certified import CROWNIBPObjective, IBPObjective, crown_ibp_loss, ibp_loss
from redblue.defenses.objectives import (
    KINDS,
    OBJECTIVES,
    CleanObjective,
    Objective,
    ObjectiveParams,
    TrainStep,
    clean_objective,
    is_adversarial,
    make_objective,
    objective_kind,
    objective_from_record,
    objective_record,
    parse_objective,
    register_objective,
)
from redblue.defenses.penalties import penalized_parameters, weight_penalty

__all__ = [
    "KINDS",
    "OBJECTIVES",
    "CROWNIBPObjective",
    "CleanObjective",
    "FGSMObjective",
    "FastFGSMObjective",
    "IBPObjective",
    "MARTObjective",
    "Objective",
    "ObjectiveParams",
    "PGDObjective",
    "TRADESObjective",
    "TrainStep",
    "clean_objective",
    "crown_ibp_loss",
    "ibp_loss",
    "is_adversarial",
    "make_objective",
    "mart_loss",
    "objective_from_record",
    "objective_kind",
    "objective_record",
    "parse_objective",
    "penalized_parameters",
    "register_objective",
    "weight_penalty",
]
