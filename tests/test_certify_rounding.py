"""Certification is sound under floating point: margins built to sit within 1e-6 of zero, whose exact
value is known as a fraction, are never certified when that value is <= 0.

The nets are tiny and affine on the box (no ReLU, or every ReLU active there), so CROWN's bound,
and for the affine nets every method's bound, equals the exact worst-case margin: a bound that
rounds inward by even one ulp certifies a margin that is exactly <= 0. The exact margin comes
from fractions.Fraction arithmetic on the float weights read off the torch modules
(tests/bound_references.py), never from redblue.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import Tensor, nn

from bound_references import exact_affine, exact_box, exact_min
from redblue.certify import certify, margin_lower_bounds

METHODS = ("ibp", "crown-ibp", "crown")
# the margin targets around zero; each is hit to within one ulp of the last bias
TARGETS = (0.0, 1e-15, -1e-15, 1e-9, -1e-9, 1e-7, -1e-7, 1e-6, -1e-6)


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def activate(layer: nn.Module, input_bound: float) -> float:
    """Set the bias so every pre-activation is >= 0.5 for inputs in [-input_bound, input_bound];
    returns a bound on the layer's outputs."""
    with torch.no_grad():
        row_sums = layer.weight.abs().flatten(1).sum(dim=1)
        layer.bias.copy_(row_sums * input_bound + 0.5)
        return float((2 * row_sums * input_bound + 0.5).max())


def family(name: str, dtype: torch.dtype) -> tuple[nn.Sequential, tuple[int, ...], tuple[str, ...]]:
    """(model, input shape, the methods whose bound is exact on it) with 3 classes, last bias free."""
    torch.manual_seed({"affine": 0, "active-mlp": 1, "active-cnn": 2}[name])
    if name == "affine":
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Linear(5, 3))
        return model.to(dtype), (1, 2, 3), METHODS
    if name == "active-mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
        activate(model[3], activate(model[1], 1.0))
    else:
        model = nn.Sequential(Normalize(0.1307, 0.3081), nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(8, 3))
        activate(model[1], 3.0)  # normalised pixels lie in [-0.43, 2.82]
    # every ReLU is active on [0, 1]^d, so CROWN (with either intermediate bounds) is exact
    return model.to(dtype), ((1, 4, 4) if name == "active-cnn" else (1, 2, 3)), ("crown-ibp", "crown")


def with_last_bias(model: nn.Sequential, bias: Tensor) -> nn.Sequential:
    with torch.no_grad():
        model[-1].bias.copy_(bias)
    return model


def clean_correct(model: nn.Module, x: Tensor, y: Tensor) -> bool:
    """Whether the model, run in its own dtype, predicts y at x (certify requires it as well)."""
    with torch.no_grad():
        return bool(model(x).argmax(dim=1) == y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["affine", "active-mlp", "active-cnn"])
def test_margins_within_1e_6_of_zero_are_certified_only_when_exactly_positive(name, dtype):
    model, shape, exact_methods = family(name, dtype)
    g = torch.Generator().manual_seed(3)
    x = torch.rand((1, *shape), generator=g, dtype=dtype)
    x.view(-1)[:2] = torch.tensor([0.0, 1.0], dtype=dtype)  # pixels whose box is clipped
    y = torch.tensor([0])
    # class 2 far below, class 1 the rival whose margin is tuned through class 0's bias
    base_bias = torch.tensor([0.0, 0.0, -50.0], dtype=dtype)
    a, c = exact_affine(with_last_bias(model, base_bias), shape)
    # every ReLU active on the box: the pre-activations' exact minima over [0, 1]^d are >= 0.5 by
    # construction (see `activate`); the exact margin is then the minimum of an affine map
    cases = 0
    for eps in (0.0, 0.05):
        lo, hi = exact_box(x[0], eps)
        rival = exact_min([p - q for p, q in zip(a[0], a[1])], c[0] - c[1], lo, hi)  # with bias_0 = 0
        for target in TARGETS:
            bias0 = torch.tensor(float(-rival + Fraction(target)), dtype=dtype)
            # float32 biases are 1e-7 apart near 1: try the neighbours of each target too
            for step in (-1, 0, 1) if dtype == torch.float32 else (0,):
                b0 = bias0
                for _ in range(abs(step)):
                    b0 = torch.nextafter(b0, torch.tensor(step * torch.inf, dtype=dtype))
                model = with_last_bias(model, torch.stack([b0, base_bias[1], base_bias[2]]))
                exact = [exact_min([p - q for p, q in zip(a[0], a[j])], c[0] - c[j] + Fraction(b0.item()), lo, hi)
                         for j in (1, 2)]
                worst = min(exact)
                assert abs(worst) <= Fraction(2e-6)  # the construction hits its target
                for method in METHODS:
                    bounds = margin_lower_bounds(model, x, y, eps=eps, method=method)
                    # sound margin by margin: the float64 bound never exceeds the exact value
                    assert all(Fraction(bounds[0, j].item()) <= exact[j - 1] for j in (1, 2)), (method, eps, target)
                    certified = bool(certify(model, x, y, eps=eps, method=method)[0])
                    if worst <= 0:
                        assert not certified, (method, eps, target, float(worst))
                    elif method in exact_methods and worst >= Fraction(1e-9) and clean_correct(model, x, y):
                        # and not vacuous: where the bound is exact, the allowance costs < 1e-9
                        assert certified, (method, eps, target, float(worst))
                cases += worst <= 0
    assert cases >= 8  # many exactly non-positive margins were tried
