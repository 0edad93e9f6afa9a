"""Validation during training: the held-out split, per-epoch clean, robust and certified accuracy,
and the catastrophic-overfitting rule for single-step adversarial training.

Robust overfitting (Rice et al., 2020): robust test accuracy of adversarial training peaks and
then falls while the training loss keeps dropping, so the loop keeps the epoch with the best
robust validation accuracy. Catastrophic overfitting (Wong et al., 2020): single-step training
(FGSM, fast FGSM) can suddenly learn to mask its own one-step attack; PGD accuracy falls to about
zero within an epoch while FGSM accuracy stays high. `collapse_reason` says when that happened.

Certified objectives (IBP, CROWN-IBP) are validated by certified accuracy too (the method
`redblue.certify.choose_method` picks for the model, the one `redblue evaluate` reports: CROWN for
fully connected nets, CROWN-IBP with convolutions; under a second on 1000 images of `cnn-small`),
and their best epoch is the one with the best certified accuracy: what they are trained for.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from redblue.attacks.fgsm import fgsm
from redblue.attacks.pgd import pgd
from redblue.certify import certify, choose_method
from redblue.defenses import ObjectiveParams, is_adversarial, objective_from_record, objective_kind, objective_record
from redblue.metrics import batches, predict_logits
from redblue.train.state import RunState

VAL_ROBUST_SIZE = 1000  # robust accuracy is measured on the first 1000 validation images (a random subset)
VAL_PGD_STEPS = 10  # PGD-10, step 2.5 * eps / 10, one random start: ~2% of a PGD-7 epoch on 55k images
VAL_ATTACK_BATCH = 500
SPLIT_SEED_OFFSET = 3  # the split's permutation is seeded with seed + 3 (shuffle: seed, attacks: + 1, dropout: + 2)
PGD_SEED_OFFSET = 4  # the validation PGD's random starts: the same every epoch, so epochs compare

# the catastrophic-overfitting rule, judged on epochs trained at the full eps (after the eps warm-up)
COLLAPSE_DROP = 0.20  # PGD validation accuracy more than 20 points below the best epoch's ...
COLLAPSE_GAP = 0.30  # ... or FGSM validation accuracy more than 30 points above PGD's, PGD's not rising (masking)
STEP_REDUCTION = 0.5  # after a collapse, objectives with a step_size continue with half of it
MAX_REDUCTIONS = 3  # after this many halvings (or for objectives without step_size) training stops


def validation_split(n: int, size: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """(train_index, val_index) of n samples: the first `size` of a permutation seeded with
    seed + SPLIT_SEED_OFFSET are held out; the rest keep their original order. CPU int64."""
    if size == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + SPLIT_SEED_OFFSET))
    return order[size:].sort().values, order[:size]


def index_digest(index: Tensor) -> str:
    """SHA-256 of the int64 indices, so a record pins the exact split."""
    return hashlib.sha256(index.cpu().to(torch.int64).numpy().tobytes()).hexdigest()


def is_single_step(params: ObjectiveParams) -> bool:
    """An objective registered as single-step (fgsm, fast-fgsm): the kind that overfits catastrophically."""
    return objective_kind(params) == "single-step"


def is_certified(params: ObjectiveParams) -> bool:
    """An objective registered as certified (ibp, crown-ibp): validated and selected by certified accuracy."""
    return objective_kind(params) == "certified"


@dataclass(frozen=True)
class ValidationSettings:
    """What is measured on the validation split each epoch (recorded with the run)."""

    size: int
    split_seed: int
    indices_sha256: str
    eps: float  # the objective's full eps (not the warm-up's); 0: clean accuracy only
    robust_size: int  # robust accuracy on the first robust_size validation images
    pgd_steps: int = VAL_PGD_STEPS
    pgd_step_size: float = 0.0
    pgd_restarts: int = 1
    fgsm: bool = False  # also FGSM accuracy (single-step objectives: the catastrophic-overfitting signature)
    certify_method: str | None = None  # also certified accuracy by this method (certified objectives)
    select_by: str = "val_robust_accuracy"  # the history column the best epoch maximises


def validation_settings(
    params: ObjectiveParams, val_index: Tensor, *, seed: int, guard: bool, model: nn.Module | None = None
) -> ValidationSettings:
    """What to measure for `params`; `model` (needed for certified objectives) picks the certification method."""
    eps = params.eps if is_adversarial(params) else 0.0
    robust_size = min(VAL_ROBUST_SIZE, len(val_index)) if eps > 0 else 0
    method = None
    if is_certified(params) and robust_size:
        assert model is not None, "certified objectives are validated on the model: pass it"
        method = choose_method(model)
    select_by = "val_certified_accuracy" if method else "val_robust_accuracy" if robust_size else "val_accuracy"
    return ValidationSettings(
        size=len(val_index),
        split_seed=seed + SPLIT_SEED_OFFSET,
        indices_sha256=index_digest(val_index),
        eps=eps,
        robust_size=robust_size,
        pgd_step_size=2.5 * eps / VAL_PGD_STEPS,
        fgsm=guard or is_single_step(params),
        certify_method=method,
        select_by=select_by,
    )


def validate(model: nn.Module, x: Tensor, y: Tensor, settings: ValidationSettings, *, seed: int) -> dict[str, float]:
    """Clean accuracy on (x, y); PGD (and FGSM, and certified) accuracy on the first robust_size of them.

    Uses the evaluator's own attacks (`redblue.attacks.pgd.pgd`, `fgsm`), with a generator seeded
    afresh each call, so every epoch is attacked from the same random starts, and the certifier's
    own bounds (`redblue.certify.certify`). Model in eval mode.
    """
    row: dict[str, float] = {}
    clean_correct = (predict_logits(model, x).argmax(dim=1) == y).sum()
    values = [clean_correct]
    if settings.robust_size:
        generator = torch.Generator(device=x.device).manual_seed(seed + PGD_SEED_OFFSET)
        x_robust, y_robust = x[: settings.robust_size], y[: settings.robust_size]
        pgd_correct = torch.zeros((), dtype=torch.long, device=x.device)
        fgsm_correct = torch.zeros((), dtype=torch.long, device=x.device)
        for xb, yb in batches(x_robust, y_robust, size=VAL_ATTACK_BATCH):
            x_adv = pgd(
                model, xb, yb, eps=settings.eps, steps=settings.pgd_steps, step_size=settings.pgd_step_size,
                restarts=settings.pgd_restarts, random_start=True, generator=generator,
            )  # fmt: skip
            pgd_correct += (predict_logits(model, x_adv).argmax(dim=1) == yb).sum()
            if settings.fgsm:
                fgsm_correct += (predict_logits(model, fgsm(model, xb, yb, eps=settings.eps)).argmax(dim=1) == yb).sum()
        certified = torch.zeros((), dtype=torch.long, device=x.device)
        if settings.certify_method:
            method: Any = settings.certify_method
            certified = certify(model, x_robust, y_robust, eps=settings.eps, method=method).sum()
        values += [pgd_correct, fgsm_correct, certified]
    counts = torch.stack(values).tolist()  # one sync
    row["val_accuracy"] = counts[0] / len(y)
    if settings.robust_size:
        row["val_robust_accuracy"] = counts[1] / settings.robust_size
        if settings.fgsm:
            row["val_fgsm_accuracy"] = counts[2] / settings.robust_size
        if settings.certify_method:
            row["val_certified_accuracy"] = counts[3] / settings.robust_size
    return row


def selection_score(row: dict[str, Any], select_by: str = "val_robust_accuracy") -> float:
    """What the best epoch maximises: the `select_by` column (certified accuracy for certified
    objectives, PGD accuracy for the others) when the row has it, else clean validation accuracy."""
    return row.get(select_by, row.get("val_robust_accuracy", row["val_accuracy"]))


def collapse_reason(row: dict[str, Any], best_robust: float | None, previous_robust: float | None = None) -> str | None:
    """Why this epoch counts as catastrophic overfitting, or None. The rule: PGD validation
    accuracy more than COLLAPSE_DROP below the best so far, or FGSM validation accuracy more than
    COLLAPSE_GAP above PGD's while PGD's did not rise from the previous good epoch's
    (`previous_robust`; None, e.g. for a run's first epoch: the gap alone does not judge).

    A wide gap while PGD accuracy climbs is a model still learning, not one masking its attack:
    fast FGSM on cnn-small at eps 0.3 without an eps warm-up had FGSM 0.587 and PGD 0.222 after
    epoch 1, then 0.789 and 0.655 after epoch 2; where it overfits, PGD accuracy falls as the gap
    opens (0.113, 0.050, 0.039 while FGSM's rose to 0.96)."""
    robust = row["val_robust_accuracy"]
    if best_robust is not None and robust < best_robust - COLLAPSE_DROP:
        return f"PGD validation accuracy {robust:.3f} fell more than {COLLAPSE_DROP:.2f} below the best {best_robust:.3f}"
    fgsm_accuracy = row.get("val_fgsm_accuracy")
    rising = previous_robust is None or robust > previous_robust
    if fgsm_accuracy is not None and fgsm_accuracy - robust > COLLAPSE_GAP and not rising:
        return (
            f"FGSM validation accuracy {fgsm_accuracy:.3f} exceeds PGD's {robust:.3f} by more than {COLLAPSE_GAP:.2f}, "
            f"and PGD's did not rise (previous epoch {previous_robust:.3f})"
        )
    return None


def after_collapse(run: RunState) -> str:
    """Continue with a smaller step_size when the objective has one and fewer than MAX_REDUCTIONS were
    made (the run's objective record changes), else stop; returns what was done."""
    params = objective_from_record(run.objective)
    step_size = getattr(params, "step_size", None)
    if step_size is None or run.reductions >= MAX_REDUCTIONS:
        run.stopped = True
        return "stopped training"
    run.reductions += 1
    run.objective = objective_record(dataclasses.replace(params, step_size=step_size * STEP_REDUCTION))
    return f"step_size {step_size:g} -> {step_size * STEP_REDUCTION:g}"


def guard_rule() -> dict[str, Any]:
    """The guard's thresholds, for the record."""
    return {
        "collapse_drop": COLLAPSE_DROP,
        "collapse_gap": COLLAPSE_GAP,
        "gap_judged": "only where PGD validation accuracy did not rise from the previous good epoch",
        "step_reduction": STEP_REDUCTION,
        "max_reductions": MAX_REDUCTIONS,
        "judged": "epochs trained at the full eps (after the eps warm-up)",
    }
