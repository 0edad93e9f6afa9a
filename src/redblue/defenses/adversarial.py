"""Adversarial training objectives: Goodfellow's FGSM mix, fast FGSM, PGD (Madry), TRADES and MART.

Each attacks at eps * step.ramp (the loop's eps warm-up). The iterative ones (fast FGSM is PGD-1
from a random start) craft with the red team's own `redblue.attacks.pgd.pgd_last_iterate` (the
step of the evaluator's `pgd`, last iterate, no per-call validation or device sync) with the model
in eval mode (dropout off, batch-norm frozen), then compute the loss in the model's current
(training) mode. Crafting computes input gradients only, never weight gradients. A NaN gradient
makes a NaN loss, which the loop reports at the end of the epoch.

Defaults (eps aside: it is the user's threat model): PGD-10 with step 2.5 * eps / steps (the
step rule of Madry et al., 2018, as the attack `pgd`; ten steps as the plain PyTorch loop of
issue 8 that holds 0.88-0.90 under AutoAttack on MNIST) for PGD, TRADES and MART alike; TRADES'
beta 6 (Zhang et al., 2019: the 1/lambda of the paper's headline MNIST and CIFAR-10 models; its
released scripts default to 1); MART's beta 6 (Wang et al., 2020: `mart.py` and `train_model.py`
of github.com/YisenWang/MART); fast FGSM's step 1.25 * eps (Wong et al., 2020); FGSM's alpha 0.5
(Goodfellow et al., 2015). With an eps warm-up and Adam (lr 1e-3), each of PGD, TRADES and MART
at eps 0.3 took `cnn-small` to 0.49-0.50 PGD-40 accuracy (500 test images) in 4 epochs on 10k
MNIST images: they converge; the recipes that reach the state of the art are the loop's concern.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redblue.attacks.core import LossFn, ce_loss, check_eps, eval_mode, linf_random_start
from redblue.attacks.pgd import MADRY_STEP, pgd_last_iterate
from redblue.defenses.objectives import Objective, ObjectiveParams, TrainStep, register_objective, require_steps
from redblue.errors import require_in_range, require_non_negative, require_positive


def _check_step_size(step_size: float | None) -> None:
    if step_size is not None:
        require_positive("step_size", step_size)


@dataclass(frozen=True)
class FGSMObjective(ObjectiveParams):
    """alpha * CE(x) + (1 - alpha) * CE(fgsm(x, eps)) (Goodfellow et al., 2015). clip: keep the FGSM
    image in [0, 1]; False follows the paper's equation (3)."""

    name: str = field(default="fgsm", init=False)
    eps: float = 0.1  # type: ignore[assignment]  # a field here, a property on the base
    alpha: float = 0.5
    clip: bool = True

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        require_in_range("alpha", self.alpha, 0.0, 1.0)


@dataclass(frozen=True)
class FastFGSMObjective(ObjectiveParams):
    """CE(x_adv), one FGSM step of step_size (default 1.25 * eps) from a uniform random start in the
    eps-ball (not clipped to [0, 1]: Wong et al.'s start), projected back into the ball and [0, 1]
    (Wong et al., 2020)."""

    name: str = field(default="fast-fgsm", init=False)
    eps: float = 0.1  # type: ignore[assignment]
    step_size: float | None = None

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        _check_step_size(self.step_size)

    def resolved(self) -> FastFGSMObjective:
        return self if self.step_size is not None else dataclasses.replace(self, step_size=1.25 * self.eps)


@dataclass(frozen=True)
class PGDObjective(ObjectiveParams):
    """CE(pgd(x, eps, step_size, steps)) from a uniform random start (Madry et al., 2018); step_size
    defaults to 2.5 * eps / steps."""

    name: str = field(default="pgd", init=False)
    eps: float = 0.1  # type: ignore[assignment]
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        require_steps(self.steps)
        _check_step_size(self.step_size)

    def resolved(self) -> PGDObjective:
        if self.step_size is not None:
            return self
        return dataclasses.replace(self, step_size=MADRY_STEP * self.eps / self.steps)


