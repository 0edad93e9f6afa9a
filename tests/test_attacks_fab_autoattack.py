"""FAB and FAB-T against the original AutoAttack's (fra31/auto-attack, on the package index as
`pyautoattack`, installed by the `peers` extra): the projections, the closest adversarial
examples each run finds, and FAB-T's robust accuracy on a trained MLP.

Our FAB takes the reference's steps with other arithmetic (the projections are solved by a sort
and `searchsorted` instead of a bisection), so these tests ask for the same distances to float32
rounding, the same samples fooled, and robust accuracy within the issue's 0.5 point. A missing
peer fails the import: CI installs it.
"""

from __future__ import annotations

import pytest
import torch
from pyautoattack.fab_projections import projection_l2, projection_linf
from pyautoattack.fab_pt import FABAttack_PT
from torch import Tensor, nn

from mlp_fixtures import accuracy, trained_mlp
from redblue.attacks.core import per_sample_norm
from redblue.attacks.fab import FABL2Params, FABParams, FABTL2Params, FABTParams, fab, fab_closest, project_onto_hyperplane_in_box

pytestmark = pytest.mark.peers

MARGIN = 0.005  # the bar: within 0.5 point of the reference
REFERENCE_NORM = {"linf": "Linf", "l2": "L2"}
PARAMS = {("linf", False): FABParams, ("linf", True): FABTParams, ("l2", False): FABL2Params, ("l2", True): FABTL2Params}


def _fooled(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) != y


@pytest.mark.parametrize(("norm", "reference"), [("linf", projection_linf), ("l2", projection_l2)])
def test_projections_match_the_references(norm: str, reference):
    """Float32 rows of MNIST's size, pixels pinned at 0 and 1, some w_i = 0, hyperplanes the box
    reaches and some it does not; the reference solves them by bisection, we by sorted knots."""
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(256, 784, generator=gen)
    points[points < 0.3], points[points > 0.9] = 0.0, 1.0
    w = torch.randn(256, 784, generator=gen)
    w[torch.rand(256, 784, generator=gen) < 0.2] = 0.0
    b = (w * torch.rand(256, 784, generator=gen)).sum(dim=1) * 3 * torch.rand(256, generator=gen)
    ours = project_onto_hyperplane_in_box(points, w, b, norm=norm)
    theirs = reference(points, w, b)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)
    torch.testing.assert_close(per_sample_norm(ours, norm), per_sample_norm(theirs, norm), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("norm", "targeted"), [("linf", False), ("linf", True), ("l2", False), ("l2", True)])
def test_one_run_finds_the_references_closest_adversarial_examples(norm: str, targeted: bool):
    """One run from x (the reference's first restart; FAB-T: towards the second-highest class), 100
    iterations, on 100 held-out images: per sample the same distance to x."""
    model, x, y = trained_mlp()
    x, y = x[:100], y[:100]
    reference = FABAttack_PT(model, norm=REFERENCE_NORM[norm], n_iter=100, targeted=targeted, device="cpu")
    reference.target_class = 2  # the top class is y itself for the correctly classified samples it attacks
    x_theirs = reference.attack_single_run(x, y, use_rand_start=False, is_targeted=targeted)
    params = PARAMS[(norm, targeted)](eps=0.0, **({"n_target_classes": 1} if targeted else {}))  # eps 0: no early stop
    x_ours, distance, _ = fab_closest(model, x, y, params, None, targeted=targeted)
    attacked = _fooled(model, x, y).logical_not()
    theirs = torch.where(_fooled(model, x_theirs, y), per_sample_norm(x_theirs - x, norm), torch.inf)[attacked]
    ours = distance[attacked]
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert int(torch.isfinite(ours).sum()) > 0.9 * len(ours)  # the runs find something to compare
    found = torch.isfinite(ours)
    torch.testing.assert_close(ours[found], theirs[found], rtol=1e-4, atol=0)
    torch.testing.assert_close(ours[found], per_sample_norm(x_ours - x, norm)[attacked][found])


@pytest.mark.parametrize(
    ("norm", "eps", "n_target_classes"),
    [
        ("linf", 0.05, 3),
        pytest.param("linf", 0.05, 9, marks=pytest.mark.slow),  # AutoAttack's standard FAB-T
        pytest.param("l2", 1.0, 9, marks=pytest.mark.slow),
    ],
)
def test_fab_t_robust_accuracy_agrees_with_the_references(norm: str, eps: float, n_target_classes: int):
    """FAB-T as AutoAttack's standard version runs it (one restart, 100 iterations, alpha_max 0.1, eta
    1.05, beta 0.9) on 300 held-out images. Ours fools every sample the reference fools; beyond them
    only samples whose closest adversarial example, found beyond eps, still fools the model once
    projected into the ball (the reference returns x there)."""
    model, x, y = trained_mlp()
    x, y = x[:300], y[:300]
    reference = FABAttack_PT(model, norm=REFERENCE_NORM[norm], eps=eps, n_iter=100, n_restarts=1, targeted=True,
                             n_target_classes=n_target_classes, seed=0, device="cpu")  # fmt: skip
    x_theirs = reference.perturb(x, y)
    x_ours = fab(model, x, y, eps=eps, norm=norm, targeted=True, n_target_classes=n_target_classes)
    robust_ours, robust_theirs = accuracy(model, x_ours, y), accuracy(model, x_theirs, y)
    assert abs(robust_ours - robust_theirs) <= MARGIN, (robust_ours, robust_theirs)
    assert 0.2 < robust_theirs < 0.9  # an eps where the comparison means something
    fooled_ours, fooled_theirs = _fooled(model, x_ours, y), _fooled(model, x_theirs, y)
    assert bool((fooled_ours | ~fooled_theirs).all())
    assert bool((per_sample_norm(x_ours - x, norm) <= eps * (1 + 1e-6) + 1e-6).all())


def test_untargeted_fab_with_restarts_agrees_with_the_references():
    """Untargeted FAB, three restarts (the later two from random points, each library its own draws),
    30 iterations, on 200 held-out images."""
    model, x, y = trained_mlp()
    x, y = x[:200], y[:200]
    eps = 0.05
    reference = FABAttack_PT(model, norm="Linf", eps=eps, n_iter=30, n_restarts=3, seed=0, device="cpu")
    robust_theirs = accuracy(model, reference.perturb(x, y), y)
    x_ours = fab(model, x, y, eps=eps, n_iter=30, restarts=3, generator=torch.Generator().manual_seed(0))
    robust_ours = accuracy(model, x_ours, y)
    assert abs(robust_ours - robust_theirs) <= MARGIN, (robust_ours, robust_theirs)
    assert 0.2 < robust_theirs < 0.9
