"""Cross-checks against an independent implementation, torchattacks 3.5.1 (a test-only dependency,
installed by `make setup-test`): same model, same images, same settings."""

from __future__ import annotations

import pytest
import torch
import torchattacks  # a missing peer fails the import, never skips: CI installs the peers
from mlp_fixtures import accuracy, trained_mlp

from redblue.attacks import fgsm
from redblue.attacks.pgd import pgd

pytestmark = pytest.mark.peers


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_fgsm_equals_torchattacks_fgsm(eps: float):
    model, x, y = trained_mlp()
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    ours = fgsm(model, x, y, eps=eps)
    assert (ours - theirs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_pgd_is_no_weaker_than_torchattacks_pgd_and_within_one_point(eps: float):
    """Madry et al.'s settings in both: 40 steps of 2.5 * eps / 40 from a uniform random start.

    Both draw the start from a CPU generator seeded 0 (torchattacks from the global one), so the
    runs start alike; ours returns each sample's worst iterate where torchattacks returns the last.
    """
    model, x, y = trained_mlp()
    step_size = 2.5 * eps / 40
    torch.manual_seed(0)
    theirs = accuracy(model, torchattacks.PGD(model, eps=eps, alpha=step_size, steps=40, random_start=True)(x, y), y)
    ours = accuracy(model, pgd(model, x, y, eps=eps, steps=40, step_size=step_size, generator=torch.Generator().manual_seed(0)), y)
    assert ours <= theirs and theirs - ours <= 0.01, (ours, theirs)
