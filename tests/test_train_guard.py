"""Validation and the catastrophic-overfitting guard: the held-out split, per-epoch validation
against an independent recomputation, best-epoch selection, and the guard's rollback, with
scripted validation numbers (fast) and with a real collapse (slow)."""

from __future__ import annotations

import pytest
import torch

import redblue.train.loop as train_module
from redblue.data import load_dataset
from redblue.defenses import parse_objective
from redblue.metrics import score
from redblue.models import CNNSmallSpec, MLPSpec, build_model
from redblue.train import TrainConfig, init_model, train
from redblue.train.checkpoint import read_checkpoint
from redblue.train.optim import parse_schedule
from redblue.train.validation import COLLAPSE_DROP, COLLAPSE_GAP, collapse_reason, validation_split


def blobs(n: int = 400, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.2, 0.2, 0.8, 0.8], [0.8, 0.2, 0.2, 0.8], [0.5, 0.8, 0.5, 0.2]])
    y = torch.randint(0, 3, (n,), generator=g)
    return (centers[y] + 0.1 * torch.randn(n, 4, generator=g)).clamp(0, 1).view(n, 1, 2, 2), y


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    spec = MLPSpec(hidden=16, in_features=4, classes=3, dropout_input=0.0, dropout_hidden=0.0)
    return init_model(lambda: build_model(spec), seed=seed)


def snapshots() -> tuple[dict[int, list[torch.Tensor]], object]:
    """An on_epoch callback keeping each epoch's weights (as the loop leaves them after that epoch)."""
    kept: dict[int, list[torch.Tensor]] = {}

    def on_epoch(epoch: int, model: torch.nn.Module) -> None:
        kept[epoch] = [p.detach().clone() for p in model.parameters()]

    return kept, on_epoch


# ---- the split and what is measured on it -----------------------------------------------------------


def test_the_split_is_a_seeded_partition():
    train_index, val_index = validation_split(100, 30, seed=4)
    assert len(val_index) == 30 and len(train_index) == 70
    assert sorted(torch.cat([train_index, val_index]).tolist()) == list(range(100))
    expected = torch.randperm(100, generator=torch.Generator().manual_seed(4 + 3))[:30]
    assert torch.equal(val_index, expected)
    assert torch.equal(train_index, train_index.sort().values)  # the rest keep their order
    assert not torch.equal(validation_split(100, 30, seed=5)[1], val_index)


def test_validation_numbers_match_a_recomputation_and_the_best_epoch_is_kept():
    x, y = blobs()
    kept, on_epoch = snapshots()
    clean_by_hand = {}

    def recompute(epoch: int, model: torch.nn.Module) -> None:
        on_epoch(epoch, model)
        _, val_index = validation_split(len(y), 100, seed=0)
        clean_by_hand[epoch] = score(model, x[val_index], y[val_index]).accuracy

    config = TrainConfig(epochs=4, batch_size=32, lr=1e-2, objective=parse_objective("pgd:eps=0.08,steps=3"), val_size=100)
    result = train(tiny_mlp(), x, y, config, progress=False, on_epoch=recompute)
    assert [row["val_accuracy"] for row in result.history] == [clean_by_hand[e] for e in range(1, 5)]
    for row in result.history:
        # robust accuracy is measured on the first 100 (all) validation images: never above clean
        assert 0.0 <= row["val_robust_accuracy"] <= row["val_accuracy"]
        assert "val_fgsm_accuracy" not in row  # only single-step objectives measure FGSM
    best = max(range(4), key=lambda i: (result.history[i]["val_robust_accuracy"], -i)) + 1
    assert result.kept_epoch == best
    model = tiny_mlp()
    train(model, x, y, config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), kept[best]))
    assert result.validation.size == 100 and result.validation.robust_size == 100
    assert result.validation.pgd_steps == 10 and result.validation.eps == 0.08


def test_keep_last_keeps_the_final_weights():
    x, y = blobs()
    kept, on_epoch = snapshots()
    config = TrainConfig(epochs=3, batch_size=32, objective=parse_objective("pgd:eps=0.08,steps=2"), val_size=100, keep="last")
    model = tiny_mlp()
    result = train(model, x, y, config, progress=False, on_epoch=on_epoch)
    assert result.kept_epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), kept[3]))


# ---- the collapse rule --------------------------------------------------------------------------


