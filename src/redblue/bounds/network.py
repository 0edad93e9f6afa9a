"""A ReLU classifier read as a chain of affine operators, ReLUs and max-pools, for bound propagation.

A model is an `nn.Sequential` (nested ones too) of Linear, Conv2d (any stride, padding,
dilation, groups), ReLU, MaxPool2d, Flatten/Unflatten, Dropout (the identity: bounds are those
of the network in eval mode), Identity, elementwise normalisation layers (a module with
`mean` and `std` attributes that computes (x - mean) / std), and BatchNorm1d/2d in eval mode
(with running statistics it is the per-channel affine map x * w / sqrt(var + eps) + (b - mean *
w / sqrt(var + eps)), folded exactly into an elementwise operator; in train mode it normalises
with the batch's statistics, which couples the samples, and is refused). Linear, Conv2d,
normalisation and BatchNorm are affine operators; CROWN moves its linear coefficients backwards through Conv2d with the
transposed convolution, never materialising the dense matrix. The operators hold the model's
own parameters (cast to a dtype when asked), so bounds built from them are differentiable in
the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redblue.errors import ModelError

SUPPORTED = (
    "Linear, Conv2d, ReLU, MaxPool2d, Flatten, Unflatten, Dropout, Identity, mean/std normalisation "
    "and BatchNorm in eval mode"
)


class Affine:
    """x -> W x + b for one layer, with what the bounds need: |W| r, the transpose a W, and a b.

    `mixes` is False for operators that keep every element on its own (reshapes, elementwise
    scaling): interval arithmetic stays exact through those. `terms` bounds the number of terms
    of any sum the bounds compute for this layer (see `redblue.bounds.rounding`).
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    mixes: bool = True
    terms: int = 0

    def forward(self, x: Tensor) -> Tensor:  # (N, *in) -> (N, *out), bias included
        raise NotImplementedError

    def forward_abs(self, r: Tensor) -> Tensor:  # |W| r, no bias
        raise NotImplementedError

    def transpose(self, a: Tensor) -> Tensor:  # (B, S, *out) -> (B, S, *in)
        raise NotImplementedError

    def bias_term(self, a: Tensor) -> Tensor | None:  # (B, S, *out) -> (B, S), or None without bias
        raise NotImplementedError

    def magnitude(self, m: Tensor) -> Tensor:  # |W| m + |b| for m >= 0: (N, *in) -> (N, *out)
        raise NotImplementedError


class Linear(Affine):
    def __init__(self, weight: Tensor, bias: Tensor | None, in_shape: tuple[int, ...]) -> None:
        self.weight, self.bias = weight, bias
        self.in_shape, self.out_shape = in_shape, (*in_shape[:-1], weight.shape[0])

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

    def magnitude(self, m: Tensor) -> Tensor:
        return F.linear(m, self.weight.abs(), None if self.bias is None else self.bias.abs())


