"""Layers a user's model needs to meet redblue's contract; today `Normalize`, the (x - mean) / std first layer.

A redblue model reads pixels in [0, 1]: a network trained on standardised inputs gets its
standardisation as its first layer, `nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD), net)`,
so attacks and eps stay in pixel units. The certified bounds (`redblue.bounds`) read this layer
as the elementwise affine map it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from redblue.errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)  # as Wong et al. (2020, fast_adversarial)


class Normalize(nn.Module):
    """x -> (x - mean) / std per channel; x: (N, C, H, W) in [0, 1], mean and std: C values each.

    mean and std are buffers that move with the model but are not in its state_dict
    (persistent=False): a weights file holds the network's tensors only, and the statistics are part
    of the code that builds the model.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ConfigError(f"Normalize needs one mean and one std per channel, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"Normalize std must be > 0 for every channel, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={tuple(round(v, 4) for v in self.mean.flatten().tolist())}, std={tuple(round(v, 4) for v in self.std.flatten().tolist())}"
