"""Weight averaging (`TrainConfig.weight_average`, `redblue.train.optim.WeightAverage`): the average
against a float64 recomputation from the trained weights of every step, the trajectory unchanged,
the average validated and kept, and rolled back with the weights by the guard."""

from __future__ import annotations

import pytest
import torch

import redblue.train.loop as train_module
from redblue.defenses import parse_objective
from redblue.errors import ConfigError
from redblue.models import MLPSpec, build_model
from redblue.train import TrainConfig, init_model, train
from redblue.train.optim import WeightAverage


def blobs(n: int = 300, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.2, 0.2, 0.8, 0.8], [0.8, 0.2, 0.2, 0.8], [0.5, 0.8, 0.5, 0.2]])
    y = torch.randint(0, 3, (n,), generator=g)
    return (centers[y] + 0.1 * torch.randn(n, 4, generator=g)).clamp(0, 1).view(n, 1, 2, 2), y


def tiny_mlp() -> torch.nn.Module:
    return init_model(lambda: build_model(MLPSpec(hidden=16, in_features=4, classes=3, dropout_input=0.0, dropout_hidden=0.0)), seed=0)


def test_the_decay_warms_up_as_tensorflows_num_updates_then_holds():
    average = WeightAverage(torch.nn.Linear(2, 2), 0.99)
    assert [average.factor(t) for t in (0, 1, 8, 10**6)] == pytest.approx([1 / 10, 2 / 11, 9 / 18, 0.99])
    with pytest.raises(ConfigError, match="decay must be in"):
        WeightAverage(torch.nn.Linear(2, 2), 1.0)
    with pytest.raises(ConfigError, match="weight_average must be in"):
        TrainConfig(epochs=1, weight_average=-0.5)


def test_the_kept_model_is_the_average_of_the_trained_weights_recomputed_in_float64(monkeypatch):
    seen: list[dict[str, torch.Tensor]] = []  # the trained weights after every optimiser step, as the average saw them
    real_update = WeightAverage.update

    def spy(self, step):
        seen.append({k: current.detach().to(torch.float64).clone() for k, current in zip(self.weights, [c for _, c in self._float_pairs])})
        real_update(self, step)

    monkeypatch.setattr(WeightAverage, "update", spy)
    x, y = blobs()
    config = dict(epochs=3, batch_size=32, objective=parse_objective("pgd:eps=0.1,steps=2"), val_size=0, keep="last")
    plain_model, averaged_model = tiny_mlp(), tiny_mlp()
    initial = {k: v.detach().to(torch.float64).clone() for k, v in averaged_model.state_dict().items()}
    train(plain_model, x, y, TrainConfig(**config))
    train(averaged_model, x, y, TrainConfig(**config, weight_average=0.95))
    assert len(seen) == 3 * 10  # 300 images, batch 32: 10 steps per epoch
    # the trajectory is the plain run's: the average only watches it
    assert all(torch.equal(seen[-1][k].float(), v) for k, v in plain_model.state_dict().items())
    expected = initial
    for step, weights in enumerate(seen):
        d = min(0.95, (1 + step) / (10 + step))
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    got = averaged_model.state_dict()
    for k in expected:
        torch.testing.assert_close(got[k].to(torch.float64), expected[k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(got["2.weight"], plain_model.state_dict()["2.weight"])


def test_the_average_is_what_is_validated_and_kept_and_the_guard_rolls_it_back(monkeypatch):
    x, y = blobs()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    validated: list[dict[str, torch.Tensor]] = []
    real_validate = train_module.validate
    rows = {1: (0.6, 0.6), 2: (0.7, 0.7), 3: (0.05, 0.7), 4: (0.72, 0.72)}  # epoch 3 collapses

    def scripted(model, x_val, y_val, settings, *, seed):
        validated.append({k: v.clone() for k, v in model.state_dict().items()})
        real_validate(model, x_val, y_val, settings, seed=seed)
        robust, fgsm = rows[len(validated)]
        return {"val_accuracy": 0.9, "val_robust_accuracy": robust, "val_fgsm_accuracy": fgsm}

    monkeypatch.setattr(train_module, "validate", scripted)
    averages: list[dict[str, torch.Tensor]] = []
    real_update = WeightAverage.update

    def watch(self, step):
        real_update(self, step)
        averages.append({k: v.clone() for k, v in self.weights.items()})

    monkeypatch.setattr(WeightAverage, "update", watch)
    loaded: list[dict[str, torch.Tensor]] = []
    real_load = WeightAverage.load_
    monkeypatch.setattr(WeightAverage, "load_", lambda self, w: loaded.append({k: v.clone() for k, v in w.items()}) or real_load(self, w))
    config = TrainConfig(epochs=4, batch_size=32, objective=parse_objective("fast-fgsm:eps=0.1"), val_size=60, eps_warmup_epochs=0,
                         weight_average=0.9)  # fmt: skip
    model = tiny_mlp()
    result = train(model, x, y, config, on_epoch=lambda e, m: snapshots.__setitem__(e, {k: v.clone() for k, v in m.state_dict().items()}))
    steps = 8  # 240 training images, batch 32
    # epochs 1, 2 and 4 validate the average at their last step (epoch 4's after the rollback of epoch 3)
    for epoch, index in ((1, steps), (2, 2 * steps), (4, 4 * steps)):
        assert all(torch.equal(validated[epoch - 1][k], averages[index - 1][k]) for k in averages[0]), epoch
    assert result.guard.events[0]["epoch"] == 3
    # the rollback of epoch 3 puts the average back to epoch 2's last one, and epoch 4 goes on from there
    assert len(loaded) == 1 and all(torch.equal(loaded[0][k], averages[2 * steps - 1][k]) for k in loaded[0])
    assert result.kept_epoch == 4 and all(torch.equal(model.state_dict()[k], snapshots[4][k]) for k in snapshots[4])
