"""Blue-team objectives and weight penalties, checked against float64 recomputations by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from redblue.defenses import (
    OBJECTIVES,
    CleanObjective,
    FastFGSMObjective,
    FGSMObjective,
    PGDObjective,
    TRADESObjective,
    TrainStep,
    make_objective,
    objective_from_record,
    objective_record,
    parse_objective,
    penalized_parameters,
    weight_penalty,
)
from redblue.defenses.penalties import add_penalty_gradient_
from redblue.errors import ConfigError

D = torch.float64


def small_mlp(seed: int = 0) -> nn.Sequential:
    """4 -> 5 (ReLU) -> 3 in float64, no dropout, so every objective is deterministic."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(D)


def batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # pixels away from 0 and 1, so clipping at the eps used below never binds unless asked to
    x = 0.2 + 0.6 * torch.rand(n, 4, generator=g, dtype=D)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def two_class_linear() -> nn.Linear:
    """z = W x with W = [[1, -2], [-1, 2]]: grad_x CE has sign(w_other - w_y), the same at every x."""
    model = nn.Linear(2, 2, bias=False).to(D)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=D))
    return model


# ---- penalties -------------------------------------------------------------------------------


def fixed_weights_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).to(D)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -1.0], [0.0, 2.0]], dtype=D))
        model[0].bias.copy_(torch.tensor([3.0, -4.0], dtype=D))
        model[2].weight.copy_(torch.tensor([[-0.25, 1.5]], dtype=D))
        model[2].bias.copy_(torch.tensor([10.0], dtype=D))
    return model


def test_weight_penalty_matches_hand_computation_without_and_with_biases():
    model = fixed_weights_model()
    # weights: |.| sums to 0.5+1+0+2 + 0.25+1.5 = 5.25; squares to 0.25+1+0+4 + 0.0625+2.25 = 7.5625
    # biases:  |.| sums to 3+4+10 = 17;                   squares to 9+16+100 = 125
    l1, l2 = 1e-3, 1e-2
    got = weight_penalty(model, l1=l1, l2=l2)
    assert got.item() == pytest.approx(l1 * 5.25 + l2 * 7.5625, rel=1e-15)
    got_bias = weight_penalty(model, l1=l1, l2=l2, include_bias=True)
    assert got_bias.item() == pytest.approx(l1 * (5.25 + 17) + l2 * (7.5625 + 125), rel=1e-15)
    assert weight_penalty(model, l1=0.0, l2=0.0).item() == 0.0


def test_biases_are_not_penalized_by_default():
    model = fixed_weights_model()
    assert [tuple(p.shape) for p in penalized_parameters(model)] == [(2, 2), (1, 2)]
    assert len(penalized_parameters(model, include_bias=True)) == 4


@pytest.mark.parametrize("include_bias", [False, True])
def test_penalty_gradient_matches_autograd_and_the_hand_formula(include_bias):
    model = fixed_weights_model()
    l1, l2 = 1e-3, 1e-2
    params = penalized_parameters(model, include_bias=include_bias)
    weight_penalty(model, l1=l1, l2=l2, include_bias=include_bias).backward()
    by_autograd = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    add_penalty_gradient_(params, l1=l1, l2=l2)
    for p, expected in zip(params, by_autograd):
        # d/dw = l1 * sign(w) + 2 * l2 * w, with sign(0) = 0 (the zero weight in layer 0)
        by_hand = l1 * torch.sign(p.detach()) + 2 * l2 * p.detach()
        torch.testing.assert_close(p.grad, by_hand, rtol=0, atol=1e-15)
        torch.testing.assert_close(p.grad, expected, rtol=0, atol=1e-15)
    assert model[0].weight.grad[1, 0].item() == 0.0  # w = 0: the L1 subgradient autograd uses


def test_penalty_gradient_adds_to_an_existing_gradient():
    model = fixed_weights_model()
    params = penalized_parameters(model)
    for p in params:
        p.grad = torch.ones_like(p)
    add_penalty_gradient_(params, l1=0.0, l2=0.5)
    torch.testing.assert_close(params[0].grad, 1.0 + params[0].detach())


def test_negative_lambda_is_refused():
    with pytest.raises(ConfigError, match="l1 must be >= 0"):
        weight_penalty(fixed_weights_model(), l1=-1e-4, l2=0.0)


# ---- objectives ------------------------------------------------------------------------------


def loss_of(params, model, x, y, generator=None):
    """The objective's mean loss for one batch (the training loop's view, with its logits dropped)."""
    return make_objective(params)(model, x, y, TrainStep(generator=generator))[0]


