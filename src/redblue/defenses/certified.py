"""Certified training: IBP (Gowal et al., 2018) and CROWN-IBP (Zhang et al., 2020), as losses and as
registered objectives with their schedules.

Both train on the worst-case logits that `redblue.bounds` derives over the clipped L-inf ball,
the very bounds `redblue.certify` certifies with (there in float64 with a rounding allowance):

    loss = kappa * CE(z(x), y) + (1 - kappa) * CE(z_hat, y),  z_hat_j = -m_j,

m_j a lower bound on the margin z_y - z_j (elision of the last layer), so CE(z_hat, y) bounds
the cross-entropy of every input in the ball from above. CROWN-IBP mixes the margin bound
m = beta * m_crown_ibp + (1 - beta) * m_ibp.

Schedules (the objectives `ibp` and `crown-ibp`). Everything follows the loop's eps warm-up
`TrainStep.ramp` r in [0, 1], linearly, and stays put once r = 1:

    train eps = eps * train_eps_factor * r
    kappa     = kappa_start + r * (kappa_end - kappa_start)      (1 -> 0.5 by default)
    beta      = beta_start + r * (beta_end - beta_start)         (1 -> 0 by default)

which is what the authors' code does: Gowal et al.'s `linear_schedule` moves the loss weights
over the same steps as eps (deepmind/interval-bound-propagation, `utils.py`: nominal weight
1 -> 0.5 and eps 0 -> eps_train over `rampup_steps`), and Zhang et al. set
kappa = 1 - (eps_t / eps_train) * (1 - final_kappa) and beta = 1 - (eps_t / eps_train) * (1 - final_beta)
per batch (huanzhang12/CROWN-IBP, `train.py`; `defaults.json`: final-kappa 0.5, final-beta 0).
Both ramp over a long stretch: Gowal et al.'s example (`examples/train.py`: batch 200, 60k steps)
trains cleanly for 2k steps, then ramps over 10k (about 7 and 33 of its 200 epochs); Zhang et al.
ramp over 50 epochs from epoch 10 of 200 (`config/mnist_dm-large_0.4.json`), or 60 of 100
(`config/mnist_crown.json`).
The loop's `--eps-warmup-epochs` is that ramp; without one (r = 1 throughout) the objective
trains at the full radius with kappa_end and beta_end from the first batch. The loop's
`--clean-epochs` (by default a tenth of the run for these objectives) hold r = 0 before the
ramp: train eps 0 and kappa_start (1: the clean loss alone), the papers' clean start, without
which a deep network (`cnn-large`) collapses to a constant (see `redblue.train.config`).

The train radius: Gowal et al. train MNIST at 0.4 for a test eps of 0.2-0.4 and at 0.2 for 0.1
(their Section 5; the same in CROWN-IBP's reproductions of their large model,
`config/mnist_dm-large_0.4.json` and `_0.2.json`); their released example trains 0.3 at 0.33
(1.1x, as for CIFAR-10). `train_eps_factor` defaults to 4/3, their MNIST 0.3 -> 0.4, for every
eps: on the paper's MLP at eps 0.1 (784-625-10; 10 epochs of Adam, 5 of them ramp; CROWN on 1000
test images), 4/3 certified 0.796 (clean 0.953) where their 2 certified 0.744 (clean 0.922). For a
large CNN at eps 0.1, `train_eps_factor=2` follows them exactly.

The clean term runs the model in its current mode (dropout on while training); the bounds are
those of the network in eval mode (dropout the identity), the network that gets certified.
x: (N, ...) pixels in [0, 1]; y: (N,) labels; eps in pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from redblue.attacks.core import check_eps
from redblue.bounds import crown_ibp_margins, ibp_margins, worst_case_logits
from redblue.defenses.objectives import Objective, ObjectiveParams, TrainStep, register_objective
from redblue.errors import require_in_range, require_positive

TRAIN_EPS_FACTOR = 4 / 3  # Gowal et al.'s MNIST 0.3 -> 0.4 (see above)


def ibp_loss(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, kappa: float) -> tuple[Tensor, Tensor]:
    """(mean loss, clean logits (N, classes)): kappa * CE(z(x)) + (1 - kappa) * CE(IBP worst case)."""
    check_eps(eps, "linf")
    require_in_range("kappa", kappa, 0.0, 1.0)
    clean_logits = model(x)
    loss = kappa * F.cross_entropy(clean_logits, y)
    if kappa < 1:  # at kappa = 1 (the start of Gowal et al.'s schedule) the bound has no weight
        margins = ibp_margins(model, x, y, eps=eps)
        loss = loss + (1 - kappa) * F.cross_entropy(worst_case_logits(margins), y)
    return loss, clean_logits


def crown_ibp_loss(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, kappa: float, beta: float
) -> tuple[Tensor, Tensor]:
    """(mean loss, clean logits (N, classes)) with the margin bound beta * CROWN-IBP + (1 - beta) * IBP.

    beta = 0 is plain IBP (no backward pass); max-pooling models raise ModelError unless beta = 0.
    """
    check_eps(eps, "linf")
    require_in_range("kappa", kappa, 0.0, 1.0)
    require_in_range("beta", beta, 0.0, 1.0)
    if beta == 0:
        return ibp_loss(model, x, y, eps=eps, kappa=kappa)
    clean_logits = model(x)
    loss = kappa * F.cross_entropy(clean_logits, y)
    if kappa < 1:
        crown_ibp, ibp = crown_ibp_margins(model, x, y, eps=eps)
        margins = beta * crown_ibp + (1 - beta) * ibp
        loss = loss + (1 - kappa) * F.cross_entropy(worst_case_logits(margins), y)
    return loss, clean_logits


# ---- the registered objectives ----------------------------------------------------------------


def _ramped(start: float, end: float, ramp: float) -> float:
    return start + ramp * (end - start)


@dataclass(frozen=True)
class CertifiedParams(ObjectiveParams):
    """The keys IBP and CROWN-IBP share. eps: the test radius (the loop validates at it); the bounds
    use eps * train_eps_factor * ramp, and kappa goes kappa_start -> kappa_end with the ramp."""

    eps: float = 0.1  # type: ignore[assignment]  # a field here, a property on the base
    train_eps_factor: float = TRAIN_EPS_FACTOR
    kappa_start: float = 1.0
    kappa_end: float = 0.5

    def __post_init__(self) -> None:
        check_eps(self.eps, "linf")
        require_positive("train_eps_factor", self.train_eps_factor)
        require_in_range("kappa_start", self.kappa_start, 0.0, 1.0)
        require_in_range("kappa_end", self.kappa_end, 0.0, 1.0)

    @property
    def train_eps(self) -> float:
        """The radius the bounds reach at the end of the ramp."""
        return self.eps * self.train_eps_factor

    def schedule(self, step: TrainStep) -> dict[str, float]:
        return {"train_eps": self.train_eps * step.ramp, "kappa": _ramped(self.kappa_start, self.kappa_end, step.ramp)}


@dataclass(frozen=True)
class IBPObjective(CertifiedParams):
    """kappa * CE(x) + (1 - kappa) * CE(IBP worst case at the train eps) (Gowal et al., 2018)."""

    name: str = field(default="ibp", init=False)


@dataclass(frozen=True)
class CROWNIBPObjective(CertifiedParams):
    """IBP's loss with the margin bound beta * CROWN-IBP + (1 - beta) * IBP (Zhang et al., 2020);
    beta goes beta_start -> beta_end with the ramp, as kappa does. Needs a model without max-pooling
    while beta > 0."""

    name: str = field(default="crown-ibp", init=False)
    beta_start: float = 1.0
    beta_end: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_in_range("beta_start", self.beta_start, 0.0, 1.0)
        require_in_range("beta_end", self.beta_end, 0.0, 1.0)

    def schedule(self, step: TrainStep) -> dict[str, float]:
        return {**super().schedule(step), "beta": _ramped(self.beta_start, self.beta_end, step.ramp)}


@register_objective("ibp", IBPObjective, kind="certified")
def _ibp_objective(params: IBPObjective) -> Objective:
    """Returns the clean logits (the training accuracy is the clean one)."""

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        values = params.schedule(step)
        return ibp_loss(model, x, y, eps=values["train_eps"], kappa=values["kappa"])

    return objective


@register_objective("crown-ibp", CROWNIBPObjective, kind="certified")
def _crown_ibp_objective(params: CROWNIBPObjective) -> Objective:
    """Returns the clean logits. Once beta reaches 0 each batch costs what an IBP batch costs."""

    def objective(model: nn.Module, x: Tensor, y: Tensor, step: TrainStep = TrainStep()) -> tuple[Tensor, Tensor]:
        values = params.schedule(step)
        return crown_ibp_loss(model, x, y, eps=values["train_eps"], kappa=values["kappa"], beta=values["beta"])

    return objective
