"""The rounding allowance that makes float64 bounds sound for the real-arithmetic network.

A certificate is a claim about the network computed exactly, in real numbers, from its stored
weights (float32 weights are exact in float64). Bounds computed in floating point can round
inwards; certification therefore computes in IEEE-754 binary64 (round to nearest) and widens
every bound outward by an allowance proven below, then certifies only where the widened lower
bound of every margin is > 0. Training bounds skip the allowance: it changes nothing a gradient
can see (about 1e-12 relative), and soundness matters only when a certificate is issued.

Notation: u = 2^-53 is the unit roundoff, gamma(n) = n u / (1 - n u). Two facts are used
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 2002, sections 2.2 and 3.1):

  (F1) a sum of n products, computed in any order, with or without fused multiply-adds (every
       BLAS matrix product and every im2col/col2im convolution is such a sum), is within
       gamma(n) * sum |p_i q_i| of its exact value, plus n * 2^-1075 for underflow;
  (F2) the same sum of non-negative terms is at least (1 - gamma(n)) times its exact value.

Every operator of the chain gets a term count n_k >= 2 (numel in + numel out) + 2 (ops) + 8,
more than any sum it performs plus the sums of the bound's constant (`terms`), and the allowance
factor is 4 gamma(n_k). Bounds are written lo <= z <= hi; M = max(|lo|, |hi|) is a sound bound
on |z| (computed exactly: abs and max do not round).

IBP through an affine layer y = W z + b, fan-in n: with m = fl((lo + hi) / 2) and
r = fl((hi - lo) / 2), every z of the interval lies within (r + u |m|)(1 + 2u) of m, and
|m| + r <= M (1 + u). By (F1) and (F2), y >= fl(W m + b) - fl(|W| r) - E with
E <= (gamma(n + 1) + 2 gamma(n) + 6u) S, S = |W| M + |b|, which includes the rounding of the
two final subtractions (each at most u (|W m + b| + |W| r + E) <= u S (1 + 2 gamma(n))). Since
n_k >= n + 8, the allowance 4 gamma(n_k) fl(S) >= (4n + 31) u S covers E <= (3n + 9) u S;
symmetrically for the upper bound. ReLU (a clamp), max-pooling (a max) and reshapes are exact.

CROWN's backward pass keeps the invariant spec . f(x) >= a_k . z_k + c_k - A_k for every x in the
box, with a_k the *computed* coefficients at layer k, so no error compounds:
  - through y = W z + b: a . y = fl(a W) . z + fl(a . b) + e with |e| <= gamma(n) |a| (|W| M + |b|)
    by (F1), since |z| <= M;
  - through a ReLU relaxed on [lo, hi] (sound bounds): the lower lines (slope 0 or 1) hold for
    every z; the computed chord g(z) = s z + t, s = fl(hi / fl(hi - lo)), t = fl(-s lo)
    satisfies relu(z) <= g(z) + 4u (|lo| + |hi|) on [lo, hi] (check the two end points,
    g(lo) = -s lo delta and hi - g(hi) <= gamma(2) hi + u |s lo|; relu is convex), and
    a_neg * s rounds by u |a|; with the d-term intercept sum, the step errs by at most
    (9u + gamma(d + 1)) |a| . M;
  - at the input box: fl(a+ . lo + a- . hi) errs by gamma(2d) |a| . M;
  - the constant c is a sum of at most 2 (ops) + 2 terms, each at most |a_k| . V_k in size
    (V_k = |W| M + |b| or M), so its rounding is below gamma(2 ops + 2) sum_k |a_k| . V_k.
Summed, the error is below sum_k gamma(n_k) |a_k| . V_k; the allowance subtracted is
sum_k 4 gamma(n_k) fl(|a_k| . V_k) + 2^-1000. The factor 4 over 1 covers the rounding of the
allowance itself (non-negative sums: relative error below gamma(10^7) < 1e-8 by (F2)) and of the
final subtraction (at most u (|bound| + allowance), where |bound| <= sum_k |a_k| . V_k (1 + gamma)
and gamma(n_k) >= 8u). 2^-1000 exceeds n * 2^-1075 for any n < 2^75 (underflow).

The input box [max(x - eps, 0), min(x + eps, 1)] is widened by one ulp outward before clipping,
since fl(x - eps) may round inward. Normalisation layers are the exact (x - mean) / std of their
stored mean and std; 1/std and -mean/std are within u and 2u (relative) of exact, which the
factor 4 gamma(n_k) >= 32u covers as part of |W| M + |b|.

Assumption: float64 matrix products and convolutions use classical summation (MKL, OpenBLAS,
cuBLAS, PyTorch's im2col convolutions), never Strassen, FFT or Winograd algorithms, whose error
is not elementwise-bounded; certification turns cuDNN off while it computes (see `classical`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

UNIT_ROUNDOFF = 2.0**-53
UNDERFLOW = 2.0**-1000


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u) for float64, the relative error bound of an n-term sum."""
    if n * UNIT_ROUNDOFF >= 0.5:
        raise ValueError(f"{n} terms are beyond the float64 rounding analysis (n u must stay below 1/2)")
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def allowance_factor(terms: int) -> float:
    """4 gamma(terms): the allowance per unit of |coefficient| x magnitude (see the module docstring)."""
    return 4.0 * gamma(terms)


def outward_box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The clipped L-inf box around x in float64, each side one ulp outward before clipping to [0, 1].

    fl(x - eps) lies within half an ulp of x - eps, so its next float towards -inf is below it.
    """
    x = x.to(torch.float64)
    lower = torch.nextafter(x - eps, torch.tensor(-torch.inf, dtype=torch.float64, device=x.device))
    upper = torch.nextafter(x + eps, torch.tensor(torch.inf, dtype=torch.float64, device=x.device))
    return lower.clamp_min(0.0), upper.clamp_max(1.0)


@contextlib.contextmanager
def classical(device: torch.device) -> Iterator[None]:
    """Turn cuDNN off on CUDA, so float64 convolutions take the im2col path (F1 holds for it)."""
    if device.type != "cuda":
        yield
        return
    with torch.backends.cudnn.flags(enabled=False):
        yield