def test_the_collapse_rule_on_hand_made_rows():
    assert collapse_reason({"val_robust_accuracy": 0.5, "val_fgsm_accuracy": 0.6}, 0.6) is None
    drop = collapse_reason({"val_robust_accuracy": 0.39, "val_fgsm_accuracy": 0.45}, 0.6)
    assert drop is not None and "fell more than 0.20 below the best 0.600" in drop
    gap = collapse_reason({"val_robust_accuracy": 0.05, "val_fgsm_accuracy": 0.4}, None, 0.113)
    assert gap is not None and "exceeds PGD's 0.050 by more than 0.30" in gap and "previous epoch 0.113" in gap
    assert collapse_reason({"val_robust_accuracy": 0.05, "val_fgsm_accuracy": 0.4}, None, 0.05) is not None  # flat is not rising
    assert collapse_reason({"val_robust_accuracy": 0.1, "val_fgsm_accuracy": 0.35}, None, 0.2) is None
    # a wide gap while PGD accuracy climbs (or with nothing to compare with) is a model still learning
    assert collapse_reason({"val_robust_accuracy": 0.222, "val_fgsm_accuracy": 0.587}, None, None) is None
    assert collapse_reason({"val_robust_accuracy": 0.222, "val_fgsm_accuracy": 0.587}, None, 0.1) is None
    # the drop from the best judges with or without a previous epoch
    assert collapse_reason({"val_robust_accuracy": 0.39, "val_fgsm_accuracy": 0.45}, 0.6, 0.38) is not None
    assert (COLLAPSE_DROP, COLLAPSE_GAP) == (0.20, 0.30)


def scripted_validation(monkeypatch, rows: dict[int, tuple[float, float]]) -> None:
    """Replace the per-epoch validation with numbers given per epoch: (PGD accuracy, FGSM accuracy)."""
    calls = {"epoch": 0}

    def fake(model, x, y, settings, *, seed):
        calls["epoch"] += 1
        robust, fgsm = rows[calls["epoch"]]
        return {"val_accuracy": 0.9, "val_robust_accuracy": robust, "val_fgsm_accuracy": fgsm}

    monkeypatch.setattr(train_module, "validate", fake)


def test_the_guard_rolls_back_weights_and_optimizer_state_and_halves_the_step(monkeypatch, tmp_path):
    scripted_validation(monkeypatch, {1: (0.5, 0.55), 2: (0.6, 0.62), 3: (0.05, 0.7), 4: (0.62, 0.65), 5: (0.64, 0.66)})
    used_params = []
    real = train_module.make_objective
    monkeypatch.setattr(train_module, "make_objective", lambda params: used_params.append(params) or real(params))
    checkpoints = {}

    def after_epoch(event):
        if event.phase == "epoch":
            state, tensors = read_checkpoint(tmp_path / "ckpt")
            checkpoints[event.epoch] = tensors

    x, y = blobs()
    kept, on_epoch = snapshots()
    config = TrainConfig(
        epochs=5, batch_size=32, objective=parse_objective("fast-fgsm:eps=0.1,step_size=0.2"), val_size=40,
        eps_warmup_epochs=0,
    )  # fmt: skip
    result = train(tiny_mlp(), x, y, config, progress=after_epoch, on_epoch=on_epoch, checkpoint=tmp_path / "ckpt")
    assert result.config.overfit_guard is True  # on by default for a single-step objective
    (event,) = result.guard.events
    assert event["epoch"] == 3 and event["rolled_back_to"] == 2 and event["action"] == "step_size 0.2 -> 0.1"
    assert "fell more than 0.20 below the best 0.600" in result.history[2]["collapsed"]
    # the weights after epoch 3 are those after epoch 2, and so is the optimizer state (Adam's moments)
    assert all(torch.equal(a, b) for a, b in zip(kept[3], kept[2]))
    optimizer_keys = [k for k in checkpoints[2] if k.startswith("optimizer/")]
    assert optimizer_keys and all(torch.equal(checkpoints[3][k], checkpoints[2][k]) for k in optimizer_keys)
    assert not all(torch.equal(checkpoints[4][k], checkpoints[3][k]) for k in optimizer_keys)
    assert [p.step_size for p in used_params] == [0.2, 0.2, 0.2, 0.1, 0.1]  # one objective per epoch
    assert result.guard.objective_at_end["step_size"] == 0.1
    assert result.kept_epoch == 5  # the best score (0.64) among the epochs that were not rolled back


