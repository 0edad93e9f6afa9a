"""Checks of the data a training run is given, before any step: shared by `train` and the grid trainer.

Each raises a one-line RedblueError that says what is wrong and what to pass instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from redblue.errors import ConfigError, ModelError


def check_training_data(x: Tensor, y: Tensor) -> None:
    """x: (N, ...) images, y: (N,) int64 labels on the same device, N >= 1."""
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ConfigError(f"x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; pass one label per image")
    if len(x) == 0:
        raise ConfigError("the training set is empty; pass at least one image")
    if y.dtype != torch.long:
        raise ConfigError(f"labels must be int64 class indices, got {y.dtype}")
    if y.device != x.device:
        raise ConfigError(f"the images are on {x.device} but the labels on {y.device}; move both to one device")


def check_model_fits(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """The model has parameters on the data's device, reads the images, and outputs a score for every label.

    Runs one image through the model in eval mode without gradients (no dropout, no random draw:
    the run's random streams are untouched) and reads the labels' range once.
    """
    param = next(model.parameters(), None)
    if param is None:
        raise ModelError("the model has no parameters to train")
    if param.device != x.device:
        raise ModelError(f"the model is on {param.device} but the data on {x.device}; move both to one device")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x[:1])
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the model cannot read images of shape {tuple(x.shape[1:])} ({reason})") from None
    finally:
        model.train(was_training)
    low, high = torch.stack(torch.aminmax(y)).tolist()
    if logits.dim() != 2 or low < 0 or high >= logits.shape[1]:
        raise ConfigError(
            f"labels run from {low} to {high} but the model outputs {tuple(logits.shape[1:])} scores per image; "
            "it needs one score per class (logits of shape (N, classes)) and labels 0..classes-1"
        )