class Conv2d(Affine):
    def __init__(self, layer: nn.Conv2d, weight: Tensor, bias: Tensor | None,
                 in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.weight, self.bias = weight, bias
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
        # the transposed convolution must give back the (padded) input size: output_padding
        # restores the rows and columns the strided convolution never reached
        height, width = in_shape[1:]
        if self.explicit_pad is not None:
            height, width = height + top + bottom, width + left + right
        self.padded_size = (height, width)
        kernel = weight.shape[2:]
        self.output_padding = tuple(
            size + 2 * p - (d * (k - 1) + 1) - (o - 1) * s
            for size, p, d, k, o, s in zip(self.padded_size, self.padding, self.dilation, kernel, out_shape[1:], self.stride)
        )

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
        a_out = a.reshape(rows.numel(), *self.out_shape)
        # the adjoint of a convolution is the transposed convolution with the same weights; without
        # gradients in float64 (certification), the convolution's input gradient is twice as fast
        if a_out.dtype == torch.float64 and not torch.is_grad_enabled():
            size = (rows.numel(), self.in_shape[0], *self.padded_size)
            a_in = torch.nn.grad.conv2d_input(size, self.weight, a_out, self.stride, self.padding, self.dilation, self.groups)
        else:
            a_in = F.conv_transpose2d(
                a_out, self.weight, None, self.stride, self.padding, self.output_padding, self.groups, self.dilation
            )
        if self.explicit_pad is not None:
            left, _, top, _ = self.explicit_pad
            a_in = a_in[..., top : top + self.in_shape[1], left : left + self.in_shape[2]]
        return a_in.reshape(*rows, *self.in_shape)

    def bias_term(self, a: Tensor) -> Tensor | None:
        if self.bias is None:
            return None
        return a.sum(dim=(-2, -1)) @ self.bias

    def magnitude(self, m: Tensor) -> Tensor:
        return self._conv(m, self.weight.abs(), None if self.bias is None else self.bias.abs())


class Elementwise(Affine):
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

    def magnitude(self, m: Tensor) -> Tensor:
        return m * self.scale.abs() + self.shift.abs()


class Reshape(Affine):
    """Flatten/Unflatten: exact in every direction, so it needs no rounding allowance."""

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


class ReLU:
    terms: int = 0

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.in_shape = self.out_shape = shape


class MaxPool2d:
    """Max-pooling: monotone, so interval bounds pass it exactly; CROWN has no relaxation for it here."""

    terms: int = 0

    def __init__(self, layer: nn.MaxPool2d, name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.layer, self.name = layer, name
        self.in_shape, self.out_shape = in_shape, out_shape

    def forward(self, x: Tensor) -> Tensor:
        pool = self.layer
        return F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)


Op = Union[Affine, ReLU, MaxPool2d]
Chain = list[Op]


def leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(dotted name, layer) of every non-Sequential module, in order, through nested Sequentials."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from leaves(child, f"{prefix}{name}.")
    else:
        yield prefix.rstrip(".") or type(module).__name__, module


def _unsupported(name: str, layer: nn.Module, why: str = "") -> ModelError:
    detail = f" ({why})" if why else ""
    return ModelError(
        f"certified bounds cannot pass layer {name!r}, a {type(layer).__name__}{detail}; "
        f"they support nn.Sequential of {SUPPORTED}"
    )


def _normalisation(name: str, layer: nn.Module, probe: Tensor, dtype: torch.dtype) -> Elementwise:
    """Read a normalisation layer as x * (1 / std) + (-mean / std), and check it on a random probe."""
    shape = tuple(probe.shape[1:])
    ones = torch.ones((1, *shape), dtype=dtype, device=probe.device)
    mean = torch.as_tensor(layer.mean, dtype=dtype, device=probe.device)
    std = torch.as_tensor(layer.std, dtype=dtype, device=probe.device)
    if len(shape) == 3 and mean.dim() == 1 and std.dim() == 1:  # per-channel statistics given as (C,)
        mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    try:
        scale, shift = (ones / std)[0], (-mean / std * ones)[0]
    except RuntimeError:
        raise _unsupported(name, layer, f"its mean and std do not broadcast to the input shape {shape}") from None
    if scale.shape != shape or shift.shape != shape:
        raise _unsupported(name, layer, f"its mean and std change the shape {shape}")
    tolerance = 1e-4 if probe.dtype != torch.float64 else 1e-9
    expected = probe.to(dtype) * scale + shift
    if not torch.allclose(layer(probe).to(dtype), expected, rtol=tolerance, atol=tolerance):
        raise _unsupported(name, layer, "it has mean and std but is not the elementwise (x - mean) / std")
    return Elementwise(scale, shift, shape)


def _batch_norm(name: str, layer: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...], dtype: torch.dtype) -> Elementwise:
    """Read an eval-mode BatchNorm as x * scale + shift per channel (channel = dimension 0 of `shape`)."""
    if layer.training or layer.running_mean is None or layer.running_var is None:
        why = "in train mode it uses each batch's statistics" if layer.training else "it keeps no running statistics"
        raise ModelError(
            f"certified bounds cannot pass BatchNorm layer {name!r}: {why}; put the model in eval mode "
            "(certified training cannot train BatchNorm: use a model without it, e.g. cnn-7:batch_norm=false)"
        )
    std = (layer.running_var.to(dtype) + layer.eps).sqrt()
    weight = torch.ones_like(std) if layer.weight is None else layer.weight.to(dtype)
    bias = torch.zeros_like(std) if layer.bias is None else layer.bias.to(dtype)
    scale, shift = weight / std, bias - layer.running_mean.to(dtype) * weight / std
    view = (-1,) + (1,) * (len(shape) - 1)  # (C,) -> (C, 1, 1) for (C, H, W)
    return Elementwise(scale.view(view).expand(shape), shift.view(view).expand(shape), shape)


