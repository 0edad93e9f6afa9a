"""Checkpoints and resume: an interrupted run continued from its checkpoint ends with the same weights
as an uninterrupted one, bit for bit; checkpoints hold no pickle; a different run is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from redblue.defenses import parse_objective
from redblue.errors import ConfigError
from redblue.models import MLPSpec, build_model
from redblue.train import TrainConfig, TrainProgress, init_model, make_optimizer, train
from redblue.train.checkpoint import STATE_FILE, load_optimizer_state, optimizer_state, read_checkpoint
from redblue.train.optim import parse_schedule


class ConvBN(nn.Module):
    """Dropout (torch's global generator) and batch norm (buffers): both must survive a resume."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 4 * 4, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def images(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 4, 4, generator=g)
    for label in range(3):
        x[y == label, :, label, :] += 0.5
    return x.clamp(0, 1), y


class Interrupt:
    """A progress callback that raises KeyboardInterrupt (as Ctrl-C would) at the first report of one
    phase in one epoch (with 400 images and batch 16 the first batch report is at batch 20 of 23)."""

    def __init__(self, phase: str, epoch: int) -> None:
        self.phase, self.epoch = phase, epoch

    def __call__(self, event: TrainProgress) -> None:
        if event.phase == self.phase and event.epoch == self.epoch:
            raise KeyboardInterrupt


CONFIGS = {
    "pgd-adam-one-cycle": dict(objective="pgd:eps=0.1,steps=2", val_size=40),
    "fast-fgsm-sgd-cosine-guard": dict(
        objective="fast-fgsm:eps=0.1", val_size=40, optimizer="sgd", nesterov=True, weight_decay=1e-4,
        schedule=parse_schedule("cosine"), warmup_epochs=1, grad_clip=5.0,
    ),  # fmt: skip
    "clean-newmu-penalties": dict(objective="clean", l1=1e-4, l2=1e-4),
    # the weight average (over the batch-norm buffers too) and its rollback by the guard
    "fast-fgsm-guard-weight-average": dict(objective="fast-fgsm:eps=0.1", val_size=40, overfit_guard=True, weight_average=0.9),
    # the augmentation's generator continues where the interrupted run left it
    "pgd-crop-flip": dict(objective="pgd:eps=0.1,steps=2", val_size=40, augment="crop-flip:pad=1"),
}


def config_of(name: str) -> TrainConfig:
    values = dict(CONFIGS[name])
    return TrainConfig(epochs=4, batch_size=16, seed=3, **{**values, "objective": parse_objective(values["objective"])})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def numbers(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in history]


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("stop", [Interrupt("epoch", 2), Interrupt("batch", 3)], ids=["after-epoch-2", "inside-epoch-3"])
def test_an_interrupted_run_resumed_equals_an_uninterrupted_one_bit_for_bit(tmp_path, name, stop):
    x, y = images()
    config = config_of(name)
    whole = init_model(ConvBN, seed=1)
    expected = train(whole, x, y, config)

    model = init_model(ConvBN, seed=1)
    folder = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(model, x, y, config, progress=stop, checkpoint=folder)
    state, _ = read_checkpoint(folder)
    assert state["epoch"] == 2
    resumed_model = init_model(ConvBN, seed=7)  # fresh weights: the checkpoint's replace them
    resumed = train(resumed_model, x, y, config, checkpoint=folder, resume=True)
    assert resumed.resumed_from == 2
    got, want = weights(resumed_model), weights(whole)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # incl. batch-norm buffers
    assert numbers(resumed.history) == numbers(expected.history)
    assert resumed.kept_epoch == expected.kept_epoch


def test_a_checkpoint_is_safetensors_and_json_only(tmp_path):
    x, y = images()
    train(init_model(ConvBN, seed=1), x, y, config_of("pgd-adam-one-cycle"), checkpoint=tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["epoch-0004.safetensors", STATE_FILE]  # older epochs removed, nothing else
    state = json.loads((tmp_path / "ckpt" / STATE_FILE).read_text())
    assert state["epoch"] == 4 and len(state["run"]["history"]) == 4
    with safe_open(str(tmp_path / "ckpt" / "epoch-0004.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert {"rng/shuffle", "rng/attack", "rng/global"} <= keys
    assert any(k.startswith("model/") for k in keys) and any(k.startswith("best/") for k in keys)
    assert any(k.startswith("optimizer/") and k.endswith("exp_avg_sq") for k in keys)


@pytest.mark.parametrize(
    "change, differs",
    [({"lr": 2e-3}, "config.lr"), ({"epochs": 6}, "config.epochs"), ({"seed": 4}, "config.seed")],
)
def test_resuming_with_a_different_config_is_refused_in_one_line(tmp_path, change, differs):
    x, y = images()
    config = config_of("pgd-adam-one-cycle")
    with pytest.raises(KeyboardInterrupt):
        train(init_model(ConvBN, seed=1), x, y, config, progress=Interrupt("epoch", 2), checkpoint=tmp_path / "c")
    other = TrainConfig(**{**config.__dict__, **change})
    with pytest.raises(ConfigError, match=f"made by a different run \\(differs in: {differs}") as info:
        train(init_model(ConvBN, seed=1), x, y, other, checkpoint=tmp_path / "c", resume=True)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="differs in: data.sha256"):
        train(init_model(ConvBN, seed=1), x.flip(0), y, config, checkpoint=tmp_path / "c", resume=True)


def test_resuming_on_a_cpu_with_another_thread_count_is_refused_in_one_line(tmp_path):
    """Sums split across threads round differently: a resume with another count would not end where
    the uninterrupted run ends, so the checkpoint records the count and a resume must match it."""
    x, y = images()
    config = config_of("pgd-adam-one-cycle")
    with pytest.raises(KeyboardInterrupt):
        train(init_model(ConvBN, seed=1), x, y, config, progress=Interrupt("epoch", 2), checkpoint=tmp_path / "c")
    torch.set_num_threads(2)  # conftest puts it back to 1 after the test
    with pytest.raises(ConfigError, match="was made with 1 torch threads and this run has 2; resume with the same thread count") as info:
        train(init_model(ConvBN, seed=1), x, y, config, checkpoint=tmp_path / "c", resume=True)
    assert "\n" not in str(info.value)
    torch.set_num_threads(1)
    assert train(init_model(ConvBN, seed=1), x, y, config, checkpoint=tmp_path / "c", resume=True).resumed_from == 2


def test_an_existing_checkpoint_needs_resume_and_resume_needs_one(tmp_path):
    x, y = images()
    config = config_of("clean-newmu-penalties")
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        train(init_model(ConvBN, seed=1), x, y, config, checkpoint=tmp_path / "c", resume=True)
    with pytest.raises(KeyboardInterrupt):
        train(init_model(ConvBN, seed=1), x, y, config, progress=Interrupt("epoch", 1), checkpoint=tmp_path / "c")
    with pytest.raises(ConfigError, match="holds a checkpoint of an unfinished run"):
        train(init_model(ConvBN, seed=1), x, y, config, checkpoint=tmp_path / "c")


def test_a_damaged_checkpoint_is_refused_not_silently_restarted(tmp_path):
    x, y = images()
    config = config_of("clean-newmu-penalties")
    with pytest.raises(KeyboardInterrupt):
        train(init_model(ConvBN, seed=1), x, y, config, progress=Interrupt("epoch", 1), checkpoint=tmp_path / "c")
    tensors = tmp_path / "c" / "epoch-0001.safetensors"
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="is damaged .*fails its checksum.*delete the folder"):
        train(init_model(ConvBN, seed=1), x, y, config, checkpoint=tmp_path / "c", resume=True)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop-newmu", "rmsprop"])
def test_every_optimizers_state_round_trips_through_tensors_and_json(name):
    spec = MLPSpec(hidden=8, in_features=4, classes=3)
    extra = {"momentum": 0.5} if name in ("sgd", "rmsprop") else {}
    config = TrainConfig(epochs=1, optimizer=name, **extra)
    model = init_model(lambda: build_model(spec), seed=0)
    optimizer = make_optimizer(model, config)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.rand(5, 4)).square().sum().backward()
        optimizer.step()
    tensors, meta = optimizer_state(optimizer)
    fresh = make_optimizer(init_model(lambda: build_model(spec), seed=0), config)
    load_optimizer_state(fresh, tensors, json.loads(json.dumps(meta)))
    before, after = optimizer.state_dict(), fresh.state_dict()
    assert before["param_groups"] == after["param_groups"]
    for index, entries in before["state"].items():
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(after["state"][index][key]), torch.as_tensor(value)), (index, key)
