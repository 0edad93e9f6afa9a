"""CIFAR-scale classifiers (PreAct ResNet-18, CNN-7), with the per-channel statistics that their
`normalize=` option puts inside the model as a `Normalize` layer (`redblue.models.layers`).

Both read pixels in [0, 1] of shape (N, C, H, W) and return logits (N, classes); with
`normalize=cifar10` (or cifar100) their first layer is `Normalize`, (x - mean) / std per channel,
so attacks and eps stay in pixel units. Parameter counts at 3 x 32 x 32 and 10 classes (tested):

| name              | layers                                                                 | parameters |
|-------------------|------------------------------------------------------------------------|-----------:|
| `preact-resnet18` | pre-activation ResNet-18 (He et al., 2016), as Wong et al. (2020) train | 11,172,170 |
| `cnn-7`           | conv 64, 64, 128 s2, 128, 128 (3x3, BN, ReLU) -> 512 (BN, ReLU) -> 10    | 17,192,650 |

`cnn-7` is the CNN-7 of certified training (Shi et al., 2021, "Fast certified robust training with
short warmup"; their code's `cnn_7layer_bn2` in models/feedforward.py): an `nn.Sequential`, so the
certified bounds read it, BatchNorm folded in eval mode. `preact-resnet18` has residual blocks,
which the bounds do not pass: it gets empirical (attack) numbers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from redblue.errors import ConfigError, require_choice, require_positive
from redblue.models.layers import CIFAR10_MEAN, CIFAR10_STD, Normalize

# per-channel statistics of the training split, as Wong et al. (2020, fast_adversarial) normalise CIFAR-10
# and as is common for CIFAR-100
STATISTICS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NORMALIZATIONS = ("none", *STATISTICS)


def _check_image(spec: PreActResNet18Spec | CNN7Spec) -> None:
    for name in ("in_channels", "image_size", "classes"):
        require_positive(name, getattr(spec, name))
    require_choice("normalize", spec.normalize, NORMALIZATIONS)
    if spec.normalize != "none" and spec.in_channels != 3:
        raise ConfigError(f"normalize={spec.normalize} holds 3 channels' statistics but in_channels is {spec.in_channels}")


def _normalized(spec: PreActResNet18Spec | CNN7Spec, layers: list[nn.Module]) -> list[nn.Module]:
    return layers if spec.normalize == "none" else [Normalize(*STATISTICS[spec.normalize]), *layers]


@dataclass(frozen=True)
class PreActResNet18Spec:
    """Pre-activation ResNet-18 (He et al., 2016, "Identity mappings in deep residual networks"), the
    network of Wong et al. (2020, "Fast is better than free") and Rice et al. (2020): a 3x3 conv of
    `width` channels, four stages of two pre-activation blocks (width, 2, 4, 8 x width; strides 1, 2,
    2, 2; 1x1 projection shortcuts where the shape changes), BN + ReLU, global average pooling,
    Linear(classes). Convolutions have no bias. Their 4x4 average pool is the global pool here, the
    same on 32 x 32 and defined on any size."""

    classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    width: int = 64
    normalize: str = "none"

    def __post_init__(self) -> None:
        require_positive("width", self.width)
        _check_image(self)


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv 3x3 (stride) -> BN -> ReLU -> conv 3x3, plus the shortcut: the identity, or a
    1x1 conv of the first activation where stride or width change (as Wong et al.'s code)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if stride != 1 or in_planes != planes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


def build_preact_resnet18(spec: PreActResNet18Spec) -> nn.Sequential:
    width, stages = spec.width, []
    in_planes = width
    for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
        stages += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
        in_planes = planes
    layers = [
        nn.Conv2d(spec.in_channels, width, 3, stride=1, padding=1, bias=False),
        *stages,
        nn.BatchNorm2d(in_planes),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(in_planes, spec.classes),
    ]
    return nn.Sequential(*_normalized(spec, layers))


@dataclass(frozen=True)
class CNN7Spec:
    """CNN-7 of Shi et al. (2021): Conv(width) -> Conv(width) -> Conv(2 width, stride 2) -> Conv(2 width)
    -> Conv(2 width), all 3x3 with padding 1 and each followed by BatchNorm and ReLU, then
    Linear(linear_size) -> BatchNorm1d -> ReLU -> Linear(classes).

    batch_norm=false drops every BatchNorm (their `cnn_7layer`): certified training (ibp,
    crown-ibp) needs that, since BatchNorm in train mode normalises with each batch's statistics,
    which the bounds do not model; a BatchNorm model certifies in eval mode only."""

    width: int = 64
    linear_size: int = 512
    classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    batch_norm: bool = True
    normalize: str = "none"

    def __post_init__(self) -> None:
        for name in ("width", "linear_size"):
            require_positive(name, getattr(self, name))
        _check_image(self)


def build_cnn7(spec: CNN7Spec) -> nn.Sequential:
    def block(in_planes: int, planes: int, stride: int) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(planes)] if spec.batch_norm else []
        return [nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1), *norm, nn.ReLU()]

    width, side = spec.width, (spec.image_size - 1) // 2 + 1  # one 3x3 stride-2 pad-1 conv: 32 -> 16
    layers = [
        *block(spec.in_channels, width, 1),
        *block(width, width, 1),
        *block(width, 2 * width, 2),
        *block(2 * width, 2 * width, 1),
        *block(2 * width, 2 * width, 1),
        nn.Flatten(),
        nn.Linear(2 * width * side * side, spec.linear_size),
        *([nn.BatchNorm1d(spec.linear_size)] if spec.batch_norm else []),
        nn.ReLU(),
        nn.Linear(spec.linear_size, spec.classes),
    ]
    return nn.Sequential(*_normalized(spec, layers))
