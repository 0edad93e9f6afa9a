"""Score a grid of same-architecture models at once: clean and FGSM accuracy and confidence at every eps.

`fgsm_grid_scores` is `redblue.reproduce`'s per-model `fgsm_scores` for M models in one batched
pass (`redblue.train.grid.model`): each model's own FGSM direction sign(grad_x CE) is taken at the clean
x once per batch and reused for every (eps, clip) setting, and each model is scored on its own
images. The operations are those autograd runs for one model (the same images and logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from redblue.attacks.core import check_eps
from redblue.errors import AttackError, ModelError
from redblue.metrics import DEFAULT_BATCH, batches
from redblue.train.grid.model import StackedMLP, ce_backward, linear_forward, relu_backward


@dataclass(frozen=True)
class GridScore:
    """One model's accuracy and mean top-softmax confidence on the FGSM images of one setting."""

    eps: float
    clip: bool
    accuracy: float
    confidence: float


def _forward(stack: StackedMLP, a: Tensor, start: int) -> tuple[Tensor, list[Tensor | None]]:
    """Eval-mode forward of member inputs a (M, B, in) through the plan from layer `start`; returns
    the logits (M, B, C) and what the input gradient's backward needs (ReLU outputs, Linear inputs)."""
    saved: list[Tensor | None] = []
    for layer in stack.plan[start:]:
        if layer.kind == "linear":
            saved.append(None)
            a = linear_forward(a, stack.weights[layer.linear], stack.biases[layer.linear])
        elif layer.kind == "relu":
            a = a.relu_()
            saved.append(a)
        else:  # dropout is the identity in eval mode; flatten is one after the first Linear
            saved.append(None)
    return a, saved


def _input_gradient(stack: StackedMLP, saved: list[Tensor | None], grad: Tensor, start: int) -> Tensor:
    """d(loss)/d(input) (M, B, in) from d(loss)/d(logits) (M, B, C), back through the plan to layer `start`."""
    for layer, kept in zip(reversed(stack.plan[start:]), reversed(saved)):
        if layer.kind == "linear":
            grad = torch.bmm(grad, stack.weights[layer.linear])
        elif layer.kind == "relu":
            assert kept is not None
            grad = relu_backward(grad, kept)
    return grad


@torch.no_grad()
def fgsm_grid_scores(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    settings: Sequence[tuple[float, bool]],
    *,
    batch_size: int = DEFAULT_BATCH,
) -> list[list[GridScore]]:
    """Per model, accuracy and confidence on FGSM images `x + eps * sign(grad_x CE)` for each (eps, clip).

    models: M models of one architecture (`redblue.train.grid.model.layer_plan`: an nn.Sequential of
    Linear, ReLU, Dropout, Flatten), scored in eval mode; x: (N, ...) pixels in [0, 1] on the
    models' device; y: (N,) labels. eps 0 scores the clean images. Returns scores[m][s] for model m
    and settings[s]. The gradient is checked once at the end: a NaN or infinite one raises AttackError.
    """
    for eps, _ in settings:
        check_eps(eps, "linf")
    stack = StackedMLP.from_models(models, device=x.device)
    start = stack.first_linear()
    flattened = any(layer.kind == "flatten" for layer in stack.plan[:start])
    if (x.dim() != 2 and not flattened) or (x[0].numel() if flattened else x.shape[-1]) != stack.in_features():
        raise ModelError(f"the models take {stack.in_features()} input features but x has shape {tuple(x.shape)}")
    members, n_settings = stack.members, len(settings)
    n_correct = torch.zeros(members, n_settings, dtype=torch.long, device=x.device)
    confidence_sum = torch.zeros(members, n_settings, dtype=torch.float64, device=x.device)
    grad_finite = torch.ones(members, dtype=torch.bool, device=x.device)
    for xb, yb in batches(x, y, size=batch_size):
        flat = xb.flatten(1) if flattened else xb
        clean = flat.unsqueeze(0).expand(members, *flat.shape)  # (M, B, in): one input, read without a copy
        labels = yb.unsqueeze(0).expand(members, len(yb))
        logits, saved = _forward(stack, clean, start)
        _, grad_logits = ce_backward(logits, labels, mean=False)  # the summed loss, as loss_and_input_gradient
        grad = _input_gradient(stack, saved, grad_logits, start)
        grad_finite &= torch.isfinite(grad).flatten(1).all(dim=1)
        direction = grad.sign_()
        for s, (eps, clip) in enumerate(settings):
            if eps == 0:
                adv_logits = logits  # x + 0 * direction is x, bit for bit
            else:
                x_adv = clean + eps * direction
                adv_logits, _ = _forward(stack, x_adv.clamp_(0.0, 1.0) if clip else x_adv, start)
            probs = adv_logits.softmax(dim=2)
            top_prob, predicted = probs.max(dim=2)
            n_correct[:, s] += (predicted == labels).sum(dim=1)
            confidence_sum[:, s] += top_prob.double().sum(dim=1)
    if not bool(grad_finite.all()):
        bad = [m for m, ok in enumerate(grad_finite.tolist()) if not ok]
        raise AttackError(f"the input gradient of model(s) {bad} is NaN or infinite; check those models before attacking them")
    n = len(y)
    accuracy, confidence = (n_correct.double() / n).tolist(), (confidence_sum / n).tolist()
    return [
        [GridScore(eps, clip, accuracy[m][s], confidence[m][s]) for s, (eps, clip) in enumerate(settings)]
        for m in range(members)
    ]
