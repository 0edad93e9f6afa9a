"""Cross-checks against the original AutoAttack (fra31/auto-attack, on the package index as
`pyautoattack`, installed by the `peers` extra): its APGD-CE, APGD-T and Square on the same
model, images and seed as ours.

APGD follows the reference step for step (see `redblue.attacks.apgd`), so beyond the issue's
bar (robust accuracy no higher than theirs + 0.5 point) these tests ask for the same fooled
samples and the same adversarial images. A missing peer fails the import: CI installs it.
"""

from __future__ import annotations

import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.square import SquareAttack
from torch import Tensor, nn

from mlp_fixtures import accuracy, trained_mlp
from redblue.attacks.apgd import apgd, apgd_checkpoints
from redblue.attacks.core import per_sample_norm
from redblue.attacks.square import square
from redblue.evaluate import parse_attack_list

pytestmark = pytest.mark.peers

N_EVAL = 300  # of the fixture's 500 held-out images
MARGIN = 0.005  # the bar: ours no higher than theirs + 0.5 point
REFERENCE_NORM = {"linf": "Linf", "l2": "L2"}


def _model_and_data() -> tuple[nn.Module, Tensor, Tensor]:
    model, x, y = trained_mlp()
    return model, x[:N_EVAL], y[:N_EVAL]


def _fooled(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) != y


# --- the schedule, read off the reference while it runs ------------------------------------------


