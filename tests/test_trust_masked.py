"""The trust check of issue 16: on a model whose gradients are masked, the `standard` preset never
reports more than 0.5 point above the original AutoAttack (fra31/auto-attack, on the package index
as `pyautoattack`) nor above an independent strong attack set (AutoAttack's standard version and
torchattacks' PGD with restarts).

The model is `masked_fixtures.masked_mlp`, an MLP plain FGSM training at eps 0.1 taught to mask its
gradient; the images are the first of MNIST's test split, as the issue's hidden check takes them
(that check: the first 1,000, 0.6 point above before FAB-T joined the preset). Both evaluators run
their full standard budgets (APGD-CE, APGD-T, FAB-T, Square 5,000) on the same images; 300 images
make one image 0.33 point, so the 0.5-point bar allows no image more than the reference's.

Measured on the 2-core development machine, one torch thread, seed 1 of the recipe (about 10 s to
train), first 300 test images: clean 0.973, FGSM 0.800, PGD-40 0.567, APGD-CE 0.557 (ours and the
reference's). Worst case: ours 0.5300 in 18 s, AutoAttack 0.5333 in 27 s; in AutoAttack's order
ours leaves 0.5567 / 0.5400 / 0.5367 / 0.5300 after APGD-CE / APGD-T / FAB-T / Square, AutoAttack
0.5567 / 0.5400 / 0.5367 / 0.5333; with torchattacks' PGD (5 restarts, 0.5567 alone) the union stays
0.5333. Each attack alone (ours / AutoAttack's): APGD-CE 0.5567 / 0.5567, APGD-T 0.5400 / 0.5400,
FAB-T 0.5800 / 0.5800, Square 0.5567 / 0.5633. On the hidden check's 1,000 images (slow): ours 0.5270
in 61 s, AutoAttack 0.5280 in 91 s (after FAB-T 0.5320 / 0.5330).

Runtimes of the default run (`--durations=0`, same machine): the worst-case test 45 s, Square alone
14 s, the masking check 10 s (the training included: it runs first here, but any test trains the
model when it is the first to ask), APGD-T alone 8 s, APGD-CE alone 2 s; about 80 s in all. FAB-T
alone (36 s) and the 1,000-image check (about 160 s) are marked slow. A missing peer fails the
import: CI installs it.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchattacks
from pyautoattack import AutoAttack
from torch import Tensor, nn

from masked_fixtures import EPS, first_test_images, masked_mlp, plain_fgsm
from mlp_fixtures import sign_pgd
from redblue.evaluate import evaluate, parse_attack_list

pytestmark = pytest.mark.peers

MARGIN = 0.005  # the bar: ours no higher than the independent attack + 0.5 point
N_EVAL = 300  # one image is 0.33 point
N_HIDDEN_CHECK = 1000  # the hidden check
PGD_RESTARTS = 5


def _robust(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> Tensor:
    """(N,) bool: correct on the clean image and on the attacked one."""
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y) & (model(x_adv).argmax(dim=1) == y)


def _reference(model: nn.Module) -> AutoAttack:
    return AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu")


@functools.lru_cache(maxsize=None)
def _ours_worst_case(n: int) -> Tensor:
    """(n,) bool: robust under redblue's standard preset, the evaluator's worst case."""
    x, y = first_test_images(n)
    evaluation = evaluate(masked_mlp(), x, y, "standard", [EPS], mode="worst-case", checks=False, certify_method=None,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    return evaluation.result(EPS).worst_case_mask


@functools.lru_cache(maxsize=None)
def _autoattack_worst_case(n: int) -> Tensor:
    """(n,) bool: robust under AutoAttack's standard version."""
    model = masked_mlp()
    x, y = first_test_images(n)
    x_adv, _ = _reference(model).run_standard_evaluation(x, y, batch_size=n)
    return _robust(model, x, y, x_adv)


@functools.lru_cache(maxsize=None)
def _pgd_with_restarts(n: int) -> Tensor:
    """(n,) bool: robust under every one of torchattacks' PGD runs (Madry et al.'s 40 steps of 2.5 eps / 40,
    each from its own random start)."""
    model = masked_mlp()
    x, y = first_test_images(n)
    robust = _robust(model, x, y, x)
    for restart in range(PGD_RESTARTS):
        torch.manual_seed(restart)  # torchattacks draws its start from the global generator
        x_adv = torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / 40, steps=40, random_start=True)(x, y)
        robust &= _robust(model, x, y, x_adv)
    return robust


