"""Training-time data augmentation on a batch tensor: random crops and horizontal flips, seeded.

The CIFAR recipes of the robustness literature (Madry et al., 2018; Rice et al., 2020; Wong et al.,
2020, whose `fast_adversarial` code uses torchvision's `RandomCrop(32, padding=4)` and
`RandomHorizontalFlip()`) train on images shifted by up to 4 pixels and mirrored at random; without
it a PreAct ResNet-18 overfits CIFAR-10 within a few epochs. The same transforms, applied here to
the whole batch at once on its device (one gather, no per-image Python loop, no DataLoader):

| name | what each training image gets |
|---|---|
| `crop-flip` | `crop`, then `flip` (the CIFAR recipe) |
| `crop` | zero-padded by `pad` pixels on each side, then a random H x W window: a shift of -pad..pad pixels per axis, drawn uniformly per image |
| `flip` | mirrored left-right with probability 1/2 |

Validation and test images are never augmented. Draws come from the run's own generator
(`redblue.train.state.Generators.augment`), so a seed gives the same batches and a resumed run
continues the stream. Digits are not mirror-symmetric: `flip` is for natural images, not MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from redblue.errors import ConfigError

AUGMENTATIONS = ("crop-flip", "crop", "flip")
DEFAULT_PAD = 4  # pixels, torchvision's RandomCrop(32, padding=4) of the CIFAR recipes


@dataclass(frozen=True)
class Augmentation:
    """`crop` and `flip` switched on or off; `pad`: the crop's zero padding (its largest shift) in pixels."""

    crop: bool
    flip: bool
    pad: int = DEFAULT_PAD

    @property
    def name(self) -> str:
        return "-".join(part for part, on in (("crop", self.crop), ("flip", self.flip)) if on)


def parse_augmentation(text: str) -> Augmentation:
    """`crop-flip`, `crop`, `flip`, optionally with the crop's padding (`crop-flip:pad=2`)."""
    name, _, rest = text.strip().partition(":")
    if name not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENTATIONS)} (or leave it off)")
    pad = DEFAULT_PAD
    if rest:
        key, _, value = rest.partition("=")
        if key.strip() != "pad" or "crop" not in name:
            raise ConfigError(f"{name} takes no parameter {rest!r}" + ("; crop takes pad=N" if "crop" in name else ""))
        try:
            pad = int(value)
        except ValueError:
            raise ConfigError(f"pad must be a whole number of pixels, got {value!r}") from None
        if pad < 1:
            raise ConfigError(f"pad must be at least 1 pixel, got {pad}")
    return Augmentation(crop="crop" in name, flip="flip" in name, pad=pad)


def shifted_crops(x: Tensor, shift_y: Tensor, shift_x: Tensor, pad: int) -> Tensor:
    """Each image of x (N, C, H, W) zero-padded by `pad` and cut back to H x W at offset
    (pad + shift_y[i], pad + shift_x[i]) of the padded image: shifts in -pad..pad, int64 (N,)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (shift_y + pad).view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = (shift_x + pad).view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)
    flat = padded.flatten(2)  # (N, C, (H + 2 pad) (W + 2 pad))
    index = (rows * (w + 2 * pad) + cols).expand(n, c, h, w).reshape(n, c, h * w)
    return flat.gather(2, index).view(n, c, h, w)


def augment_batch(x: Tensor, augmentation: Augmentation, generator: torch.Generator) -> Tensor:
    """A new batch: x (N, C, H, W) with each image cropped and/or flipped at random (see the module)."""
    if x.dim() != 4:
        raise ConfigError(f"augmentation needs images (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
    n = len(x)
    if augmentation.crop:
        shifts = torch.randint(-augmentation.pad, augmentation.pad + 1, (2, n), generator=generator, device=generator.device)
        shifts = shifts.to(x.device)
        x = shifted_crops(x, shifts[0], shifts[1], augmentation.pad)
    if augmentation.flip:
        mirror = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device)
        x = torch.where(mirror.view(n, 1, 1, 1), x.flip(3), x)
    return x