def test_the_guard_stops_an_objective_without_a_step_size_and_keeps_the_best_epoch(monkeypatch):
    scripted_validation(monkeypatch, {1: (0.5, 0.55), 2: (0.6, 0.62), 3: (0.05, 0.7), 4: (0.6, 0.6)})
    x, y = blobs()
    kept, on_epoch = snapshots()
    config = TrainConfig(epochs=4, batch_size=32, objective=parse_objective("fgsm:eps=0.1,alpha=0"), val_size=40, eps_warmup_epochs=0)
    model = tiny_mlp()
    result = train(model, x, y, config, progress=False, on_epoch=on_epoch)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.guard.events[0]["action"] == "stopped training"
    assert result.kept_epoch == 2
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), kept[2]))


def test_the_guard_does_not_judge_epochs_of_the_eps_warm_up(monkeypatch):
    # epoch 1 ramps eps up: its FGSM-PGD gap does not count; epoch 3's does
    scripted_validation(monkeypatch, {1: (0.05, 0.6), 2: (0.5, 0.55), 3: (0.1, 0.6)})
    x, y = blobs()
    config = TrainConfig(epochs=3, batch_size=32, objective=parse_objective("fast-fgsm:eps=0.1"), val_size=40, eps_warmup_epochs=1)
    result = train(tiny_mlp(), x, y, config, progress=False)
    assert [event["epoch"] for event in result.guard.events] == [3]


def test_the_guard_stops_after_max_reductions(monkeypatch):
    scripted_validation(monkeypatch, {e: (0.6, 0.6) if e == 1 else (0.01, 0.6) for e in range(1, 8)})
    x, y = blobs()
    config = TrainConfig(epochs=7, batch_size=32, objective=parse_objective("fast-fgsm:eps=0.1,step_size=0.2"), val_size=40, eps_warmup_epochs=0)
    result = train(tiny_mlp(), x, y, config, progress=False)
    actions = [event["action"] for event in result.guard.events]
    assert actions == ["step_size 0.2 -> 0.1", "step_size 0.1 -> 0.05", "step_size 0.05 -> 0.025", "stopped training"]
    assert len(result.history) == 5 and result.kept_epoch == 1


# ---- a real collapse -------------------------------------------------------------------------------


@pytest.mark.slow
def test_fgsm_training_without_random_start_collapses_and_the_guard_catches_it():
    """Pure FGSM training (no random start, step = eps = 0.3) of the small CNN on 3000 MNIST images:
    after the eps warm-up, PGD validation accuracy falls to ~0 while FGSM accuracy climbs (Wong et
    al., 2020). With the guard the run is rolled back at the first such epoch and stops there (FGSM
    has no step size to shrink), keeping its best epoch. ~45 s on one core."""
    mnist = load_dataset("mnist", "test")
    x, y = mnist.x[:3000], mnist.y[:3000]
    base = dict(
        epochs=7, batch_size=64, lr=1e-3, optimizer="adam", schedule=parse_schedule("constant"),
        objective=parse_objective("fgsm:eps=0.3,alpha=0"), eps_warmup_epochs=2, val_size=500,
    )  # fmt: skip
    unguarded = train(init_model(lambda: build_model(CNNSmallSpec()), seed=0), x, y, TrainConfig(**base, overfit_guard=False, keep="last"))
    after_warmup = unguarded.history[2:]
    assert max(row["val_fgsm_accuracy"] - row["val_robust_accuracy"] for row in after_warmup) > COLLAPSE_GAP
    assert unguarded.history[-1]["val_robust_accuracy"] < 0.05
    model = init_model(lambda: build_model(CNNSmallSpec()), seed=0)
    guarded = train(model, x, y, TrainConfig(**base))
    (event,) = guarded.guard.events
    assert event["action"] == "stopped training" and event["epoch"] >= 3
    assert len(guarded.history) == event["epoch"]

    def numbers(row):
        return {k: v for k, v in row.items() if "seconds" not in k}

    # the same seed: the guarded run is the unguarded one up to the epoch it caught
    assert [numbers(r) for r in guarded.history[:-1]] == [numbers(r) for r in unguarded.history[: event["epoch"] - 1]]
    kept = guarded.history[guarded.kept_epoch - 1]
    assert kept["val_robust_accuracy"] > unguarded.history[-1]["val_robust_accuracy"]
