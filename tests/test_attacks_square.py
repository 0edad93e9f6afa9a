"""Square Attack (Andriushchenko et al., 2020): its schedule and window pattern by hand, its query
budget counted by a model that records every image it is shown, and its robust accuracy against
torchattacks' Square on the same model and images (a missing peer fails the import; CI has it)."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import Tensor, nn

from mlp_fixtures import accuracy, trained_mlp
from redblue.attacks.core import per_sample_norm
from redblue.attacks.square import p_schedule, square, square_pattern

N_EVAL = 300


def _model_and_data():
    model, x, y = trained_mlp()
    return model, x[:N_EVAL], y[:N_EVAL]


# --- the schedule and the L2 window, by hand ---------------------------------------------------------


def test_p_schedule_halves_at_the_papers_iterations():
    # on a 10,000-query budget p halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 201: 0.1, 501: 0.05, 1001: 0.025,
                2001: 0.0125, 4001: 0.00625, 6001: 0.003125, 8001: 0.0015625, 9999: 0.0015625}
    for iteration, p in expected.items():
        assert p_schedule(iteration, 10_000, 0.8) == pytest.approx(p), iteration
    # other budgets are rescaled to 10,000: at 1,000 queries iteration 1 is "10", iteration 2 is "20"
    assert p_schedule(1, 1000, 0.8) == pytest.approx(0.8)
    assert p_schedule(2, 1000, 0.8) == pytest.approx(0.4)
    # without rescaling (AutoAttack's standard version) the iteration counts as it is, whatever the budget
    for iteration, p in expected.items():
        assert p_schedule(iteration, 1000, 0.8, rescale=False) == pytest.approx(p), iteration


def test_l2_window_pattern_matches_hand_computed_rectangles():
    # side 3: top row = rectangles(1, 3): centre 1, ring 1 adds 1/4 -> [.25, 1.25, .25];
    # bottom rows = rectangles(2, 3): centre (1, 1) 1, ring 1 adds 1/4 to the whole 2 x 3 block
    top = torch.tensor([[0.25, 1.25, 0.25]], dtype=torch.float64)
    bottom = torch.tensor([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]], dtype=torch.float64)
    expected = torch.cat([top / top.norm(), -bottom / bottom.norm()])
    expected = expected / expected.norm()
    torch.testing.assert_close(square_pattern(3, dtype=torch.float64), expected)
    for side in (3, 5, 8, 25):
        pattern = square_pattern(side, dtype=torch.float64)
        assert pattern.norm().item() == pytest.approx(1.0)
        assert bool((pattern[: side // 2] >= 0).all()) and bool((pattern[side // 2 :] < 0).all())


def test_linf_start_is_vertical_stripes_of_plus_minus_eps():
    x = torch.full((4, 1, 6, 8), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    x_adv = square(_never_fooled(6 * 8), x, y, eps=0.1, n_queries=1, generator=torch.Generator().manual_seed(0))
    delta = x_adv - x
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, 0.1))
    assert bool((delta == delta[:, :, :1, :]).all())  # constant down each column
    assert bool((delta[:, :, 0, :] > 0).any()) and bool((delta[:, :, 0, :] < 0).any())


# --- the query budget, counted by the model ----------------------------------------------------------


class _Counting(nn.Module):
    """Wraps a model and counts, per sample, the images it is shown.

    Sample i's clean image is constant at LEVELS[i]; a perturbation of at most eps < SPACING / 2
    per pixel (L-inf) keeps the mean pixel nearest LEVELS[i], which identifies the sample.
    `fooled_at[i] = k` makes the k-th query of sample i (and every later one) misclassified.
    """

    SPACING = 0.05

    def __init__(self, model: nn.Module, n_samples: int, fooled_at: list[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.counts = torch.zeros(n_samples, dtype=torch.long)
        self.fooled_at = None if fooled_at is None else torch.tensor(fooled_at)

    @classmethod
    def levels(cls, n: int) -> Tensor:
        return 0.2 + cls.SPACING * torch.arange(n, dtype=torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        sample = ((x.flatten(1).mean(dim=1) - 0.2) / self.SPACING).round().long()
        self.counts += torch.bincount(sample, minlength=len(self.counts))
        logits = self.model(x)
        if self.fooled_at is not None:
            # the k-th query of a sample is fooled from k = fooled_at on: swap the two classes
            fooled = self.counts[sample] >= self.fooled_at[sample]
            logits = torch.where(fooled[:, None], logits.flip(1), logits)
        return logits


def _never_fooled(n_pixels: int) -> nn.Module:
    """Class 0 by a margin that no perturbation can close; the logits still move with x."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_pixels, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, n_pixels, generator=torch.Generator().manual_seed(0)) * 0.01)
        model[1].bias.copy_(torch.tensor([100.0, 0.0]))
    return model.eval()


