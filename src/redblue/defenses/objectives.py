"""Training objectives of the blue team: clean, Goodfellow FGSM, fast FGSM, PGD (Madry) and TRADES.

An objective maps (model, x, y, generator) to the mean loss of one batch. The adversarial ones
craft their inputs from the red team's own pieces (`redblue.attacks.core`: the input gradient,
sign steps, L-inf projection, random starts), so training and evaluation cannot drift apart; the
FGSM images are exactly those of the attack `fgsm` (a test pins this). Crafting skips the
attacks' per-call finite-gradient check, a device sync per batch: a NaN gradient makes a NaN
loss, which the training loop reports at the end of the epoch. Crafting runs the model in eval
mode (dropout off) and restores train mode; the loss itself is computed in the model's current
mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    LossFn,
    ascent_step,
    ce_loss,
    check_eps,
    eval_mode,
    linf_project,
    linf_random_start,
    loss_and_input_gradient,
)
from redblue.config import from_text_values, split_spec
from redblue.errors import ConfigError, require_in_range, require_non_negative, require_positive

OBJECTIVES = ("clean", "fgsm", "fast-fgsm", "pgd", "trades")

Objective = Callable[[nn.Module, Tensor, Tensor, "Generator | None"], Tensor]
# The form the training loop uses: also returns the logits (N, classes) of the clean or
# adversarial batch the loss was computed on, for the running training accuracy.
ObjectiveWithLogits = Callable[[nn.Module, Tensor, Tensor, "Generator | None"], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which loss a model trains on; eps and step_size are in pixel units (L-inf).

    - clean: CE(x).
    - fgsm: alpha * CE(x) + (1 - alpha) * CE(fgsm(x, eps)) (Goodfellow et al., 2015).
    - fast-fgsm: CE(x_adv), one FGSM step of step_size (default 1.25 * eps) from a uniform random
      start in the eps-ball, projected back (Wong et al., 2020).
    - pgd: CE(pgd(x, eps, step_size, steps)) with a random start (Madry et al., 2018); step_size
      defaults to 2.5 * eps / steps.
    - trades: CE(x) + beta * KL(p(x) || p(x_adv)), x_adv maximising that KL by `steps` sign steps
      of step_size (default 2.5 * eps / steps) from x + 0.001 * N(0, 1) (Zhang et al., 2019).
    - clip (fgsm only): keep the FGSM image in [0, 1]; False follows the paper's equation (3).
    """

    name: Literal["clean", "fgsm", "fast-fgsm", "pgd", "trades"] = "clean"
    eps: float = 0.1
    alpha: float = 0.5
    step_size: float | None = None
    steps: int = 7
    beta: float = 6.0
    clip: bool = True

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.name!r}; choose one of: {', '.join(OBJECTIVES)}")
        check_eps(self.eps, "linf")
        require_in_range("alpha", self.alpha, 0.0, 1.0)
        if self.step_size is not None:
            require_positive("step_size", self.step_size)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")
        require_non_negative("beta", self.beta)

    @property
    def resolved_step_size(self) -> float:
        """The step size the objective uses: the given one, or its default derived from eps."""
        if self.step_size is not None:
            return self.step_size
        if self.name == "fast-fgsm":
            return 1.25 * self.eps
        return 2.5 * self.eps / self.steps


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor, loss: LossFn = ce_loss) -> Tensor:
    return loss_and_input_gradient(model, x, y, loss=loss, check_finite=False)[2]


def fgsm_images(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, clip: bool = True) -> Tensor:
    """The attack `fgsm`'s images, x + eps * sign(grad_x CE), clipped to [0, 1] unless clip=False;
    without its finite-gradient check, for the training loop (see the module docstring)."""
    x_adv = x + eps * _input_gradient(model, x, y).sign()
    return (x_adv.clamp(0.0, 1.0) if clip else x_adv).detach()


def clean_objective(model: nn.Module, x: Tensor, y: Tensor, generator: Generator | None = None) -> tuple[Tensor, Tensor]:
    logits = model(x)
    return _ce(logits, y), logits


def _fgsm_objective(config: ObjectiveConfig) -> ObjectiveWithLogits:
    alpha, eps, clip = config.alpha, config.eps, config.clip

    def objective(model: nn.Module, x: Tensor, y: Tensor, generator: Generator | None = None) -> tuple[Tensor, Tensor]:
        if alpha == 1.0:
            return clean_objective(model, x, y)
        x_adv = fgsm_images(model, x, y, eps=eps, clip=clip)
        if alpha == 0.0:
            logits_adv = model(x_adv)
            return _ce(logits_adv, y), logits_adv
        # one forward pass over both halves: the same arithmetic as two, with one kernel launch each
        logits_both = model(torch.cat([x, x_adv]))
        logits, logits_adv = logits_both[: len(x)], logits_both[len(x) :]
        return alpha * _ce(logits, y) + (1.0 - alpha) * _ce(logits_adv, y), logits

    return objective


