"""IBP and CROWN against independent references on tiny networks: the exact worst-case margin (by
enumerating activation patterns, one LP per pattern) and linear programs over the relaxations
(SciPy's HiGHS), built here from dense float64 matrices read off the torch modules.

What is exact and what is compared:
- exact worst case: the minimum of the margin over the clipped eps-ball, enumerated over the
  activation patterns of the neurons that can change sign; each pattern's minimum is an LP, and
  the network is evaluated (float64, directly) at the LP's minimiser, so the reference is a value
  the network attains in the box: every sound bound is <= it. Never claiming more is asserted.
- triangle LP: the tightest convex relaxation of each ReLU given exact pre-activation bounds
  (Ehlers' "Planet"/triangle relaxation; Salman et al., 2019): every layer-wise relaxation
  method, CROWN and IBP included, is <= it. Asserted with an LP tolerance of 1e-7.
- CROWN-relaxation LP: for one hidden layer, the pre-activation bounds are exact and CROWN's
  bound is exactly the LP over its own relaxation (the chord above, one CROWN-Ada line below, per
  unstable neuron); asserted equal within 1e-7 (measured: 1e-13). Likewise IBP's elided bound is
  exactly the LP with each hidden unit in its own interval [relu(l), relu(u)].
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog  # the `peers` extra, which CI installs
from torch import nn

from bound_references import lp_min, stages
from redblue.bounds import margin_bounds, outward_box
from redblue.bounds.network import linearize
from redblue.certify import margin_lower_bounds
from redblue.errors import ModelError

F64 = torch.float64
LP_TOL = 1e-7  # HiGHS' feasibility tolerance; measured agreement is 1e-13


def one_hidden_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).to(F64)


def one_hidden_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).to(F64)


def one_hidden_rgb_cnn(seed: int) -> nn.Sequential:
    """3 channels in, an odd non-square 3x5 image, and an eval-mode BatchNorm with drawn statistics
    (a negative scale among them) between the convolution and the ReLU: 2x2x2 hidden units."""
    torch.manual_seed(seed)
    batch_norm = nn.BatchNorm2d(2)
    with torch.no_grad():
        batch_norm.running_mean.copy_(torch.tensor([0.3, -0.2]))
        batch_norm.running_var.copy_(torch.tensor([0.5, 2.0]))
        batch_norm.weight.copy_(torch.tensor([1.5, -0.7]))
        batch_norm.bias.copy_(torch.tensor([0.1, -0.05]))
    layers = [nn.Conv2d(3, 2, 3, stride=(2, 3), padding=1), batch_norm, nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(F64).eval()


def two_hidden_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(F64)


NETS = {
    "mlp": (one_hidden_mlp, (5,)),
    "cnn": (one_hidden_cnn, (1, 3, 3)),
    "cnn-rgb-bn": (one_hidden_rgb_cnn, (3, 3, 5)),
    "mlp2": (two_hidden_mlp, (4,)),
}


def samples(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((3, *shape), generator=g, dtype=F64), torch.randint(0, 3, (3,), generator=g)


def interval(w: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact range of w x + b over the box [lo, hi] (one affine layer: every corner is attainable)."""
    w_pos, w_neg = np.clip(w, 0, None), np.clip(w, None, 0)
    return w_pos @ lo + w_neg @ hi + b, w_pos @ hi + w_neg @ lo + b


# --- the exact worst case, by activation patterns --------------------------------------------------


def network_value(layers, c: np.ndarray, x: np.ndarray) -> float:
    """c . f(x) in float64, f the dense network."""
    h = x
    for k, (w, b) in enumerate(layers):
        h = w @ h + b
        if k < len(layers) - 1:
            h = np.maximum(h, 0)
    return float(c @ h)


