"""Peer cross-checks on an RGB model, 3x32x32: a residual conv net with BatchNorm on coloured MNIST
(tests/rgb_fixtures.py), against torchattacks 3.5.1 and pyautoattack, same images and seeds on both
sides. The MNIST versions are test_peers.py and test_attacks_autoattack.py. A missing peer fails the
import, never skips: CI installs the peers.
"""

from __future__ import annotations

import pytest
import torch
import torchattacks
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch import Tensor, nn

from mlp_fixtures import accuracy
from redblue.attacks import fgsm
from redblue.attacks.apgd import apgd
from redblue.attacks.pgd import pgd
from rgb_fixtures import trained_rgb

pytestmark = pytest.mark.peers

N_EVAL = 200  # one image is half a point
MARGIN = 0.005
EPS = 2 / 255  # PGD-40 leaves about 0.4 robust of 0.85 clean (see rgb_fixtures)


def _model_and_data() -> tuple[nn.Module, Tensor, Tensor]:
    model, x, y = trained_rgb()
    return model, x[:N_EVAL], y[:N_EVAL]


def _fooled(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) != y


@pytest.mark.parametrize("eps", [EPS, 8 / 255])
def test_fgsm_equals_torchattacks_fgsm(eps: float):
    model, x, y = _model_and_data()
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    differs = (fgsm(model, x, y, eps=eps) - theirs).abs() > 1e-6
    # measured: 1 pixel of 614,400 differs, where |grad| is 1e-12 (median 5e-5): a sign of float
    # reduction noise (the conv net's batched sums), not of the step; so only such pixels may differ
    x_grad = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_grad), y), x_grad)
    assert int(differs.sum()) <= 5 and bool((grad[differs].abs() < 1e-9).all())


def test_pgd_is_no_weaker_than_torchattacks_pgd_and_within_one_point():
    model, x, y = _model_and_data()
    step_size = 2.5 * EPS / 40
    torch.manual_seed(0)
    theirs = accuracy(model, torchattacks.PGD(model, eps=EPS, alpha=step_size, steps=40, random_start=True)(x, y), y)
    ours = accuracy(model, pgd(model, x, y, eps=EPS, steps=40, step_size=step_size, generator=torch.Generator().manual_seed(0)), y)
    assert ours <= theirs and theirs - ours <= 0.01, (ours, theirs)
    assert 0.2 < theirs < 0.8


@pytest.mark.parametrize(("loss", "n_iter", "n_target_classes"), [("ce", 100, 9), ("targeted-dlr", 50, 3)])
def test_apgd_finds_the_references_adversarial_examples(loss: str, n_iter: int, n_target_classes: int):
    model, x, y = _model_and_data()
    if loss == "targeted-dlr":
        reference = APGDAttack_targeted(model, n_iter=n_iter, eps=EPS, seed=0, n_target_classes=n_target_classes, device="cpu")
    else:
        reference = APGDAttack(model, n_iter=n_iter, eps=EPS, seed=0, loss=loss, device="cpu")
    x_theirs = reference.perturb(x, y).detach()
    x_ours = apgd(model, x, y, eps=EPS, norm="linf", loss=loss, n_iter=n_iter, restarts=1,
                  n_target_classes=n_target_classes, generator=torch.Generator().manual_seed(0))  # fmt: skip
    robust_ours, robust_theirs = accuracy(model, x_ours, y), accuracy(model, x_theirs, y)
    assert robust_ours <= robust_theirs + MARGIN, (robust_ours, robust_theirs)
    assert 0.2 < robust_theirs < 0.8
    fooled_ours = _fooled(model, x_ours, y)
    assert torch.equal(fooled_ours, _fooled(model, x_theirs, y))
    assert (x_ours - x_theirs)[fooled_ours].abs().max() <= 1e-6
