"""Metrics of a classifier on a dataset: accuracy, confidence (mean top softmax probability), margins,
and the per-sample worst case over attacks.

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


def true_class_margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j per sample, in float64: > 0 exactly when the sample is classified correctly
    (ties aside). logits: (N, classes); y: (N,) -> (N,)."""
    logits = logits.double()
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    return true_logit - logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


@dataclass(frozen=True, eq=False)  # eq=False: == on tensors is elementwise, not a bool
class WorstCase:
    """The per-sample worst case over the attacks seen so far at one eps, all (n,) on one device.

    fooled: some valid adversarial image (or the clean image) is misclassified; margin: the lowest
    true-class margin (float64) of any valid image seen, clean included; top_prob: the top softmax
    probability of that worst image. A sample's worst image is a fooling one if any exists, else the
    one with the lowest margin.
    """

    fooled: Tensor
    margin: Tensor
    top_prob: Tensor

    @classmethod
    def clean(cls, correct: Tensor, margin: Tensor, top_prob: Tensor) -> WorstCase:
        """Before any attack: the clean image is each sample's worst; misclassified samples count as fooled."""
        return cls(fooled=~correct, margin=margin.clone(), top_prob=top_prob.clone())

    @property
    def robust(self) -> Tensor:
        return ~self.fooled

    def update(self, indices: Tensor, *, fooled: Tensor, valid: Tensor, margin: Tensor, top_prob: Tensor) -> WorstCase:
        """The worst case after one more attack on samples `indices` (its per-sample results, one per index);
        invalid images never count. Returns a new WorstCase; this one is left as it was."""
        cur_fooled, cur_margin = self.fooled[indices], self.margin[indices]
        better = valid & ((fooled & ~cur_fooled) | ((fooled == cur_fooled) & (margin < cur_margin)))
        new_fooled, new_margin, new_top = self.fooled.clone(), self.margin.clone(), self.top_prob.clone()
        new_fooled[indices] = cur_fooled | fooled
        new_margin[indices] = torch.where(better, margin, cur_margin)
        new_top[indices] = torch.where(better, top_prob.to(new_top.dtype), self.top_prob[indices])
        return WorstCase(fooled=new_fooled, margin=new_margin, top_prob=new_top)
