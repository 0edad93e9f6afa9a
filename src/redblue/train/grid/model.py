"""A grid of same-architecture MLPs held as one stacked model: layer plan, stacked weights, batched forward and backward.

M member models that are copies of one `nn.Sequential` of Linear, ReLU, Dropout and Flatten
layers (e.g. the paper's 784 -> 625 -> 10 MLP) become one model whose Linear weights are
stacked, (M, out, in), so every layer of every member runs as one batched matmul. Activations
are (M, B, features): member m's batch is row m. The backward pass is written out by hand (the
layers are four), so the training loop can update each weight as soon as its gradient exists
and reuse its buffers; every operation is the one autograd runs for a single model, member by
member, which makes member m's numbers those of training it alone (see `redblue.train.grid.loop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from redblue.errors import ModelError

SUPPORTED_LAYERS = (nn.Flatten, nn.Dropout, nn.Linear, nn.ReLU)


@dataclass(frozen=True)
class Layer:
    """One layer of the plan: kind, dropout probability p, and for a Linear its index in the stack."""

    kind: Literal["flatten", "dropout", "linear", "relu"]
    p: float = 0.0
    linear: int = -1


def layer_plan(model: nn.Module) -> list[Layer] | str:
    """The model's layers as a plan, or one line saying why a grid cannot stack it."""
    if not isinstance(model, nn.Sequential):
        return f"the model is a {type(model).__name__}; grid training stacks an nn.Sequential of Linear, ReLU, Dropout and Flatten layers"
    plan: list[Layer] = []
    n_linear = 0
    for layer in model:
        if not isinstance(layer, SUPPORTED_LAYERS) or type(layer) not in SUPPORTED_LAYERS:
            return f"the model has a {type(layer).__name__} layer; grid training supports Linear, ReLU, Dropout and Flatten"
        if isinstance(layer, nn.Flatten):
            if (layer.start_dim, layer.end_dim) != (1, -1):
                return "the model flattens other dimensions than 1..-1; grid training supports nn.Flatten() only"
            plan.append(Layer("flatten"))
        elif isinstance(layer, nn.Dropout):
            plan.append(Layer("dropout", p=float(layer.p)))
        elif isinstance(layer, nn.ReLU):
            if n_linear == 0:
                return "the model has a ReLU before its first Linear layer; grid training does not support that"
            plan.append(Layer("relu"))
        else:
            plan.append(Layer("linear", linear=n_linear))
            n_linear += 1
    if n_linear == 0:
        return "the model has no Linear layer; grid training stacks Linear layers"
    if any(not p.requires_grad for p in model.parameters()):
        return "the model has frozen parameters; grid training trains every parameter"
    if any(True for _ in model.buffers()):
        return "the model has buffers; grid training supports stateless layers only"
    return plan


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [layer for layer in model if isinstance(layer, nn.Linear)]


class StackedMLP:
    """M copies of one layer plan with their own weights: weights[k] (M, out, in), biases[k] (M, out) or None.

    Build it with `from_models`; `write_to` copies member m's weights back into an ordinary module.
    """

    def __init__(self, plan: list[Layer], weights: list[Tensor], biases: list[Tensor | None]) -> None:
        self.plan = plan
        self.weights = weights
        self.biases = biases

    @classmethod
    def from_models(cls, models: Sequence[nn.Module], *, device: torch.device | None = None) -> StackedMLP:
        """Stack the weights of `models` (one architecture) on `device` (default: the first model's)."""
        if not models:
            raise ModelError("a grid needs at least one model")
        plan = layer_plan(models[0])
        if isinstance(plan, str):
            raise ModelError(plan)
        shapes = [[tuple(t.shape) for t in m.state_dict().values()] for m in models]
        if any(s != shapes[0] for s in shapes) or any(layer_plan(m) != plan for m in models[1:]):
            raise ModelError("the models of a grid must share one architecture (layers and shapes)")
        device = device if device is not None else next(models[0].parameters()).device
        per_model = [_linears(m) for m in models]
        weights = [torch.stack([layers[k].weight.detach() for layers in per_model]).to(device) for k in range(len(per_model[0]))]
        biases = [
            torch.stack([layers[k].bias.detach() for layers in per_model]).to(device) if per_model[0][k].bias is not None else None
            for k in range(len(per_model[0]))
        ]
        return cls(plan, weights, biases)

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[Tensor]:
        return [*self.weights, *(b for b in self.biases if b is not None)]

    @torch.no_grad()
    def write_to(self, models: Sequence[nn.Module]) -> None:
        """Copy member m's weights into models[m] (ordinary modules of the same architecture)."""
        for m, model in enumerate(models):
            for k, layer in enumerate(_linears(model)):
                layer.weight.copy_(self.weights[k][m])
                bias = self.biases[k]
                if bias is not None:
                    layer.bias.copy_(bias[m])

    def first_linear(self) -> int:
        """Index in the plan of the first Linear layer; everything before it acts on the shared input."""
        return next(i for i, layer in enumerate(self.plan) if layer.kind == "linear")

    def in_features(self) -> int:
        return self.weights[0].shape[2]


def linear_forward(a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """a (M, B, in) -> (M, B, out), member by member what F.linear computes (mm, or addmm with a bias);
    an expanded `a` (one input for all members) is read without a copy."""
    if bias is None:
        return torch.bmm(a, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), a, weight.transpose(1, 2))


def ce_backward(logits: Tensor, y: Tensor, *, mean: bool) -> tuple[Tensor, Tensor]:
    """Log-probabilities and d(cross-entropy)/d logits per member, by the kernels autograd runs.

    logits (M, B, C); y (M, B) labels. mean: the gradient of each member's mean loss over its
    batch (training); else of the summed loss (FGSM). The same aten backward kernels as
    `F.cross_entropy(...).backward()` on one member, so the numbers are those of one model.
    """
    members, batch, classes = logits.shape
    logp = logits.log_softmax(dim=2)
    flat_logp, flat_y = logp.reshape(members * batch, classes), y.reshape(members * batch)
    one = torch.ones((), dtype=logp.dtype, device=logp.device)
    total_weight = torch.full((), float(batch if mean else 1), dtype=logp.dtype, device=logp.device)
    grad_logp = torch.ops.aten.nll_loss_backward(one, flat_logp, flat_y, None, 1, -100, total_weight)
    grad = torch.ops.aten._log_softmax_backward_data(grad_logp, flat_logp, 1, logp.dtype)
    return logp, grad.view(members, batch, classes)


def relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """ReLU's backward as autograd runs it (threshold_backward on the output)."""
    return torch.ops.aten.threshold_backward(grad, output, 0)
