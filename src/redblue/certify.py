"""Certified lower bounds on a ReLU classifier's margins under an L-inf box: interval bound
propagation (IBP; Gowal et al., 2018) and CROWN's backward linear relaxation (Zhang et al., 2018).

The threat model is the L-inf ball of radius eps around x, in pixel units, clipped to valid
pixels: the input box is [max(x - eps, 0), min(x + eps, 1)]. Clipping is sound (the attacker
cannot leave [0, 1] either) and gives tighter bounds.

A model is read as a chain of layers: an `nn.Sequential` (nested ones too) of Linear, Conv2d,
ReLU, Flatten/Unflatten, Dropout (identity in eval mode), Identity, and elementwise
normalisation layers (a module with `mean` and `std` attributes that computes (x - mean) / std).
Linear, Conv2d and normalisation are affine operators; CROWN moves its linear coefficients
backwards through Conv2d with the transposed convolution, never materialising the dense matrix.

Methods:
- "ibp": interval arithmetic layer by layer; the last affine layers are folded into the margin
  specification (elision of the last layer), so margins are bounded as one affine map.
- "crown": full CROWN with CROWN-Ada's adaptive lower slope. The pre-activation bounds of every
  ReLU come from CROWN itself, back to the input, intersected with IBP's (both are sound); each
  margin bound is the larger of CROWN's and IBP's over those bounds, so "crown" is never looser
  than "ibp", margin by margin.
  Bounds that interval arithmetic already gives exactly (an affine prefix with a single
  Linear/Conv2d, e.g. the hidden layer of the paper's one-hidden-layer MLP) skip the backward
  pass, and only neurons that IBP leaves unstable get one.
- "crown-ibp": IBP for the pre-activation bounds, CROWN for the margins (Zhang et al., 2020),
  again never looser than IBP: much cheaper than full CROWN on conv nets (on CPU full CROWN on
  the small MNIST CNN takes minutes per 1000 images, crown-ibp seconds), and looser.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redblue.attacks.core import check_eps, check_inputs, eval_mode
from redblue.errors import ConfigError, ModelError, require_choice, require_positive
from redblue.metrics import batches

Method = Literal["ibp", "crown", "crown-ibp"]
METHODS: tuple[str, ...] = ("ibp", "crown", "crown-ibp")
DEFAULT_BATCH = 256

# Largest linear-coefficient tensor (in elements) one backward pass of intermediate bounds may
# build; the rows of the specification are processed in chunks that stay below it.
_MAX_COEFFICIENTS = 2**24

SUPPORTED = "Linear, Conv2d, ReLU, Flatten, Unflatten, Dropout, Identity and mean/std normalisation"


# --- the model as a chain of affine operators and ReLUs ------------------------------------------


class _Affine:
    """x -> W x + b for one layer, with what the bounds need: |W| r, the transpose A W, and A b.

    `mixes` is False for operators that keep every element on its own (reshapes, elementwise
    scaling): interval arithmetic stays exact through those.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    mixes: bool = True

    def forward(self, x: Tensor) -> Tensor:  # (N, *in) -> (N, *out), bias included
        raise NotImplementedError

    def forward_abs(self, r: Tensor) -> Tensor:  # |W| r, no bias
        raise NotImplementedError

    def transpose(self, a: Tensor) -> Tensor:  # (B, S, *out) -> (B, S, *in)
        raise NotImplementedError

    def bias_term(self, a: Tensor) -> Tensor | None:  # (B, S, *out) -> (B, S), or None without bias
        raise NotImplementedError


