"""The certified objectives `ibp` and `crown-ibp`: loss values against a float64 hand computation,
their schedules over the eps ramp, their keys and records, and a short run that certifies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from redblue.defenses import (
    CROWNIBPObjective,
    IBPObjective,
    TrainStep,
    is_adversarial,
    make_objective,
    objective_from_record,
    objective_record,
    parse_objective,
)
from redblue.errors import ConfigError, ModelError

F64 = torch.float64


# ---- the loss on a net small enough to bound by hand ----------------------------------------------


def hand_net() -> nn.Sequential:
    """h = W1 x + b1, W1 = [[1, -1], [0.5, 1]], b1 = (0, -0.5); z = W2 relu(h) + b2, W2 = [[1, 0], [-1, 2]],
    b2 = (0.1, 0); float64, with a dropout layer that the bounds must ignore."""
    first, last = nn.Linear(2, 2).to(F64), nn.Linear(2, 2).to(F64)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 1.0]]))
        first.bias.copy_(torch.tensor([0.0, -0.5]))
        last.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 2.0]]))
        last.bias.copy_(torch.tensor([0.1, 0.0], dtype=F64))
    return nn.Sequential(first, nn.ReLU(), nn.Dropout(0.5), last)


# Two samples at train eps 0.1 (the box is clipped to [0, 1]):
#
# x = (0.5, 0.25), y = 0: box [0.4, 0.6] x [0.15, 0.35]. h1 = x1 - x2 in [0.05, 0.45] (active),
#   h2 = 0.5 x1 + x2 - 0.5 in [-0.15, 0.15] (unstable). Margin z0 - z1 = 2 a1 - 2 a2 + 0.1.
#   IBP: 2 * 0.05 - 2 * 0.15 + 0.1 = -0.1.
#   CROWN-IBP: a1 = h1; a2 <= 0.15 / 0.3 * (h2 + 0.15) (the chord), taken with its negative
#   coefficient: 2 h1 - h2 - 0.15 + 0.1 = 1.5 x1 - 3 x2 + 0.45 >= 1.5 * 0.4 - 3 * 0.35 + 0.45 = 0.
#   Clean: h = (0.25, 0), z = (0.35, -0.25).
# x = (0.95, 0.5), y = 1: box [0.85, 1] x [0.4, 0.6]. h1 in [0.25, 0.6], h2 in [0.325, 0.6], both
#   active. Margin z1 - z0 = -2 a1 + 2 a2 - 0.1. IBP: -1.2 + 0.65 - 0.1 = -0.65.
#   CROWN-IBP (exact here, no ReLU unstable): -x1 + 4 x2 - 1.1 >= -1 + 1.6 - 1.1 = -0.5.
#   Clean: h = (0.45, 0.475), z = (0.55, 0.5).
HAND_X = torch.tensor([[0.5, 0.25], [0.95, 0.5]], dtype=F64)
HAND_Y = torch.tensor([0, 1])
HAND_CLEAN_LOGITS = torch.tensor([[0.35, -0.25], [0.55, 0.5]], dtype=F64)
HAND_IBP_MARGINS = (-0.1, -0.65)
HAND_CROWN_IBP_MARGINS = (0.0, -0.5)


def two_class_ce(logits: tuple[float, float], label: int) -> float:
    return math.log(math.exp(logits[0]) + math.exp(logits[1])) - logits[label]


def hand_loss(kappa: float, beta: float) -> float:
    """Mean over the two samples of kappa * CE(z) + (1 - kappa) * CE(z_hat), z_hat_y = 0, z_hat_j = -m."""
    total = 0.0
    for i, label in enumerate((0, 1)):
        clean = two_class_ce(tuple(HAND_CLEAN_LOGITS[i].tolist()), label)
        margin = beta * HAND_CROWN_IBP_MARGINS[i] + (1 - beta) * HAND_IBP_MARGINS[i]
        robust = math.log(1 + math.exp(-margin))  # CE of (0, -m) at the label
        total += kappa * clean + (1 - kappa) * robust
    return total / 2


@pytest.mark.parametrize(
    "spec, kappa, beta",
    [
        # ramp 0.5 below: train eps = 0.1 * 2 * 0.5 = 0.1, kappa 1 -> 0.5 is at 0.75, beta 1 -> 0 at 0.5
        ("ibp:eps=0.1,train_eps_factor=2", 0.75, 0.0),
        ("ibp:eps=0.15", 0.75, 0.0),  # the default factor 4/3: train eps 0.15 * 4/3 * 0.5 = 0.1
        ("ibp:eps=0.05,train_eps_factor=4,kappa_start=0.2,kappa_end=0.6", 0.4, 0.0),
        ("crown-ibp:eps=0.1,train_eps_factor=2", 0.75, 0.5),
        ("crown-ibp:eps=0.1,train_eps_factor=2,kappa_end=0,beta_start=0.6,beta_end=1", 0.5, 0.8),
    ],
)
def test_objective_loss_matches_the_hand_computation_in_float64(spec, kappa, beta):
    model = hand_net().eval()
    loss, logits = make_objective(parse_objective(spec))(model, HAND_X, HAND_Y, TrainStep(ramp=0.5))
    torch.testing.assert_close(loss, torch.tensor(hand_loss(kappa, beta), dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, HAND_CLEAN_LOGITS, rtol=1e-12, atol=1e-12)


def test_bounds_ignore_dropout_while_the_clean_term_sees_it():
    # with dropout on, the robust term is still that of the eval network: at kappa = 0 the loss is
    # the hand value whatever the dropout mask, while the clean logits change with the mask
    model = hand_net().train()
    objective = make_objective(parse_objective("crown-ibp:eps=0.1,train_eps_factor=2,kappa_start=0,kappa_end=0"))
    torch.manual_seed(0)
    seen = []
    for _ in range(4):
        loss, logits = objective(model, HAND_X, HAND_Y, TrainStep(ramp=0.5))
        torch.testing.assert_close(loss, torch.tensor(hand_loss(0.0, 0.5), dtype=F64), rtol=1e-12, atol=1e-12)
        seen.append(logits)
    assert any(not torch.equal(seen[0], other) for other in seen[1:])


def test_at_ramp_zero_the_objectives_are_clean_cross_entropy():
    model = hand_net().eval()
    expected = F.cross_entropy(HAND_CLEAN_LOGITS, HAND_Y)
    for spec in ("ibp:eps=0.3", "crown-ibp:eps=0.3"):
        loss, _ = make_objective(parse_objective(spec))(model, HAND_X, HAND_Y, TrainStep(ramp=0.0))
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


# ---- schedules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        # (train_eps, kappa[, beta]) at ramp 0, 0.5 and 1
        ("ibp:eps=0.3", [(0.0, 1.0), (0.2, 0.75), (0.4, 0.5)]),
        ("ibp:eps=0.1", [(0.0, 1.0), (0.2 / 3, 0.75), (0.4 / 3, 0.5)]),
        ("ibp:eps=0.1,train_eps_factor=2", [(0.0, 1.0), (0.1, 0.75), (0.2, 0.5)]),
        ("ibp:eps=0.2,train_eps_factor=1.1,kappa_end=0", [(0.0, 1.0), (0.11, 0.5), (0.22, 0.0)]),
        ("crown-ibp:eps=0.3", [(0.0, 1.0, 1.0), (0.2, 0.75, 0.5), (0.4, 0.5, 0.0)]),
        ("crown-ibp:eps=0.1,kappa_start=0,kappa_end=0,beta_start=0.8,beta_end=0.2",
         [(0.0, 0.0, 0.8), (0.2 / 3, 0.0, 0.5), (0.4 / 3, 0.0, 0.2)]),
    ],
)
def test_schedule_values_at_ramp_0_half_and_1(spec, expected):
    params = parse_objective(spec)
    keys = ("train_eps", "kappa", "beta")[: len(expected[0])]
    for ramp, values in zip((0.0, 0.5, 1.0), expected):
        got = params.schedule(TrainStep(ramp=ramp, progress=0.3))
        assert got.keys() == set(keys)
        for key, value in zip(keys, values):
            assert got[key] == pytest.approx(value, abs=1e-15), (ramp, key)


def test_schedules_follow_the_ramp_not_the_progress_and_other_objectives_have_none():
    params = parse_objective("crown-ibp:eps=0.3")
    assert params.schedule(TrainStep(ramp=1.0, progress=0.1)) == params.schedule(TrainStep(ramp=1.0, progress=0.9))
    assert parse_objective("pgd:eps=0.3").schedule(TrainStep(ramp=0.5)) == {}
    assert parse_objective("clean").schedule(TrainStep(ramp=0.5)) == {}


# ---- keys, records, errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, record",
    [
        ("ibp:eps=0.3", {"name": "ibp", "eps": 0.3, "train_eps_factor": 4 / 3, "kappa_start": 1.0, "kappa_end": 0.5}),
        ("ibp:eps=0.1,train_eps_factor=1.1",
         {"name": "ibp", "eps": 0.1, "train_eps_factor": 1.1, "kappa_start": 1.0, "kappa_end": 0.5}),
        ("crown-ibp:eps=0.1,beta_end=0.25",
         {"name": "crown-ibp", "eps": 0.1, "train_eps_factor": 4 / 3, "kappa_start": 1.0, "kappa_end": 0.5,
          "beta_start": 1.0, "beta_end": 0.25}),
    ],
)
def test_the_record_holds_the_values_used_and_reads_back(text, record):
    params = parse_objective(text)
    got = objective_record(params)
    assert got.keys() == record.keys()
    for key, value in record.items():
        assert got[key] == (pytest.approx(value) if isinstance(value, float) else value)
    assert objective_record(objective_from_record(got)) == got
    assert is_adversarial(params)  # the loop validates under PGD and ramps eps for them
    assert params.eps == record["eps"]  # the test radius, which the loop's validation attacks at


def test_params_classes_and_defaults():
    assert parse_objective("ibp") == IBPObjective(eps=0.1)
    assert parse_objective("crown-ibp:eps=0.3") == CROWNIBPObjective(eps=0.3, kappa_end=0.5, beta_start=1.0, beta_end=0.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("ibp:eps=-0.1", "eps must be in"),
        ("ibp:kappa_end=1.5", "kappa_end must be in"),
        ("ibp:kappa_start=-0.5", "kappa_start must be in"),
        ("ibp:train_eps_factor=0", "train_eps_factor must be > 0"),
        ("crown-ibp:beta_end=2", "beta_end must be in"),
        ("crown-ibp:beta_start=-1", "beta_start must be in"),
        # only its own keys, and the error lists them
        ("ibp:eps=0.1,beta_end=0",
         "objective 'ibp' has no parameter beta_end; valid: eps, train_eps_factor, kappa_start, kappa_end$"),
        ("ibp:steps=7", "objective 'ibp' has no parameter steps"),
        ("crown-ibp:kappa=0.5",
         "objective 'crown-ibp' has no parameter kappa; valid: eps, train_eps_factor, kappa_start, kappa_end, "
         "beta_start, beta_end$"),
    ],
)
def test_bad_certified_objectives_fail_with_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_objective(text)
    assert "\n" not in str(info.value)


def test_crown_ibp_on_max_pooling_fails_while_beta_is_positive_and_passes_once_it_is_zero():
    torch.manual_seed(0)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    objective = make_objective(parse_objective("crown-ibp:eps=0.1"))
    with pytest.raises(ModelError, match="max-pooling"):
        objective(pooled, x, y, TrainStep(ramp=0.5))
    loss, _ = objective(pooled, x, y, TrainStep(ramp=1.0))  # beta_end = 0: IBP, which passes max-pooling
    loss.backward()
