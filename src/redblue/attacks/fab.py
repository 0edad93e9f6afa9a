"""FAB (Croce & Hein, ICML 2020): the fast adaptive boundary attack, L-inf and L2, untargeted and targeted.

"Minimally distorted adversarial examples with a fast adaptive boundary attack". FAB searches the
smallest adversarial perturbation: at the current point x_k it linearises the model, picks the
nearest linearised decision boundary (untargeted: over every other class; FAB-T: the one of the
target class), and projects both x_k and the original x onto that hyperplane within the box
[0, 1]^d (`project_onto_hyperplane_in_box`, the part that needs care). The next point is a
convex combination of the two projections, each extrapolated by eta, with at most alpha_max of
the weight on the one from x (so the iterate is pulled back towards x when it is far). When an
iterate is adversarial it is kept if it is the closest one yet, and the search backs off towards
x by beta. AutoAttack's fab and fab-t, in L-inf and L2.

As in the reference implementation (fra31/auto-attack, `fab_base.py`, on the package index as
`pyautoattack`): the first restart starts at x itself and each later one at a random point at
distance eps / 2 (`_random_start`); FAB-T attacks the 2nd..(n+1)-th classes of the clean logits
in turn, as APGD-T does; every run attacks only the samples not yet fooled within eps, and a
misclassification into any class counts. FAB-T with one restart draws no random numbers.

The contract's ball is imposed on the answer, as for CW and DeepFool: the closest adversarial
example found, projected into the eps-ball (a no-op when it is within eps, so a sample counts as
fooled exactly when FAB found a perturbation within eps), or x where none was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    NORMS,
    all_finite,
    check_eps,
    eval_mode,
    logit_differences_and_gradients,
    per_sample,
    per_sample_norm,
    project,
)
from redblue.attacks.registry import register, run_attack
from redblue.errors import AttackError, require_choice, require_in_range, require_positive

# the reference's floor on the projections' norms, so that alpha = a1 / (a1 + a2) is defined
MIN_DISTANCE = 1e-8


def project_onto_hyperplane_in_box(points: Tensor, w: Tensor, b: Tensor, *, norm: str) -> Tensor:
    """The smallest step d (L-inf or L2) that takes each point onto its hyperplane inside the box.

    points, w: (M, D); b: (M,). Per row, d minimises |d| subject to w . (p + d) = b and
    p + d in [0, 1]^D. Where the box does not reach the hyperplane, d goes to the corner of the box
    that comes closest to it. Returns d (M, D), exactly 0 where w is 0.

    Both norms have a solution of one form: with w's sign flipped so that the step must lower
    w . p by gap = |w . p - b|, each coordinate moves against w until it meets the box,
    d_i = -s_i min(lam, knot_i): for L-inf s_i = sign(w_i) and knot_i the room to the box edge
    (p_i where w_i > 0, 1 - p_i where w_i < 0); for L2 (the KKT point) s_i = w_i and
    knot_i = room_i / |w_i|. The decrease h(lam) = sum_i rate_i min(lam, knot_i), with rate_i
    |w_i| or w_i^2, is concave, piecewise linear and increasing, so the smallest lam with
    h(lam) = gap lies on the segment of the first sorted knot at which h reaches gap, found for
    every row at once by a sort, cumulative sums and `searchsorted` (no loop).
    """
    require_choice("norm", norm, NORMS)
    gap = (w * points).sum(dim=1) - b  # (M,)
    w = torch.where((gap < 0)[:, None], -w, w)
    gap = gap.abs()
    room = torch.where(w > 0, points, 1.0 - points)  # how far each coordinate can move against w
    if norm == "linf":
        rate, knot, along = w.abs(), room, w.sign()
    else:
        rate = w * w
        # a zero rate (w_i = 0, or w_i^2 below the dtype's range) contributes nothing: knot 0, d_i 0
        knot = torch.where(rate > 0, room / w.abs().clamp_min(torch.finfo(w.dtype).tiny), 0.0)
        along = w
    knots, order = knot.sort(dim=1)
    rates = rate.gather(1, order)
    saturated = rates * knots
    below = saturated.cumsum(dim=1) - saturated  # sum over earlier knots of rate * knot
    above = rates.flip(1).cumsum(dim=1).flip(1)  # sum of rates from this knot on
    # h at each knot; cummax: rounding must not break the order searchsorted relies on
    reached = torch.cummax(below + knots * above, dim=1).values
    segment = torch.searchsorted(reached, gap[:, None].contiguous()).squeeze(1)  # first knot with h >= gap
    feasible = segment < points.shape[1]
    at = segment.clamp(max=points.shape[1] - 1)[:, None]
    lam = ((gap - below.gather(1, at).squeeze(1)) / above.gather(1, at).squeeze(1).clamp_min(torch.finfo(w.dtype).tiny))
    lam = torch.where(feasible, lam.clamp_min(0.0), torch.inf)  # infeasible: every coordinate to its edge
    return -along * torch.minimum(lam[:, None], knot)


def _random_start(x: Tensor, eps: float, norm: str, generator: Generator | None) -> Tensor:
    """The reference's restart point: a random direction (uniform in [-1, 1]^d for L-inf, Gaussian for
    L2) scaled to norm eps / 2, clipped to [0, 1]."""
    if norm == "linf":
        t = 2.0 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1.0
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + 0.5 * eps * t / per_sample(per_sample_norm(t, norm), t)).clamp(0.0, 1.0)


@dataclass
class _RunResult:
    x_best: Tensor  # (N, ...) the closest adversarial iterate, x where none was
    best_norm: Tensor  # (N,) its distance to x, inf where none was
    finite: Tensor  # () bool: every difference and gradient of the run was finite


def _fab_run(
    model: nn.Module, x: Tensor, y: Tensor, x_start: Tensor, *, others: Tensor, params: FABParams
) -> _RunResult:
    """One FAB run from x_start against the classes `others` (N, K): K = C - 1 untargeted, 1 targeted.

    Per iteration one forward pass and K backward passes, then one forward pass on the new iterate
    (whether it is adversarial), as the reference runs it; no device sync. The caller runs the
    model in eval mode.
    """
    norm, n = params.norm, len(x)
    x0 = x.flatten(1)
    dual = 1 if norm == "linf" else 2
    rows = torch.arange(n, device=x.device)
    x_cur = x_start
    x_best = x.clone()
    best_norm = torch.full((n,), torch.inf, dtype=x.dtype, device=x.device)
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    for _ in range(params.n_iter):
        _, differences, gradients = logit_differences_and_gradients(model, x_cur, y, others)  # (N, K), (N, K, D)
        finite = finite & all_finite(differences) & all_finite(gradients)
        distances = differences.abs() / (gradients.norm(p=dual, dim=2) + 1e-12)  # to each linearised boundary
        nearest = distances.argmin(dim=1)
        w = gradients[rows, nearest]  # (N, D)
        x_flat = x_cur.flatten(1)
        b = (w * x_flat).sum(dim=1) - differences[rows, nearest]  # the boundary: w . z = b
        steps = project_onto_hyperplane_in_box(torch.cat((x_flat, x0)), torch.cat((w, w)), torch.cat((b, b)), norm=norm)
        from_cur, from_x = steps[:n].view_as(x), steps[n:].view_as(x)
        sizes = per_sample_norm(steps, norm).clamp_min(MIN_DISTANCE)
        alpha = per_sample((sizes[:n] / (sizes[:n] + sizes[n:])).clamp(0.0, params.alpha_max), x)
        x_cur = ((x_cur + params.eta * from_cur) * (1.0 - alpha) + (x + params.eta * from_x) * alpha).clamp(0.0, 1.0)

        with torch.no_grad():
            is_adv = model(x_cur).argmax(dim=1) != y
        distance = per_sample_norm(x_cur - x, norm)
        closer = is_adv & (distance < best_norm)
        x_best = torch.where(per_sample(closer, x), x_cur, x_best)
        best_norm = torch.where(closer, distance, best_norm)
        # back off towards x from an adversarial iterate, to look for a closer one
        x_cur = torch.where(per_sample(is_adv, x), x + (x_cur - x) * params.beta, x_cur)
    return _RunResult(x_best=x_best, best_norm=best_norm, finite=finite)


def fab_closest(
    model: nn.Module, x: Tensor, y: Tensor, params: FABParams, generator: Generator | None, *, targeted: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """FAB's search: `restarts` runs (FAB-T: for each of the `n_target_classes` highest other classes
    of the clean logits in turn), each on the samples not yet fooled within eps.

    Returns (x_closest (N, ...), distance (N,), finite): per sample the closest adversarial example
    found and its distance to x in params.norm, before any eps-ball (x and inf where none was found;
    x and 0 where the model already misclassifies x); finite: every run's differences and gradients
    were. One device sync per run, to attack only the samples still robust.
    """
    x = x.detach()
    eps, norm = params.eps, params.norm
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    with torch.no_grad(), eval_mode(model):
        clean_logits = model(x)  # (N, C)
    n_classes = clean_logits.shape[1]
    if n_classes < 2:
        raise AttackError(f"FAB needs at least 2 classes, the model has {n_classes}")
    robust = clean_logits.argmax(dim=1) == y
    x_closest = x.clone()
    distance = torch.where(robust, torch.inf, 0.0).to(x.dtype)
    if targeted:
        # APGD-T's order (the reference's): classes sorted ascending, the target of rank r read at -(r + 1)
        ascending = clean_logits.sort(dim=1).indices
        n_targets = min(params.n_target_classes, n_classes - 1)
        runs = [(rank, r) for rank in range(1, n_targets + 1) for r in range(params.restarts)]
    else:
        others_all = (y[:, None] + torch.arange(1, n_classes, device=x.device)) % n_classes  # every class but y
        runs = [(0, r) for r in range(params.restarts)]

    with eval_mode(model):
        for target_rank, restart in runs:
            todo = (distance > eps).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            others = ascending[todo, -(target_rank + 1), None] if targeted else others_all[todo]
            x_todo = x[todo]
            x_start = x_todo if restart == 0 else _random_start(x_todo, eps, norm, generator)
            run = _fab_run(model, x_todo, y[todo], x_start, others=others, params=params)
            finite &= run.finite
            closer = run.best_norm < distance[todo]
            x_closest[todo] = torch.where(per_sample(closer, x_todo), run.x_best, x_closest[todo])
            distance[todo] = torch.where(closer, run.best_norm, distance[todo])
    return x_closest, distance, finite


def run_fab(
    model: nn.Module, x: Tensor, y: Tensor, params: FABParams, generator: Generator | None, *, targeted: bool
) -> tuple[Tensor, Tensor]:
    """FAB's runner (see `registry`): the closest adversarial example found (`fab_closest`), projected
    into the eps-ball; x itself where none was found or the model already misclassifies it."""
    if params.eps == 0 or len(x) == 0:
        return x.detach().clone(), torch.ones((), dtype=torch.bool, device=x.device)
    x_closest, _, finite = fab_closest(model, x, y, params, generator, targeted=targeted)
    return project(x_closest, center=x, eps=params.eps, norm=params.norm), finite


@dataclass(frozen=True)
class FABParams:
    """FAB's budget and step rules, with the reference's defaults (AutoAttack's)."""

    eps: float
    n_iter: int = 100
    restarts: int = 1
    alpha_max: float = 0.1  # at most this weight on the projection of x
    eta: float = 1.05  # extrapolation past the linearised boundary
    beta: float = 0.9  # back-off towards x after an adversarial iterate

    norm: ClassVar[str] = "linf"
    # gradient evaluations per iteration (a forward pass a third of one, a backward two thirds), for
    # the cascade's cost order: a forward, a backward per other class (9 on MNIST), the forward that
    # judges the new iterate
    passes_per_step: ClassVar[float] = (1 + 2 * 9 + 1) / 3

    def __post_init__(self) -> None:
        check_eps(self.eps, self.norm)
        require_positive("n_iter", self.n_iter)
        require_positive("restarts", self.restarts)
        require_in_range("alpha_max", self.alpha_max, 0.0, 1.0)
        require_positive("eta", self.eta)
        require_in_range("beta", self.beta, 0.0, 1.0)


@dataclass(frozen=True)
class FABL2Params(FABParams):
    norm: ClassVar[str] = "l2"


@dataclass(frozen=True)
class FABTParams(FABParams):
    # AutoAttack's standard version attacks the 9 other classes of MNIST/CIFAR-10 in turn
    n_target_classes: int = 9
    passes_per_step: ClassVar[float] = (1 + 2 + 1) / 3  # one backward: the target's boundary only

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("n_target_classes", self.n_target_classes)


@dataclass(frozen=True)
class FABTL2Params(FABTParams):
    norm: ClassVar[str] = "l2"


_PARAMS_TYPES = {("linf", False): FABParams, ("l2", False): FABL2Params, ("linf", True): FABTParams, ("l2", True): FABTL2Params}


def fab(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    targeted: bool = False,
    n_iter: int = FABParams.n_iter,
    restarts: int = FABParams.restarts,
    alpha_max: float = FABParams.alpha_max,
    eta: float = FABParams.eta,
    beta: float = FABParams.beta,
    n_target_classes: int = FABTParams.n_target_classes,
    generator: Generator | None = None,
) -> Tensor:
    """FAB (Croce & Hein, 2020): the closest adversarial example on the way to the nearest boundary.

    x: (N, ...) pixels in [0, 1]; y: (N,) labels. norm "linf" or "l2"; targeted: FAB-T, over the
    `n_target_classes` highest other classes in turn (see `run_fab`). Returns x_adv (detached, in
    [0, 1], within eps of x in `norm`): the closest adversarial example found, projected into the ball.
    """
    require_choice("norm", norm, NORMS)
    values = {"eps": eps, "n_iter": n_iter, "restarts": restarts, "alpha_max": alpha_max, "eta": eta, "beta": beta}
    params = _PARAMS_TYPES[(norm, targeted)](**values, **({"n_target_classes": n_target_classes} if targeted else {}))
    name = ("fab-t" if targeted else "fab") + ("-l2" if norm == "l2" else "")
    return run_attack(name, partial(run_fab, targeted=targeted), model, x, y, params, generator)


for _name, _params_type, _targeted, _summary in (
    ("fab", FABParams, False, "Fast adaptive boundary attack, L-inf: the closest adversarial example, kept within eps (Croce & Hein, 2020)."),
    ("fab-t", FABTParams, True, "FAB towards the top other classes in turn, L-inf (AutoAttack's fab-t)."),
    ("fab-l2", FABL2Params, False, "Fast adaptive boundary attack, L2: the closest adversarial example, kept within eps (Croce & Hein, 2020)."),
    ("fab-t-l2", FABTL2Params, True, "FAB towards the top other classes in turn, L2 (AutoAttack's fab-t)."),
):
    register(_name, _params_type, run=partial(run_fab, targeted=_targeted), norm=_params_type.norm, summary=_summary)(
        partial(fab, norm=_params_type.norm, targeted=_targeted)
    )
