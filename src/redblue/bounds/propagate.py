"""Interval bound propagation (IBP; Gowal et al., 2018) and CROWN's backward linear relaxation
(Zhang et al., 2018) over a chain of operators, for the margins z_y - z_j of a classifier.

One code path serves certification and training: `sound=True` (float64 chains, no gradients)
subtracts the rounding allowance of `redblue.bounds.rounding` from every bound; `sound=False`
is the same arithmetic without it, differentiable, in the chain's dtype.

Methods:
- "ibp": interval arithmetic layer by layer; the affine layers after the last ReLU are folded
  into the margin specification (elision of the last layer), so margins are bounded as one
  affine map of the last ReLU's outputs.
- "crown": CROWN with CROWN-Ada's adaptive lower slope. The pre-activation bounds of every ReLU
  come from CROWN itself, back to the input, intersected with IBP's (both are sound). Bounds
  that interval arithmetic already gives exactly (an affine prefix with a single Linear/Conv2d,
  e.g. the hidden layer of a one-hidden-layer MLP) skip the backward pass, and only neurons
  that IBP leaves unstable get one.
- "crown-ibp": IBP for the pre-activation bounds, CROWN for the margins (Zhang et al., 2020).
Both CROWN methods also return the IBP bound; certification takes the larger of the two,
training mixes them. CROWN has no relaxation for max-pooling here: only "ibp" passes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from redblue.bounds.network import Affine, Chain, MaxPool2d, Op, ReLU, Reshape
from redblue.bounds.rounding import UNDERFLOW, allowance_factor
from redblue.errors import ModelError

METHODS: tuple[str, ...] = ("ibp", "crown", "crown-ibp")

# Largest linear-coefficient tensor (in elements) one backward pass of intermediate bounds may
# build; the rows of the specification are processed in chunks that stay below it.
_MAX_COEFFICIENTS = 2**24


def magnitude(lower: Tensor, upper: Tensor) -> Tensor:
    """M = max(|lower|, |upper|): a bound on |z| for every z of the interval."""
    return torch.maximum(lower.abs(), upper.abs())


def allowance_vector(op: Op, m: Tensor) -> Tensor | None:
    """R (N, *out_shape): the rounding of one step through op is at most |a| . R backwards, and R
    elementwise forwards (IBP), given a magnitude bound m of op's input; None where op is exact.
    See `redblue.bounds.rounding` for the derivation."""
    if isinstance(op, ReLU):
        return allowance_factor(op.terms) * m
    if isinstance(op, Affine) and not isinstance(op, Reshape):
        return allowance_factor(op.terms) * op.magnitude(m)
    return None


class Rounding:
    """Sound mode: the magnitude bound M (N, *in_shape) at the input of each operator, and the
    allowance vector R_k with which |a| . R_k bounds the rounding of one backward step."""

    def __init__(self, ops: Chain) -> None:
        self.ops = ops
        self.magnitude: dict[int, Tensor] = {}
        self.vector: dict[int, Tensor] = {}

    def record(self, index: int, lower: Tensor, upper: Tensor) -> Tensor | None:
        """Record sound bounds on the input of ops[index] (index == len(ops): on the logits);
        returns the step's allowance vector."""
        m = magnitude(lower, upper)
        self.magnitude[index] = m
        vector = allowance_vector(self.ops[index], m) if index < len(self.ops) else None
        if vector is not None:
            self.vector[index] = vector
        return vector

    def at_input(self, index: int) -> Tensor:
        """Allowance vector of a pass that ends at the input of ops[index] (the box term)."""
        m = self.magnitude[index]
        return allowance_factor(4 * m[0].numel() + 2 * len(self.ops) + 8) * m


def input_box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The L-inf ball of radius eps around x clipped to valid pixels: [max(x-eps, 0), min(x+eps, 1)].

    Clipping is sound (the attacker cannot leave [0, 1] either) and gives tighter bounds.
    """
    return (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)


def interval_step(
    op: Op, lower: Tensor, upper: Tensor, *, sound: bool = False, allowance: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Interval bounds on op's output from interval bounds (N, *in_shape) on its input.

    sound: widen affine steps outward by their rounding allowance (float64; `allowance` is
    allowance_vector(op, magnitude(lower, upper)) when the caller has it already).
    """
    if isinstance(op, ReLU):
        return F.relu(lower), F.relu(upper)
    if isinstance(op, (MaxPool2d, Reshape)):  # monotone and exact
        return op.forward(lower), op.forward(upper)
    # centre-radius form: one pass with W and one with |W| instead of four with W+ and W-
    mid, rad = (upper + lower) * 0.5, (upper - lower) * 0.5
    out_mid, out_rad = op.forward(mid), op.forward_abs(rad)
    if not sound:
        return out_mid - out_rad, out_mid + out_rad
    if allowance is None:
        allowance = allowance_vector(op, magnitude(lower, upper))
    slack = allowance + UNDERFLOW
    return (out_mid - out_rad) - slack, (out_mid + out_rad) + slack


