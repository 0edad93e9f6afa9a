"""Auto-PGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum, CE / DLR / targeted DLR losses.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", Algorithm 1: step size 2*eps, momentum 0.75, and at the checkpoints w_j the step
size of a sample is halved (restarting it from its best point) when fewer than rho of its
steps since the last checkpoint raised the loss, or when neither its step size nor its best
loss changed since then. AutoAttack's apgd-ce, apgd-dlr and apgd-t, in L-inf and L2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import ClassVar

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    LossFn,
    all_finite,
    ce_loss,
    check_eps,
    dlr_loss,
    eval_mode,
    l2_normalize,
    loss_and_input_gradient,
    per_sample,
    project,
    random_start,
    targeted_dlr_loss,
)
from redblue.attacks.registry import register
from redblue.errors import AttackError, require_choice, require_in_range, require_positive

APGD_LOSSES = ("ce", "dlr", "targeted-dlr")
MOMENTUM = 0.75  # the paper's alpha; the first step has none


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The paper's checkpoints w_j = ceil(p_j * n_iter), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1.

    Exact fractions, because in floats 0.22 + 0.19 = 0.41000000000000003 and its ceil overshoots.
    """
    p = [Fraction(0), Fraction(22, 100)]
    while True:
        p_next = p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))
        if p_next > 1:
            break
        p.append(p_next)
    return sorted({math.ceil(p_j * n_iter) for p_j in p})


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-sample choice: rows of `a` where mask (N,) is true, else rows of `b`."""
    return torch.where(per_sample(mask, a), a, b)


def _clamp(t: Tensor, *, lower: Tensor, upper: Tensor) -> Tensor:
    return torch.clamp(t, lower, upper)


def _steepest_direction(grad: Tensor, norm: str) -> Tensor:
    return grad.sign() if norm == "linf" else l2_normalize(grad)


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
    """One run of Algorithm 1 from a random start; one forward and backward per iteration, no sync.

    Finiteness is tracked on the device (`finite`) and checked once by the caller.
    """
    gradient = partial(loss_and_input_gradient, model, loss=loss, check_finite=False)
    x_cur = random_start(x, eps, norm=norm, generator=generator)
    loss_cur, logits, grad = gradient(x_cur, y)
    finite = all_finite(grad) & all_finite(loss_cur)
    x_prev = x_cur
    x_best, best_loss, grad_best = x_cur, loss_cur, grad
    is_adv = logits.argmax(dim=1) != y
    x_found = x_cur
    step_size = torch.full((len(x),), 2.0 * eps, dtype=x.dtype, device=x.device)

    checkpoints = apgd_checkpoints(n_iter)
    n_since_check = 0
    n_increases = torch.zeros(len(x), dtype=torch.long, device=x.device)
    best_loss_at_check = best_loss
    halved_at_check = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    if norm == "linf":  # the ball within [0, 1] as per-pixel bounds, once: one clamp per projection
        lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
        into_ball = partial(_clamp, lower=lower, upper=upper)
    else:
        into_ball = partial(project, center=x, eps=eps, norm=norm)

    for k in range(1, n_iter + 1):
        alpha = 1.0 if k == 1 else MOMENTUM
        z = into_ball(x_cur + per_sample(step_size, x) * _steepest_direction(grad, norm))
        x_next = into_ball(x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev))
        x_prev, x_cur = x_cur, x_next
        loss_next, logits, grad = gradient(x_cur, y)
        finite = finite & all_finite(grad) & all_finite(loss_next)

        n_increases += loss_next > loss_cur
        n_since_check += 1
        loss_cur = loss_next
        improved = loss_cur > best_loss
        x_best, grad_best = _where(improved, x_cur, x_best), _where(improved, grad, grad_best)
        best_loss = torch.where(improved, loss_cur, best_loss)
        misclassified = logits.argmax(dim=1) != y
        x_found = _where(misclassified, x_cur, x_found)
        is_adv = is_adv | misclassified

        if k in checkpoints:
            # Condition 1: too few of the steps since the last checkpoint raised the loss.
            oscillating = n_increases < rho * n_since_check
            # Condition 2: neither the step size nor the best loss changed since the last checkpoint.
            stalled = ~halved_at_check & (best_loss <= best_loss_at_check)
            halve = oscillating | stalled
            step_size = torch.where(halve, step_size / 2.0, step_size)
            # restart from the best point: the next step starts there, with the gradient taken there
            x_cur, grad = _where(halve, x_best, x_cur), _where(halve, grad_best, grad)
            loss_cur = torch.where(halve, best_loss, loss_cur)
            halved_at_check, best_loss_at_check = halve, best_loss
            n_increases = torch.zeros_like(n_increases)
            n_since_check = 0
    return _RunResult(x_best=x_best, best_loss=best_loss, is_adv=is_adv, x_found=x_found, finite=finite)


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    n_iter: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    n_target_classes: int = 9,
    generator: Generator | None = None,
) -> Tensor:
    """Auto-PGD (Croce & Hein, 2020) with `restarts` random restarts, each on the samples not yet fooled.

    x: (N, ...) pixels in [0, 1]; y: (N,) labels. loss "ce" and "dlr" are untargeted; loss
    "targeted-dlr" is APGD-T: for each of the `n_target_classes` highest other classes of the clean
    logits in turn, `restarts` runs of targeted DLR (any misclassification counts as success).
    Returns x_adv (detached, in [0, 1], within eps of x in `norm`): for a fooled sample the last
    misclassified iterate of the run that fooled it, for a robust one its highest-loss point
    over all runs, and x itself for a sample the model already misclassifies.
    """
    check_eps(eps, norm)
    require_choice("loss", loss, APGD_LOSSES)
    require_positive("n_iter", n_iter)
    require_positive("restarts", restarts)
    require_in_range("rho", rho, 0.0, 1.0)
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
    if loss == "targeted-dlr":
        require_positive("n_target_classes", n_target_classes)
        ranked_classes = clean_logits.argsort(dim=1, descending=True)  # (N, C)
        runs = [(rank, r) for rank in range(1, min(n_target_classes, n_classes - 1) + 1) for r in range(restarts)]
    else:
        runs = [(0, r) for r in range(restarts)]

    for target_rank, _ in runs:
        todo = (~is_adv).nonzero().squeeze(1)  # one sync per run
        if len(todo) == 0:
            break
        if loss == "targeted-dlr":
            loss_fn: LossFn = partial(_targeted_dlr, target=ranked_classes[todo, target_rank])
        else:
            loss_fn = ce_loss if loss == "ce" else dlr_loss
        run = _apgd_run(
            model, x[todo], y[todo], eps=eps, norm=norm, loss=loss_fn, n_iter=n_iter, rho=rho, generator=generator
        )
        if not bool(run.finite):  # one sync per run
            raise AttackError(
                "APGD met a NaN or infinite loss or gradient; check the model for log(0), "
                "division by zero or overflow before attacking it"
            )
        better = run.best_loss > best_loss[todo]
        keep = _where(better, run.x_best, x_adv[todo])
        x_adv[todo] = _where(run.is_adv, run.x_found, keep)
        best_loss[todo] = torch.where(better, run.best_loss, best_loss[todo])
        is_adv[todo] = run.is_adv
    return x_adv


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


@register("apgd-ce", APGDParams, norm="linf")
def apgd_ce(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_iter: int = 100, restarts: int = 1, rho: float = 0.75,
    generator: Generator | None = None,
) -> Tensor:
    """Auto-PGD on the cross-entropy loss, L-inf (Croce & Hein, 2020; AutoAttack's apgd-ce)."""
    return apgd(model, x, y, eps=eps, norm="linf", loss="ce", n_iter=n_iter, restarts=restarts, rho=rho,
                generator=generator)


@register("apgd-dlr", APGDParams, norm="linf")
def apgd_dlr(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_iter: int = 100, restarts: int = 1, rho: float = 0.75,
    generator: Generator | None = None,
) -> Tensor:
    """Auto-PGD on the difference-of-logits-ratio loss, L-inf (Croce & Hein, 2020; apgd-dlr)."""
    return apgd(model, x, y, eps=eps, norm="linf", loss="dlr", n_iter=n_iter, restarts=restarts, rho=rho,
                generator=generator)


@register("apgd-t", APGDTParams, norm="linf")
def apgd_t(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_iter: int = 100, restarts: int = 1, rho: float = 0.75,
    n_target_classes: int = 9, generator: Generator | None = None,
) -> Tensor:
    """Auto-PGD on the targeted DLR loss over the top other classes in turn, L-inf (AutoAttack's apgd-t)."""
    return apgd(model, x, y, eps=eps, norm="linf", loss="targeted-dlr", n_iter=n_iter, restarts=restarts, rho=rho,
                n_target_classes=n_target_classes, generator=generator)


@register("apgd-ce-l2", APGDL2Params, norm="l2")
def apgd_ce_l2(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_iter: int = 100, restarts: int = 1, rho: float = 0.75,
    generator: Generator | None = None,
) -> Tensor:
    """Auto-PGD on the cross-entropy loss, L2 (Croce & Hein, 2020)."""
    return apgd(model, x, y, eps=eps, norm="l2", loss="ce", n_iter=n_iter, restarts=restarts, rho=rho,
                generator=generator)


@register("apgd-dlr-l2", APGDL2Params, norm="l2")
def apgd_dlr_l2(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_iter: int = 100, restarts: int = 1, rho: float = 0.75,
    generator: Generator | None = None,
) -> Tensor:
    """Auto-PGD on the difference-of-logits-ratio loss, L2 (Croce & Hein, 2020)."""
    return apgd(model, x, y, eps=eps, norm="l2", loss="dlr", n_iter=n_iter, restarts=restarts, rho=rho,
                generator=generator)


@register("apgd-t-l2", APGDTL2Params, norm="l2")
def apgd_t_l2(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_iter: int = 100, restarts: int = 1, rho: float = 0.75,
    n_target_classes: int = 9, generator: Generator | None = None,
) -> Tensor:
    """Auto-PGD on the targeted DLR loss over the top other classes in turn, L2 (Croce & Hein, 2020)."""
    return apgd(model, x, y, eps=eps, norm="l2", loss="targeted-dlr", n_iter=n_iter, restarts=restarts, rho=rho,
                n_target_classes=n_target_classes, generator=generator)