def independent_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, clip: bool) -> torch.Tensor:
    x_var = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_var), y, reduction="sum"), x_var)
    x_adv = x + eps * grad.sign()
    return x_adv.clamp(0, 1) if clip else x_adv


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_fgsm_objective_is_alpha_clean_plus_one_minus_alpha_adversarial(alpha):
    model, (x, y) = small_mlp(), batch()
    eps = 0.1
    x_adv = independent_fgsm(model, x, y, eps, clip=True)
    with torch.no_grad():
        expected = alpha * F.cross_entropy(model(x), y) + (1 - alpha) * F.cross_entropy(model(x_adv), y)
    loss = loss_of(FGSMObjective(eps=eps, alpha=alpha), model, x, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_fgsm_objective_on_a_linear_model_matches_the_hand_computed_images():
    model = two_class_linear()
    x = torch.tensor([[0.5, 0.5], [0.3, 0.6]], dtype=D)
    y = torch.tensor([0, 1])
    # y=0: sign(w1 - w0) = (-1, +1); y=1: sign(w0 - w1) = (+1, -1)
    x_adv = torch.tensor([[0.4, 0.6], [0.4, 0.5]], dtype=D)
    logits, logits_adv = x @ model.weight.detach().T, x_adv @ model.weight.detach().T
    ce = -logits.log_softmax(1).gather(1, y[:, None]).mean()
    ce_adv = -logits_adv.log_softmax(1).gather(1, y[:, None]).mean()
    loss = loss_of(FGSMObjective(eps=0.1, alpha=0.25), model, x, y)
    assert loss.item() == pytest.approx(0.25 * ce.item() + 0.75 * ce_adv.item(), rel=1e-12)


def test_fgsm_objective_without_clipping_follows_the_papers_equation():
    model, (x, y) = small_mlp(), batch()
    x = x.clone()
    x[:, 0] = 0.0
    x_adv = independent_fgsm(model, x, y, 0.25, clip=False)
    with torch.no_grad():
        expected = F.cross_entropy(model(x_adv), y)
    loss = loss_of(FGSMObjective(eps=0.25, alpha=0.0, clip=False), model, x, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_clean_objective_is_cross_entropy_and_returns_logits():
    model, (x, y) = small_mlp(), batch()
    loss, logits = make_objective(CleanObjective())(model, x, y, TrainStep())
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))
        by_hand = -(model(x).log_softmax(1)[torch.arange(len(y)), y]).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)


@pytest.mark.parametrize(
    "config",
    [
        PGDObjective(eps=0.1, steps=1, step_size=0.25),
        PGDObjective(eps=0.1, steps=3),
        FastFGSMObjective(eps=0.1, step_size=0.2),
    ],
    ids=["pgd-1-big-step", "pgd-3", "fast-fgsm-2eps"],
)
def test_pgd_and_fast_fgsm_reach_the_fgsm_corner_of_a_linear_model(config):
    """On a linear model the sign of grad_x CE is the same everywhere, so a sign step of >= 2 eps from
    any point of the ball lands on x + eps * sign(grad): the FGSM image. PGD with 3 steps of 2.5eps/3
    gets there too (from any start, 3 steps of 0.83 eps cover the 2 eps the start can be away)."""
    model = two_class_linear()
    x = torch.tensor([[0.5, 0.5], [0.3, 0.6], [0.7, 0.2]], dtype=D)
    y = torch.tensor([0, 1, 1])
    x_fgsm = independent_fgsm(model, x, y, 0.1, clip=True)
    with torch.no_grad():
        expected = F.cross_entropy(model(x_fgsm), y)
    g = torch.Generator().manual_seed(0)
    loss = loss_of(config, model, x, y, g)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_fast_fgsm_takes_its_gradient_at_an_unclipped_start_as_wong_et_al_do():
    """Wong et al.'s fast FGSM (their MNIST/train_mnist.py): delta ~ U(-eps, eps), the gradient at
    x + delta unclipped, delta + step * sign(grad) clipped to the ball and to [0, 1]. Recomputed
    here from the same uniform draws, on pixels at 0 and 1 where clipping the start would change it."""
    model = small_mlp()
    x = torch.tensor([[0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.02, 0.97]], dtype=D)
    y = torch.tensor([0, 2])
    eps, step_size = 0.3, 0.375
    seen = []
    model[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    loss = loss_of(FastFGSMObjective(eps=eps, step_size=step_size), model, x, y, torch.Generator().manual_seed(3))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=D)
    start = x + eps * (2 * noise - 1)
    assert len(seen) == 2  # the gradient's forward at the start, then the loss's at x_adv
    assert torch.equal(seen[0], start) and (start < 0).any() and (start > 1).any()
    trained_on = seen[1]
    x_var = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_var), y, reduction="sum"), x_var)
    delta = (start - x + step_size * grad.sign()).clamp(-eps, eps)
    x_adv = torch.max(torch.min(x + delta, torch.ones_like(x)), torch.zeros_like(x))
    assert torch.allclose(trained_on, x_adv, rtol=0, atol=1e-15)
    with torch.no_grad():
        assert loss.item() == pytest.approx(F.cross_entropy(model(x_adv), y).item(), rel=1e-12)


