"""How a model is trained: `TrainConfig`, a frozen dataclass that round-trips through TOML and JSON.

Knobs left unset (None, or optimizer "auto") take the default for the objective when the config
is resolved against a training set (`TrainConfig.resolved`):

| knob | clean objective | adversarial objectives |
|---|---|---|
| optimizer | rmsprop-newmu (the paper's) | adam |
| schedule | constant | one-cycle (peak at 40% of the run) |
| eps_warmup_epochs | - | EPS_WARMUP_FRACTION of the run (certified: CERTIFIED_EPS_WARMUP_FRACTION) |
| clean_epochs | - | 0 (certified: CERTIFIED_CLEAN_FRACTION of the run, before the ramp) |
| val_size | 0 | min(5000, n // 10) |
| keep | last | best (by PGD validation accuracy; certified objectives: by certified accuracy) |
| overfit_guard | - | on for single-step objectives (fgsm, fast-fgsm) |

so the paper's protocol is unchanged and `--objective pgd:eps=0.3` gets the recipe that
converges (Wong et al. 2020's: Adam with a one-cycle lr, eps ramped up). Unset knobs are left
out of `to_dict`, so configs written before they existed read back equal.

Certified training ramps eps (and IBP's kappa, CROWN-IBP's beta) over a long stretch: Zhang et al.
(2020) over 61 of 100 epochs for MNIST (huanzhang12/CROWN-IBP, `config/mnist_crown.json`:
`schedule_length` 61), Gowal et al. (2018) over 10k of 60k steps after 2k clean ones (about 33 of
200 epochs; deepmind/interval-bound-propagation, `examples/train.py`). Half the run is the
default here. `certified_ramp_warning` says when a ramp is shorter than the shortest measured to
work (CERTIFIED_MIN_RAMP_EPOCHS).

Both papers also train cleanly before the ramp starts (`clean_epochs`): Gowal et al. for 2k steps
(about 7 epochs), Zhang et al. for 10 epochs (`schedule_start`). A deep network needs it: at
PyTorch's default init the interval bounds of `cnn-large` are 10^5 times wider than its logits
(CROWN-IBP margin bound -456 at eps 0.01 against clean margins of 0.004), so from the ramp's
first batches the bound term's gradient outweighs the clean term's (50 times by batch 30, at
eps 0.004 and kappa 0.995), before the network has learnt anything; the only way it has to narrow
the bounds is to switch its ReLUs off, and a network whose ReLUs are all off is constant and gets
no gradient: measured on an H200, `crown-ibp:eps=0.3` for 15 epochs stayed at chance (0.1135)
from the first epoch on. A network that has learnt to classify first has margins the bound term
can keep while it narrows them. CERTIFIED_CLEAN_FRACTION of the run is the default; the ramp keeps
its length and starts after it. Measured on CPU (`tests/test_certified_deep.py` has the short
form), ibp:eps=0.3, 15 epochs of 20,000 MNIST images downsampled to 14 x 14, 500 test images:
`cnn-large` a constant without the clean start (test accuracy 0.134, loss 2.301 from epoch 4 on,
as on the H200), test accuracy 0.722 and CROWN-IBP-certified 0.366 with it; its layers at half
width the same (a constant; 0.678 and 0.378);
`cnn-small`, ibp:eps=0.3, 10 epochs of 20,000 images: certified 0.016 without, 0.483 with (clean
0.748 -> 0.806); the paper's MLP, ibp:eps=0.1, the same length: 0.697 without, 0.685 with (1000
test images each; the MLP's difference is within the binomial error, 0.015).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from redblue.defenses import CleanObjective, ObjectiveParams, is_adversarial, objective_kind
from redblue.errors import ConfigError, require_in_range, require_non_negative, require_positive
from redblue.train.augment import parse_augmentation
from redblue.train.optim import (
    OPTIMIZER_DEFAULTS,
    OPTIMIZER_KNOBS,
    OPTIMIZERS,
    ConstantSchedule,
    OneCycleSchedule,
    OptimizerSettings,
    ScheduleParams,
    check_optimizer_knobs,
)
from redblue.train.validation import is_certified, is_single_step

AUTO = "auto"
KEEP = ("best", "last")
ADVERSARIAL_OPTIMIZER = "adam"
CLEAN_OPTIMIZER = "rmsprop-newmu"
EPS_WARMUP_FRACTION = 0.3  # adversarial objectives ramp eps up over the first 30% of the epochs
CERTIFIED_EPS_WARMUP_FRACTION = 0.5  # certified objectives over the first half (see the module's docstring)
# the shortest certified ramp measured to work on MNIST: 5 epochs (the paper's MLP, ibp:eps=0.1, 10
# epochs of Adam: certified 0.796 on 1000 test images); shorter ones are warned about
CERTIFIED_MIN_RAMP_EPOCHS = 5.0
CERTIFIED_CLEAN_FRACTION = 0.1  # certified objectives train cleanly over the first tenth, then ramp
DEFAULT_VAL_SIZE = 5000
VAL_FRACTION_CAP = 10  # the default split holds out at most a tenth of a small training set


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; the paper's protocol is RMSProp (decay 0.9), batch 128, eq. (2) penalties.

    optimizer: auto, sgd, adam, adamw, rmsprop-newmu (rms_eps inside the square root, Newmu's
      tutorial, which the paper cites) or rmsprop (torch.optim.RMSprop(alpha=rho, eps=rms_eps),
      eps outside, as the paper's equation writes it). momentum, nesterov, weight_decay: only for
      the optimizers that have them (None: torch's default; sgd's momentum 0.9, adamw's decay 1e-2).
    lr: the peak learning rate; schedule: its shape over the run, stepped per batch; warmup_epochs:
      a linear lr warm-up over the first epochs (fractions allowed), multiplying the schedule.
    eps_warmup_epochs: the attack radius grows linearly per batch over these epochs, from
      eps / R at the ramp's first batch to eps at its batch R (adversarial objectives only; the
      objective attacks at eps * `TrainStep.ramp`).
    clean_epochs: epochs of clean training before the eps ramp starts (`TrainStep.ramp` = 0: an
      attack objective attacks at eps 0, a certified one weighs its bound term by 1 - kappa_start,
      0 by default); adversarial objectives only, clean_epochs + eps_warmup_epochs <= epochs.
    grad_clip: clip the gradient's global L2 norm (after the penalties) to this value.
    val_size: images held out of the training set for per-epoch validation; keep: "best" keeps the
      epoch with the best robust (else clean) validation accuracy, "last" the final weights.
    overfit_guard: roll back and shrink the step when single-step training overfits
      catastrophically (see redblue.train.validation).
    weight_average: the decay of an exponential moving average of the weights, updated every batch
      (`redblue.train.optim.WeightAverage`; e.g. 0.999); the averaged weights are validated, selected and
      saved. None or 0: off.
    augment: random crops and/or horizontal flips of every training batch (`redblue.train.augment`:
      "crop-flip", the CIFAR recipes'; "crop"; "flip"; "crop-flip:pad=2"); None: off.
    l1, l2: the paper's penalties lambda1 * sum|w| + lambda2 * sum w^2; penalize_bias: also on biases.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    rho: float = 0.9
    rms_eps: float = 1e-6
    l1: float = 0.0
    l2: float = 0.0
    penalize_bias: bool = False
    objective: ObjectiveParams = field(default_factory=CleanObjective)
    seed: int = 0
    optimizer: str = AUTO
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    schedule: ScheduleParams | None = None
    warmup_epochs: float | None = None
    eps_warmup_epochs: float | None = None
    clean_epochs: float | None = None
    grad_clip: float | None = None
    val_size: int | None = None
    keep: str | None = None
    overfit_guard: bool | None = None
    weight_average: float | None = None
    augment: str | None = None

    def __post_init__(self) -> None:
        require_int("epochs", self.epochs, minimum=1)
        require_int("batch_size", self.batch_size, minimum=1)
        require_int("seed", self.seed, minimum=0)
        require_positive("lr", self.lr)
        require_in_range("rho", self.rho, 0.0, 0.999999)
        require_non_negative("rms_eps", self.rms_eps)
        require_non_negative("l1", self.l1)
        require_non_negative("l2", self.l2)
        if not isinstance(self.objective, ObjectiveParams):
            raise ConfigError(f"objective must be objective params (see redblue.defenses), got {type(self.objective).__name__}")
        if self.optimizer != AUTO and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {AUTO}, {', '.join(OPTIMIZERS)}")
        check_optimizer_knobs(
            self.optimizer_name,
            {"momentum": self.momentum, "nesterov": self.nesterov, "weight_decay": self.weight_decay},
            chosen_for_you=self.optimizer == AUTO,
        )
        if self.schedule is not None and not isinstance(self.schedule, ScheduleParams):
            raise ConfigError(f"schedule must be schedule params (see redblue.train.optim), got {type(self.schedule).__name__}")
        for name in ("warmup_epochs", "eps_warmup_epochs", "clean_epochs"):
            value = getattr(self, name)
            if value is not None:
                require_non_negative(name, value)
                if value > self.epochs:
                    raise ConfigError(
                        f"{name} ({value:g}) is longer than the run ({self.epochs} epochs); lower it or raise epochs"
                    )
        for name in ("eps_warmup_epochs", "clean_epochs"):
            if getattr(self, name) and not self.adversarial:
                raise ConfigError(f"{name} needs an adversarial objective; {self.objective.name!r} has no eps to ramp")
        if self.clean_epochs is not None and self.eps_warmup_epochs is not None:
            _require_fits(self.clean_epochs, self.eps_warmup_epochs, self.epochs)
        if self.grad_clip is not None:
            require_positive("grad_clip", self.grad_clip)
        if self.val_size is not None:
            require_int("val_size", self.val_size, minimum=0)
        if self.weight_average is not None:
            require_in_range("weight_average", self.weight_average, 0.0, 0.999999)
        if self.augment is not None:
            parse_augmentation(self.augment)
        if self.keep is not None and self.keep not in KEEP:
            raise ConfigError(f"keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.keep == "best" and (self.val_size == 0 or (self.val_size is None and not self.adversarial)):
            raise ConfigError("keep=best needs a validation split (clean training has none by default); set val_size > 0 or keep=last")
        if self.overfit_guard:
            if not self.adversarial:
                raise ConfigError(f"overfit_guard needs an adversarial objective, not {self.objective.name!r}")
            if is_certified(self.objective):
                raise ConfigError(
                    f"overfit_guard watches attacks that learn to mask themselves; {self.objective.name!r} trains on "
                    "certified bounds, which cannot be masked: drop the guard"
                )
            if self.val_size == 0:
                raise ConfigError("overfit_guard needs a validation split; set val_size > 0")

    @property
    def adversarial(self) -> bool:
        return is_adversarial(self.objective)

    @property
    def optimizer_name(self) -> str:
        """The optimizer this config runs: `optimizer`, or for auto the objective's default."""
        if self.optimizer != AUTO:
            return self.optimizer
        return ADVERSARIAL_OPTIMIZER if self.adversarial else CLEAN_OPTIMIZER

    def default_val_size(self, n_samples: int) -> int:
        return min(DEFAULT_VAL_SIZE, n_samples // VAL_FRACTION_CAP) if self.adversarial else 0

    def resolved(self, n_samples: int) -> TrainConfig:
        """This config with every unset knob filled in for a training set of n_samples images (see the
        module's table), and the objective's derived defaults (step sizes) too: the values a run uses."""
        require_int("the training set size", n_samples, minimum=1)
        name = self.optimizer_name
        knobs = {k: getattr(self, k) for k in ("momentum", "nesterov", "weight_decay")}
        knobs = {k: (v if v is not None else OPTIMIZER_DEFAULTS[name].get(k)) for k, v in knobs.items()}
        val_size = self.val_size if self.val_size is not None else self.default_val_size(n_samples)
        if val_size >= n_samples:
            raise ConfigError(
                f"val_size {val_size} leaves nothing to train on: the training set has {n_samples} images; lower val_size"
            )
        adversarial = self.adversarial
        if self.eps_warmup_epochs is not None:
            eps_warmup = self.eps_warmup_epochs
        elif adversarial:
            eps_warmup = (CERTIFIED_EPS_WARMUP_FRACTION if is_certified(self.objective) else EPS_WARMUP_FRACTION) * self.epochs
        else:
            eps_warmup = 0.0
        if self.clean_epochs is not None:
            clean = self.clean_epochs
        elif is_certified(self.objective):  # the default stretch shrinks to what the ramp leaves
            clean = float(min(CERTIFIED_CLEAN_FRACTION * self.epochs, self.epochs - eps_warmup))
        else:
            clean = 0.0
        defaulted = tuple(name for name, value in (("clean_epochs", self.clean_epochs), ("eps_warmup_epochs", self.eps_warmup_epochs)) if value is None)
        _require_fits(clean, eps_warmup, self.epochs, defaulted=defaulted)
        guard = self.overfit_guard
        if guard is None:
            guard = is_single_step(self.objective) and val_size > 0
        return dataclasses.replace(
            self,
            objective=self.objective.resolved(),
            optimizer=name,
            **knobs,
            schedule=self.schedule or (OneCycleSchedule() if adversarial else ConstantSchedule()),
            warmup_epochs=self.warmup_epochs or 0.0,
            eps_warmup_epochs=eps_warmup,
            clean_epochs=clean,
            val_size=val_size,
            keep=self.keep or ("best" if val_size > 0 else "last"),
            overfit_guard=guard,
        )

    def certified_ramp_warning(self) -> str | None:
        """For a certified objective whose eps ramp is shorter than CERTIFIED_MIN_RAMP_EPOCHS (call on a
        resolved config): what to do about it; else None. A warning, not an error: on a small
        training set or a small eps a short ramp can suffice (the tests train that way)."""
        ramp = self.eps_warmup_epochs or 0.0
        if objective_kind(self.objective) != "certified" or ramp >= CERTIFIED_MIN_RAMP_EPOCHS:
            return None
        return (
            f"{self.objective.name} ramps eps over {ramp:g} epochs; certified training needs a long ramp "
            f"(the shortest measured to work here: {CERTIFIED_MIN_RAMP_EPOCHS:g} epochs; the papers ramp over 33-61): "
            "raise eps_warmup_epochs (--eps-warmup-epochs) and epochs"
        )

    def optimizer_settings(self) -> OptimizerSettings:
        """The optimizer's knobs, resolved (call on a resolved config, or get torch's defaults)."""
        name = self.optimizer_name
        values: dict[str, Any] = {"rho": self.rho, "rms_eps": self.rms_eps}
        for knob in OPTIMIZER_KNOBS[name]:
            value = getattr(self, knob, None)
            if value is None:
                value = OPTIMIZER_DEFAULTS[name].get(knob)
            if value is not None:
                values[knob] = value
        return OptimizerSettings(name=name, lr=self.lr, **values)


def _require_fits(clean_epochs: float, eps_warmup_epochs: float, epochs: int, *, defaulted: tuple[str, ...] = ()) -> None:
    """clean_epochs + eps_warmup_epochs must fit in the run; `defaulted` names those the user left to the
    objective's default, so the message does not blame a knob nobody set."""
    if clean_epochs + eps_warmup_epochs > epochs:
        note = f" ({' and '.join(defaulted)}: this objective's default)" if defaulted else ""
        raise ConfigError(
            f"clean_epochs ({clean_epochs:g}) and eps_warmup_epochs ({eps_warmup_epochs:g}){note} together are longer "
            f"than the run ({epochs} epochs); lower them or raise epochs"
        )


def require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
