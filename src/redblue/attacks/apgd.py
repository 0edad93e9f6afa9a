"""Auto-PGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum, CE / DLR / targeted DLR losses.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", Algorithm 1: step size 2*eps, momentum 0.75, and at the checkpoints the step size of a
sample is halved (restarting it from its best point) when at most rho of its steps since the
last checkpoint raised the loss, or when neither its step size nor its best loss changed since
then. AutoAttack's apgd-ce, apgd-dlr and apgd-t, in L-inf and L2.

Where the paper and the reference implementation (fra31/auto-attack, `autopgd_base.py`, on the
package index as `pyautoattack`) differ, this follows the reference, step for step, so that the
same images, seed and model give the same adversarial examples (a test checks this):
- the random start is x + eps * t / |t| (t uniform in [-1, 1]^d for L-inf, Gaussian for L2),
  clipped to [0, 1]: on the ball's surface, not uniform in it;
- the checkpoints come from integer window lengths (`apgd_checkpoints`), not ceil(p_j * n_iter);
- the oscillation test counts increases <= rho * window (not <); the first window's first
  comparison is with 0 (the reference reads a row of its loss history not yet written), and after
  a restart from the best point the next step is compared with the loss before the restart;
- the "no progress" condition cannot fire at the first checkpoint (as if the step size had just
  been reduced);
- APGD-T's targets are the 2nd..(n+1)-th classes of the clean logits sorted ascending, read
  from the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    NORMS,
    LossFn,
    all_finite,
    ce_loss,
    check_eps,
    dlr_loss,
    eval_mode,
    loss_logits_and_gradient,
    per_sample,
    targeted_dlr_loss,
)
from redblue.attacks.registry import register, run_attack
from redblue.errors import AttackError, require_choice, require_in_range, require_positive

APGD_LOSSES = ("ce", "dlr", "targeted-dlr")
MOMENTUM = 0.75  # the paper's alpha; the first step has none


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The iterations (counted from 1) after which the step size is checked, as the reference
    computes them: a first window of max(int(0.22 n), 1) iterations, each next one shorter by
    max(int(0.03 n), 1) but at least max(int(0.06 n), 1), while it fits in n_iter.

    For 100 this is the paper's ceil(p_j * 100) (22, 41, 57, 70, 80, 87, 93, 99); for 50 it is
    11, 21, 30, 38, 45. Python's float products and int() are the reference's own arithmetic.
    """
    window = max(int(0.22 * n_iter), 1)
    shortest = max(int(0.06 * n_iter), 1)
    shrink = max(int(0.03 * n_iter), 1)
    checkpoints = []
    at = window
    while at <= n_iter:
        checkpoints.append(at)
        window = max(window - shrink, shortest)
        at += window
    return checkpoints


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-sample choice: rows of `a` where mask (N,) is true, else rows of `b`."""
    return torch.where(per_sample(mask, a), a, b)


def _l2_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm as (N, 1, ..., 1), summed as the reference sums it."""
    return per_sample((t**2).flatten(1).sum(dim=1).sqrt(), t)


def _normalized(t: Tensor, norm: str) -> Tensor:
    """t / (|t| + 1e-12) per sample, |.| the L-inf or L2 norm (the reference's `normalize`)."""
    size = per_sample(t.abs().flatten(1).amax(dim=1), t) if norm == "linf" else _l2_norm(t)
    return t / (size + 1e-12)


def _start(x: Tensor, eps: float, norm: str, generator: Generator | None) -> Tensor:
    """The reference's random start: a random direction scaled to norm eps, clipped to [0, 1]."""
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + eps * _normalized(t, norm)).clamp(0.0, 1.0)


def _into_ball(point: Tensor, x: Tensor, eps: float, norm: str, bounds: tuple[Tensor, Tensor] | None) -> Tensor:
    """Project into the eps-ball around x and [0, 1] with the reference's arithmetic.

    L-inf: one clamp to the per-pixel bounds (the ball within [0, 1], computed once by the caller),
    equal to the reference's clip to the ball followed by the clip to [0, 1].
    """
    if bounds is not None:
        return torch.clamp(point, *bounds)
    delta = point - x
    return (x + _normalized(delta, "l2") * torch.clamp(_l2_norm(delta), max=eps)).clamp(0.0, 1.0)


@dataclass
class _RunResult:
    x_best: Tensor  # (N, ...) the highest-loss point of the run
    best_loss: Tensor  # (N,)
    is_adv: Tensor  # (N,) bool: some iterate was misclassified
    x_found: Tensor  # (N, ...) the last misclassified iterate where is_adv
    finite: Tensor  # () bool: every loss and gradient of the run was finite


