"""Batch sizes from the device, and the out-of-memory split: a forced split gives the numbers of one batch.

The memory budget is faked on the CPU: a model that raises torch.OutOfMemoryError when called on
more than `limit` images, as CUDA's allocator does when a batch's activations do not fit. The
references are the same evaluations run in one batch on the plain model. Every decision (which
sample is fooled, by which attack, with which prediction) must be the same, and every number the
same up to the rounding of a matrix product computed on fewer rows (measured: 7e-15 in float64,
where the MLP runs here; the random draws are the same, so nothing larger can differ).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from mlp_fixtures import trained_mlp
from torch import Tensor, nn

import redblue.attacks  # noqa: F401  (registers the attacks)
from redblue.attacks.core import loss_logits_and_gradient
from redblue.attacks.registry import parse_attack
from redblue.errors import ConfigError
from redblue.evaluate import Batching, OutOfMemory, choose_batching, evaluate, parse_batch_size, run_attack
from redblue.evaluate.batching import CPU_BATCH, ChunkedModel, chunk_for_memory
from redblue.evaluate.single import attack_every_sample

N = 120
# every attack family that draws random numbers, each more than once per call (restarts, targets, queries),
# weak enough at these eps that other random draws change the numbers (asserted below)
RANDOM_ATTACKS = "fgsm,pgd:steps=3,restarts=2,apgd-ce:n_iter=4,apgd-t:n_iter=4,n_target_classes=2,square:n_queries=40"
EPS = [0.03, 0.06]


class OutOfMemoryAbove(nn.Module):
    """`model`, but out of memory (torch.OutOfMemoryError, as CUDA raises it) on more than `limit` images."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.refused, self.largest = model, limit, 0, 0
        self.train(model.training)  # a wrapper's mode is its model's: the evaluator restores the wrapper's

    def forward(self, x: Tensor) -> Tensor:
        if len(x) > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake: {len(x)} images > {self.limit})")
        self.largest = max(self.largest, len(x))
        return self.model(x)


@pytest.fixture(scope="module")
def mlp64() -> tuple[nn.Module, Tensor, Tensor]:
    model, x, y = trained_mlp()
    return copy.deepcopy(model).double(), x[:N].double(), y[:N]


def run(model: nn.Module, x: Tensor, y: Tensor, batch_size, *, mode: str = "worst-case"):
    return evaluate(model, x, y, RANDOM_ATTACKS, EPS, mode=mode, batch_size=batch_size, checks=False,
                    certify_method=None, generator=torch.Generator().manual_seed(0))  # fmt: skip


ROUNDING = {"rtol": 1e-12, "atol": 1e-12}  # float64 rounding; any real difference is a full step or a flipped sample


def assert_same_evaluation(got, expected) -> None:
    assert got.clean_accuracy == expected.clean_accuracy
    for r_got, r_expected in zip(got.results, expected.results, strict=True):
        assert torch.equal(r_got.worst_case_mask, r_expected.worst_case_mask)
        assert r_got.worst_case_confidence == pytest.approx(r_expected.worst_case_confidence, rel=1e-12)
        for a_got, a_expected in zip(r_got.attacks, r_expected.attacks, strict=True):
            assert (a_got.label, a_got.accuracy, a_got.n_fooled, a_got.n_invalid) == (
                a_expected.label, a_expected.accuracy, a_expected.n_fooled, a_expected.n_invalid
            )
            assert a_got.confidence == pytest.approx(a_expected.confidence, rel=1e-12)
            assert torch.equal(a_got.robust_mask, a_expected.robust_mask)


@pytest.mark.parametrize("mode", ["worst-case", "per-attack"])
def test_a_forced_out_of_memory_split_gives_the_numbers_of_one_batch(mlp64, mode):
    model, x, y = mlp64
    one_batch = run(model, x, y, N, mode=mode)
    # the comparison can fail: cut into attack calls of 25 (other random draws), the numbers change
    other_draws = run(model, x, y, 25, mode=mode)
    assert [a.confidence for r in other_draws.results for a in r.attacks] != pytest.approx(
        [a.confidence for r in one_batch.results for a in r.attacks], rel=1e-6
    )
    limited = OutOfMemoryAbove(model, limit=25)
    split = run(limited, x, y, N, mode=mode)
    assert limited.refused > 0 and limited.largest <= 25  # it did run out, and then ran in pieces
    assert split.batch_size == N and split.chunk_size <= 25  # one attack call; the model's passes split
    assert_same_evaluation(split, one_batch)


def test_the_split_keeps_every_image_of_one_batch(mlp64):
    """Images too, attack by attack: APGD-T draws a random start per target class, Square per query."""
    model, x, y = mlp64
    for spec in ("pgd:eps=0.1,steps=5,restarts=3", "apgd-t:eps=0.1,n_iter=8,n_target_classes=3",
                 "square:eps=0.1,n_queries=60", "cw-l2:eps=1.0,steps=10,binary_search_steps=2", "deepfool:eps=0.1"):  # fmt: skip
        entry, params = parse_attack(spec)
        whole = attack_every_sample(model, x, y, entry, params, batch_size=N, generator=torch.Generator().manual_seed(3))
        limited = OutOfMemoryAbove(model, limit=16)
        split = attack_every_sample(limited, x, y, entry, params, batch_size=N, generator=torch.Generator().manual_seed(3))
        assert limited.refused > 0, spec
        assert torch.equal(split.predicted, whole.predicted) and torch.equal(split.valid, whole.valid), spec
        torch.testing.assert_close(split.x_adv, whole.x_adv, **ROUNDING, msg=spec)


