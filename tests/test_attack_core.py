"""The shared attack pieces, each checked once against an independent reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from redblue.attacks import fgsm, parse_attack, split_attack_list
from redblue.attacks.core import (
    dlr_loss,
    input_gradient,
    l2_project,
    l2_random_start,
    linf_project,
    linf_random_start,
    margin_loss,
    per_sample_norm,
)
from redblue.errors import AttackError, ConfigError


def tiny_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def test_input_gradient_matches_float64_finite_differences():
    model = tiny_mlp()
    x = torch.rand(4, 1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    grad = input_gradient(model, x, y)
    step = 1e-6
    numeric = torch.zeros_like(x)
    for i in range(x[0].numel()):
        bump = torch.zeros(x[0].numel(), dtype=torch.float64)
        bump[i] = step
        bump = bump.view_as(x[0])
        up = nn.functional.cross_entropy(model(x + bump), y, reduction="none")
        down = nn.functional.cross_entropy(model(x - bump), y, reduction="none")
        numeric.view(len(x), -1)[:, i] = (up - down) / (2 * step)
    torch.testing.assert_close(grad, numeric, atol=1e-8, rtol=1e-6)


def test_input_gradient_restores_mode_and_leaves_weights_without_grad():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    model[2].weight.requires_grad_(False)
    x, y = torch.rand(2, 1, 2, 3), torch.tensor([0, 1])
    grad_a = input_gradient(model, x, y)
    grad_b = input_gradient(model, x, y)
    assert model.training  # restored
    assert model[2].weight.requires_grad is False and model[2].bias.requires_grad is True
    assert model[2].bias.grad is None  # no weight gradients were accumulated
    torch.testing.assert_close(grad_a, grad_b)  # dropout was off: eval mode inside


def test_nan_gradient_is_an_error_not_a_zero_step():
    class LogOfNegative(nn.Module):
        def forward(self, x):
            return torch.log(x.flatten(1)[:, :3] - 2.0)  # NaN logits

    with pytest.raises(AttackError, match="NaN or infinite"):
        fgsm(LogOfNegative(), torch.rand(2, 1, 2, 3), torch.tensor([0, 1]), eps=0.1)


def test_linf_project_hand_made_case():
    center = torch.tensor([[0.5, 0.05, 0.95, 0.5]])
    x_adv = torch.tensor([[0.9, -0.2, 1.3, 0.45]])
    expected = torch.tensor([[0.6, 0.0, 1.0, 0.45]])  # ball of 0.1, then [0, 1]
    torch.testing.assert_close(linf_project(x_adv, center=center, eps=0.1), expected)


def test_l2_project_scales_to_the_ball_and_keeps_inner_points():
    center = torch.full((2, 4), 0.5, dtype=torch.float64)
    x_adv = center + torch.tensor([[0.3, 0.4, 0.0, 0.0], [0.03, 0.04, 0.0, 0.0]], dtype=torch.float64)
    projected = l2_project(x_adv, center=center, eps=0.25)
    # first sample: norm 0.5 -> scaled by 0.5; second: norm 0.05 -> unchanged
    expected = center + torch.tensor([[0.15, 0.2, 0.0, 0.0], [0.03, 0.04, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(projected, expected)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_lie_in_ball_and_box(norm, generator):
    x = torch.rand(64, 1, 28, 28, generator=generator)
    start = (linf_random_start if norm == "linf" else l2_random_start)(x, 0.3, generator)
    assert per_sample_norm(start - x, norm).max() <= 0.3 + 1e-6
    assert start.min() >= 0 and start.max() <= 1
    assert (start != x).any()


def test_margin_and_dlr_losses_on_hand_made_logits():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 4.0, 1.0, 2.0]])
    y = torch.tensor([0, 2])
    torch.testing.assert_close(margin_loss(logits, y), torch.tensor([-1.0, 3.0]))
    # dlr: -(z_y - max_other) / (z_pi1 - z_pi3)
    torch.testing.assert_close(dlr_loss(logits, y), torch.tensor([-(3 - 2) / (3 - 1), -(1 - 4) / (4 - 1)]))


def test_fgsm_matches_hand_computed_step_on_linear_model():
    model = nn.Linear(2, 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [-1.0, 2.0]]))
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    # two classes: grad_x CE = p1 * (w1 - w0), so its sign is sign(w1 - w0) = (-1, +1)
    expected = torch.tensor([[0.4, 0.6]], dtype=torch.float64)
    torch.testing.assert_close(fgsm(model, x, y, eps=0.1), expected)


def test_fgsm_equals_float64_recomputation_by_explicit_softmax_gradient():
    torch.manual_seed(3)
    w1, w2 = torch.randn(784, 32, dtype=torch.float64), torch.randn(32, 10, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32, bias=False), nn.ReLU(), nn.Linear(32, 10, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(w1.T)
        model[3].weight.copy_(w2.T)
    x = torch.rand(16, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    # backprop by hand: dCE/dz = softmax - onehot; through ReLU and both matrices
    h = x.flatten(1) @ w1
    probs = (h.clamp_min(0) @ w2).softmax(dim=1)
    dz = probs - nn.functional.one_hot(y, 10).double()
    dx = ((dz @ w2.T) * (h > 0)) @ w1.T
    expected = (x + 0.1 * dx.view_as(x).sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model.double(), x, y, eps=0.1), expected)


def test_fgsm_unclipped_follows_equation_3_exactly():
    model = nn.Linear(2, 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [-1.0, 2.0]]))
    x = torch.tensor([[0.05, 0.98]], dtype=torch.float64)
    x_adv = fgsm(model, x, torch.tensor([0]), eps=0.1, clip=False)
    torch.testing.assert_close(x_adv, torch.tensor([[-0.05, 1.08]], dtype=torch.float64))


def test_attack_specs_parse_with_field_types_and_reject_unknown_keys():
    entry, params = parse_attack("fgsm:eps=0.25,clip=false")
    assert entry.name == "fgsm" and params.eps == 0.25 and params.clip is False
    with pytest.raises(ConfigError, match="valid: eps, clip"):
        parse_attack("fgsm:eps=0.1,steps=3")
    with pytest.raises(ConfigError, match="unknown attack 'fgsn'"):
        parse_attack("fgsn:eps=0.1")
    with pytest.raises(ConfigError, match="eps must be in"):
        parse_attack("fgsm:eps=-0.1")
    with pytest.raises(ConfigError, match="eps must be in"):
        parse_attack("fgsm:eps=1.5")


def test_attack_list_splits_on_names_not_on_parameter_commas():
    assert split_attack_list("fgsm,pgd:steps=40,restarts=5,apgd-ce") == [
        "fgsm",
        "pgd:steps=40,restarts=5",
        "apgd-ce",
    ]


def test_an_attack_registered_as_a_keyword_function_alone_runs_through_the_registry():
    """Users and tests may register a plain keyword function; the registry calls it with the params'
    fields (and the generator when it takes one) and still checks the input pixels."""
    from dataclasses import dataclass

    from redblue.attacks import ATTACKS, register

    @dataclass(frozen=True)
    class ShiftParams:
        eps: float
        sign: float = 1.0

    seen = {}

    def shift(model, x, y, *, eps, sign, generator=None):
        seen["generator"] = generator
        return (x + sign * eps).clamp(0.0, 1.0)

    register("test-shift", ShiftParams, norm="linf", iterative=False)(shift)
    try:
        entry = ATTACKS["test-shift"]
        x = torch.full((2, 3), 0.5)
        generator = torch.Generator().manual_seed(0)
        torch.testing.assert_close(entry(None, x, torch.tensor([0, 1]), entry.params(eps=0.1, sign=-1.0), generator=generator),
                                   torch.full((2, 3), 0.4))  # fmt: skip
        assert seen["generator"] is generator and entry.summary == "test-shift"
        with pytest.raises(AttackError, match="NaN or infinite pixels"):
            entry(None, torch.tensor([[0.5, float("nan"), 0.5]]), torch.tensor([0]), entry.params(eps=0.1))
    finally:
        ATTACKS.pop("test-shift")