def relu_relaxation(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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


def backward_lower(
    ops: Chain,
    spec: Tensor,
    relaxations: dict[int, tuple[Tensor, Tensor, Tensor]],
    box: tuple[Tensor, Tensor],
    *,
    start: int,
    end: int,
    rounding: Rounding | None = None,
) -> Tensor:
    """Lower bound (N, S) of spec . f(z) for z in the box, f the operators ops[start:end].

    spec: (B, S, *out_shape of ops[end - 1]) with B = 1 (the same rows for every sample) or N;
    box: bounds (N, *in_shape of ops[start]). Coefficients move backwards through each affine
    operator exactly and through each ReLU by its relaxation (the lower line where the
    coefficient is positive, the upper line where it is negative), down to the box, where the
    minimum is taken in closed form. With `rounding`, its allowance is subtracted (sound).
    """
    a = spec
    constant = torch.zeros((1, spec.shape[1]), dtype=spec.dtype, device=spec.device)
    allowance = torch.zeros_like(constant)
    for index in range(end - 1, start - 1, -1):
        op = ops[index]
        if isinstance(op, ReLU):
            lower_slope, upper_slope, upper_intercept = relaxations[index]
            a_pos, a_neg = a.clamp_min(0), a.clamp_max(0)
            if rounding is not None:
                allowance = allowance + _dot(a_pos - a_neg, rounding.vector[index])  # |a|
            constant = constant + _dot(a_neg, upper_intercept)
            a = a_pos * lower_slope.unsqueeze(1) + a_neg * upper_slope.unsqueeze(1)
        elif isinstance(op, MaxPool2d):
            raise ModelError(f"CROWN has no relaxation for the max-pooling layer {op.name!r}; use method ibp")
        else:
            if rounding is not None and index in rounding.vector:
                allowance = allowance + _dot(a.abs(), rounding.vector[index])
            bias = op.bias_term(a)
            if bias is not None:
                constant = constant + bias
            a = op.transpose(a)
    box_lower, box_upper = box
    bound = _dot(a.clamp_min(0), box_lower) + _dot(a.clamp_max(0), box_upper) + constant
    if rounding is None:
        return bound
    allowance = allowance + _dot(a.abs(), rounding.at_input(start))
    return bound - (allowance + UNDERFLOW)


def _crown_intermediate(
    ops: Chain,
    end: int,
    relaxations: dict[int, tuple[Tensor, Tensor, Tensor]],
    lower: Tensor,
    upper: Tensor,
    box: tuple[Tensor, Tensor],
    rounding: Rounding | None,
) -> tuple[Tensor, Tensor]:
    """Tighten the IBP bounds (N, *shape) of the output of ops[:end] with CROWN, neuron by neuron.

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
    widest = max([torch.Size(op.in_shape).numel() for op in ops[:end]] + [shape.numel()])
    chunk = max(1, _MAX_COEFFICIENTS // (2 * n * widest))
    eye = torch.eye(shape.numel(), dtype=lower.dtype, device=lower.device)
    for first in range(0, len(unstable), chunk):
        neurons = unstable[first : first + chunk]
        rows = eye[neurons]  # (s, d): one row per neuron
        spec = torch.cat([rows, -rows]).view(1, 2 * len(neurons), *shape)
        bounds = backward_lower(ops, spec, relaxations, box, start=0, end=end, rounding=rounding)  # (N, 2s)
        crown_lower, crown_upper = bounds[:, : len(neurons)], -bounds[:, len(neurons) :]
        # tighten only where this sample's neuron is unstable, so no bound depends on the batch
        tighten = is_unstable[:, neurons]
        old_lower, old_upper = lower_flat[:, neurons], upper_flat[:, neurons]
        lower_flat[:, neurons] = torch.where(tighten, torch.maximum(old_lower, crown_lower), old_lower)
        upper_flat[:, neurons] = torch.where(tighten, torch.minimum(old_upper, crown_upper), old_upper)
    return lower_flat.view(n, *shape), upper_flat.view(n, *shape)


def other_classes(y: Tensor, classes: int) -> Tensor:
    """(N, classes - 1): the classes j != y of each sample, in increasing order (no host sync)."""
    j = torch.arange(classes - 1, device=y.device)
    return j + (j >= y[:, None]).long()


@dataclass(frozen=True)
class MarginBounds:
    """Lower bounds on z_y - z_j over the box, one column per class j != y (see `others`)."""

    others: Tensor  # (N, classes - 1) the class j of each column
    ibp: Tensor  # (N, classes - 1) interval bounds, the last affine layers elided
    crown: Tensor | None  # (N, classes - 1) CROWN's backward bound; None for method "ibp"
    classes: int

    def spread(self, values: Tensor, *, fill: float) -> Tensor:
        """Columns per class (N, classes): values at j != y, `fill` at j = y."""
        out = torch.full((len(values), self.classes), fill, dtype=values.dtype, device=values.device)
        return out.scatter(1, self.others, values)

    def certified(self) -> Tensor:
        """The larger of the two sound bounds per margin (N, classes - 1)."""
        return self.ibp if self.crown is None else torch.maximum(self.crown, self.ibp)


def margin_bounds(
    ops: Chain, box_lower: Tensor, box_upper: Tensor, y: Tensor, *, method: str, sound: bool = False
) -> MarginBounds:
    """Lower bounds on the margins z_y - z_j of the chain over the box [box_lower, box_upper].

    box_*: (N, *input_shape) in the chain's dtype; y: (N,) labels. IBP's bound is always
    computed; "crown" and "crown-ibp" add CROWN's backward bound from the margin specification.
    """
    classes = ops[-1].out_shape[0]
    others = other_classes(y, classes)
    eye = torch.eye(classes, dtype=box_lower.dtype, device=box_lower.device)
    spec = eye[y].unsqueeze(1) - eye[others]  # (N, classes - 1, classes): rows e_y - e_j
    nonlinear = [i for i, op in enumerate(ops) if isinstance(op, (ReLU, MaxPool2d))]
    # the affine layers after the last nonlinearity are folded into the specification (elision)
    tail_start = nonlinear[-1] + 1 if nonlinear else 0
    if method != "ibp":
        for op in ops:
            if isinstance(op, MaxPool2d):
                raise ModelError(f"{method} has no relaxation for the max-pooling layer {op.name!r}; use method ibp")

    rounding = Rounding(ops) if sound else None
    relaxations: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    lower, upper = box_lower, box_upper
    tail_box = (lower, upper)
    # sound bounds need magnitudes at the tail's inputs too, so IBP then runs to the logits
    for index in range(len(ops) if sound else tail_start):
        op = ops[index]
        if isinstance(op, ReLU) and method != "ibp":
            exact = sum(1 for p in ops[:index] if isinstance(p, ReLU) or p.mixes) <= 1
            if method == "crown" and not exact:
                lower, upper = _crown_intermediate(ops, index, relaxations, lower, upper, (box_lower, box_upper), rounding)
            relaxations[index] = relu_relaxation(lower, upper)
        if index == tail_start:
            tail_box = (lower, upper)
        vector = None if rounding is None else rounding.record(index, lower, upper)
        lower, upper = interval_step(op, lower, upper, sound=sound, allowance=vector)
    if rounding is None or tail_start == len(ops):  # training stopped there; or nothing to elide
        tail_box = (lower, upper)
    if rounding is not None and tail_start == len(ops):
        rounding.record(len(ops), lower, upper)

    # IBP's rows through the affine tail: every ordered pair of classes at once, rows shared by
    # the batch (matrix products, no per-sample coefficients), then each sample's rows e_y - e_j
    pairs = (eye.unsqueeze(1) - eye[other_classes(torch.arange(classes, device=y.device), classes)]).flatten(0, 1)
    every = backward_lower(ops, pairs.unsqueeze(0), {}, tail_box, start=tail_start, end=len(ops), rounding=rounding)
    rows = (y * (classes - 1)).unsqueeze(1) + torch.arange(classes - 1, device=y.device)
    ibp = every.gather(1, rows)  # (N, classes - 1)
    crown = None
    if method != "ibp":
        crown = backward_lower(ops, spec, relaxations, (box_lower, box_upper), start=0, end=len(ops), rounding=rounding)
    return MarginBounds(others=others, ibp=ibp, crown=crown, classes=classes)