def _constant_images(n: int, side: int = 8) -> Tensor:
    return _Counting.levels(n).view(n, 1, 1, 1).expand(n, 1, side, side).contiguous()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_robust_samples_use_exactly_the_budget(norm):
    n, n_queries, restarts = 6, 40, 2
    x = _constant_images(n)
    eps = 0.02 if norm == "linf" else 0.02 * 8  # the L2 ball's points also move the mean by <= 0.02
    model = _Counting(_never_fooled(64), n)
    x_adv = square(model, x, torch.zeros(n, dtype=torch.long), eps=eps, norm=norm, n_queries=n_queries,
                   restarts=restarts, generator=torch.Generator().manual_seed(0))
    # one clean query, then n_queries per restart (the start included), never more
    assert model.counts.tolist() == [1 + restarts * n_queries] * n
    assert bool((per_sample_norm(x_adv - x, norm) <= eps * (1 + 1e-5)).all())
    assert bool((x_adv != x).any())


def test_samples_stop_being_queried_once_fooled():
    n_queries, restarts = 10, 2  # a budget of 1 + 2 * 10 = 21 queries per sample
    fooled_at = [1, 2, 3, 7, 11, 12, 15, 21, 22, 50]  # 1: wrong on the clean image; 22 and 50: never
    n = len(fooled_at)
    model = _Counting(_never_fooled(64), n, fooled_at=fooled_at)
    x = _constant_images(n)
    square(model, x, torch.zeros(n, dtype=torch.long), eps=0.02, n_queries=n_queries, restarts=restarts,
           generator=torch.Generator().manual_seed(0))
    assert model.counts.tolist() == [min(k, 1 + restarts * n_queries) for k in fooled_at]


# --- on a trained MLP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 2.0)])
def test_square_stays_in_the_ball_and_lowers_accuracy(norm, eps):
    model, x, y = _model_and_data()
    x, y = x[:150], y[:150]
    x_adv = square(model, x, y, eps=eps, norm=norm, n_queries=200, generator=torch.Generator().manual_seed(0))
    assert bool((per_sample_norm(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    assert bool(((x_adv >= 0) & (x_adv <= 1)).all())
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.2


def test_square_is_deterministic_for_a_seed():
    model, x, y = _model_and_data()
    runs = [square(model, x[:50], y[:50], eps=0.1, n_queries=50, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.peers
@pytest.mark.parametrize(
    ("norm", "eps"),
    # torchattacks' L2 Square takes ~10x longer than its L-inf one on CPU: a slow test
    [pytest.param("linf", 0.05, marks=pytest.mark.slow), ("linf", 0.1), pytest.param("l2", 1.5, marks=pytest.mark.slow)],
)
def test_robust_accuracy_is_no_higher_than_torchattacks_square(norm, eps):
    model, x, y = _model_and_data()
    n_queries = 300
    theirs = torchattacks.Square(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, n_queries=n_queries, seed=0)
    x_theirs = theirs(x, y)
    x_ours = square(model, x, y, eps=eps, norm=norm, n_queries=n_queries, generator=torch.Generator().manual_seed(0))
    assert bool((per_sample_norm(x_ours - x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    assert accuracy(model, x_ours, y) <= accuracy(model, x_theirs, y) + 0.01