def test_random_starts_come_from_the_generator():
    model, (x, y) = small_mlp(), batch()
    params = FastFGSMObjective(eps=0.2)
    first = loss_of(params, model, x, y, torch.Generator().manual_seed(5))
    again = loss_of(params, model, x, y, torch.Generator().manual_seed(5))
    other = loss_of(params, model, x, y, torch.Generator().manual_seed(6))
    assert first.item() == again.item() and first.item() != other.item()


def test_trades_is_clean_loss_plus_a_non_negative_kl_term():
    model, (x, y) = small_mlp(), batch()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y).item()
    zero_beta = loss_of(TRADESObjective(eps=0.1, beta=0.0), model, x, y, g)
    assert zero_beta.item() == pytest.approx(clean, rel=1e-12)
    with_kl = loss_of(TRADESObjective(eps=0.1, beta=6.0), model, x, y, g)
    assert with_kl.item() > clean


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_keep_train_mode_and_leave_no_weight_gradients(name):
    model, (x, y) = small_mlp(), batch()
    model.train()
    params = parse_objective(name if name == "clean" else f"{name}:eps=0.1")
    loss = loss_of(params, model, x, y, torch.Generator().manual_seed(0))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert loss.requires_grad and loss.dim() == 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_nan_model_gives_a_nan_loss_not_a_silent_zero_step():
    model, (x, y) = small_mlp(), batch()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    loss = loss_of(FGSMObjective(eps=0.1), model, x, y)
    assert torch.isnan(loss)


def test_parse_objective_reads_typed_values():
    config = parse_objective("fgsm:eps=0.25,alpha=0.3,clip=false")
    assert config == FGSMObjective(eps=0.25, alpha=0.3, clip=False)
    assert parse_objective("clean") == CleanObjective()
    assert parse_objective("pgd:eps=0.3,steps=10").resolved().step_size == pytest.approx(0.075)
    assert parse_objective("fast-fgsm:eps=0.1").resolved().step_size == pytest.approx(0.125)


@pytest.mark.parametrize(
    "text, record",
    [
        ("clean", {"name": "clean"}),
        ("fgsm:eps=0.2", {"name": "fgsm", "eps": 0.2, "alpha": 0.5, "clip": True}),
        ("pgd:eps=0.3,steps=10", {"name": "pgd", "eps": 0.3, "steps": 10, "step_size": 0.3 * 2.5 / 10}),
        ("trades:eps=0.1,steps=5,beta=3", {"name": "trades", "eps": 0.1, "steps": 5, "step_size": 0.05, "beta": 3.0}),
        ("fast-fgsm:eps=0.1", {"name": "fast-fgsm", "eps": 0.1, "step_size": 0.125}),
        ("mart:eps=0.3", {"name": "mart", "eps": 0.3, "steps": 10, "step_size": 0.075, "beta": 6.0}),
        ("pgd:eps=0.2", {"name": "pgd", "eps": 0.2, "steps": 10, "step_size": 0.05}),
    ],
)
def test_the_record_holds_the_values_used_and_reads_back(text, record):
    got = objective_record(parse_objective(text))
    assert got.keys() == record.keys()
    for key, value in record.items():
        assert got[key] == (pytest.approx(value) if isinstance(value, float) else value)
    again = objective_from_record(got)
    assert objective_record(again) == got


@pytest.mark.parametrize(
    "text, message",
    [
        ("adversarial", "unknown objective 'adversarial'"),
        ("fgsm:eps=-0.1", "eps must be in"),
        ("fgsm:alpha=1.5", "alpha must be in"),
        ("fgsm:epsilon=0.1", "epsilon"),
        ("pgd:steps=0", "steps must be an integer >= 1"),
        ("trades:beta=-1", "beta must be >= 0"),
        # each objective takes only its own keys, and the error lists those (never `name`)
        ("pgd:eps=0.1,alpha=0.9", "objective 'pgd' has no parameter alpha; valid: eps, steps, step_size$"),
        ("mart:eps=0.1,alpha=0.9", "objective 'mart' has no parameter alpha; valid: eps, steps, step_size, beta$"),
        ("mart:beta=-1", "beta must be >= 0"),
        ("mart:steps=0", "steps must be an integer >= 1"),
        ("clean:beta=6", "objective 'clean' has no parameter beta; it takes no parameters"),
        ("fgsm:steps=3", "valid: eps, alpha, clip$"),
        ("fast-fgsm:beta=1", "valid: eps, step_size$"),
    ],
)
def test_bad_objectives_fail_with_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_objective(text)
    assert "\n" not in str(info.value)