@dataclass(frozen=True)
class TRADESObjective(ObjectiveParams):
    """CE(x) + beta * KL(p(x) || p(x_adv)), x_adv maximising that KL by `steps` sign steps of step_size
    (default 2.5 * eps / steps) from x + 0.001 * N(0, 1) (Zhang et al., 2019)."""

    name: str = field(default="trades", init=False)
    eps: float = 0.1  # type: ignore[assignment]
    steps: int = 10
    step_size: float | None = None
    beta: float = 6.0

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        require_steps(self.steps)
        _check_step_size(self.step_size)
        require_non_negative("beta", self.beta)

    def resolved(self) -> TRADESObjective:
        if self.step_size is not None:
            return self
        return dataclasses.replace(self, step_size=MADRY_STEP * self.eps / self.steps)


@dataclass(frozen=True)
class MARTObjective(ObjectiveParams):
    """BCE(p(x_adv), y) + beta * KL(p(x) || p(x_adv)) * (1 - p_y(x)), x_adv by PGD on CE (Wang et al.,
    2020); see `mart_loss`. step_size defaults to 2.5 * eps / steps. The authors' code (CIFAR-10):
    beta 6, eps 0.031, 10 steps of 0.007 (2.26 eps in all; ours: 2.5 eps), start x + 0.001 N(0, 1)."""

    name: str = field(default="mart", init=False)
    eps: float = 0.1  # type: ignore[assignment]
    steps: int = 10
    step_size: float | None = None
    beta: float = 6.0

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        require_steps(self.steps)
        _check_step_size(self.step_size)
        require_non_negative("beta", self.beta)

    def resolved(self) -> MARTObjective:
        if self.step_size is not None:
            return self
        return dataclasses.replace(self, step_size=MADRY_STEP * self.eps / self.steps)


# ---- crafting ---------------------------------------------------------------------------------


def _pgd_in_eval_mode(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    step: TrainStep,
    loss: LossFn = ce_loss,
    x_start: Tensor | None = None,
) -> Tensor:
    """The attack's last iterate at the warmed-up radius (eps and step scaled by step.ramp), dropout off."""
    with eval_mode(model):
        return pgd_last_iterate(
            model, x, y, eps=eps * step.ramp, step_size=step_size * step.ramp, steps=steps,
            loss=loss, generator=step.generator, x_start=x_start,
        )


def _split(logits_both: Tensor, n: int) -> tuple[Tensor, Tensor]:
    return logits_both[:n], logits_both[n:]


# ---- FGSM: the clean pass's backward also gives the input gradient ------------------------------


class _WithGradients(torch.autograd.Function):
    """Passes on `torch.lerp(adversarial, clean, alpha)` (`clean` detached). Its backward sends
    (1 - alpha) * grad_output into the adversarial loss's graph and hands `grads[i] * grad_output *
    weight` (gradients already computed) to `params[i]`, by one foreach multiplication, so a loss
    scale (as AMP's) multiplies them like any other gradient; autograd adds them to the adversarial
    pass's gradients in the same backward."""

    @staticmethod
    def forward(
        ctx: Any, adversarial: Tensor, clean: Tensor, alpha: float, weight: float, grads: Sequence[Tensor | None], *params: Tensor
    ) -> Tensor:
        ctx.alpha, ctx.weight, ctx.grads = alpha, weight, grads
        return torch.lerp(adversarial, clean, alpha)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        present = [g for g in ctx.grads if g is not None]
        scaled = iter(torch._foreach_mul(present, grad_output * ctx.weight) if present else ())
        clean_grads = [None if g is None else next(scaled) for g in ctx.grads]
        return (grad_output * (1.0 - ctx.alpha), None, None, None, None, *clean_grads)


class _Constants:
    """0-d tensors made once per value, device and dtype: gradients to start a backward from (one
    made per batch would be a kernel, or a host-to-device copy, per batch on a GPU)."""

    def __init__(self) -> None:
        self._made: dict[tuple[float, torch.device, torch.dtype], Tensor] = {}

    def __call__(self, value: float, like: Tensor) -> Tensor:
        key = (value, like.device, like.dtype)
        if key not in self._made:
            self._made[key] = torch.full((), value, device=like.device, dtype=like.dtype)
        return self._made[key]


