"""The training loop's running loss and accuracy over an epoch, kept on the device without a kernel
per batch (`RunningTotals`): the loop reads them once per epoch, one device sync."""

from __future__ import annotations

import torch
from torch import Tensor


class RunningTotals:
    """An epoch's running loss sum (float64) and correct count, on the device, at no kernel per batch.

    `add` holds each batch's (detached) mean loss, logits and labels; `fold` adds what is held to
    `loss_sum` and `n_correct` in a handful of ops (a stack and a sum for the losses, a cat, an
    argmax, a comparison and a sum for the correct count), whatever the number of batches held.
    Summed per batch these were six kernels a batch, a fifth of the 28 a plain loop launches for
    the paper's MLP (a GPU runs such a model at launch speed: the ops, not the FLOPs, set the time).
    A batch of another size than `batch_size` (an epoch's last) goes into `loss_sum` at once. The
    logits held are views of the objective's outputs, which nothing writes to afterwards.
    """

    def __init__(self, device: torch.device, *, batch_size: int) -> None:
        self.batch_size = batch_size
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.n_correct = torch.zeros((), dtype=torch.long, device=device)
        self._losses: list[Tensor] = []  # means of full batches: their sum times batch_size
        self._logits: list[Tensor] = []  # (batch, classes) each
        self._labels: list[Tensor] = []

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        if len(y) == self.batch_size:
            self._losses.append(loss.detach())
        else:
            self.loss_sum.add_(loss.detach(), alpha=len(y))
        self._logits.append(logits.detach())
        self._labels.append(y)

    @torch.no_grad()
    def fold(self) -> None:
        if self._losses:
            self.loss_sum.add_(torch.stack(self._losses).sum(dtype=torch.float64), alpha=self.batch_size)
        if self._logits:
            predicted = torch.cat(self._logits).argmax(dim=1)
            self.n_correct += (predicted == torch.cat(self._labels)).sum()
        self._losses, self._logits, self._labels = [], [], []