def _accuracy(mask: Tensor) -> float:
    return mask.double().mean().item()


def test_the_fgsm_trained_mlp_masks_its_gradient():
    """FGSM, the attack it was trained on, leaves far more samples correct than iterative attacks do.
    Measured (first 300 test images, AutoAttack's APGD-CE): seed 1 (the fixture) clean 0.973, FGSM
    0.800, PGD-40 0.567, APGD-CE 0.557 (gap 0.24); seed 0: 0.957, 0.750, 0.637, 0.630 (0.12); seed 2:
    0.980, 0.800, 0.660, 0.627 (0.17), so the bar of 0.15 has room on the fixture's seed only."""
    model = masked_mlp()
    x, y = first_test_images(N_EVAL)
    clean = _accuracy(_robust(model, x, y, x))
    fgsm_accuracy = _accuracy(_robust(model, x, y, plain_fgsm(model, x, y, EPS)))
    pgd_accuracy = _accuracy(_robust(model, x, y, sign_pgd(model, x, y, eps=EPS, steps=40, step_size=0.01,
                                                          generator=torch.Generator().manual_seed(0))))  # fmt: skip
    reference = _reference(model).apgd
    reference.loss = "ce"
    apgd_accuracy = _accuracy(_robust(model, x, y, reference.perturb(x, y)))
    assert clean > 0.9
    assert fgsm_accuracy - pgd_accuracy >= 0.15, (fgsm_accuracy, pgd_accuracy)
    assert fgsm_accuracy - apgd_accuracy >= 0.15, (fgsm_accuracy, apgd_accuracy)
    assert 0.3 < apgd_accuracy < 0.8  # robust enough that the later attacks have samples to work on


@pytest.mark.parametrize("n", [N_EVAL, pytest.param(N_HIDDEN_CHECK, marks=pytest.mark.slow)])
def test_standard_is_no_weaker_than_autoattack_nor_an_independent_strong_attack_set(n: int):
    ours = _ours_worst_case(n)
    autoattack = _autoattack_worst_case(n)
    union = autoattack & _pgd_with_restarts(n)
    assert _accuracy(ours) <= _accuracy(autoattack) + MARGIN, (_accuracy(ours), _accuracy(autoattack))
    assert _accuracy(ours) <= _accuracy(union) + MARGIN, (_accuracy(ours), _accuracy(union))
    assert 0.3 < _accuracy(autoattack) < 0.8  # an eps where the comparison means something


def _reference_single(model: nn.Module, x: Tensor, y: Tensor, name: str) -> Tensor:
    """AutoAttack's standard-version attack `name` alone on every image, set up as its
    run_standard_evaluation sets it up (`autoattack.py`)."""
    reference = _reference(model)
    if name == "apgd-ce":
        reference.apgd.loss = "ce"
        return reference.apgd.perturb(x, y)
    if name == "apgd-t":
        return reference.apgd_targeted.perturb(x, y)
    if name == "fab-t":
        reference.fab.targeted = True
        reference.fab.n_restarts = 1
        return reference.fab.perturb(x, y)
    return reference.square.perturb(x, y)


@pytest.mark.parametrize(
    "name",
    # FAB-T alone takes 36 s (both sides); the cascade above already runs it with the full budget
    ["apgd-ce", "apgd-t", pytest.param("fab-t", marks=pytest.mark.slow), "square"],
)
def test_each_attack_of_standard_is_no_weaker_than_autoattacks(name: str):
    """Each attack of the preset alone, on all images (not the cascade's survivors), against the same
    attack of AutoAttack's standard version, with its full budget."""
    model = masked_mlp()
    x, y = first_test_images(N_EVAL)
    plan, _ = parse_attack_list("standard", eps=EPS)
    (attack,) = [(entry, params) for entry, params in plan if entry.name == name]
    evaluation = evaluate(model, x, y, [attack], [EPS], mode="per-attack", checks=False, certify_method=None,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    ours = _accuracy(evaluation.result(EPS).attacks[0].robust_mask)
    theirs = _accuracy(_robust(model, x, y, _reference_single(model, x, y, name)))
    assert ours <= theirs + MARGIN, (ours, theirs)
