"""CW-L2 and DeepFool, the minimal-perturbation attacks: against the exact closest boundary point of
affine classifiers (float64), against each other on a trained MLP, and their eps-ball contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlp_fixtures import accuracy, trained_mlp
from torch import nn

from redblue.attacks import parse_attack
from redblue.attacks.cw import cw_l2
from redblue.attacks.deepfool import BOUNDARY_STEP, deepfool_l2, deepfool_linf
from redblue.attacks.pgd import pgd_l2
from redblue.errors import ConfigError

D = 20


def affine(classes: int, seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """A seeded affine classifier in float64, 8 inputs in (0.3, 0.7)^D and their predicted labels."""
    gen = np.random.default_rng(seed)
    weight, bias = gen.normal(size=(classes, D)), 0.3 * gen.normal(size=classes)
    model = nn.Linear(D, classes, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weight))
        model.bias.copy_(torch.from_numpy(bias))
    x = torch.from_numpy(0.3 + 0.4 * gen.random((8, D)))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model.eval(), weight, bias, x, y


def closest_boundary(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, label: int, dual: float):
    """Exact: the complement of an affine decision region is a union of half-spaces z_k >= z_y, and
    the distance to each is |z_k - z_y| / |w_k - w_y|_dual. Returns (distance, nearest class)."""
    z = weight @ x + bias
    distances = [(abs(z[k] - z[label]) / np.linalg.norm(weight[k] - weight[label], ord=dual), k)
                 for k in range(len(bias)) if k != label]  # fmt: skip
    return min(distances)


@pytest.mark.parametrize("classes", [2, 5])
def test_deepfool_l2_finds_the_exact_closest_boundary_point_of_an_affine_classifier(classes: int):
    model, weight, bias, x, y = affine(classes)
    x_adv = deepfool_l2(model, x, y, eps=100.0, overshoot=0.0)
    for i in range(len(x)):
        xi, label = x[i].numpy(), int(y[i])
        distance, k = closest_boundary(weight, bias, xi, label, 2)
        normal = (weight[k] - weight[label]) / np.linalg.norm(weight[k] - weight[label])
        expected = xi + (distance + BOUNDARY_STEP) * normal  # the reference code's 1e-4 past the boundary
        np.testing.assert_allclose(x_adv[i].numpy(), expected, atol=1e-10)
    assert bool((model(x_adv).argmax(dim=1) != y).all())


def test_deepfool_linf_steps_along_the_sign_to_the_nearest_boundary_in_linf():
    model, weight, bias, x, y = affine(5, seed=1)
    x_adv = deepfool_linf(model, x, y, eps=1.0, overshoot=0.0)
    for i in range(len(x)):
        xi, label = x[i].numpy(), int(y[i])
        distance, k = closest_boundary(weight, bias, xi, label, 1)  # L1 is L-inf's dual norm
        expected = xi + (distance + BOUNDARY_STEP) * np.sign(weight[k] - weight[label])
        if expected.min() >= 0 and expected.max() <= 1:
            np.testing.assert_allclose(x_adv[i].numpy(), expected, atol=1e-10)


def test_deepfool_overshoot_scales_the_total_perturbation():
    model, weight, bias, x, y = affine(3, seed=2)
    plain = deepfool_l2(model, x, y, eps=100.0, overshoot=0.0)
    over = deepfool_l2(model, x, y, eps=100.0, overshoot=0.5)
    torch.testing.assert_close(over - x, 1.5 * (plain - x))


def test_minimal_attacks_leave_misclassified_samples_alone():
    model, _, _, x, y = affine(3)
    wrong = (y + 1) % 3
    torch.testing.assert_close(deepfool_l2(model, x, wrong, eps=5.0), x, rtol=0, atol=0)
    torch.testing.assert_close(deepfool_linf(model, x, wrong, eps=0.5), x, rtol=0, atol=0)
    assert (cw_l2(model, x, wrong, eps=5.0) - x).norm(dim=1).max() < 1e-5  # tanh space starts 1e-6 inside


@pytest.mark.parametrize("attack", [deepfool_l2, cw_l2])
def test_minimal_attacks_respect_the_eps_ball(attack):
    """Fooled in the ball exactly when the minimal perturbation fits; otherwise projected to the sphere."""
    model, weight, bias, x, y = affine(3, seed=3)
    minimal = torch.tensor([closest_boundary(weight, bias, x[i].numpy(), int(y[i]), 2)[0] for i in range(len(x))])
    eps = float(minimal.median())
    x_adv = attack(model, x, y, eps=eps)
    norms = (x_adv - x).norm(dim=1)
    fooled = model(x_adv).argmax(dim=1) != y
    fits = minimal < 0.99 * eps
    too_far = minimal > 1.01 * eps
    assert bool((norms <= eps * (1 + 1e-9)).all())
    assert bool(fooled[fits].all()) and not bool(fooled[too_far].any())
    torch.testing.assert_close(norms[too_far], torch.full_like(norms[too_far], eps))


def test_cw_finds_a_near_minimal_perturbation_on_an_affine_classifier():
    model, weight, bias, x, y = affine(2)
    x_adv = cw_l2(model, x, y, eps=100.0)
    minimal = np.array([closest_boundary(weight, bias, x[i].numpy(), int(y[i]), 2)[0] for i in range(len(x))])
    ratio = (x_adv - x).norm(dim=1).numpy() / minimal
    assert bool((model(x_adv).argmax(dim=1) != y).all())
    assert (ratio >= 1 - 1e-6).all() and (ratio <= 1.01).all(), ratio  # never below the exact minimum


def test_cw_confidence_buys_a_margin():
    model, _, _, x, y = affine(3, seed=4)
    x_adv = cw_l2(model, x, y, eps=100.0, confidence=2.0)
    logits = model(x_adv)
    others = logits.scatter(1, y[:, None], -torch.inf).amax(dim=1)
    assert bool((others - logits.gather(1, y[:, None]).squeeze(1) > 2.0).all())


def test_targeted_cw_reaches_the_target_no_closer_than_the_pairwise_bound():
    model, weight, bias, x, y = affine(4, seed=5)
    x_adv = cw_l2(model, x, y, eps=100.0, target="least-likely")
    with torch.no_grad():
        target = model(x).scatter(1, y[:, None], torch.inf).argmin(dim=1)
        assert bool((model(x_adv).argmax(dim=1) == target).all())
    for i in range(len(x)):
        t, label, xi = int(target[i]), int(y[i]), x[i].numpy()
        # reaching class t needs at least the distance to the half-space z_t >= z_y
        bound = abs((weight[t] - weight[label]) @ xi + bias[t] - bias[label]) / np.linalg.norm(weight[t] - weight[label])
        assert float((x_adv[i] - x[i]).norm()) >= bound - 1e-9


def test_cw_and_deepfool_agree_on_a_trained_mlp():
    """Two independent minimal-perturbation methods find similar L2 distances, and at a fixed eps
    both are in the range of PGD-L2 (which maximises the loss in the ball instead)."""
    model, x, y = trained_mlp()
    x, y = x[:100], y[:100]
    correct = model(x).argmax(dim=1) == y
    cw_norms = (cw_l2(model, x, y, eps=100.0) - x).flatten(1).norm(dim=1)[correct]
    deepfool_norms = (deepfool_l2(model, x, y, eps=100.0) - x).flatten(1).norm(dim=1)[correct]
    assert 0.85 < float(cw_norms.median() / deepfool_norms.median()) < 1.15
    pgd_accuracy = accuracy(model, pgd_l2(model, x, y, eps=1.0, generator=torch.Generator().manual_seed(0)), y)
    for attack in (cw_l2, deepfool_l2):
        assert accuracy(model, attack(model, x, y, eps=1.0), y) <= pgd_accuracy + 0.08


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("cw-l2:eps=1,binary_search_steps=0", "binary_search_steps must be > 0"),
        ("cw-l2:eps=1,lr=-0.1", "lr must be > 0"),
        ("cw-l2:eps=1,confidence=-1", "confidence must be >= 0"),
        ("cw-l2:eps=1,restarts=2", "has no parameter restarts"),
        ("deepfool:eps=2", "eps must be in [0.0, 1.0]"),
        ("deepfool-l2:eps=1,candidates=1", "candidates must be >= 2"),
        ("deepfool-l2:eps=1,overshoot=-0.1", "overshoot must be >= 0"),
    ],
)
def test_bad_parameters_give_one_line(text: str, fragment: str):
    with pytest.raises(ConfigError) as caught:
        parse_attack(text)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
