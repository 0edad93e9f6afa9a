"""Certificates of robustness under an L-inf box: a sample is certified when every margin z_y - z_j
has a sound lower bound > 0 over the clipped eps-ball, by IBP (Gowal et al., 2018), CROWN
(Zhang et al., 2018) or CROWN-IBP (Zhang et al., 2020); see `redblue.bounds` for the methods.

The threat model is the L-inf ball of radius eps around x, in pixel units, clipped to valid
pixels: [max(x - eps, 0), min(x + eps, 1)]. Sound under floating point: bounds are computed in
float64 from the model's weights (exact for float32 weights) and widened outward by the proven
rounding allowance of `redblue.bounds.rounding`, so a certificate holds for the network computed
in exact arithmetic. The allowance is about 1e-12 relative: it changes no certificate a margin
wider than rounding would have earned.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from redblue.attacks.core import check_eps, check_inputs, eval_mode
from redblue.bounds import METHODS, Chain, classical, input_box, interval_step, linearize, margin_bounds, outward_box
from redblue.bounds.network import MaxPool2d
from redblue.errors import ConfigError, ModelError, require_choice, require_positive
from redblue.metrics import batches

__all__ = ["METHODS", "certified_accuracy", "certify", "choose_method", "input_box", "interval_bounds", "margin_lower_bounds"]

Method = Literal["ibp", "crown", "crown-ibp"]
DEFAULT_BATCH = 256


def choose_method(model: nn.Module) -> str:
    """The certification method for a model: "crown" for fully connected nets (0.5 s per 1000 MNIST
    images for the paper's MLP); "crown-ibp" once there is a convolution, where full CROWN's
    backward pass per unstable neuron costs minutes per 1000 images on a CPU (measured: 600-3800 s
    for a small MNIST CNN); "ibp" with max-pooling, which the CROWN methods do not pass."""
    modules = list(model.modules())
    if any(isinstance(m, nn.MaxPool2d) for m in modules):
        return "ibp"
    return "crown-ibp" if any(isinstance(m, nn.Conv2d) for m in modules) else "crown"


def _check_request(model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str, batch_size: int) -> Chain:
    check_inputs(x, y)
    check_eps(eps, "linf")
    require_choice("method", method, METHODS)
    require_positive("batch_size", batch_size)
    ops = linearize(model, x, dtype=torch.float64)
    classes = ops[-1].out_shape[0]
    if y.dtype not in (torch.int64, torch.int32) or bool(((y < 0) | (y >= classes)).any()):
        raise ConfigError(f"labels must be integers in [0, {classes}); check y against the model's {classes} classes")
    if method != "ibp" and any(isinstance(op, MaxPool2d) for op in ops):
        name = next(op.name for op in ops if isinstance(op, MaxPool2d))
        raise ModelError(f"method {method} has no relaxation for the max-pooling layer {name!r}; use method ibp")
    return ops


@torch.no_grad()
def interval_bounds(model: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Sound IBP bounds (lower_logits, upper_logits), each (N, classes) in float64, over a box.

    lower, upper: (N, *input_shape) with lower <= upper elementwise (any real values; the
    [0, 1] clipping is the caller's, see `input_box`). The model runs in eval mode and is restored.
    """
    if lower.shape != upper.shape:
        raise ConfigError(f"lower has shape {tuple(lower.shape)} but upper has {tuple(upper.shape)}; pass one box")
    if bool((lower > upper).any()):
        raise ConfigError("lower must be <= upper everywhere; swap or fix the box")
    with eval_mode(model), classical(lower.device):
        ops = linearize(model, lower, dtype=torch.float64)
        lower, upper = lower.to(torch.float64), upper.to(torch.float64)
        for op in ops:
            lower, upper = interval_step(op, lower, upper, sound=True)
    return lower, upper


def _sound_margins(ops: Chain, x: Tensor, y: Tensor, eps: float, method: str) -> Tensor:
    """Sound lower bounds (N, classes) in float64 on z_y - z_j over the clipped ball; column y is +inf."""
    bounds = margin_bounds(ops, *outward_box(x, eps), y, method=method, sound=True)
    return bounds.spread(bounds.certified(), fill=float("inf"))


@torch.no_grad()
def margin_lower_bounds(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, method: Method = "crown", batch_size: int = DEFAULT_BATCH
) -> Tensor:
    """Certified lower bounds (N, classes), float64, on z_y - z_j over the clipped eps-ball around each x.

    x: (N, ...) pixels in [0, 1]; y: (N,) labels; eps in pixel units (L-inf). Column j = y is
    +inf (no constraint), so a sample is certified exactly when its whole row is > 0. CROWN
    methods return the larger of CROWN's and IBP's bound per margin (both are sound). Runs in
    eval mode without gradients, on x's device; the model's mode is restored.
    """
    with eval_mode(model), classical(x.device):
        ops = _check_request(model, x, y, eps, method, batch_size)
        rows = [_sound_margins(ops, xb, yb, eps, method) for xb, yb in batches(x, y, size=batch_size)]
    if not rows:
        return torch.empty((0, ops[-1].out_shape[0]), dtype=torch.float64, device=x.device)
    return torch.cat(rows)


@torch.no_grad()
def certify(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, method: Method = "crown", batch_size: int = DEFAULT_BATCH
) -> Tensor:
    """Per-sample certificate (bool, N): correctly classified and provably so in the clipped eps-ball.

    True where model(x) predicts y and every sound margin lower bound z_y - z_j (j != y) is > 0,
    so no perturbation of L-inf size <= eps that stays in [0, 1] changes the prediction of the
    network computed exactly. At eps = 0 it equals clean correctness, except for samples whose
    margin is within the rounding allowance (about 1e-12 relative) of a tie.
    """
    with eval_mode(model), classical(x.device):
        ops = _check_request(model, x, y, eps, method, batch_size)
        masks = []
        for xb, yb in batches(x, y, size=batch_size):
            is_correct = model(xb).argmax(dim=1) == yb
            margins = _sound_margins(ops, xb, yb, eps, method)
            masks.append(is_correct & (margins > 0).all(dim=1))
    if not masks:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    return torch.cat(masks)


def certified_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, method: Method = "crown", batch_size: int = DEFAULT_BATCH
) -> float:
    """Fraction of samples certified robust at eps (a lower bound on the robust accuracy)."""
    robust_mask = certify(model, x, y, eps=eps, method=method, batch_size=batch_size)
    return robust_mask.sum().item() / max(len(robust_mask), 1)  # one sync, at the end
