"""The RGB rows' model and images: a small pre-activation ResNet on 3 x 32 x 32 "coloured MNIST".

There is no CIFAR-10 on the machines these benchmarks were written on, and the cost of an attack
step depends on the network and the image shape, not on what the pixels show. So the RGB rows take
MNIST's digits, padded to 32 x 32 and painted with a background and a foreground colour drawn per
image (the colours carry no label), and a `preact-resnet18` of width 8 (176,178 parameters: the
ResNet-18 layout of Wong et al., 2020, at an eighth of its width, BatchNorm in eval mode) trained
on them for one epoch, so that the attacks see real margins and a mid-range robust accuracy rather
than the one-class output of random weights. `--model PATH` and `--data NAME` (benchmarks/attacks.py,
benchmarks/evaluate.py) run the same tables on any redblue model and data set instead, CIFAR-10
included where it is on disk.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from redblue.data import load_dataset
from redblue.models import build_model, save_model
from redblue.models.cifar import PreActResNet18Spec

RGB_EPS = 8 / 255  # the CIFAR-10 L-inf budget of the robustness literature
RGB_SPEC = PreActResNet18Spec(width=8)
TRAIN_IMAGES = 10_000


def coloured(x: Tensor, seed: int) -> Tensor:
    """(N, 1, 28, 28) digits in [0, 1] -> (N, 3, 32, 32): padded by 2, background colour in [0, 0.4]^3 and
    foreground colour in [0.6, 1]^3 per image, from a generator seeded `seed`."""
    generator = torch.Generator().manual_seed(seed)
    n = len(x)
    background = 0.4 * torch.rand(n, 3, 1, 1, generator=generator)
    foreground = 0.6 + 0.4 * torch.rand(n, 3, 1, 1, generator=generator)
    digits = F.pad(x, (2, 2, 2, 2))
    return (background + (foreground - background) * digits).contiguous()


@functools.lru_cache(maxsize=None)
def rgb_images(split: str, n: int) -> tuple[Tensor, Tensor]:
    """The first n images of MNIST's `split`, coloured (seed 0 for test, 1 for train), and their labels."""
    data = load_dataset("mnist", split)
    return coloured(data.x[:n], seed=0 if split == "test" else 1), data.y[:n].clone()


def saved_rgb_resnet(epochs: int = 1, seed: int = 0) -> str:
    """RGB_SPEC trained with Adam (lr 1e-3, batch 128) on the first TRAIN_IMAGES coloured training images,
    saved once to the temporary folder (fresh processes measuring memory load it from there)."""
    path = Path(tempfile.gettempdir()) / f"redblue-bench-rgb-resnet-{os.getuid()}.safetensors"
    if path.exists():
        return str(path)
    x, y = rgb_images("train", TRAIN_IMAGES)
    torch.manual_seed(seed)
    model = build_model(RGB_SPEC)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(y)).split(128):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    save_model(path, model.eval(), RGB_SPEC, record={"benchmark": "coloured MNIST 3x32x32, 1 epoch of Adam"})
    return str(path)


def test_images(data: str | None, rgb: bool, n: int) -> tuple[Tensor, Tensor]:
    """The first n test images the tables run on: --data NAME (any data set redblue loads), else the
    coloured digits with --rgb, else MNIST's."""
    if rgb and data is None:
        return rgb_images("test", n)
    test = load_dataset(data or "mnist", "test")
    return test.x[:n].contiguous(), test.y[:n].contiguous()
