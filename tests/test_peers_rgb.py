"""Peer cross-checks on an RGB model, 3x32x32: a residual conv net with BatchNorm on coloured MNIST
(tests/rgb_fixtures.py), against torchattacks 3.5.1 and pyautoattack, same images and seeds on both
sides. The MNIST versions are test_peers.py and test_attacks_autoattack.py. A missing peer fails the
import, never skips: CI installs the peers.

Budgets are cut where the full ones would take minutes (the same cut on both sides, said in each
test). The whole file took 90 s on a 2-core Intel Xeon beside a benchmark, FAB-T then at 100 iterations (fixture training 8 s;
FAB-T and the standard cascade are the long ones).
"""

from __future__ import annotations

import pytest
import torch
import torchattacks
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack
from torch import Tensor, nn

from mlp_fixtures import accuracy
from redblue.attacks import fgsm
from redblue.attacks.apgd import apgd
from redblue.attacks.core import per_sample_norm
from redblue.attacks.fab import fab
from redblue.attacks.pgd import pgd
from redblue.attacks.square import square
from redblue.evaluate import evaluate
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


def test_fab_t_robust_accuracy_agrees_with_the_references():
    """FAB-T with AutoAttack's settings (one restart, alpha_max 0.1, eta 1.05, beta 0.9), 50 iterations and
    3 target classes instead of 100 and 9, for time: ours fools every sample the reference fools, and
    agrees within half a point."""
    model, x, y = _model_and_data()
    reference = FABAttack_PT(model, norm="Linf", eps=EPS, n_iter=50, n_restarts=1, targeted=True, n_target_classes=3,
                             seed=0, device="cpu")  # fmt: skip
    x_theirs = reference.perturb(x, y)
    x_ours = fab(model, x, y, eps=EPS, norm="linf", targeted=True, n_iter=50, n_target_classes=3)
    robust_ours, robust_theirs = accuracy(model, x_ours, y), accuracy(model, x_theirs, y)
    assert abs(robust_ours - robust_theirs) <= MARGIN, (robust_ours, robust_theirs)
    assert 0.2 < robust_theirs < 0.8
    assert bool((_fooled(model, x_ours, y) | ~_fooled(model, x_theirs, y)).all())
    assert bool((per_sample_norm(x_ours - x, "linf") <= EPS * (1 + 1e-6) + 1e-6).all())


def test_square_is_no_weaker_than_the_references():
    """300 queries from the same p_init; not the same search (see test_attacks_autoattack.py), so the bar."""
    model, x, y = _model_and_data()
    reference = SquareAttack(model, norm="Linf", eps=EPS, n_queries=300, p_init=0.8, seed=0, resc_schedule=True, device="cpu")
    robust_theirs = accuracy(model, reference.perturb(x, y), y)
    x_ours = square(model, x, y, eps=EPS, norm="linf", n_queries=300, rescale=True, generator=torch.Generator().manual_seed(0))
    robust_ours = accuracy(model, x_ours, y)
    assert robust_ours <= robust_theirs + MARGIN, (robust_ours, robust_theirs)
    assert robust_ours < accuracy(model, x, y) - 0.05  # it does attack
    assert bool((per_sample_norm(x_ours - x, "linf") <= EPS * (1 + 1e-6) + 1e-6).all())
    assert bool(((x_ours >= 0) & (x_ours <= 1)).all())


def test_the_standard_cascade_is_no_weaker_than_autoattacks():
    """The evaluator's worst case over AutoAttack's four attacks in its order, against AutoAttack's own
    run_standard_evaluation, with the same budgets cut on both sides for time (50 iterations, 3 target
    classes, Square 1000 queries on AutoAttack's unrescaled schedule): ours no higher than theirs + 0.5 point."""
    model, x, y = _model_and_data()
    reference = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu")
    reference.apgd.n_iter = reference.apgd_targeted.n_iter = reference.fab.n_iter = 50
    reference.apgd_targeted.n_target_classes = reference.fab.n_target_classes = 3
    reference.square.n_queries = 1000
    x_theirs = reference.run_standard_evaluation(x, y, batch_size=len(x))
    x_theirs = x_theirs[0] if isinstance(x_theirs, tuple) else x_theirs
    plan = ("apgd-ce:n_iter=50,restarts=1,rho=0.75,apgd-t:n_iter=50,restarts=1,rho=0.75,n_target_classes=3,"
            "fab-t:n_iter=50,restarts=1,alpha_max=0.1,eta=1.05,beta=0.9,n_target_classes=3,"
            "square:n_queries=1000,p_init=0.8,restarts=1,rescale=false")  # fmt: skip
    result = evaluate(model, x, y, plan, [EPS], mode="worst-case", checks=False, certify_method=None,
                      generator=torch.Generator().manual_seed(0)).result(EPS)  # fmt: skip
    robust_theirs = accuracy(model, x_theirs, y)
    assert result.worst_case_accuracy <= robust_theirs + MARGIN, (result.worst_case_accuracy, robust_theirs)
    assert 0.2 < robust_theirs < 0.8
    assert [row.attack for row in result.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
