"""Training-time augmentation (`redblue.train.augment`): the crops against a per-image reference,
the draws' distribution, seeding, its place in training and in the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cli_helpers import one_error_line, run
from redblue.defenses import parse_objective
from redblue.errors import ConfigError
from redblue.train import TrainConfig, init_model, train
from redblue.train.augment import Augmentation, augment_batch, parse_augmentation, shifted_crops


def crop_reference(image: torch.Tensor, shift_y: int, shift_x: int, pad: int) -> torch.Tensor:
    """One (C, H, W) image placed in a zero canvas of (H + 2 pad, W + 2 pad) and cut at (pad + sy, pad + sx)."""
    c, h, w = image.shape
    canvas = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    canvas[:, pad : pad + h, pad : pad + w] = image
    return canvas[:, pad + shift_y : pad + shift_y + h, pad + shift_x : pad + shift_x + w]


@pytest.mark.parametrize(("shape", "pad"), [((3, 32, 32), 4), ((1, 17, 23), 2), ((2, 5, 3), 6)])
def test_crops_equal_a_per_image_reference_for_every_shift(shape, pad):
    g = torch.Generator().manual_seed(0)
    shifts = torch.arange(-pad, pad + 1)
    n = len(shifts) ** 2
    x = torch.rand(n, *shape, generator=g)
    sy, sx = torch.cartesian_prod(shifts, shifts).T.contiguous()
    ours = shifted_crops(x, sy, sx, pad)
    for i in range(n):
        assert torch.equal(ours[i], crop_reference(x[i], int(sy[i]), int(sx[i]), pad)), (int(sy[i]), int(sx[i]))


def test_a_shift_moves_a_pixel_by_hand():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 3] = 1.0
    out = shifted_crops(x, torch.tensor([1]), torch.tensor([-2]), 4)
    # output[i, j] = x[i + 1, j - 2]: the pixel at row 2, column 3 lands at row 1, column 5
    assert out.sum() == 1.0 and out[0, 0, 1, 5] == 1.0
    gone = shifted_crops(x, torch.tensor([4]), torch.tensor([0]), 4)  # shifted 4 rows up: row 2 leaves the window
    assert gone.sum() == 0.0


def test_the_draws_are_uniform_seeded_and_keep_the_pixels():
    n, pad = 18_000, 4
    # channel 0 holds each pixel's column, channel 1 its row: the crop's shifts and the flip can be read back
    columns = torch.arange(32.0).view(1, 32).expand(32, 32)
    x = (torch.stack([columns, columns.T]) / 64 + 0.25).expand(n, 2, 32, 32).contiguous()
    out = augment_batch(x, parse_augmentation("crop-flip"), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    again = augment_batch(x, parse_augmentation("crop-flip"), torch.Generator().manual_seed(0))
    other = augment_batch(x, parse_augmentation("crop-flip"), torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)

    # output pixel (16, 8) lies inside the window for every shift of at most 4 pixels
    source = ((out[:, :, 16, 8:10] - 0.25) * 64).round().long()  # (n, channel, 2 columns)
    mirrored = source[:, 0, 1] < source[:, 0, 0]
    assert abs(mirrored.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    # unmirrored, output column 8 shows source column 8 + shift; mirrored, column 31 - 8 = 23 + shift
    shift_x = source[:, 0, 0] - torch.where(mirrored, 23, 8)
    shift_y = source[:, 1, 0] - 16
    expected = n / (2 * pad + 1)  # each shift within 4 binomial standard errors of uniform
    for shift in (shift_x, shift_y):
        assert shift.min() == -pad and shift.max() == pad
        counts = torch.bincount(shift + pad, minlength=2 * pad + 1).double()
        assert ((counts - expected).abs() < 4 * math.sqrt(expected * (1 - 1 / (2 * pad + 1)))).all(), counts
    assert (shift_x == shift_y).double().mean() < 0.2  # drawn independently (equal by chance: 1/9)


def test_flip_mirrors_and_crop_alone_never_does():
    x = torch.rand(400, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    flipped = augment_batch(x, parse_augmentation("flip"), torch.Generator().manual_seed(0))
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    assert (same ^ mirrored).all() and 150 < int(mirrored.sum()) < 250
    cropped = augment_batch(x, parse_augmentation("crop:pad=1"), torch.Generator().manual_seed(0))
    assert not (cropped == x.flip(3)).flatten(1).all(1).any()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rotate", "unknown augmentation 'rotate'; choose one of: crop-flip, crop, flip (or leave it off)"),
        ("flip:pad=2", "flip takes no parameter 'pad=2'"),
        ("crop:size=2", "crop takes no parameter 'size=2'; crop takes pad=N"),
        ("crop-flip:pad=0", "pad must be at least 1 pixel, got 0"),
        ("crop-flip:pad=two", "pad must be a whole number of pixels, got 'two'"),
    ],
)
def test_bad_augmentations_say_what_is_wrong(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_augmentation(text)
    assert str(caught.value) == message
    with pytest.raises(ConfigError):
        TrainConfig(epochs=1, augment=text)


def test_parse_names_and_pads():
    assert parse_augmentation("crop-flip") == Augmentation(crop=True, flip=True, pad=4)
    assert parse_augmentation("crop:pad=2") == Augmentation(crop=True, flip=False, pad=2)
    assert parse_augmentation("crop-flip:pad=3").name == "crop-flip"


def _stripes(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.2 * torch.rand(n, 3, 8, 8, generator=g)
    x[y == 1, :, :, 2:4] += 0.6
    return x, y


def _trained(augment: str | None) -> dict[str, torch.Tensor]:
    x, y = _stripes()
    model = init_model(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2)), seed=0)
    train(model, x, y, TrainConfig(epochs=2, batch_size=32, objective=parse_objective("clean"), augment=augment))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_with_augmentation_is_seeded_and_differs_from_training_without():
    first, second, plain = _trained("crop-flip:pad=2"), _trained("crop-flip:pad=2"), _trained(None)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], plain[k]) for k in first)


def test_a_config_without_augmentation_records_no_augment_field():
    """Run records (and the cell ids built on them) from before augmentation existed stay the same."""
    from redblue.config import to_dict

    assert "augment" not in to_dict(TrainConfig(epochs=1))
    assert to_dict(TrainConfig(epochs=1, augment="crop-flip"))["augment"] == "crop-flip"


def test_the_cli_trains_with_augmentation_and_refuses_a_bad_one(cifar_root, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", "--dataset", "tiny-cifar", "--data-dir", cifar_root, "--model", "cnn-small",
                         "--epochs", "1", "--batch-size", "4", "--augment", "crop-flip", "--out", model, "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["train_config"]["augment"] == "crop-flip"
    bad = tmp_path / "bad.safetensors"
    code, out, err = run(capsys, "train", "--dataset", "tiny-cifar", "--data-dir", cifar_root, "--epochs", "1",
                         "--augment", "mixup", "--out", bad)  # fmt: skip
    assert code == 2 and out == "" and not bad.exists()
    assert one_error_line(err) == "error: unknown augmentation 'mixup'; choose one of: crop-flip, crop, flip (or leave it off)"