def exact_minimum(layers, c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """min over the box of c . f(x), for one or two hidden layers: over every activation pattern of
    the neurons whose sign can change, minimise the (then affine) objective on the pattern's region
    by LP, and evaluate the network itself at the minimiser (a value attained in the box)."""
    (w1, b1), *rest = layers
    l1, u1 = interval(w1, b1, lo, hi)
    free1 = [i for i in range(len(b1)) if l1[i] < 0 < u1[i]]
    best = np.inf
    for pattern1 in itertools.product((0, 1), repeat=len(free1)):
        on1 = (l1 >= 0).astype(float)
        on1[free1] = pattern1
        # rows of A_ub x <= b_ub: the sign of each free neuron's pre-activation
        rows = [((1 - 2 * p) * w1[i], -(1 - 2 * p) * b1[i]) for i, p in zip(free1, pattern1)]
        a1, c1 = w1 * on1[:, None], b1 * on1  # h1 = a1 x + c1 on this region
        if len(rest) == 1:
            best = min(best, _pattern_minimum(layers, c, rows, rest[0][0] @ a1, lo, hi))
            continue
        (w2, b2), (w3, _) = rest
        a2, c2 = w2 @ a1, w2 @ c1 + b2  # z2 = a2 x + c2 on this region
        l2, u2 = interval(a2, c2, lo, hi)
        free2 = [i for i in range(len(b2)) if l2[i] < 0 < u2[i]]
        for pattern2 in itertools.product((0, 1), repeat=len(free2)):
            on2 = (l2 >= 0).astype(float)
            on2[free2] = pattern2
            rows2 = rows + [((1 - 2 * p) * a2[i], -(1 - 2 * p) * c2[i]) for i, p in zip(free2, pattern2)]
            best = min(best, _pattern_minimum(layers, c, rows2, w3 @ (a2 * on2[:, None]), lo, hi))
    return best


def _pattern_minimum(layers, c, rows, linear_map: np.ndarray, lo, hi) -> float:
    a_ub = np.array([r for r, _ in rows]) if rows else None
    b_ub = np.array([v for _, v in rows]) if rows else None
    result = linprog(c @ linear_map, A_ub=a_ub, b_ub=b_ub, bounds=list(zip(lo, hi)), method="highs")
    if result.status == 2:  # no point of the box has this pattern
        return np.inf
    assert result.status == 0, result.message
    return network_value(layers, c, np.clip(result.x, lo, hi))


# --- LPs over relaxations --------------------------------------------------------------------------


def relaxation_lp(layers, c: np.ndarray, lo: np.ndarray, hi: np.ndarray, pre_bounds, lower: str) -> float:
    """min c . f over a relaxation of every ReLU given pre-activation bounds [(l, u) per hidden layer].

    Variables: x, then one h per neuron of each hidden layer. Each ReLU h = relu(z) with z in
    [l, u] is relaxed to: h = z (l >= 0), h = 0 (u <= 0), and for unstable neurons the chord
    h <= u (z - l) / (u - l) above and, below, h >= max(0, z) ("triangle") or CROWN-Ada's single
    line h >= z if u >= -l else h >= 0 ("crown").
    """
    d, sizes = len(lo), [len(b) for _, b in layers[:-1]]
    n = d + sum(sizes)
    a_ub, b_ub, a_eq, b_eq = [], [], [], []
    bounds = list(zip(lo, hi)) + [(None, None)] * sum(sizes)
    prev = np.zeros((d, n))
    prev[:, :d] = np.eye(d)  # the previous layer's output as a linear function of the variables
    prev_const = np.zeros(d)
    offset = d
    for (w, b), (l, u), size in zip(layers[:-1], pre_bounds, sizes):
        z, z_const = w @ prev, w @ prev_const + b  # z = z x_vars + z_const
        h = np.zeros((size, n))
        h[:, offset : offset + size] = np.eye(size)
        for i in range(size):
            if l[i] >= 0:
                a_eq.append(h[i] - z[i]), b_eq.append(z_const[i])
            elif u[i] <= 0:
                a_eq.append(h[i]), b_eq.append(0.0)
            else:
                s = u[i] / (u[i] - l[i])
                a_ub.append(h[i] - s * z[i]), b_ub.append(s * (z_const[i] - l[i]))  # h <= s (z - l)
                if lower == "triangle" or u[i] >= -l[i]:
                    a_ub.append(z[i] - h[i]), b_ub.append(-z_const[i])  # h >= z
                if lower == "triangle" or u[i] < -l[i]:
                    a_ub.append(-h[i]), b_ub.append(0.0)  # h >= 0
        prev, prev_const, offset = h, np.zeros(size), offset + size
    w_last, b_last = layers[-1]
    value = lp_min(c @ w_last @ prev, a_ub=np.array(a_ub) if a_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                   a_eq=np.array(a_eq) if a_eq else None, b_eq=np.array(b_eq) if b_eq else None, bounds=bounds)
    return value + float(c @ b_last)


def exact_pre_bounds(layers, lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact range of every hidden layer's pre-activations over the box (enumeration, as above)."""
    result = []
    for k in range(len(layers) - 1):
        prefix = layers[:k] + [layers[k]]
        size = len(layers[k][1])
        eye = np.eye(size)
        if k == 0:
            result.append(interval(*layers[0], lo, hi))
            continue
        # the prefix ends with the pre-activation: wrap it as a net whose output is z_k
        lows = [exact_minimum(prefix, eye[i], lo, hi) for i in range(size)]
        highs = [-exact_minimum(prefix, -eye[i], lo, hi) for i in range(size)]
        result.append((np.array(lows), np.array(highs)))
    return result


# --- the tests -----------------------------------------------------------------------------------------


def ours(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str):
    """(CROWN part, IBP part) of redblue's sound float64 bounds, (N, classes - 1) each, and `others`."""
    ops = linearize(model, x, dtype=F64)
    bounds = margin_bounds(ops, *outward_box(x, eps), y, method=method, sound=True)
    return bounds


@pytest.mark.parametrize("net", ["mlp", "cnn", "cnn-rgb-bn"])
def test_one_hidden_layer_bounds_equal_their_relaxation_lps_and_never_exceed_the_exact_worst_case(net):
    build, shape = NETS[net]
    model = build(30)
    layers = [(w.numpy(), b.numpy()) for w, b in stages(model, shape)]
    x, y = samples(shape, 31)
    unstable_seen = 0
    for eps in (0.05, 0.2):
        crown = ours(model, x, y, eps, "crown")
        certified = margin_lower_bounds(model, x, y, eps=eps, method="crown")
        for i in range(len(x)):
            lo, hi = (x[i].flatten() - eps).clamp(min=0).numpy(), (x[i].flatten() + eps).clamp(max=1).numpy()
            pre = [interval(*layers[0], lo, hi)]  # exact for one affine layer
            unstable_seen += int(((pre[0][0] < 0) & (pre[0][1] > 0)).sum())
            for col, j in enumerate(crown.others[i].tolist()):
                c = np.eye(3)[int(y[i])] - np.eye(3)[j]
                exact = exact_minimum(layers, c, lo, hi)
                triangle = relaxation_lp(layers, c, lo, hi, pre, "triangle")
                crown_lp = relaxation_lp(layers, c, lo, hi, pre, "crown")
                w2, b2 = layers[1]
                g = c @ w2  # IBP's relaxation: each hidden unit alone in [relu(l), relu(u)]
                ibp_lp = lp_min(g, bounds=list(zip(np.maximum(pre[0][0], 0), np.maximum(pre[0][1], 0)))) + c @ b2
                assert abs(crown.crown[i, col].item() - crown_lp) <= LP_TOL
                assert abs(crown.ibp[i, col].item() - ibp_lp) <= LP_TOL
                assert abs(certified[i, j].item() - max(crown_lp, ibp_lp)) <= LP_TOL
                # never claiming more: bounds <= triangle LP <= exact worst case
                assert max(crown.crown[i, col].item(), crown.ibp[i, col].item()) <= triangle + LP_TOL
                assert triangle <= exact + LP_TOL
    assert unstable_seen >= 10  # the relaxations were exercised, not only stable neurons


def test_batch_norm_in_train_mode_is_refused_in_one_line_without_touching_its_statistics():
    model = one_hidden_rgb_cnn(30).train()
    before = model[1].running_mean.clone()
    x, _ = samples((3, 3, 5), 31)
    with pytest.raises(ModelError, match="BatchNorm layer '1': in train mode") as caught:
        linearize(model, x)
    assert "\n" not in str(caught.value)
    assert torch.equal(model[1].running_mean, before)


def test_two_hidden_layer_bounds_never_exceed_the_triangle_lp_with_exact_intermediate_bounds():
    build, shape = NETS["mlp2"]
    model = build(32)
    layers = [(w.numpy(), b.numpy()) for w, b in stages(model, shape)]
    x, y = samples(shape, 33)
    gaps = []
    for eps in (0.1, 0.3):
        bounds = {m: ours(model, x, y, eps, m) for m in ("ibp", "crown-ibp", "crown")}
        for i in range(len(x)):
            lo, hi = (x[i] - eps).clamp(min=0).numpy(), (x[i] + eps).clamp(max=1).numpy()
            pre = exact_pre_bounds(layers, lo, hi)
            for col, j in enumerate(bounds["crown"].others[i].tolist()):
                c = np.eye(3)[int(y[i])] - np.eye(3)[j]
                exact = exact_minimum(layers, c, lo, hi)
                triangle = relaxation_lp(layers, c, lo, hi, pre, "triangle")
                assert triangle <= exact + LP_TOL
                for method, b in bounds.items():
                    for part in (b.ibp, b.crown):
                        if part is not None:
                            assert part[i, col].item() <= triangle + LP_TOL, (method, eps, i, j)
                gaps.append(exact - bounds["crown"].crown[i, col].item())
    # CROWN is loose here (two layers of relaxation), so the check above is not an equality in disguise
    assert max(gaps) > 1e-3
