"""APGD (Croce & Hein, 2020): its losses and checkpoints by hand, its strength against PGD, and
its robust accuracy against torchattacks' APGD on the same model and images (a peer: a missing
one fails the import, as everywhere; CI installs the peers)."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from mlp_fixtures import accuracy, sign_pgd, trained_mlp
from redblue.attacks.apgd import apgd, apgd_checkpoints
from redblue.attacks.core import dlr_loss, per_sample_norm, targeted_dlr_loss
from redblue.errors import AttackError, ConfigError

N_EVAL = 300  # of the fixture's 500 images: enough for a 1-point comparison, fast on CPU


def _model_and_data():
    model, x, y = trained_mlp()
    return model, x[:N_EVAL], y[:N_EVAL]


def _linear(weight: list[list[float]], bias: list[float]) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(len(weight[0]), len(weight), dtype=torch.float64))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(weight, dtype=torch.float64))
        model[1].bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return model.eval()


# --- the losses and the schedule, by hand ----------------------------------------------------------


def test_dlr_loss_matches_hand_computed_values():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    # sorted: 3, 2, 1, 0 -> denominator z_pi1 - z_pi3 = 3 - 1 = 2
    # y=0: -(3 - 2) / 2 = -0.5; y=1: -(1 - 3) / 2 = 1.0
    torch.testing.assert_close(dlr_loss(logits, y), torch.tensor([-0.5, 1.0], dtype=torch.float64))
    # invariant to shifting and (positively) scaling the logits, unlike cross-entropy
    torch.testing.assert_close(dlr_loss(7.0 * logits - 3.0, y), dlr_loss(logits, y))


def test_targeted_dlr_loss_matches_hand_computed_value():
    logits = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0]], dtype=torch.float64)
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(4 - 3) / (4 - (2 + 1) / 2) = -0.4
    value = targeted_dlr_loss(logits, torch.tensor([0]), torch.tensor([2]))
    torch.testing.assert_close(value, torch.tensor([-0.4], dtype=torch.float64))


@pytest.mark.parametrize(
    ("n_iter", "expected"),
    [
        # windows of max(int(0.22 n), 1), each shorter by max(int(0.03 n), 1), never below max(int(0.06 n), 1)
        (100, [22, 41, 57, 70, 80, 87, 93, 99]),  # 22, +19, +16, +13, +10, +7, +6, +6: the paper's too
        (50, [11, 21, 30, 38, 45]),  # the reference values: 11, +10, +9, +8, +7 (the next, +6, is past 50)
        (10, [2, 3, 4, 5, 6, 7, 8, 9, 10]),  # int(2.2) = 2, then windows of max(2 - 1, 1) = 1
        (1, [1]),
    ],
)
def test_checkpoints_follow_the_reference_implementation(n_iter, expected):
    """By hand from fra31/auto-attack's n_iter_2, size_decr and n_iter_min; the cross-check against
    the running reference is in test_attacks_autoattack.py."""
    assert apgd_checkpoints(n_iter) == expected


# --- behaviour on models whose optimum is known ----------------------------------------------------


def test_linf_apgd_reaches_the_maximum_of_a_linear_models_loss():
    # a two-class linear model that no eps-ball point can fool (its margin, 5, exceeds what eps can
    # move, 0.1 * 12.5) and whose loss does not saturate: APGD returns its highest-loss point,
    # and for a linear model that is the corner x + eps * sign(w_1 - w_0), clipped to [0, 1]
    model = _linear([[1.0, -2.0, 0.5, 3.0], [-1.0, 2.0, 1.0, -3.0]], [5.0, 0.0])
    x = torch.tensor([[0.5, 0.5, 0.98, 0.02], [0.1, 0.9, 0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    eps = 0.1
    expected = (x + eps * torch.tensor([-2.0, 4.0, 0.5, -6.0], dtype=torch.float64).sign()).clamp(0.0, 1.0)
    x_adv = apgd(model, x, y, eps=eps, loss="ce", n_iter=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_adv, expected)


def test_l2_apgd_approaches_the_maximum_of_a_linear_models_loss():
    model = _linear([[1.0, -2.0, 0.5, 3.0], [-1.0, 2.0, 1.0, -3.0]], [5.0, 0.0])
    x = torch.full((3, 4), 0.5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    eps = 0.2  # the optimum x + eps * g / |g| stays inside [0, 1]
    direction = torch.tensor([-2.0, 4.0, 0.5, -6.0], dtype=torch.float64)
    optimum = x + eps * direction / direction.norm()
    x_adv = apgd(model, x, y, eps=eps, norm="l2", loss="ce", n_iter=50, generator=torch.Generator().manual_seed(0))
    assert bool((per_sample_norm(x_adv - x, "l2") <= eps + 1e-9).all())
    # the loss is linear in x: the gap to the optimum's loss is |g| * (distance along g)
    gap = ((optimum - x_adv) @ direction) / direction.norm()
    assert bool((gap < 1e-3 * eps).all()), gap


def test_more_restarts_never_lose_a_fooled_sample():
    model, x, y = _model_and_data()
    x, y = x[:100], y[:100]
    fooled = []
    for restarts in (1, 3):
        x_adv = apgd(model, x, y, eps=0.05, n_iter=10, restarts=restarts, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            fooled.append(model(x_adv).argmax(dim=1) != y)
    assert bool((fooled[0] <= fooled[1]).all())  # same seed: the first run is the same run


def test_nan_gradients_raise_instead_of_stalling():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _Log()).eval()
    x = torch.rand(5, 4)
    with pytest.raises(AttackError):
        apgd(model, x, torch.zeros(5, dtype=torch.long), eps=0.1, n_iter=3)


class _Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 1e9)  # NaN everywhere


def test_bad_settings_are_config_errors():
    model, x, y = _model_and_data()
    with pytest.raises(ConfigError):
        apgd(model, x[:2], y[:2], eps=0.1, loss="hinge")
    with pytest.raises(ConfigError):
        apgd(model, x[:2], y[:2], eps=0.1, n_iter=0)


# --- strength on a trained MLP ---------------------------------------------------------------------


def test_apgd_ce_is_no_weaker_than_pgd_40():
    model, x, y = _model_and_data()
    eps = 0.05
    generator = torch.Generator().manual_seed(0)
    pgd_accuracy = accuracy(model, sign_pgd(model, x, y, eps=eps, steps=40, step_size=2.5 * eps / 40, generator=generator), y)
    apgd_accuracy = accuracy(model, apgd(model, x, y, eps=eps, loss="ce", generator=generator), y)
    assert apgd_accuracy <= pgd_accuracy
    assert apgd_accuracy < accuracy(model, x, y) - 0.2  # and it does attack


def test_apgd_dlr_and_targeted_are_sensible():
    model, x, y = _model_and_data()
    eps = 0.1
    clean = accuracy(model, x, y)
    generator = torch.Generator().manual_seed(0)
    dlr = accuracy(model, apgd(model, x, y, eps=eps, loss="dlr", n_iter=30, generator=generator), y)
    targeted = accuracy(model, apgd(model, x, y, eps=eps, loss="targeted-dlr", n_iter=30, n_target_classes=3, generator=generator), y)
    ce = accuracy(model, apgd(model, x, y, eps=eps, loss="ce", n_iter=30, generator=generator), y)
    assert dlr < clean / 2 and targeted < clean / 2
    # AutoAttack's experience: the targeted version is the strongest of the three, DLR close to CE
    assert targeted <= min(dlr, ce) + 0.01
    assert dlr <= ce + 0.05


# --- against torchattacks --------------------------------------------------------------------------


@pytest.mark.peers
@pytest.mark.parametrize(("norm", "loss", "eps"), [("linf", "ce", 0.05), ("linf", "dlr", 0.1), pytest.param("l2", "ce", 1.5, marks=pytest.mark.slow)])
def test_robust_accuracy_is_no_higher_than_torchattacks_apgd(norm, loss, eps):
    model, x, y = _model_and_data()
    theirs = torchattacks.APGD(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=50, loss=loss, seed=0)
    x_theirs = theirs(x, y)
    x_ours = apgd(model, x, y, eps=eps, norm=norm, loss=loss, n_iter=50, generator=torch.Generator().manual_seed(0))
    assert bool((per_sample_norm(x_ours - x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    assert bool(((x_ours >= 0) & (x_ours <= 1)).all())
    assert accuracy(model, x_ours, y) <= accuracy(model, x_theirs, y) + 0.01
