"""One training step of a stacked grid of MLPs: each member's batch, dropout masks, loss, gradients and update.

`GridStep` runs the operations `redblue.train.train` runs for one model (forward, cross-entropy,
backward, the penalty gradient, the RMSProp update), for all members at once on a
`redblue.train.grid.model.StackedMLP`. Each weight is updated as soon as its gradient is known and the
gradient flowing through it has been taken; on the CPU the weight gradient and its update run
member by member (in blocks of rows for large layers), with the single-model loop's exact
operations and scalars. `SeedStreams` holds the random streams of the
members that share a seed (data order and dropout), drawn as the single-model loop draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from redblue.train.config import TrainConfig
from redblue.train.grid.model import Layer, StackedMLP, ce_backward, linear_forward, relu_backward


class SeedStreams:
    """The random streams of one seed group (the members that share a seed): data order and dropout."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.shuffle = torch.Generator().manual_seed(seed)
        self.dropout = Generator(device=device).manual_seed(seed + 2)

    def mask(self, like: Tensor, p: float) -> Tensor:
        """F.dropout's scaled noise for `like`'s shape: bernoulli(1 - p) / (1 - p), one draw of the stream."""
        if p == 1.0:
            return torch.zeros_like(like)
        return torch.empty_like(like).bernoulli_(1.0 - p, generator=self.dropout).div_(1.0 - p)


def by_member(per_group: list[Tensor], member_group: Tensor, groups: int) -> Tensor:
    """(M, ...) from one tensor per seed group: an expanded view when all members share one group."""
    if groups == 1:
        return per_group[0].unsqueeze(0).expand(len(member_group), *per_group[0].shape)
    return torch.stack(per_group).index_select(0, member_group)


def _dropout_forward(a: Tensor, p: float, streams: list[SeedStreams], member_group: Tensor) -> tuple[Tensor, Tensor | None]:
    """Member activations a (M, B, F) times each group's dropout mask (B, F); p == 0 draws nothing, like F.dropout."""
    if p == 0.0:
        return a, None
    masks = by_member([s.mask(a[0], p) for s in streams], member_group, len(streams))
    return a * masks, masks


@dataclass
class _Optimiser:
    """The optimiser arithmetic of NewmuRMSprop (eps inside the square root) or torch's RMSprop, per block.

    `step_block` runs the single-model loop's operations on one block of one member's weight:
    the penalty gradient first (`add_penalty_gradient_`), then the optimiser's foreach ops.
    """

    lr: float
    rho: float
    eps: float
    newmu: bool

    @torch.no_grad()
    def step_block(self, p: Tensor, grad: Tensor, mean_square: Tensor, scratch: Tensor, *, l1: Any, l2: Any) -> None:
        """p, grad, mean_square, scratch: one shape. l1, l2: floats (a member's block) or (M, 1, ...) tensors."""
        if isinstance(l1, Tensor):
            grad.addcmul_(torch.sign(p), l1).addcmul_(p, 2.0 * l2)
        else:
            if l1:
                torch.sign(p, out=scratch)
                grad.add_(scratch, alpha=l1)
            if l2:
                grad.add_(p, alpha=2.0 * l2)
        mean_square.mul_(self.rho)
        mean_square.addcmul_(grad, grad, value=1.0 - self.rho)
        if self.newmu:
            torch.add(mean_square, self.eps, out=scratch)
            scratch.sqrt_()
        else:
            torch.sqrt(mean_square, out=scratch)
            scratch.add_(self.eps)
        p.addcdiv_(grad, scratch, value=-self.lr)


@dataclass(frozen=True)
class _Block:
    """Rows start:stop of one member's weight: views of the weight, its optimiser state and the buffers."""

    member: int
    start: int
    stop: int
    weight: Tensor
    state: Tensor
    grad: Tensor
    scratch: Tensor
    l1: float
    l2: float