def _fast_fgsm_objective(config: ObjectiveConfig) -> ObjectiveWithLogits:
    eps, step_size = config.eps, config.resolved_step_size

    def objective(model: nn.Module, x: Tensor, y: Tensor, generator: Generator | None = None) -> tuple[Tensor, Tensor]:
        x_start = linf_random_start(x, eps, generator)
        grad = _input_gradient(model, x_start, y)
        x_adv = linf_project(ascent_step(x_start, grad, step_size=step_size, norm="linf"), center=x, eps=eps)
        logits_adv = model(x_adv)
        return _ce(logits_adv, y), logits_adv

    return objective


def pgd_linf(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step_size: float, steps: int, generator: Generator | None
) -> Tensor:
    """L-inf PGD from a uniform random start, returning the last iterate, as Madry et al. train on.

    (The evaluator's `pgd` keeps each sample's best iterate instead, and validates its inputs on
    every call; neither is wanted inside a training step.)
    """
    x_adv = linf_random_start(x, eps, generator)
    for _ in range(steps):
        grad = _input_gradient(model, x_adv, y)
        x_adv = linf_project(ascent_step(x_adv, grad, step_size=step_size, norm="linf"), center=x, eps=eps)
    return x_adv.detach()


def _pgd_objective(config: ObjectiveConfig) -> ObjectiveWithLogits:
    eps, step_size, steps = config.eps, config.resolved_step_size, config.steps

    def objective(model: nn.Module, x: Tensor, y: Tensor, generator: Generator | None = None) -> tuple[Tensor, Tensor]:
        x_adv = pgd_linf(model, x, y, eps=eps, step_size=step_size, steps=steps, generator=generator)
        logits_adv = model(x_adv)
        return _ce(logits_adv, y), logits_adv

    return objective


def _kl_from(probs_clean: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-sample KL(p_clean || softmax(logits)), as an attack loss (the labels are not used)."""
    log_clean = probs_clean.clamp_min(1e-12).log()

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        return (probs_clean * (log_clean - logits.log_softmax(dim=1))).sum(dim=1)

    return loss


def _trades_objective(config: ObjectiveConfig) -> ObjectiveWithLogits:
    eps, step_size, steps, beta = config.eps, config.resolved_step_size, config.steps, config.beta

    def objective(model: nn.Module, x: Tensor, y: Tensor, generator: Generator | None = None) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), eval_mode(model):
            probs_clean = model(x).softmax(dim=1)
        kl_loss = _kl_from(probs_clean)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = (x + 0.001 * noise).clamp(0.0, 1.0)
        for _ in range(steps):
            grad = _input_gradient(model, x_adv, y, loss=kl_loss)
            x_adv = linf_project(ascent_step(x_adv, grad, step_size=step_size, norm="linf"), center=x, eps=eps)
        logits_both = model(torch.cat([x, x_adv]))
        logits, logits_adv = logits_both[: len(x)], logits_both[len(x) :]
        robust = F.kl_div(logits_adv.log_softmax(dim=1), logits.softmax(dim=1), reduction="batchmean")
        return _ce(logits, y) + beta * robust, logits

    return objective


def make_objective_with_logits(config: ObjectiveConfig) -> ObjectiveWithLogits:
    """The objective as the training loop calls it: (mean loss, logits of the batch it trained on)."""
    if config.name == "clean":
        return clean_objective
    if config.name == "fgsm":
        return _fgsm_objective(config)
    if config.name == "fast-fgsm":
        return _fast_fgsm_objective(config)
    if config.name == "pgd":
        return _pgd_objective(config)
    return _trades_objective(config)


def make_objective(config: ObjectiveConfig) -> Objective:
    """`objective(model, x, y, generator) -> mean loss` (a scalar tensor with a graph to the weights)."""
    with_logits = make_objective_with_logits(config)

    def objective(model: nn.Module, x: Tensor, y: Tensor, generator: Generator | None = None) -> Tensor:
        return with_logits(model, x, y, generator)[0]

    return objective


def parse_objective(text: str) -> ObjectiveConfig:
    """`fgsm:eps=0.1,alpha=0.5` -> ObjectiveConfig(name="fgsm", eps=0.1, alpha=0.5)."""
    name, values = split_spec(text)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    if "name" in values:
        raise ConfigError(f"write the objective name before the colon, as in {name}:eps=0.1")
    return from_text_values(ObjectiveConfig, values, what=f"objective {name!r}", name=name)