def _reference_checkpoints(n_iter: int) -> list[tuple[int, int]]:
    """(iteration counted from 1, window length) of every step-size check the reference makes,
    recorded by wrapping its oscillation test, on a sample no perturbation can fool (so the run
    is never cut short)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.fill_(0.01)
        model[1].bias.copy_(torch.tensor([100.0, 0.0]))
    attack = APGDAttack(model, n_iter=n_iter, eps=0.1, seed=0, device="cpu")
    recorded: list[tuple[int, int]] = []
    original = attack.check_oscillation

    def record(losses: Tensor, j: int, k: int, y5: Tensor, k3: float = 0.75) -> Tensor:
        recorded.append((j + 1, k))
        return original(losses, j, k, y5, k3=k3)

    attack.check_oscillation = record
    attack.perturb(torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, dtype=torch.long))
    return recorded


@pytest.mark.parametrize("n_iter", [*range(1, 41), 47, 50, 64, 99, 100, 101, 150, 333])
def test_checkpoints_are_those_the_reference_runs(n_iter: int):
    checkpoints = apgd_checkpoints(n_iter)
    windows = [b - a for a, b in zip([0, *checkpoints], checkpoints)]
    assert list(zip(checkpoints, windows)) == _reference_checkpoints(n_iter)


# --- APGD: the same adversarial examples -------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "norm", "eps", "n_iter", "restarts", "n_target_classes"),
    [
        ("ce", "linf", 0.05, 100, 1, 9),  # AutoAttack's standard apgd-ce
        ("targeted-dlr", "linf", 0.05, 50, 1, 3),
        pytest.param("targeted-dlr", "linf", 0.05, 100, 1, 9, marks=pytest.mark.slow),  # standard apgd-t
        ("dlr", "linf", 0.05, 37, 2, 9),  # an n_iter whose checkpoints are not the paper's
        ("ce", "l2", 1.0, 50, 1, 9),
    ],
)
def test_apgd_finds_the_references_adversarial_examples(
    loss: str, norm: str, eps: float, n_iter: int, restarts: int, n_target_classes: int
):
    model, x, y = _model_and_data()
    if loss == "targeted-dlr":
        reference = APGDAttack_targeted(model, n_iter=n_iter, norm=REFERENCE_NORM[norm], eps=eps, seed=0,
                                        n_restarts=restarts, n_target_classes=n_target_classes, device="cpu")  # fmt: skip
    else:
        reference = APGDAttack(model, n_iter=n_iter, norm=REFERENCE_NORM[norm], eps=eps, seed=0, loss=loss,
                               n_restarts=restarts, device="cpu")  # fmt: skip
    x_theirs = reference.perturb(x, y).detach()
    x_ours = apgd(model, x, y, eps=eps, norm=norm, loss=loss, n_iter=n_iter, restarts=restarts, n_target_classes=n_target_classes,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    fooled_ours, fooled_theirs = _fooled(model, x_ours, y), _fooled(model, x_theirs, y)
    robust_ours, robust_theirs = accuracy(model, x_ours, y), accuracy(model, x_theirs, y)
    assert robust_ours <= robust_theirs + MARGIN, (robust_ours, robust_theirs)
    assert 0.2 < robust_theirs < 0.9  # an eps where the comparison means something
    # step for step the reference: the same samples fooled, by the same images
    assert torch.equal(fooled_ours, fooled_theirs)
    assert (x_ours - x_theirs)[fooled_ours].abs().max() <= 1e-6
    assert bool((per_sample_norm(x_ours - x, norm) <= eps * (1 + 1e-6) + 1e-6).all())


# --- Square: at least as strong ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("norm", "eps", "n_queries", "rescale", "seeds"),
    [
        ("linf", 0.1, 300, True, (0,)),
        # AutoAttack's standard version does not rescale p's schedule; at 300 queries the two
        # searches are within a sample or two of each other, so the mean over seeds is compared
        pytest.param("linf", 0.1, 300, False, (0, 1, 2), marks=pytest.mark.slow),
        pytest.param("linf", 0.1, 1000, True, (0,), marks=pytest.mark.slow),
        pytest.param("l2", 2.0, 300, True, (0,), marks=pytest.mark.slow),
    ],
)
def test_square_is_no_weaker_than_the_references(norm: str, eps: float, n_queries: int, rescale: bool, seeds: tuple[int, ...]):
    """Not the same search (the reference shares each iteration's window among the images and spends
    a query on a proposal that leaves the image unchanged; ours redraws it), so only the bar."""
    model, x, y = _model_and_data()
    robust_ours, robust_theirs = [], []
    for seed in seeds:
        reference = SquareAttack(model, norm=REFERENCE_NORM[norm], eps=eps, n_queries=n_queries, p_init=0.8, seed=seed,
                                 resc_schedule=rescale, device="cpu")  # fmt: skip
        robust_theirs.append(accuracy(model, reference.perturb(x, y), y))
        x_ours = square(model, x, y, eps=eps, norm=norm, n_queries=n_queries, rescale=rescale,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
        robust_ours.append(accuracy(model, x_ours, y))
        assert bool((per_sample_norm(x_ours - x, norm) <= eps * (1 + 1e-6) + 1e-6).all())
        assert bool(((x_ours >= 0) & (x_ours <= 1)).all())
    mean_ours, mean_theirs = sum(robust_ours) / len(seeds), sum(robust_theirs) / len(seeds)
    assert mean_ours <= mean_theirs + MARGIN, (robust_ours, robust_theirs)
    assert mean_ours < accuracy(model, x, y) - 0.05  # it does attack


# --- the standard preset: AutoAttack's standard version ---------------------------------------------


def test_the_standard_preset_has_the_settings_of_autoattacks_standard_version():
    """Read off an AutoAttack(version="standard") instance: its attacks in its order, every budget, and
    Square's schedule counted on 10,000 queries (resc_schedule=False), which the Square attack's own
    default (rescale) is not. AutoAttack sets FAB-T's single restart when it runs it; its standard
    version keeps the fab object at one restart too."""
    eps = 0.1
    reference = AutoAttack(nn.Linear(2, 2), norm="Linf", eps=eps, version="standard", device="cpu")
    plan, _ = parse_attack_list("standard", eps=eps)
    assert [entry.name for entry, _ in plan] == reference.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    ce, targeted, fab_t, square_params = (params for _, params in plan)
    for ours, theirs in ((ce, reference.apgd), (targeted, reference.apgd_targeted)):
        assert (ours.eps, ours.n_iter, ours.restarts, ours.rho) == (theirs.eps, theirs.n_iter, theirs.n_restarts, theirs.thr_decr)
    assert targeted.n_target_classes == reference.apgd_targeted.n_target_classes
    theirs = reference.fab
    assert (fab_t.eps, fab_t.n_iter, fab_t.restarts, fab_t.alpha_max, fab_t.eta, fab_t.beta, fab_t.n_target_classes) == (
        theirs.eps, theirs.n_iter, theirs.n_restarts, theirs.alpha_max, theirs.eta, theirs.beta, theirs.n_target_classes
    )
    theirs = reference.square
    assert (square_params.eps, square_params.n_queries, square_params.p_init, square_params.restarts) == (
        theirs.eps, theirs.n_queries, theirs.p_init, theirs.n_restarts
    )
    assert square_params.rescale is theirs.rescale_schedule is False