class GridStep:
    """One training step of the stacked model: forward, loss, backward with each weight updated as
    soon as its gradient is known (after the gradient that flows through it has been taken)."""

    def __init__(self, stack: StackedMLP, configs: Sequence[TrainConfig], *, newmu: bool, block_elements: int | None) -> None:
        first = configs[0]
        device = stack.weights[0].device
        self.stack = stack
        self.optimiser = _Optimiser(first.lr, first.rho, first.rms_eps, newmu)
        self.state = [torch.zeros_like(p) for p in stack.parameters()]
        self.l1 = [c.l1 for c in configs]
        self.l2 = [c.l2 for c in configs]
        self.penalize_bias = first.penalize_bias
        self.block_elements = block_elements
        shape = (stack.members,) + (1, 1)
        self.l1_tensor = torch.tensor(self.l1, dtype=stack.weights[0].dtype, device=device).view(shape)
        self.l2_tensor = torch.tensor(self.l2, dtype=stack.weights[0].dtype, device=device).view(shape)
        self.blocks = [self._blocks(k) for k in range(len(stack.weights))] if block_elements is not None else []

    def _blocks(self, k: int) -> list[_Block]:
        """Weight k cut into blocks of whole rows, about block_elements each, never across two members;
        the views are made once, and the gradient and scratch buffers are shared by all blocks."""
        assert self.block_elements is not None
        weight, state = self.stack.weights[k], self.state[k]
        rows, cols = weight.shape[1:]
        block = max(1, min(rows, self.block_elements // cols))
        grad_buffer = torch.empty(block, cols, dtype=weight.dtype, device=weight.device)
        scratch = torch.empty_like(grad_buffer)
        blocks = []
        for m in range(self.stack.members):
            for start in range(0, rows, block):
                stop = min(rows, start + block)
                blocks.append(
                    _Block(m, start, stop, weight[m, start:stop], state[m, start:stop], grad_buffer[: stop - start],
                           scratch[: stop - start], self.l1[m], self.l2[m])
                )
        return blocks

    def _update_weight(self, k: int, grad_out: Tensor, a_in: Tensor) -> None:
        """Weight k's gradient (member m: grad_out[m]^T a_in[m]) and its update, block by block."""
        if self.block_elements is None:  # the whole stack at once: fewest kernel launches (CUDA)
            grad = torch.bmm(grad_out.transpose(1, 2), a_in)
            weight, state = self.stack.weights[k], self.state[k]
            self.optimiser.step_block(weight, grad, state, torch.empty_like(grad), l1=self.l1_tensor, l2=self.l2_tensor)
            return
        grad_rows, inputs = grad_out.unbind(0), a_in.unbind(0)
        for block in self.blocks[k]:
            torch.mm(grad_rows[block.member][:, block.start : block.stop].t(), inputs[block.member], out=block.grad)
            self.optimiser.step_block(block.weight, block.grad, block.state, block.scratch, l1=block.l1, l2=block.l2)

    def _update_bias(self, k: int, grad_out: Tensor) -> None:
        bias = self.stack.biases[k]
        assert bias is not None
        state = self.state[len(self.stack.weights) + sum(b is not None for b in self.stack.biases[:k])]
        grad = grad_out.sum(dim=1)  # (M, out)
        penalize = self.penalize_bias
        for m in range(self.stack.members):
            self.optimiser.step_block(
                bias[m], grad[m], state[m], torch.empty_like(grad[m]),
                l1=self.l1[m] if penalize else 0.0, l2=self.l2[m] if penalize else 0.0,
            )

    def __call__(self, inputs: Tensor, y: Tensor, streams: list[SeedStreams], member_group: Tensor) -> tuple[Tensor, Tensor]:
        """inputs (M, B, in): each member's batch after the shared layers; y (M, B). Returns (loss (M,), logits (M, B, C))."""
        stack = self.stack
        body = stack.plan[stack.first_linear():]
        saved: list[Tensor | None] = []
        a = inputs
        for layer in body:
            if layer.kind == "linear":
                saved.append(a)
                a = linear_forward(a, stack.weights[layer.linear], stack.biases[layer.linear])
            elif layer.kind == "relu":
                a = a.relu_()  # the fresh output of the layer before: nothing else holds it
                saved.append(a)
            elif layer.kind == "dropout":
                a, mask = _dropout_forward(a, layer.p, streams, member_group)
                saved.append(mask)
            else:
                saved.append(None)
        logits = a
        logp, grad = ce_backward(logits, y, mean=True)
        # each member's loss by the call F.cross_entropy makes, so the history is that of one model
        loss = torch.stack([F.nll_loss(logp[m], y[m]) for m in range(stack.members)])
        with torch.no_grad():
            for layer, kept in zip(reversed(body), reversed(saved)):
                grad = self._backward(layer, kept, grad)
        return loss.detach(), logits.detach()

    def _backward(self, layer: Layer, kept: Tensor | None, grad: Tensor) -> Tensor:
        if layer.kind == "relu":
            assert kept is not None
            return relu_backward(grad, kept)
        if layer.kind == "dropout":
            return grad if kept is None else grad.mul_(kept)  # grad is a fresh tensor
        if layer.kind == "linear":
            assert kept is not None
            k = layer.linear
            grad_in = torch.bmm(grad, self.stack.weights[k]) if k > 0 else grad  # before the weight changes
            self._update_weight(k, grad, kept)
            if self.stack.biases[k] is not None:
                self._update_bias(k, grad)
            return grad_in
        return grad


def shared_inputs(x: Tensor, index: Tensor, prefix: list[Layer], streams: SeedStreams) -> Tensor:
    """One seed group's batch through the layers before the first Linear (flatten, dropout)."""
    xb = x[index]
    for layer in prefix:
        if layer.kind == "flatten":
            xb = xb.flatten(1)
        elif layer.kind == "dropout" and layer.p > 0.0:
            xb = xb * streams.mask(xb, layer.p)
    return xb