def _apgd_run(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, loss: LossFn, n_iter: int, rho: float,
    generator: Generator | None,
) -> _RunResult:
    """One run of Algorithm 1 from a random start, as the reference runs it (see the module).

    One forward and backward per iteration and no device sync; finiteness is tracked on the
    device (`finite`) and checked once by the caller. The caller runs the model in eval mode.
    """
    gradient = partial(loss_logits_and_gradient, model, loss=loss)
    x_cur = _start(x, eps, norm, generator)
    loss_cur, logits, grad = gradient(x_cur, y)
    finite = all_finite(grad) & all_finite(loss_cur)
    x_prev = x_cur
    x_best, best_loss, grad_best = x_cur, loss_cur, grad
    is_adv = logits.argmax(dim=1) != y
    x_found = x_cur
    step_size = torch.full((len(x),), 2.0 * eps, dtype=x.dtype, device=x.device)
    bounds = ((x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)) if norm == "linf" else None

    checkpoints = apgd_checkpoints(n_iter)
    window_start = 0  # the iteration of the last checkpoint
    n_increases = torch.zeros(len(x), dtype=torch.long, device=x.device)
    # the loss the first step is compared with: the reference reads loss_steps[-1], a row of its
    # history still zero (the same row, so no increase, when n_iter is 1)
    loss_prev = torch.zeros_like(loss_cur) if n_iter > 1 else torch.full_like(loss_cur, math.inf)
    best_loss_at_check = best_loss
    reduced_at_check = torch.ones(len(x), dtype=torch.bool, device=x.device)

    for k in range(1, n_iter + 1):
        alpha = 1.0 if k == 1 else MOMENTUM
        direction = grad.sign() if norm == "linf" else _normalized(grad, "l2")
        z = _into_ball(x_cur + per_sample(step_size, x) * direction, x, eps, norm, bounds)
        x_next = _into_ball(x_cur + (z - x_cur) * alpha + (x_cur - x_prev) * (1.0 - alpha), x, eps, norm, bounds)
        x_prev, x_cur = x_cur, x_next
        loss_cur, logits, grad = gradient(x_cur, y)
        finite = finite & all_finite(grad) & all_finite(loss_cur)

        misclassified = logits.argmax(dim=1) != y
        x_found = _where(misclassified, x_cur, x_found)
        is_adv = is_adv | misclassified
        n_increases += loss_cur > loss_prev
        loss_prev = loss_cur
        improved = loss_cur > best_loss
        x_best, grad_best = _where(improved, x_cur, x_best), _where(improved, grad, grad_best)
        best_loss = torch.where(improved, loss_cur, best_loss)

        if k in checkpoints:
            window = k - window_start
            # Condition 1: at most rho of the window's steps raised the loss. (A long tensor against
            # a Python float compares in float32, as the reference's float32 threshold does.)
            oscillating = n_increases <= window * rho
            # Condition 2: neither the step size nor the best loss changed since the last checkpoint.
            stalled = ~reduced_at_check & (best_loss <= best_loss_at_check)
            reduce = oscillating | stalled
            step_size = torch.where(reduce, step_size / 2.0, step_size)
            # restart from the best point: the next step starts there, with the gradient taken there
            x_cur, grad = _where(reduce, x_best, x_cur), _where(reduce, grad_best, grad)
            reduced_at_check, best_loss_at_check = reduce, best_loss
            n_increases = torch.zeros_like(n_increases)
            window_start = k
    return _RunResult(x_best=x_best, best_loss=best_loss, is_adv=is_adv, x_found=x_found, finite=finite)


def run_apgd(
    model: nn.Module, x: Tensor, y: Tensor, params: APGDParams, generator: Generator | None, *, loss: str
) -> tuple[Tensor, Tensor]:
    """APGD's runner (see `registry`): `restarts` runs, each on the samples not yet fooled.

    loss "ce" and "dlr" are untargeted; "targeted-dlr" is APGD-T: for each of the
    `n_target_classes` highest other classes of the clean logits in turn, `restarts` runs of
    targeted DLR (any misclassification counts as success). Returns (x_adv, finite): for a fooled
    sample the last misclassified iterate of the run that fooled it, for a robust one its
    highest-loss point over all runs, x itself for a sample the model already misclassifies.
    One device sync per run, to attack only the samples still robust (as the reference does).
    """
    norm, eps = params.norm, params.eps
    x = x.detach()
    with torch.no_grad(), eval_mode(model):
        clean_logits = model(x)
    n_classes = clean_logits.shape[1]
    min_classes = {"ce": 2, "dlr": 3, "targeted-dlr": 4}[loss]
    if n_classes < min_classes:
        raise AttackError(f"APGD with the {loss} loss needs at least {min_classes} classes, the model has {n_classes}")

    is_adv = clean_logits.argmax(dim=1) != y
    x_adv = x.clone()
    best_loss = torch.full((len(x),), -math.inf, dtype=x.dtype, device=x.device)
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    if loss == "targeted-dlr":
        # the reference's order: classes sorted ascending, the target of rank r read at -(r + 1)
        ascending = clean_logits.sort(dim=1).indices  # (N, C)
        n_targets = min(params.n_target_classes, n_classes - 1)
        runs = [(rank, r) for rank in range(1, n_targets + 1) for r in range(params.restarts)]
    else:
        runs = [(0, r) for r in range(params.restarts)]

    with eval_mode(model):
        for target_rank, _ in runs:
            todo = (~is_adv).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            if loss == "targeted-dlr":
                loss_fn: LossFn = partial(_targeted_dlr, target=ascending[todo, -(target_rank + 1)])
            else:
                loss_fn = ce_loss if loss == "ce" else dlr_loss
            run = _apgd_run(model, x[todo], y[todo], eps=eps, norm=norm, loss=loss_fn, n_iter=params.n_iter,
                            rho=params.rho, generator=generator)  # fmt: skip
            finite &= run.finite
            better = run.best_loss > best_loss[todo]
            keep = _where(better, run.x_best, x_adv[todo])
            x_adv[todo] = _where(run.is_adv, run.x_found, keep)
            best_loss[todo] = torch.where(better, run.best_loss, best_loss[todo])
            is_adv[todo] = run.is_adv
    return x_adv, finite