@register_objective("fgsm", FGSMObjective, kind="single-step")
def _fgsm_objective(params: FGSMObjective) -> Objective:
    """Goodfellow et al.'s mix with one forward-backward pass over x and one over x_adv.

    The pass over x runs in the model's current (training) mode with x.requires_grad, and one
    backward yields both the input gradient that crafts x_adv and the weight gradient of CE(x). It
    starts from a constant n instead of ones: the gradient of the loss sum, which the attack `fgsm`
    differentiates (nll's backward divides n by n, so the input gradient is the same bit for bit).
    The returned loss carries that weight gradient (see `_WithGradients`), so the loop's
    `loss.backward()` computes (1 - alpha) dCE(x_adv)/dw and adds alpha dCE(x)/dw to it: two
    autograd runs a step, nothing computed twice. Its value is the whole mix; the clean logits are
    returned. Beyond its two passes a step dispatches 7 + P ops (P trainable tensors): sign, add and
    clamp to craft, the value (a lerp), two scalar and one foreach product in backward, and the
    engine's sum of the two terms per tensor. A third autograd run (the adversarial term's gradient
    taken in the call and mixed by one foreach op) saves P + 1 ops but cost more host time than it
    saved: 647 against 611 us a batch (CPU, medians of 3) for the paper's MLP's structure at toy
    size (4-16-3, batch 8: a step that is all host overhead, as a small model's step is on a GPU).

    Matrix multiply-adds per image (a clean step's are the forward, the weight gradients and the
    input gradients of every layer but the first): FGSM-AT is two such passes plus the first
    layer's input gradient, the crafting gradient, and nothing else (a test counts them). The
    paper's MLP (784-625-10, no bias): clean 998,750, FGSM-AT 2,487,500 (2.49x); cnn-small: clean
    1,777,976, FGSM-AT 3,606,128 (2.03x); cnn 2.02x, cnn-large 2.01x. An epoch comes in under 2x
    only by the per-batch work both share (the optimiser step, dropout's random masks, slicing,
    kernel launches): see benchmarks/train_epoch.py.

    With dropout, the crafting gradient is the training-mode pass's (as in Goodfellow et al.): it
    sees that step's dropout masks, and a pixel that input dropout zeroes gets a zero gradient, so
    FGSM leaves it unperturbed. Without dropout (or batch-norm) the images equal the attack
    `fgsm`'s exactly (a test pins this). alpha = 0 crafts the same way, without weight gradients,
    and leaves the adversarial pass's backward to the loop.
    """
    alpha, eps, clip = params.alpha, params.eps, params.clip
    constant = _Constants()

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        if alpha == 1.0:
            logits = model(x)
            return F.cross_entropy(logits, y), logits
        weights = [p for p in model.parameters() if p.requires_grad] if alpha > 0.0 else []
        x_var = x.detach().requires_grad_(True)
        logits = model(x_var)
        clean = F.cross_entropy(logits, y)
        n = constant(float(len(y)), clean)  # d(n * mean): the loss sum's gradient, as the attack `fgsm`'s
        grad_x, *clean_grads = torch.autograd.grad(clean, [x_var, *weights], grad_outputs=n, allow_unused=True)
        x_adv = torch.add(x.detach(), grad_x.sign(), alpha=eps * step.ramp)  # eps * sign is exact
        logits_adv = model(x_adv.clamp_(0.0, 1.0) if clip else x_adv)
        adversarial = F.cross_entropy(logits_adv, y)
        if alpha == 0.0:
            return adversarial, logits_adv
        # alpha dCE(x)/dw = (alpha / n) d(n CE(x))/dw, handed to the loop's backward with dCE(x_adv)
        loss = _WithGradients.apply(adversarial, clean.detach(), alpha, alpha / len(y), clean_grads, *weights)
        return loss, logits.detach()

    return objective


@register_objective("fast-fgsm", FastFGSMObjective, kind="single-step")
def _fast_fgsm_objective(params: FastFGSMObjective) -> Objective:
    eps, step_size = params.eps, params.resolved().step_size
    assert step_size is not None

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        # one PGD step from a uniform random start: the warm-up scales the radius and the step alike.
        # The start is not clipped to [0, 1] before the gradient is taken (the step's result is), as
        # in Wong et al.'s code (`MNIST/train_mnist.py`): clipped, the start is one-sided on MNIST's
        # saturated pixels, and cnn-small at eps 0.3 overfitted catastrophically in its first epochs
        # (PGD validation accuracy 0.034 after 4 epochs, where the unclipped start gave 0.804)
        x_start = linf_random_start(x, eps * step.ramp, step.generator, clip=False)
        x_adv = _pgd_in_eval_mode(model, x, y, eps=eps, step_size=step_size, steps=1, step=step, x_start=x_start)
        logits_adv = model(x_adv)
        return F.cross_entropy(logits_adv, y), logits_adv

    return objective