class _Linear(_Affine):
    def __init__(self, layer: nn.Linear, in_shape: tuple[int, ...]) -> None:
        self.weight, self.bias = layer.weight, layer.bias
        self.in_shape, self.out_shape = in_shape, (*in_shape[:-1], layer.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.linear(r, self.weight.abs())

    def transpose(self, a: Tensor) -> Tensor:
        return a @ self.weight

    def bias_term(self, a: Tensor) -> Tensor | None:
        if self.bias is None:
            return None
        # a Linear on (..., in) inputs acts on the last dimension: sum the leading ones too
        return (a @ self.bias).reshape(*a.shape[:2], -1).sum(dim=2)


class _Conv2d(_Affine):
    def __init__(self, layer: nn.Conv2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.weight, self.bias = layer.weight, layer.bias
        self.stride, self.dilation, self.groups = layer.stride, layer.dilation, layer.groups
        self.in_shape, self.out_shape = in_shape, out_shape
        if layer.padding == "valid":
            pads = [(0, 0), (0, 0)]
        elif layer.padding == "same":  # the split torch uses: the odd pixel goes after
            totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
            pads = [(t // 2, t - t // 2) for t in totals]
        else:
            pads = [(p, p) for p in layer.padding]
        if all(before == after for before, after in pads):
            self.padding, self.explicit_pad = (pads[0][0], pads[1][0]), None
        else:  # asymmetric ('same' with an even kernel): pad explicitly, convolve without padding
            (top, bottom), (left, right) = pads
            self.padding, self.explicit_pad = (0, 0), (left, right, top, bottom)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.explicit_pad is not None:
            x = F.pad(x, self.explicit_pad)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def forward_abs(self, r: Tensor) -> Tensor:
        return self._conv(r, self.weight.abs(), None)

    def transpose(self, a: Tensor) -> Tensor:
        rows = a.shape[:2]
        channels, height, width = self.in_shape
        if self.explicit_pad is not None:
            left, right, top, bottom = self.explicit_pad
            height, width = height + top + bottom, width + left + right
        # the adjoint of a convolution is its input gradient (a transposed convolution)
        a_in = torch.nn.grad.conv2d_input(
            (rows.numel(), channels, height, width),
            self.weight,
            a.reshape(rows.numel(), *self.out_shape),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        if self.explicit_pad is not None:
            a_in = a_in[..., top : top + self.in_shape[1], left : left + self.in_shape[2]]
        return a_in.reshape(*rows, *self.in_shape)

    def bias_term(self, a: Tensor) -> Tensor | None:
        if self.bias is None:
            return None
        return a.sum(dim=(-2, -1)) @ self.bias


class _Elementwise(_Affine):
    """x * scale + shift elementwise, e.g. (x - mean) / std."""

    mixes = False

    def __init__(self, scale: Tensor, shift: Tensor, shape: tuple[int, ...]) -> None:
        self.scale, self.shift = scale, shift  # (*shape)
        self.in_shape = self.out_shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def forward_abs(self, r: Tensor) -> Tensor:
        return r * self.scale.abs()

    def transpose(self, a: Tensor) -> Tensor:
        return a * self.scale

    def bias_term(self, a: Tensor) -> Tensor | None:
        return (a * self.shift).flatten(2).sum(dim=2)


class _Reshape(_Affine):
    mixes = False

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), *self.out_shape)

    forward_abs = forward

    def transpose(self, a: Tensor) -> Tensor:
        return a.reshape(*a.shape[:2], *self.in_shape)

    def bias_term(self, a: Tensor) -> Tensor | None:
        return None


class _ReLU:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.in_shape = self.out_shape = shape


_Op = Union[_Affine, _ReLU]


def _leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{prefix}{name}.")
    else:
        yield prefix.rstrip(".") or type(module).__name__, module


def _unsupported(name: str, layer: nn.Module, why: str = "") -> ModelError:
    detail = f" ({why})" if why else ""
    return ModelError(
        f"certified bounds cannot pass layer {name!r}, a {type(layer).__name__}{detail}; "
        f"they support nn.Sequential of {SUPPORTED}"
    )


def _elementwise_affine(name: str, layer: nn.Module, probe: Tensor) -> _Elementwise:
    """Read a normalisation layer as x * scale + shift, and check it on a random probe."""
    shape = tuple(probe.shape[1:])
    shift = layer(torch.zeros_like(probe[:1]))[0]
    scale = layer(torch.ones_like(probe[:1]))[0] - shift
    if shift.shape != shape:
        raise _unsupported(name, layer, f"it changes the shape {shape} into {tuple(shift.shape)}")
    tolerance = 1e-4 if probe.dtype != torch.float64 else 1e-9
    if not torch.allclose(layer(probe), probe * scale + shift, rtol=tolerance, atol=tolerance):
        raise _unsupported(name, layer, "it has mean and std but is not the elementwise (x - mean) / std")
    return _Elementwise(scale, shift, shape)


def _linearize(model: nn.Module, x: Tensor) -> list[_Op]:
    """The model as a chain of affine operators and ReLUs, with per-sample shapes, for inputs like x.

    Runs each layer once on a two-sample probe to learn its output shape. Call in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"certified bounds need an nn.Module, got {type(model).__name__}")
    probe = torch.rand((2, *x.shape[1:]), generator=torch.Generator().manual_seed(0), dtype=x.dtype).to(x.device)
    ops: list[_Op] = []
    for name, layer in _leaves(model):
        shape = tuple(probe.shape[1:])
        try:
            out = layer(probe)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"layer {name!r} ({type(layer).__name__}) fails on inputs of shape {shape}: {first}"
            ) from None
        if isinstance(layer, (nn.Identity, nn.modules.dropout._DropoutNd)):
            pass  # dropout is the identity in eval mode, where bounds are computed
        elif isinstance(layer, nn.ReLU):
            ops.append(_ReLU(shape))
        elif isinstance(layer, nn.Linear):
            ops.append(_Linear(layer, shape))
        elif isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":
                raise _unsupported(name, layer, f"padding_mode={layer.padding_mode!r}; only 'zeros' is supported")
            if len(shape) != 3:
                raise _unsupported(name, layer, f"its per-sample input has shape {shape}, not (C, H, W)")
            ops.append(_Conv2d(layer, shape, tuple(out.shape[1:])))
        elif isinstance(layer, (nn.Flatten, nn.Unflatten)):
            if out.dim() == 0 or len(out) != len(probe):
                raise _unsupported(name, layer, "it merges the batch dimension; use start_dim=1")
            ops.append(_Reshape(shape, tuple(out.shape[1:])))
        elif hasattr(layer, "mean") and hasattr(layer, "std"):
            ops.append(_elementwise_affine(name, layer, probe))
        else:
            raise _unsupported(name, layer)
        probe = out
    if not any(isinstance(op, (_Linear, _Conv2d)) for op in ops):
        raise ModelError("the model has no Linear or Conv2d layer; certified bounds need a classifier network")
    if probe.dim() != 2:
        raise ModelError(
            f"the model outputs shape {tuple(probe.shape[1:])} per sample; certified bounds need logits (N, classes)"
        )
    return ops


# --- interval bound propagation --------------------------------------------------------------------


def _interval_step(op: _Op, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(op, _ReLU):
        return lower.clamp_min(0), upper.clamp_min(0)
    # centre-radius form: one pass with W and one with |W| instead of four with W+ and W-
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    out_mid, out_rad = op.forward(mid), op.forward_abs(rad)
    return out_mid - out_rad, out_mid + out_rad


# --- CROWN -------------------------------------------------------------------------------------------


def _relu_relaxation(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CROWN-Ada's linear bounds on relu(z) over [lower, upper], elementwise.

    Returns (lower_slope, upper_slope, upper_intercept) with
    lower_slope * z <= relu(z) <= upper_slope * z + upper_intercept. On unstable neurons
    (lower < 0 < upper) the upper line is the chord u/(u-l) (z - l), and the lower slope is
    1 if u >= -l else 0, whichever line leaves the smaller area.
    """
    active = (lower >= 0).to(lower.dtype)
    unstable = (lower < 0) & (upper > 0)
    width = torch.where(unstable, upper - lower, torch.ones_like(lower))
    chord = upper / width
    upper_slope = torch.where(unstable, chord, active)
    upper_intercept = torch.where(unstable, -chord * lower, torch.zeros_like(lower))
    lower_slope = torch.where(unstable, (upper >= -lower).to(lower.dtype), active)
    return lower_slope, upper_slope, upper_intercept


def _dot(a: Tensor, v: Tensor) -> Tensor:
    """sum over features of a (B, S, *shape) times v (N, *shape) -> (N, S); B is 1 or N."""
    a_flat, v_flat = a.flatten(2), v.flatten(1)
    if len(a_flat) == 1:  # shared coefficients: one matrix product for the whole batch
        return v_flat @ a_flat[0].T
    return torch.bmm(a_flat, v_flat.unsqueeze(2)).squeeze(2)


def _backward_lower(
    ops: list[_Op],
    spec: Tensor,
    relaxations: dict[int, tuple[Tensor, Tensor, Tensor]],
    box_lower: Tensor,
    box_upper: Tensor,
) -> Tensor:
    """Lower bound of spec . f(x) for x in the box, f the chain `ops`: (N, S).

    spec: (B, S, *out_shape) with B = 1 (the same rows for every sample) or N. Coefficients
    move backwards through each affine operator exactly and through each ReLU by its linear
    relaxation (the lower line where the coefficient is positive, the upper line where it is
    negative), down to the input, where the box is minimised in closed form.
    """
    a = spec
    constant = torch.zeros((1, spec.shape[1]), dtype=spec.dtype, device=spec.device)
    for index in range(len(ops) - 1, -1, -1):
        op = ops[index]
        if isinstance(op, _ReLU):
            lower_slope, upper_slope, upper_intercept = relaxations[index]
            a_pos, a_neg = a.clamp_min(0), a.clamp_max(0)
            constant = constant + _dot(a_neg, upper_intercept)
            a = a_pos * lower_slope.unsqueeze(1) + a_neg * upper_slope.unsqueeze(1)
        else:
            bias = op.bias_term(a)
            if bias is not None:
                constant = constant + bias
            a = op.transpose(a)
    mid, rad = (box_upper + box_lower) / 2, (box_upper - box_lower) / 2
    return _dot(a, mid) - _dot(a.abs(), rad) + constant


def _crown_intermediate(
    ops: list[_Op],
    relaxations: dict[int, tuple[Tensor, Tensor, Tensor]],
    lower: Tensor,
    upper: Tensor,
    box_lower: Tensor,
    box_upper: Tensor,
) -> tuple[Tensor, Tensor]:
    """Tighten the IBP bounds (N, *shape) of the output of `ops` with CROWN, neuron by neuron.

    Only neurons unstable under IBP get tightened (elsewhere the relaxation is exact already),
    and a backward pass runs only for neurons unstable in some sample of the batch. The rows of
    the identity specification go in chunks whose coefficient tensors stay below
    _MAX_COEFFICIENTS elements.
    """
    n, shape = len(lower), lower.shape[1:]
    lower_flat, upper_flat = lower.flatten(1).clone(), upper.flatten(1).clone()
    is_unstable = (lower_flat < 0) & (upper_flat > 0)  # (N, d)
    # one host sync per layer to pick the unstable neurons; the backward passes it saves cost far more
    unstable = is_unstable.any(dim=0).nonzero().squeeze(1)
    widest = max([_numel(op.in_shape) for op in ops] + [shape.numel()])
    chunk = max(1, _MAX_COEFFICIENTS // (2 * n * widest))
    eye = torch.eye(shape.numel(), dtype=lower.dtype, device=lower.device)
    for start in range(0, len(unstable), chunk):
        neurons = unstable[start : start + chunk]
        rows = eye[neurons]  # (s, d): one row per neuron
        spec = torch.cat([rows, -rows]).view(1, 2 * len(neurons), *shape)
        bounds = _backward_lower(ops, spec, relaxations, box_lower, box_upper)  # (N, 2s)
        crown_lower, crown_upper = bounds[:, : len(neurons)], -bounds[:, len(neurons) :]
        # tighten only where this sample's neuron is unstable, so no bound depends on the batch
        tighten = is_unstable[:, neurons]
        old_lower, old_upper = lower_flat[:, neurons], upper_flat[:, neurons]
        lower_flat[:, neurons] = torch.where(tighten, torch.maximum(old_lower, crown_lower), old_lower)
        upper_flat[:, neurons] = torch.where(tighten, torch.minimum(old_upper, crown_upper), old_upper)
    return lower_flat.view(n, *shape), upper_flat.view(n, *shape)


def _numel(shape: tuple[int, ...]) -> int:
    return torch.Size(shape).numel()


def _margin_spec(y: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
    """C (N, classes, classes) with rows e_y - e_j, so C z = z_y - z_j; row j = y is zero."""
    eye = torch.eye(classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _margin_bounds(ops: list[_Op], box_lower: Tensor, box_upper: Tensor, y: Tensor, method: str) -> Tensor:
    """Lower bounds (N, classes) on z_y - z_j over the box; the column j = y is +inf."""
    classes = ops[-1].out_shape[0]
    spec = _margin_spec(y, classes, box_lower.dtype)
    relu_indices = [i for i, op in enumerate(ops) if isinstance(op, _ReLU)]
    # the affine layers after the last ReLU are folded into the specification (elision)
    tail_start = relu_indices[-1] + 1 if relu_indices else 0

    relaxations: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    lower, upper = box_lower, box_upper
    for index in range(tail_start):
        op = ops[index]
        if isinstance(op, _ReLU) and method != "ibp":
            prefix = ops[:index]
            exact = sum(1 for p in prefix if isinstance(p, _ReLU) or p.mixes) <= 1
            if method == "crown" and not exact:
                lower, upper = _crown_intermediate(prefix, relaxations, lower, upper, box_lower, box_upper)
            relaxations[index] = _relu_relaxation(lower, upper)
        lower, upper = _interval_step(op, lower, upper)

    # interval bounds on the last ReLU's outputs, pushed through the affine tail: IBP's margins
    margins = _backward_lower(ops[tail_start:], spec, {}, lower, upper)
    if method != "ibp":
        # both bounds are sound, so is their maximum; CROWN alone can be looser than IBP on some
        # margins (wide unstable neurons), and this costs one small product over the tail
        crown_margins = _backward_lower(ops, spec, relaxations, box_lower, box_upper)
        margins = torch.maximum(crown_margins, margins)
    return margins.scatter(1, y.unsqueeze(1), float("inf"))


# --- public API --------------------------------------------------------------------------------------


def input_box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The L-inf ball of radius eps around x clipped to valid pixels: [max(x-eps, 0), min(x+eps, 1)]."""
    return (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)


def _check_request(model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str, batch_size: int) -> list[_Op]:
    check_inputs(x, y)
    check_eps(eps, "linf")
    require_choice("method", method, METHODS)
    require_positive("batch_size", batch_size)
    ops = _linearize(model, x)
    classes = ops[-1].out_shape[0]
    if y.dtype not in (torch.int64, torch.int32) or bool(((y < 0) | (y >= classes)).any()):
        raise ConfigError(f"labels must be integers in [0, {classes}); check y against the model's {classes} classes")
    return ops


@torch.no_grad()
def interval_bounds(model: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """IBP bounds (lower_logits, upper_logits), each (N, classes), on the model over a box.

    lower, upper: (N, *input_shape) with lower <= upper elementwise (any real values; the
    [0, 1] clipping is the caller's, see `input_box`). The model runs in eval mode and is restored.
    """
    if lower.shape != upper.shape:
        raise ConfigError(f"lower has shape {tuple(lower.shape)} but upper has {tuple(upper.shape)}; pass one box")
    if bool((lower > upper).any()):
        raise ConfigError("lower must be <= upper everywhere; swap or fix the box")
    with eval_mode(model):
        ops = _linearize(model, lower)
        for op in ops:
            lower, upper = _interval_step(op, lower, upper)
    return lower, upper


@torch.no_grad()
def margin_lower_bounds(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, method: Method = "crown", batch_size: int = DEFAULT_BATCH
) -> Tensor:
    """Certified lower bounds (N, classes) on z_y - z_j over the clipped eps-ball around each x.

    x: (N, ...) pixels in [0, 1]; y: (N,) labels; eps in pixel units (L-inf). Column j = y is
    +inf (no constraint), so a sample is certified exactly when its whole row is > 0. Every
    method folds the affine layers after the last ReLU into the margin matrix (elision of the
    last layer). Runs in eval mode without gradients, on x's device; the model's mode is restored.
    """
    with eval_mode(model):
        ops = _check_request(model, x, y, eps, method, batch_size)
        rows = [_margin_bounds(ops, *input_box(xb, eps), yb, method) for xb, yb in batches(x, y, size=batch_size)]
    if not rows:
        return torch.empty((0, ops[-1].out_shape[0]), dtype=x.dtype, device=x.device)
    return torch.cat(rows)


@torch.no_grad()
def certify(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, method: Method = "crown", batch_size: int = DEFAULT_BATCH
) -> Tensor:
    """Per-sample certificate (bool, N): correctly classified and provably so in the clipped eps-ball.

    True where model(x) predicts y and every margin lower bound z_y - z_j (j != y) is > 0, so no
    perturbation of L-inf size <= eps that stays in [0, 1] changes the prediction. At eps = 0 it
    equals clean correctness, except for samples whose margin is within rounding of a tie.
    """
    with eval_mode(model):
        ops = _check_request(model, x, y, eps, method, batch_size)
        masks = []
        for xb, yb in batches(x, y, size=batch_size):
            is_correct = model(xb).argmax(dim=1) == yb
            margins = _margin_bounds(ops, *input_box(xb, eps), yb, method)
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