def _targeted_dlr(logits: Tensor, y: Tensor, *, target: Tensor) -> Tensor:
    return targeted_dlr_loss(logits, y, target)


@dataclass(frozen=True)
class APGDParams:
    eps: float
    n_iter: int = 100
    restarts: int = 1
    rho: float = 0.75

    norm: ClassVar[str] = "linf"

    def __post_init__(self) -> None:
        check_eps(self.eps, self.norm)
        require_positive("n_iter", self.n_iter)
        require_positive("restarts", self.restarts)
        require_in_range("rho", self.rho, 0.0, 1.0)


@dataclass(frozen=True)
class APGDL2Params(APGDParams):
    norm: ClassVar[str] = "l2"


@dataclass(frozen=True)
class APGDTParams(APGDParams):
    # AutoAttack's standard version attacks the 9 other classes of MNIST/CIFAR-10 in turn
    n_target_classes: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("n_target_classes", self.n_target_classes)


@dataclass(frozen=True)
class APGDTL2Params(APGDTParams):
    norm: ClassVar[str] = "l2"


_PARAMS_TYPES = {("linf", False): APGDParams, ("l2", False): APGDL2Params, ("linf", True): APGDTParams, ("l2", True): APGDTL2Params}


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    n_iter: int = APGDParams.n_iter,
    restarts: int = APGDParams.restarts,
    rho: float = APGDParams.rho,
    n_target_classes: int = APGDTParams.n_target_classes,
    generator: Generator | None = None,
) -> Tensor:
    """Auto-PGD (Croce & Hein, 2020) with `restarts` random restarts, each on the samples not yet fooled.

    x: (N, ...) pixels in [0, 1]; y: (N,) labels. norm "linf" or "l2"; loss "ce", "dlr" or
    "targeted-dlr" (APGD-T, over the `n_target_classes` highest other classes; see `run_apgd`).
    Returns x_adv (detached, in [0, 1], within eps of x in `norm`).
    """
    require_choice("norm", norm, NORMS)
    require_choice("loss", loss, APGD_LOSSES)
    targeted = loss == "targeted-dlr"
    values = {"eps": eps, "n_iter": n_iter, "restarts": restarts, "rho": rho}
    params = _PARAMS_TYPES[(norm, targeted)](**values, **({"n_target_classes": n_target_classes} if targeted else {}))
    return run_attack(f"apgd ({loss}, {norm})", partial(run_apgd, loss=loss), model, x, y, params, generator)


# AutoAttack's six APGD attacks: one runner and one keyword function (`apgd`), the norm from the
# parameter dataclass, the loss fixed per name
for _name, _params_type, _loss, _summary in (
    ("apgd-ce", APGDParams, "ce", "Auto-PGD on the cross-entropy loss, L-inf (Croce & Hein, 2020; AutoAttack's apgd-ce)."),
    ("apgd-dlr", APGDParams, "dlr", "Auto-PGD on the difference-of-logits-ratio loss, L-inf (Croce & Hein, 2020; apgd-dlr)."),
    ("apgd-t", APGDTParams, "targeted-dlr", "Auto-PGD on the targeted DLR loss over the top other classes in turn, L-inf (AutoAttack's apgd-t)."),
    ("apgd-ce-l2", APGDL2Params, "ce", "Auto-PGD on the cross-entropy loss, L2 (Croce & Hein, 2020)."),
    ("apgd-dlr-l2", APGDL2Params, "dlr", "Auto-PGD on the difference-of-logits-ratio loss, L2 (Croce & Hein, 2020)."),
    ("apgd-t-l2", APGDTL2Params, "targeted-dlr", "Auto-PGD on the targeted DLR loss over the top other classes in turn, L2 (Croce & Hein, 2020)."),
):
    register(_name, _params_type, run=partial(run_apgd, loss=_loss), norm=_params_type.norm, summary=_summary)(
        partial(apgd, norm=_params_type.norm, loss=_loss)
    )