@register_objective("pgd", PGDObjective, kind="multi-step")
def _pgd_objective(params: PGDObjective) -> Objective:
    eps, step_size, steps = params.eps, params.resolved().step_size, params.steps
    assert step_size is not None

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        x_adv = _pgd_in_eval_mode(model, x, y, eps=eps, step_size=step_size, steps=steps, step=step)
        logits_adv = model(x_adv)
        return F.cross_entropy(logits_adv, y), logits_adv

    return objective


# ---- TRADES and MART: a KL term between the clean and the adversarial prediction ----------------


def kl_to(probs_clean: Tensor) -> LossFn:
    """Per-sample KL(p_clean || softmax(logits)) as an attack loss (the labels are not used): TRADES'
    inner maximisation."""
    log_clean = probs_clean.clamp_min(1e-12).log()

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        return (probs_clean * (log_clean - logits.log_softmax(dim=1))).sum(dim=1)

    return loss


@register_objective("trades", TRADESObjective, kind="multi-step")
def _trades_objective(params: TRADESObjective) -> Objective:
    eps, step_size, steps, beta = params.eps, params.resolved().step_size, params.steps, params.beta
    assert step_size is not None

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), eval_mode(model):
            probs_clean = model(x).softmax(dim=1)
        # KL's gradient vanishes at x itself: start a hair away, as TRADES' code does
        noise = torch.randn(x.shape, generator=step.generator, device=x.device, dtype=x.dtype)
        x_start = (x + 0.001 * noise).clamp(0.0, 1.0)
        x_adv = _pgd_in_eval_mode(
            model, x, y, eps=eps, step_size=step_size, steps=steps, step=step, loss=kl_to(probs_clean), x_start=x_start
        )
        logits, logits_adv = _split(model(torch.cat([x, x_adv])), len(x))
        robust = F.kl_div(logits_adv.log_softmax(dim=1), logits.softmax(dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + beta * robust, logits

    return objective


def mart_loss(logits: Tensor, logits_adv: Tensor, y: Tensor, *, beta: float) -> Tensor:
    """MART's outer loss (Wang et al., ICLR 2020, eq. 8; `mart.py` of github.com/YisenWang/MART):

        mean_i [ BCE(p(x'_i), y_i) + beta * KL(p(x_i) || p(x'_i)) * (1 - p_{y_i}(x_i)) ]
        BCE(p(x'), y) = -log p_y(x') - log(1 - max_{k != y} p_k(x'))

    logits, logits_adv: (N, classes) on x and x'; y: (N,). The weight (1 - p_y(x)) is not detached,
    as in the paper's and the code's loss. Computed from log-softmaxes, and log(1 - p_k*(x')) as
    logsumexp over the classes other than k* minus logsumexp over all, where the code adds
    1e-12 / 1e-4 / 1e-7 guards inside its logarithms instead; the values agree to those guards.
    """
    log_probs_adv = logits_adv.log_softmax(dim=1)  # (N, C)
    ce_adv = -log_probs_adv.gather(1, y[:, None]).squeeze(1)
    best_other = logits_adv.scatter(1, y[:, None], float("-inf")).argmax(dim=1)
    log_rest = logits_adv.scatter(1, best_other[:, None], float("-inf")).logsumexp(dim=1) - logits_adv.logsumexp(dim=1)
    log_probs = logits.log_softmax(dim=1)
    probs = log_probs.exp()
    kl = (probs * (log_probs - log_probs_adv)).sum(dim=1)
    misclassified_weight = 1.0 - probs.gather(1, y[:, None]).squeeze(1)
    return (ce_adv - log_rest + beta * kl * misclassified_weight).mean()


@register_objective("mart", MARTObjective, kind="multi-step")
def _mart_objective(params: MARTObjective) -> Objective:
    """x_adv by the pgd objective's PGD on CE (uniform random start; MART's code starts at
    x + 0.001 * N(0, 1), and the paper finds the inner maximisation matters little, its Section 3),
    then `mart_loss` on one training-mode pass over x and x_adv. Returns the adversarial logits."""
    eps, step_size, steps, beta = params.eps, params.resolved().step_size, params.steps, params.beta
    assert step_size is not None

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        x_adv = _pgd_in_eval_mode(model, x, y, eps=eps, step_size=step_size, steps=steps, step=step)
        logits, logits_adv = _split(model(torch.cat([x, x_adv])), len(x))
        return mart_loss(logits, logits_adv, y, beta=beta), logits_adv

    return objective
