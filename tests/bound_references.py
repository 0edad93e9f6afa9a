"""Independent references for the certified bounds: nets read off as dense matrices, exact rational
arithmetic (fractions.Fraction), activation-pattern enumeration, and linear programs (SciPy HiGHS).

Nothing here shares code with redblue.bounds: each layer is read by pushing basis vectors through
the torch module itself, and every bound is recomputed from those matrices.
"""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import torch
from scipy.optimize import linprog  # the `peers` extra, which CI installs
from torch import Tensor, nn

F64 = torch.float64


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not isinstance(m, nn.Sequential)]


def layer_matrix(layer: nn.Module, shape: tuple[int, ...]) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """(W (out, in), b (out,), out_shape) in float64 of one affine layer (Linear, Conv2d, Flatten,
    eval-mode BatchNorm: the float64 module's image of each basis vector, less its image of 0).

    Exact for float32/float64 weights: W is read by pushing each basis vector through the layer
    without its bias, and every entry of that image is one weight times 1.
    """
    d = torch.Size(shape).numel()
    basis = torch.eye(d, dtype=F64).view(d, *shape)
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            image = basis @ layer.weight.double().T
            bias = torch.zeros(layer.out_features, dtype=F64) if layer.bias is None else layer.bias.double()
        elif isinstance(layer, nn.Conv2d):
            assert layer.padding_mode == "zeros" and layer.padding != "same"
            image = nn.functional.conv2d(basis, layer.weight.double(), None, layer.stride, layer.padding,
                                         layer.dilation, layer.groups)
            bias = torch.zeros(image.shape[1:], dtype=F64)
            if layer.bias is not None:
                bias += layer.bias.double().view(-1, 1, 1)
        elif isinstance(layer, nn.Flatten):
            image, bias = basis.reshape(d, d), torch.zeros(d, dtype=F64)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):  # eval mode: read off the module itself
            assert not layer.training
            double = copy.deepcopy(layer).double()
            bias = double(torch.zeros((1, *shape), dtype=F64))[0]
            image = double(basis) - bias
        elif hasattr(layer, "mean") and hasattr(layer, "std"):  # rounded once: not for exact use
            image = basis / layer.std.double()
            bias = (-layer.mean.double() / layer.std.double()).expand(shape)
        else:
            raise TypeError(f"no dense reading of {type(layer).__name__}")
    out_shape = tuple(image.shape[1:])
    return image.reshape(d, -1).T.contiguous(), bias.flatten(), out_shape


@torch.no_grad()
def stages(model: nn.Sequential, in_shape: tuple[int, ...]) -> list[tuple[Tensor, Tensor]]:
    """(W, b) of each affine stage between ReLUs (float64), consecutive affine layers multiplied out."""
    result, shape = [], in_shape
    w_acc = torch.eye(torch.Size(in_shape).numel(), dtype=F64)
    b_acc = torch.zeros(len(w_acc), dtype=F64)
    for layer in _leaves(model):
        if isinstance(layer, (nn.Dropout, nn.Identity)):
            continue
        if isinstance(layer, nn.ReLU):
            result.append((w_acc, b_acc))
            w_acc, b_acc = torch.eye(len(b_acc), dtype=F64), torch.zeros(len(b_acc), dtype=F64)
            continue
        w, b, shape = layer_matrix(layer, shape)
        w_acc, b_acc = w @ w_acc, w @ b_acc + b
    result.append((w_acc, b_acc))
    return result


# --- exact rational arithmetic ---------------------------------------------------------------------


def exact_affine(model: nn.Sequential, in_shape: tuple[int, ...]) -> tuple[list[list[Fraction]], list[Fraction]]:
    """(A, c) in Fractions with model(x) = A x + c exactly, ReLUs read as the identity.

    For a model without ReLU, or one whose ReLUs are all active on the box (the caller checks
    that with `exact_pre_activation_minima`). Normalisation is (x - mean) / std, divided exactly.
    """
    d = torch.Size(in_shape).numel()
    a = [[Fraction(int(i == j)) for j in range(d)] for i in range(d)]
    c = [Fraction(0)] * d
    shape = in_shape
    for layer in _leaves(model):
        if isinstance(layer, (nn.ReLU, nn.Dropout, nn.Identity)):
            continue
        if hasattr(layer, "mean") and hasattr(layer, "std"):
            mean, std = Fraction(float(layer.mean)), Fraction(float(layer.std))
            a = [[v / std for v in row] for row in a]
            c = [(v - mean) / std for v in c]
            continue
        w, b, shape = layer_matrix(layer, shape)
        wf = [[Fraction(v) for v in row] for row in w.tolist()]
        a = [[sum((wi[k] * a[k][j] for k in range(len(a)) if wi[k]), Fraction(0)) for j in range(d)] for wi in wf]
        c = [sum((wi[k] * c[k] for k in range(len(c)) if wi[k]), Fraction(0)) + Fraction(bi)
             for wi, bi in zip(wf, b.tolist())]
    return a, c


def exact_min(row: list[Fraction], const: Fraction, lo: list[Fraction], hi: list[Fraction]) -> Fraction:
    """min over the box [lo, hi] of row . x + const, exactly: each coordinate at its worse end."""
    return const + sum((r * (l if r > 0 else h) for r, l, h in zip(row, lo, hi)), Fraction(0))


def exact_box(x: Tensor, eps: float) -> tuple[list[Fraction], list[Fraction]]:
    """The clipped ball [max(x - eps, 0), min(x + eps, 1)] of one flattened sample, exactly."""
    e = Fraction(eps)
    lo = [max(Fraction(v) - e, Fraction(0)) for v in x.flatten().tolist()]
    hi = [min(Fraction(v) + e, Fraction(1)) for v in x.flatten().tolist()]
    return lo, hi


# --- linear programs ---------------------------------------------------------------------------------


def lp_min(objective: np.ndarray, *, a_ub=None, b_ub=None, a_eq=None, b_eq=None, bounds=None) -> float:
    """min objective . v under the constraints, by HiGHS; +inf when infeasible."""
    result = linprog(objective, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    assert result.status in (0, 2), result.message  # 2: infeasible (a pattern no point of the box has)
    return float(result.fun) if result.status == 0 else float("inf")
