"""The grid trainer against one-by-one training: the same models, penalties, data orders and scores.

The setting (shared by `benchmarks/grid_train.py --spread`, which measures the seed spread the
tolerance rests on): the paper's MLP (784 -> 625 -> 10, no bias, N(0, 0.01^2), dropout 0.2 / 0.5),
NewmuRMSprop, trained 2 epochs on the first 3,000 images of MNIST's test split, scored on its
last 2,000. There, two seeds of one-by-one training differ in accuracy (clean; FGSM at eps 0.05
and 0.1; clipped FGSM at 0.1) by 0.0005-0.048 over the 15 pairs of seeds 0-5, with medians
0.0125-0.018 unclipped and 0.0075-0.009 clipped (std 0.007-0.018; 4 lambda pairs;
`benchmarks/grid_train.py --spread`). ACCURACY_TOLERANCE is below the smallest of those medians;
batched and one-by-one training measured 0 apart (the weights are equal bit for bit on the CPU),
and WEIGHT_TOLERANCE is far below the seed-to-seed weight difference (max |w_seed0 - w_seed1|
~0.065), so a member trained on another member's data, masks or penalty fails it.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch import Tensor, nn

from redblue.attacks import fgsm
from redblue.data import load_dataset
from redblue.defenses import parse_objective
from redblue.errors import ConfigError
from redblue.metrics import score
from redblue.models import CNNSpec, MLPSpec, build_model
from redblue.train import TrainConfig, init_model, train
from redblue.train.grid.loop import grid_refusal, supports, train_grid
from redblue.train.grid.score import fgsm_grid_scores
from redblue.train.optim import parse_schedule

N_TRAIN, N_TEST = 3000, 2000
ACCURACY_TOLERANCE = 0.005  # 10 of 2,000 test images; two seeds differ by 0.0075-0.018 (medians)
WEIGHT_TOLERANCE = 1e-4  # max |w_grid - w_alone|; the weights of two seeds differ by up to ~0.065
SETTINGS = [(0.0, False), (0.05, False), (0.1, False), (0.1, True)]
PAPER_MLP = MLPSpec(bias=False, init="normal-0.01")


@functools.lru_cache(maxsize=None)
def _data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    test_split = load_dataset("mnist", "test")
    x, y = test_split.x, test_split.y
    return x[:N_TRAIN], y[:N_TRAIN], x[-N_TEST:], y[-N_TEST:]


def _build(spec=PAPER_MLP):
    return lambda: build_model(spec)


def _members(base: TrainConfig, triples) -> list[TrainConfig]:
    return [dataclasses.replace(base, l1=l1, l2=l2, seed=seed) for l1, l2, seed in triples]


def _alone(build, config: TrainConfig, x: Tensor, y: Tensor) -> tuple[nn.Module, list[dict]]:
    model = init_model(build, seed=config.seed)
    result = train(model, x, y, config, progress=False)
    return model, result.history


def _max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _penalty64(model: nn.Module) -> tuple[float, float]:
    """sum |w| and sum w^2 over the weight matrices, in float64, from the module itself."""
    weights = [p.detach().double() for p in model.parameters() if p.dim() >= 2]
    return sum(w.abs().sum().item() for w in weights), sum(w.square().sum().item() for w in weights)


def test_grid_members_train_as_they_do_one_by_one():
    x, y, x_test, y_test = _data()
    members = _members(TrainConfig(epochs=2), [(0.0, 0.0, 0), (1e-4, 0.0, 0), (1e-5, 1e-4, 1)])
    grid = train_grid(_build(), members, x, y)
    grid_scores = fgsm_grid_scores(grid.models, x_test, y_test, SETTINGS)
    for m, config in enumerate(members):
        alone, history = _alone(_build(), config, x, y)
        assert _max_weight_difference(grid.models[m], alone) <= WEIGHT_TOLERANCE
        alone_scores = fgsm_grid_scores([alone], x_test, y_test, SETTINGS)[0]
        for ours, theirs in zip(grid_scores[m], alone_scores):
            assert abs(ours.accuracy - theirs.accuracy) <= ACCURACY_TOLERANCE, (config, ours, theirs)
        for ours, theirs in zip(grid.results[m].history, history):
            assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
            assert ours["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-9)
            assert ours["penalty"] == pytest.approx(theirs["penalty"], rel=1e-6)
    assert all(not model.training for model in grid.models)
    assert grid.results[1].record()["train_config"]["l1"] == 1e-4 and grid.results[1].kept_epoch == 2


def test_a_huge_penalty_stays_with_its_member():
    x, y, _, _ = _data()
    x, y = x[:1000], y[:1000]
    # the same seed: the two members see the same batches and masks, only the penalty differs
    members = _members(TrainConfig(epochs=1), [(3e-3, 0.0, 0), (0.0, 0.0, 0), (0.0, 3e-2, 0)])
    grid = train_grid(_build(), members, x, y)
    sums = [_penalty64(model) for model in grid.models]
    for m, config in enumerate(members):
        alone, history = _alone(_build(), config, x, y)
        assert sums[m] == pytest.approx(_penalty64(alone), rel=1e-6)
        expected = config.l1 * sums[m][0] + config.l2 * sums[m][1]
        assert grid.results[m].history[-1]["penalty"] == pytest.approx(expected, rel=1e-5)
    l1_sum, _ = sums[0]
    free_l1_sum, free_l2_sum = sums[1]
    _, l2_sum = sums[2]
    assert l1_sum < 0.5 * free_l1_sum  # the penalties took hold of their own member ...
    assert l2_sum < 0.5 * free_l2_sum
    alone_free, _ = _alone(_build(), members[1], x, y)
    assert _max_weight_difference(grid.models[1], alone_free) <= WEIGHT_TOLERANCE  # ... and of no other


def test_members_start_from_init_model_weights():
    x, y, _, _ = _data()
    # lr 1e-30: every update is below float32 resolution, so the weights stay the initial ones
    members = _members(TrainConfig(epochs=1, lr=1e-30), [(0.0, 0.0, 3), (0.0, 0.0, 7), (1e-5, 0.0, 3)])
    grid = train_grid(_build(), members, x[:256], y[:256])
    for model, config in zip(grid.models, members):
        initial = init_model(_build(), seed=config.seed)
        for ours, theirs in zip(model.state_dict().values(), initial.state_dict().values()):
            assert torch.equal(ours, theirs)
    assert _max_weight_difference(grid.models[0], grid.models[1]) > 0.01  # seeds 3 and 7 differ


def test_members_with_one_seed_share_their_batches_and_others_do_not():
    x, y, _, _ = _data()
    x, y = x[:1000], y[:1000]
    # l1 = 1e-12 moves no weight visibly: the two seed-5 members end equal only if every batch
    # and dropout mask they saw was the same; the seed-6 member saw other ones
    members = _members(TrainConfig(epochs=1), [(0.0, 0.0, 5), (1e-12, 0.0, 5), (0.0, 0.0, 6)])
    grid = train_grid(_build(), members, x, y)
    assert _max_weight_difference(grid.models[0], grid.models[1]) <= 1e-6
    seed_six_alone, _ = _alone(_build(), members[2], x, y)
    assert _max_weight_difference(grid.models[2], seed_six_alone) <= WEIGHT_TOLERANCE
    initial_difference = _max_weight_difference(init_model(_build(), seed=5), init_model(_build(), seed=6))
    trained_difference = _max_weight_difference(grid.models[0], grid.models[2])
    assert trained_difference > 0.5 * initial_difference


@pytest.mark.parametrize("block_elements", [None, 4096])
def test_torch_rmsprop_biases_and_blocks_train_as_one_by_one(block_elements):
    x, y, _, _ = _data()
    x, y = x[:1000], y[:1000]
    spec = MLPSpec(hidden=64, bias=True, dropout_input=0.1, dropout_hidden=0.3)
    base = TrainConfig(epochs=1, optimizer="rmsprop", penalize_bias=True)
    members = _members(base, [(1e-3, 1e-3, 0), (0.0, 0.0, 1)])
    grid = train_grid(_build(spec), members, x, y, block_elements=block_elements)
    for model, config in zip(grid.models, members):
        alone, _ = _alone(_build(spec), config, x, y)
        assert _max_weight_difference(model, alone) <= WEIGHT_TOLERANCE


def test_grid_scores_are_each_models_fgsm_scores():
    x, y, x_test, y_test = _data()
    members = _members(TrainConfig(epochs=1), [(0.0, 0.0, 0), (1e-4, 1e-4, 1)])
    models = train_grid(_build(), members, x[:1000], y[:1000]).models
    x_test, y_test = x_test[:600], y_test[:600]
    grid_scores = fgsm_grid_scores(models, x_test, y_test, SETTINGS, batch_size=256)
    for model, scores in zip(models, grid_scores):
        for point in scores:
            x_adv = fgsm(model, x_test, y_test, eps=point.eps, clip=point.clip) if point.eps else x_test
            reference = score(model, x_adv, y_test)
            assert point.accuracy == pytest.approx(reference.accuracy, abs=1e-12)
            assert point.confidence == pytest.approx(reference.confidence, abs=1e-9)
    assert grid_scores[0][0].accuracy > grid_scores[0][2].accuracy  # FGSM lowers the accuracy


def test_grids_it_cannot_train_are_refused_in_one_line():
    x, y, _, _ = _data()
    base = TrainConfig(epochs=1)
    cases = [
        (_build(), _members(dataclasses.replace(base, objective=parse_objective("fgsm:eps=0.1")), [(0.0, 0.0, 0)]), "clean objective"),
        (_build(), [base, dataclasses.replace(base, lr=1e-2, seed=1)], "differ in lr"),
        (_build(CNNSpec()), [base], "Conv2d"),
        (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Tanh()), [base], "Tanh"),
        (_build(), [], "at least one member"),
        (_build(), [dataclasses.replace(base, optimizer="adam")], "not 'adam'"),
        (_build(), [dataclasses.replace(base, grad_clip=1.0)], "grad_clip=1.0"),
        (_build(), [dataclasses.replace(base, val_size=100)], "val_size=100"),
        (_build(), [dataclasses.replace(base, schedule=parse_schedule("one-cycle"))], "schedule='one-cycle'"),
        (_build(), [dataclasses.replace(base, augment="crop-flip")], "augment='crop-flip'"),
    ]
    for build, members, reason in cases:
        refusal = grid_refusal(build, members)
        assert refusal is not None and reason in refusal and "\n" not in refusal
        assert not supports(build, members)
        if members:
            with pytest.raises(ConfigError, match=reason):
                train_grid(build, members, x[:256], y[:256])
    assert supports(_build(), _members(base, [(0.0, 0.0, 0), (1e-4, 0.0, 1)]))


def test_a_diverging_member_is_named():
    x, y, _, _ = _data()
    members = _members(TrainConfig(epochs=1, lr=1e30), [(0.0, 0.0, 0), (1e-4, 0.0, 1)])
    with pytest.raises(ConfigError, match=r"member l1=0, l2=0, seed=0 became nan"):
        train_grid(_build(), members, x[:512], y[:512])


def test_progress_reports_batches_and_each_members_epoch_rows():
    x, y, _, _ = _data()
    members = _members(TrainConfig(epochs=2), [(0.0, 0.0, 0), (1e-4, 0.0, 1)])
    reports = []
    grid = train_grid(_build(), members, x[:2560], y[:2560], progress=reports.append)
    batches = [(r.epoch, r.batch) for r in reports if r.phase == "batch"]
    assert batches == [(1, 20), (2, 20)]  # 2560 / 128 = 20 batches per epoch, a report every 20
    epochs = [r for r in reports if r.phase == "epoch"]
    assert [r.epoch for r in epochs] == [1, 2]
    for m in range(2):
        assert [r.rows[m] for r in epochs] == grid.results[m].history
