"""The transfer attack: crafted on a surrogate model file, handed to the target unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlp_fixtures import accuracy, trained_mlp
from torch import nn

from redblue.attacks import parse_attack
from redblue.attacks.pgd import pgd, pgd_l2
from redblue.attacks.transfer import transfer, transfer_l2
from redblue.errors import ConfigError, ModelError
from redblue.models import MLPSpec, build_model, save_model

FIXTURE_SPEC = MLPSpec(hidden=100, dropout_input=0.0, dropout_hidden=0.2)


def save_fixture_model(path: Path, seed: int) -> nn.Module:
    """Write the fixture MLP trained with `seed` as a redblue model file; returns the fixture model."""
    model, _, _ = trained_mlp(seed)
    saved = build_model(FIXTURE_SPEC)  # Flatten, Dropout, Linear, ReLU, Dropout, Linear
    with torch.no_grad():
        for target, source in ((saved[2], model[1]), (saved[5], model[4])):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
    save_model(path, saved, FIXTURE_SPEC)
    return model


class NeverCalled(nn.Module):
    """A target that fails if queried: a transfer attack must not look at the target."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the transfer attack queried the target model")


def test_transfer_from_the_target_itself_is_the_inner_white_box_attack(tmp_path: Path):
    path = tmp_path / "same.safetensors"
    model = save_fixture_model(path, seed=0)
    _, x, y = trained_mlp(0)
    x, y = x[:100], y[:100]
    expected = pgd(model, x, y, eps=0.1, steps=10, restarts=2, generator=torch.Generator().manual_seed(3))
    entry, params = parse_attack(f"transfer:surrogate={path},attack=pgd/steps=10/restarts=2,eps=0.1")
    got = entry(NeverCalled(), x, y, params, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_transfer_l2_uses_the_l2_inner_attack(tmp_path: Path):
    path = tmp_path / "same.safetensors"
    model = save_fixture_model(path, seed=0)
    _, x, y = trained_mlp(0)
    x, y = x[:50], y[:50]
    expected = pgd_l2(model, x, y, eps=1.0, steps=5, generator=torch.Generator().manual_seed(0))
    got = transfer_l2(NeverCalled(), x, y, eps=1.0, surrogate=str(path), attack="pgd-l2/steps=5",
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_transfer_between_independently_trained_models_is_weaker_than_white_box_but_works(tmp_path: Path):
    path = tmp_path / "surrogate.safetensors"
    save_fixture_model(path, seed=1)
    target, x, y = trained_mlp(0)
    clean = accuracy(target, x, y)
    transferred = accuracy(target, transfer(target, x, y, eps=0.08, surrogate=str(path), attack="pgd/steps=20"), y)
    white_box = accuracy(target, pgd(target, x, y, eps=0.08, steps=20, generator=torch.Generator().manual_seed(0)), y)
    # measured on MNIST: white-box 0.196, transfer 0.27, clean 0.90
    assert white_box + 0.03 < transferred < clean - 0.3, (white_box, transferred, clean)


def test_a_retrained_surrogate_file_is_reloaded(tmp_path: Path):
    path = tmp_path / "surrogate.safetensors"
    _, x, y = trained_mlp(0)
    x, y = x[:20], y[:20]
    first = save_fixture_model(path, seed=0)
    a = transfer(NeverCalled(), x, y, eps=0.1, surrogate=str(path), attack="bim/steps=3")
    torch.testing.assert_close(a, pgd(first, x, y, eps=0.1, steps=3, random_start=False), rtol=0, atol=1e-6)
    second = save_fixture_model(path, seed=1)
    b = transfer(NeverCalled(), x, y, eps=0.1, surrogate=str(path), attack="bim/steps=3")
    torch.testing.assert_close(b, pgd(second, x, y, eps=0.1, steps=3, random_start=False), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "attack, fragment",
    [
        ("pgd-l2", "is l2 but this transfer is linf; use transfer-l2"),
        ("transfer", "cannot craft with another transfer attack"),
        ("pgd/eps=0.3", "set eps on the transfer attack itself"),
        ("pgd/steps=5/overshoot=1", "has no parameter overshoot"),
        ("nosuch", "unknown attack 'nosuch'"),
    ],
)
def test_bad_inner_attacks_give_one_line(attack: str, fragment: str):
    with pytest.raises(ConfigError) as caught:
        parse_attack(f"transfer:surrogate=model.safetensors,attack={attack},eps=0.1")
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_transfer_needs_a_surrogate():
    with pytest.raises(ConfigError, match="needs surrogate"):
        parse_attack("transfer:eps=0.1")


def test_missing_or_unreadable_surrogate_gives_one_line(tmp_path: Path):
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(ModelError, match="does not exist"):
        transfer(NeverCalled(), x, y, eps=0.1, surrogate=str(tmp_path / "missing.safetensors"))
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        transfer(NeverCalled(), x, y, eps=0.1, surrogate=str(pickled))


def test_surrogate_with_too_few_classes_is_refused(tmp_path: Path):
    spec = MLPSpec(hidden=8, classes=3)
    path = tmp_path / "three.safetensors"
    save_model(path, build_model(spec), spec)
    with pytest.raises(ModelError, match="has 3 classes but a label is 7"):
        transfer(NeverCalled(), torch.rand(2, 1, 28, 28), torch.tensor([1, 7]), eps=0.1, surrogate=str(path))