def linearize(model: nn.Module, like: Tensor, *, dtype: torch.dtype | None = None) -> Chain:
    """The model as a chain of operators with per-sample shapes, for inputs shaped like `like`.

    Runs each layer once, without gradients, on a two-sample probe to learn its output shape
    (dropout is skipped, so the model's mode and the random state do not matter). With `dtype`,
    weights are cast to it (float64 for certification); without, they are the model's own
    parameters and bounds built on the chain are differentiable in them.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"certified bounds need an nn.Module, got {type(model).__name__}")
    dtype = dtype or like.dtype
    probe = torch.rand((2, *like.shape[1:]), generator=torch.Generator().manual_seed(0), dtype=like.dtype)
    probe = probe.to(like.device)

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dtype)

    ops: Chain = []
    for name, layer in leaves(model):
        shape = tuple(probe.shape[1:])
        if isinstance(layer, (nn.Identity, nn.modules.dropout._DropoutNd)):
            continue  # dropout is the identity in eval mode, the network that is certified
        known = (nn.ReLU, nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.Flatten, nn.Unflatten, nn.modules.batchnorm._BatchNorm)
        if not isinstance(layer, known) and not (hasattr(layer, "mean") and hasattr(layer, "std")):
            raise _unsupported(name, layer)  # before the probe runs it: a block may hold BatchNorms in train mode
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            # read (or refused) before the probe runs: in train mode that would move the running statistics
            batch_norm = _batch_norm(name, layer, shape, dtype)
        try:
            with torch.no_grad():
                out = layer(probe)
        except (RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"layer {name!r} ({type(layer).__name__}) fails on inputs of shape {shape}: {first}") from None
        if not isinstance(out, Tensor):
            raise _unsupported(name, layer, f"it returns a {type(out).__name__}, not a tensor")
        if isinstance(layer, nn.ReLU):
            ops.append(ReLU(shape))
        elif isinstance(layer, nn.Linear):
            ops.append(Linear(cast(layer.weight), cast(layer.bias), shape))
        elif isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":
                raise _unsupported(name, layer, f"padding_mode={layer.padding_mode!r}; only 'zeros' is supported")
            if len(shape) != 3:
                raise _unsupported(name, layer, f"its per-sample input has shape {shape}, not (C, H, W)")
            ops.append(Conv2d(layer, cast(layer.weight), cast(layer.bias), shape, tuple(out.shape[1:])))
        elif isinstance(layer, nn.MaxPool2d):
            if len(shape) != 3:
                raise _unsupported(name, layer, f"its per-sample input has shape {shape}, not (C, H, W)")
            ops.append(MaxPool2d(layer, name, shape, tuple(out.shape[1:])))
        elif isinstance(layer, (nn.Flatten, nn.Unflatten)):
            if out.dim() == 0 or len(out) != len(probe):
                raise _unsupported(name, layer, "it merges the batch dimension; use start_dim=1")
            ops.append(Reshape(shape, tuple(out.shape[1:])))
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            ops.append(batch_norm)
        elif hasattr(layer, "mean") and hasattr(layer, "std"):
            ops.append(_normalisation(name, layer, probe, dtype))
        else:
            raise _unsupported(name, layer)
        probe = out
    if not any(isinstance(op, (Linear, Conv2d)) for op in ops):
        raise ModelError("the model has no Linear or Conv2d layer; certified bounds need a classifier network")
    if probe.dim() != 2:
        raise ModelError(f"the model outputs shape {tuple(probe.shape[1:])} per sample; certified bounds need logits (N, classes)")
    for op in ops:  # see redblue.bounds.rounding: more than any sum computed for this layer
        op.terms = 2 * (_numel(op.in_shape) + _numel(op.out_shape)) + 2 * len(ops) + 8
    return ops


def _numel(shape: tuple[int, ...]) -> int:
    return torch.Size(shape).numel()
