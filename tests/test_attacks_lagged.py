"""The loops that drop finished samples (Square, DeepFool) give the same images however late they learn
how many samples are left.

On an accelerator they learn it without waiting for the device (`LaggedCount`), a few iterations
after the count was taken, and compact with a stable sort (`sorted_true_rows`) instead of `nonzero`.
Here, on the CPU, both are forced: a count that arrives only at its `LAG`-th reading, and the sort.
The reference is the CPU's own loop, which compacts after every iteration. The model runs in
float64, so the only difference allowed is the rounding of a matrix product computed on other rows
(the random draws are the same: Square draws for the whole run batch and selects).
"""

from __future__ import annotations

import copy

import pytest
import torch
from mlp_fixtures import trained_mlp
from torch import Tensor

import redblue.attacks.deepfool as deepfool_module
import redblue.attacks.square as square_module
from redblue.attacks.core import LaggedCount, sorted_true_rows
from redblue.attacks.registry import parse_attack

ROUNDING = {"rtol": 1e-12, "atol": 1e-12}


class SlowCount(LaggedCount):
    """A count that is not there yet the first LAG - 1 times it is read, as from a busy device."""

    LAG = 4

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask)
        self.reads = 0

    def value(self) -> int | None:
        self.reads += 1
        return super().value() if self.reads >= self.LAG else None


@pytest.fixture(scope="module")
def mlp64():
    model, x, y = trained_mlp()
    return copy.deepcopy(model).double().eval(), x[:200].double(), y[:200]


@pytest.mark.parametrize(
    "spec", ["square:eps=0.1,n_queries=150", "square-l2:eps=1.5,n_queries=100", "deepfool-l2:eps=1.5", "deepfool:eps=0.1"]
)
def test_a_late_count_changes_no_image(mlp64, monkeypatch, spec):
    model, x, y = mlp64
    entry, params = parse_attack(spec)
    at_once = entry(model, x, y, params, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fooled = model(at_once).argmax(dim=1) != y
    assert 0.1 < fooled.double().mean().item() < 0.9  # samples drop out along the way: the compaction matters

    counts: list[SlowCount] = []

    def slow(mask: Tensor) -> SlowCount:
        counts.append(SlowCount(mask))
        return counts[-1]

    for module in (square_module, deepfool_module):
        monkeypatch.setattr(module, "LaggedCount", slow)
        monkeypatch.setattr(module, "true_rows", sorted_true_rows)
    late = entry(model, x, y, params, generator=torch.Generator().manual_seed(0))
    assert len(counts) > 1 and any(c.reads >= SlowCount.LAG and c.value() < len(c.mask) for c in counts)  # it compacted
    with torch.no_grad():
        assert torch.equal(model(late).argmax(dim=1) != y, fooled)
    torch.testing.assert_close(late, at_once, **ROUNDING)


def test_sorted_true_rows_are_nonzeros_indices():
    generator = torch.Generator().manual_seed(0)
    for n, p in ((0, 0.5), (1, 0.0), (1, 1.0), (37, 0.5), (1000, 0.1), (1000, 0.95)):
        mask = torch.rand(n, generator=generator) < p
        count = LaggedCount(mask).value()
        assert count == int(mask.sum())
        assert torch.equal(sorted_true_rows(mask, count), mask.nonzero().squeeze(1))
