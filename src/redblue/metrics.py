"""Metrics of a classifier on a dataset: accuracy, confidence (mean top softmax probability), robust masks.

Tensors stay on their device through the loops over batches; there is one sync per result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from redblue.attacks.core import eval_mode

DEFAULT_BATCH = 1024


def batches(*tensors: Tensor, size: int = DEFAULT_BATCH) -> Iterator[tuple[Tensor, ...]]:
    """Consecutive slices of equal-length tensors (views, no copies)."""
    n = len(tensors[0])
    for start in range(0, n, size):
        yield tuple(t[start : start + size] for t in tensors)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, *, batch_size: int = DEFAULT_BATCH) -> Tensor:
    """Logits (N, classes) of the model in eval mode; the model's mode is restored."""
    with eval_mode(model):
        return torch.cat([model(xb) for (xb,) in batches(x, size=batch_size)])


@dataclass(frozen=True)
class Scores:
    """Accuracy (fraction correct) and confidence (mean top softmax probability) on one set of images."""

    accuracy: float
    confidence: float
    n: int


def correct_and_confidence(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample correctness (bool, N) and top softmax probability (N,)."""
    probs = logits.softmax(dim=1)
    top_prob, predicted = probs.max(dim=1)
    return predicted == y, top_prob


@torch.no_grad()
def score(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = DEFAULT_BATCH) -> Scores:
    """Accuracy and confidence of `model` on (x, y), the paper's two numbers."""
    n_correct = torch.zeros((), dtype=torch.long, device=x.device)
    confidence_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    with eval_mode(model):
        for xb, yb in batches(x, y, size=batch_size):
            is_correct, top_prob = correct_and_confidence(model(xb), yb)
            n_correct += is_correct.sum()
            confidence_sum += top_prob.double().sum()
    n = len(y)
    return Scores(accuracy=n_correct.item() / n, confidence=confidence_sum.item() / n, n=n)
