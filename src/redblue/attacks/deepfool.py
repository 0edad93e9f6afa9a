"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016) in L2 and L-inf, batched, returned inside an eps-ball.

DeepFool searches a small adversarial perturbation rather than the worst one in a ball: it
linearises the model around the current point, steps to the nearest linearised decision
boundary among the top candidate classes, and repeats until the label changes; the total
perturbation is scaled by (1 + overshoot) to cross the boundary. On an affine classifier one
iteration finds the exact closest boundary point. The contract's ball is imposed on the answer:
the perturbation found is projected into the eps-ball (a no-op when it is small enough, so the
sample counts as fooled exactly when DeepFool's perturbation fits in the ball).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    LaggedCount,
    all_finite,
    check_eps,
    eval_mode,
    logit_differences_and_gradients,
    project,
    true_rows,
)
from redblue.attacks.registry import register, run_attack
from redblue.errors import ConfigError, require_non_negative, require_positive

# the reference code's extra step past the linearised boundary, in pixel units
BOUNDARY_STEP = 1e-4


@dataclass(frozen=True)
class DeepFoolParams:
    """DeepFool in L2: at most `steps` linearisations, over the top `candidates` classes."""

    eps: float
    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 10

    norm: ClassVar[str] = "l2"

    def __post_init__(self) -> None:
        check_eps(self.eps, self.norm)
        require_positive("steps", self.steps)
        require_non_negative("overshoot", self.overshoot)
        if self.candidates < 2:
            raise ConfigError(f"candidates must be >= 2 (the true class and at least one other), got {self.candidates}")


@dataclass(frozen=True)
class DeepFoolLinfParams(DeepFoolParams):
    """DeepFool in L-inf (the dual norm is L1, so steps follow the gradient's sign)."""

    norm: ClassVar[str] = "linf"


def deepfool_perturbation(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: str, steps: int, overshoot: float, candidates: int
) -> tuple[Tensor, Tensor]:
    """DeepFool's perturbed images x + (1 + overshoot) * r, clipped to [0, 1], before any eps-ball,
    and whether the total perturbation r stayed finite.

    Samples the model already misclassifies are returned unchanged. Each iteration works only on
    the samples not yet fooled: a fooled sample is frozen at once and dropped from the batch at the
    next compaction, on a CPU at once, on an accelerator as soon as the number of samples left has
    reached the host without waiting for the device (`LaggedCount`: no host synchronisation in the
    loop). The loop stops when none is left.
    """
    with eval_mode(model):
        with torch.no_grad():
            clean_logits = model(x)  # (N, C)
        n_classes = clean_logits.shape[1]
        # the top candidates-1 classes other than y, by clean score (the reference code's choice)
        others = clean_logits.scatter(1, y[:, None], -torch.inf).topk(min(candidates, n_classes) - 1, dim=1).indices
        r_total = torch.zeros_like(x)
        active = torch.arange(len(x), device=x.device)  # the rows not yet dropped
        alive = torch.ones(len(x), dtype=torch.bool, device=x.device)  # per row of active: not yet fooled
        left: LaggedCount | None = None  # the rows alive, counted on the way to the host
        for iteration in range(steps + 1):
            x_now = (x[active] + (1.0 + overshoot) * r_total[active]).clamp(0.0, 1.0)
            logits, differences, gradients = logit_differences_and_gradients(model, x_now, y[active], others[active])
            alive = alive & (logits.argmax(dim=1) == y[active])
            left = LaggedCount(alive) if left is None else left
            count = left.value()
            if count is not None:  # drop the rows `left` found fooled (rows fooled since stay, frozen)
                if count < len(active):
                    rows = true_rows(left.mask, count)
                    active, alive, differences, gradients = (t[rows] for t in (active, alive, differences, gradients))
                left = None
            if len(active) == 0 or iteration == steps:  # the last pass only judges the final iterate
                break
            dual = 2 if norm == "l2" else 1
            distances = differences.abs() / (gradients.norm(p=dual, dim=2) + 1e-12)  # (N_a, K)
            nearest = distances.argmin(dim=1)
            w = gradients[torch.arange(len(active), device=x.device), nearest]  # (N_a, D)
            distance = distances.gather(1, nearest[:, None]) + BOUNDARY_STEP  # (N_a, 1)
            direction = w / (w.norm(dim=1, keepdim=True) + 1e-12) if norm == "l2" else w.sign()
            step = torch.where(alive[:, None], distance * direction, 0.0)  # a frozen row does not move
            r_total[active] += step.view(len(active), *x.shape[1:])
    return (x + (1.0 + overshoot) * r_total).clamp(0.0, 1.0), all_finite(r_total)


def run_deepfool(
    model: nn.Module, x: Tensor, y: Tensor, params: DeepFoolParams, generator: Generator | None
) -> tuple[Tensor, Tensor]:
    """DeepFool's runner (see `registry`): its perturbation, projected into the eps-ball."""
    x_found, finite = deepfool_perturbation(model, x, y, norm=params.norm, steps=params.steps,
                                            overshoot=params.overshoot, candidates=params.candidates)  # fmt: skip
    return project(x_found, center=x, eps=params.eps, norm=params.norm).detach(), finite


@register("deepfool-l2", DeepFoolParams, run=run_deepfool, norm="l2")
def deepfool_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = DeepFoolParams.steps,
    overshoot: float = DeepFoolParams.overshoot,
    candidates: int = DeepFoolParams.candidates,
) -> Tensor:
    """DeepFool in L2 (Moosavi-Dezfooli et al., 2016): steps to the nearest linearised boundary.

    x: (N, ...) pixels in [0, 1]; y: (N,) labels. Returns x_adv: detached, on x's device, in
    [0, 1], within eps of x in L2: DeepFool's perturbation, projected into the ball (see module).
    """
    params = DeepFoolParams(eps=eps, steps=steps, overshoot=overshoot, candidates=candidates)
    return run_attack("deepfool-l2", run_deepfool, model, x, y, params, None)


@register("deepfool", DeepFoolLinfParams, run=run_deepfool, norm="linf")
def deepfool_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = DeepFoolLinfParams.steps,
    overshoot: float = DeepFoolLinfParams.overshoot,
    candidates: int = DeepFoolLinfParams.candidates,
) -> Tensor:
    """DeepFool in L-inf (Moosavi-Dezfooli et al., 2016): distances |f_k| / |w_k|_1, steps along sign(w).

    Same contract as `deepfool_l2`, with eps the L-inf radius.
    """
    params = DeepFoolLinfParams(eps=eps, steps=steps, overshoot=overshoot, candidates=candidates)
    return run_attack("deepfool", run_deepfool, model, x, y, params, None)