def test_when_one_image_per_model_call_is_too_much_the_call_itself_is_cut(mlp64):
    """The one case where memory changes the random draws: then the numbers are exactly those of the
    smaller batch size the split arrived at, and the generator was put back before each retry."""
    model, x, y = mlp64
    entry, params = parse_attack("pgd:eps=0.1,steps=5")

    def run_unless_big(model_, x_, y_, params_, generator):  # the attack's own tensors do not fit
        if len(x_) > 30:
            raise torch.OutOfMemoryError("fake: the attack's own tensors do not fit")
        return entry.run(model_, x_, y_, params_, generator)

    greedy = dataclasses.replace(entry, run=run_unless_big)
    batching = Batching(size=N, chunk=N)
    got = run_attack(model, greedy, params, x, y, batch_size=batching, generator=torch.Generator().manual_seed(1))
    assert batching.chunk == 1 and batching.size == 30  # 120 -> chunk halved to 1, then 120 -> 60 -> 30
    expected = run_attack(model, entry, params, x, y, batch_size=30, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got.fooled, expected.fooled) and torch.equal(got.predicted, expected.predicted)
    torch.testing.assert_close(got.margin, expected.margin, **ROUNDING)


def test_out_of_memory_with_one_image_is_one_error_line(mlp64):
    model, x, y = mlp64
    entry, params = parse_attack("fgsm:eps=0.1")
    with pytest.raises(OutOfMemory, match="^out of memory on the device even with one image per model call; "):
        run_attack(OutOfMemoryAbove(model, limit=0), entry, params, x, y, batch_size=8)


def test_other_errors_are_not_taken_for_out_of_memory(mlp64):
    model, x, y = mlp64

    class Broken(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    entry, params = parse_attack("fgsm:eps=0.1")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        run_attack(Broken(), entry, params, x, y, batch_size=8)


def test_chunked_gradients_equal_the_whole_batch_and_touch_no_weight(mlp64):
    model, x, y = mlp64
    chunked = ChunkedModel(model, Batching(size=N, chunk=7))
    losses, logits, grad = loss_logits_and_gradient(chunked, x, y)
    losses_ref, logits_ref, grad_ref = loss_logits_and_gradient(model, x, y)
    for got, expected in ((logits, logits_ref), (losses, losses_ref), (grad, grad_ref)):
        torch.testing.assert_close(got, expected, **ROUNDING)
    assert all(p.grad is None for p in model.parameters())
    # and against float64 central differences on one pixel of one sample
    pixel, h = (5, 0, 14, 14), 1e-6
    bumped = [x.clone(), x.clone()]
    bumped[0][pixel] += h
    bumped[1][pixel] -= h
    with torch.no_grad():
        up, down = (nn.functional.cross_entropy(model(b[5:6]), y[5:6]) for b in bumped)
    assert grad[pixel].item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-6, abs=1e-9)


def test_a_given_batch_size_wins_and_auto_on_a_cpu_is_the_measured_size(mlp64):
    model, x, y = mlp64
    assert choose_batching(model, x, y, 7) == Batching(size=7, chunk=7, auto=False)
    big = torch.zeros(CPU_BATCH + 5, 1, 28, 28, dtype=torch.float64)
    assert choose_batching(model, big, torch.zeros(len(big), dtype=torch.long), "auto") == Batching(CPU_BATCH, CPU_BATCH, True)
    assert choose_batching(model, x, y, None) == Batching(size=N, chunk=N, auto=True)


def test_the_gpu_rule_by_hand():
    """chunk_for_memory, the arithmetic of the GPU rule: 0.7 of the memory free once the state is allocated."""
    # 10,000 images, state 75 KB each (24 float32 copies of 784 pixels): 0.75 GB; free 10 GB; 1 MB per image
    state = 24 * 784 * 4
    assert chunk_for_memory(size=10_000, state_per_sample=state, free=10e9, per_sample=1e6) == int(0.7 * (10e9 - 10_000 * state) / 1e6)
    # everything fits: the whole call in one model pass
    assert chunk_for_memory(size=10_000, state_per_sample=state, free=80e9, per_sample=1e5) == 10_000
    # nothing fits: one image at a time (and out-of-memory handling from there)
    assert chunk_for_memory(size=10_000, state_per_sample=state, free=1e8, per_sample=1e6) == 1


@pytest.mark.parametrize("text,expected", [("auto", "auto"), ("1", 1), ("10000", 10000)])
def test_parse_batch_size(text, expected):
    assert parse_batch_size(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "", "all"])
def test_parse_batch_size_refuses_with_one_line(text):
    with pytest.raises(ConfigError, match=f"^--batch-size must be auto or an integer >= 1, got {text}$"):
        parse_batch_size(text)
