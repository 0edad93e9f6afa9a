"""Test helpers for the RGB peer cross-checks: a small residual conv net on "coloured MNIST", 3x32x32.

There is no CIFAR-10 on the test machines, so the RGB images are built from MNIST's pixels
(mlp_fixtures.mnist_slices, with its MnistMissing behaviour): each digit is padded to 32x32 (2 px
each side) and painted with a foreground and a background colour drawn per image from a seeded
generator, so colour carries no label information. Each (seed) model is trained once per test process.
"""

from __future__ import annotations

import functools

import torch
from mlp_fixtures import N_TRAIN, mnist_slices
from torch import Tensor, nn


def colour(x: Tensor, *, seed: int) -> Tensor:
    """(N, 1, 28, 28) in [0, 1] -> (N, 3, 32, 32) in [0, 1]: ink * fg + (1 - ink) * bg, colours per image."""
    generator = torch.Generator().manual_seed(seed)
    # dark backgrounds, bright ink: every image keeps some contrast, so the task stays learnable
    foreground = 0.5 + 0.5 * torch.rand(len(x), 3, 1, 1, generator=generator)
    background = 0.5 * torch.rand(len(x), 3, 1, 1, generator=generator)
    ink = nn.functional.pad(x, (2, 2, 2, 2))  # (N, 1, 32, 32)
    return (ink * foreground + (1 - ink) * background).clamp(0.0, 1.0)


class ResidualNet(nn.Module):
    """conv-BN-ReLU stem, one residual block, global average pooling, Linear to 10 classes."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        return self.head(torch.relu(h + self.block(h)))


@functools.lru_cache(maxsize=None)
def trained_rgb(seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """(model in eval mode, x_eval (500, 3, 32, 32), y_eval (500,)); `seed` picks init and batch order."""
    x_train, y_train, x_eval, y_eval = mnist_slices()
    x_train, x_eval = colour(x_train, seed=1), colour(x_eval, seed=2)
    torch.manual_seed(seed)
    model = ResidualNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as mlp_fixtures: a second thread gains little and costs much on a busy machine
    try:
        for _ in range(5):
            for batch in torch.randperm(N_TRAIN, generator=order).split(128):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    for parameter in model.parameters():
        parameter.grad = None
    return model.eval(), x_eval, y_eval
