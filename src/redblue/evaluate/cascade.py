"""The cascade at one eps: the plan's attacks in order, the per-sample worst case, the certified bound beside it.

* `worst-case` mode: each attack runs only on the samples every earlier attack left robust (white-box
  attacks first, cheapest first, then black-box and transfer attacks, so whatever those still find
  is a sign of masked gradients). The worst case is exact and fast; the rows are *cumulative*.
* `per-attack` mode: each attack runs on every sample, so each row is that attack's own robust
  accuracy, plus its `adversarial_accuracy` (the paper's protocol); the worst case is the same
  per-sample minimum.

Samples the model misclassifies clean are non-robust at every eps; the cascade never attacks them.
Confidence is the mean top softmax probability on the images an attack produced, taking the
sample's current worst-case image where the attack was not run or its image was invalid. The
worst-case image of a sample is the valid image with the lowest true-class margin
(z_y - max_{j != y} z_j), clean included.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.registry import get_attack
from redblue.certify import certify, choose_method
from redblue.errors import ModelError
from redblue.evaluate import checks
from redblue.evaluate.batching import Batching
from redblue.evaluate.checks import Finding
from redblue.evaluate.plan import PlannedAttack
from redblue.evaluate.results import AttackResult, EpsResult, Progress, ProgressCallback
from redblue.evaluate.resume import RowCache, RowOutcome, restore_generator, row_key
from redblue.evaluate.verify import AttackRun, run_attack, validity_findings
from redblue.metrics import WorstCase, correct_and_confidence, true_class_margin

CERTIFY_METHODS = ("auto", "ibp", "crown", "crown-ibp")


def auto_certify_method(model: nn.Module) -> str:
    """What certify_method="auto" means for this model: `redblue.certify.choose_method` (crown for
    fully connected nets, crown-ibp with convolutions, ibp with max-pooling)."""
    return choose_method(model)


@dataclass(frozen=True, eq=False)
class CleanPass:
    """What the model does on the clean images, per sample (n,): correct, true-class margin (float64), top prob."""

    correct: Tensor
    margin: Tensor
    top_prob: Tensor

    @classmethod
    def from_logits(cls, logits: Tensor, y: Tensor) -> CleanPass:
        correct, top_prob = correct_and_confidence(logits, y)
        return cls(correct=correct, margin=true_class_margin(logits, y), top_prob=top_prob)

    @property
    def correct_indices(self) -> Tensor:
        return self.correct.nonzero().squeeze(1)


@dataclass(frozen=True)
class CascadeSettings:
    """How the attacks run: mode, batch sizes (shared: an out-of-memory error lowers the chunk for every
    later call), the generator every random start draws from, and the certification method (None: no
    certified bound)."""

    mode: str
    batching: Batching
    generator: Generator | None
    certify_method: str | None
    cache: RowCache | None = None  # finished rows kept and reused (see `resume`)
    progress: ProgressCallback | None = None


@dataclass(frozen=True, eq=False)
class EpsOutcome:
    """Every attack at one eps: the result, the findings raised on the way, the key of its last row
    (the next eps chains on it) and how many rows were reused from the cache."""

    result: EpsResult
    findings: tuple[Finding, ...]
    chain: str
    rows_reused: int


def attack_row(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    planned: PlannedAttack,
    eps: float,
    *,
    worst: WorstCase,
    clean: CleanPass,
    settings: CascadeSettings,
    after_white_box: bool,
    report: RowReporter | None = None,
) -> RowOutcome:
    """Run `planned` at `eps` on the samples the mode attacks and fold its verified images into `worst`.

    after_white_box: a white-box attack ran earlier at this eps, so in the cascade whatever this
    (black-box or transfer) attack still fools is what the gradients missed. report(done, total,
    robust): progress after each batch (one device sync per batch, only when given).
    """
    n = len(y)
    params = planned.at(eps)
    cascade = settings.mode == "worst-case"
    # the cascade attacks what is still robust; per-attack mode attacks every sample (the paper's protocol)
    indices = worst.robust.nonzero().squeeze(1) if cascade else torch.arange(n, device=x.device)
    on_batch = None
    if report is not None:
        robust_before = int(worst.robust.sum().item())
        report(0, len(indices), robust_before)
        newly_fooled = torch.zeros((), dtype=torch.long, device=x.device)

        def on_batch(done: int, fooled: Tensor) -> None:
            nonlocal newly_fooled
            batch = indices[done - len(fooled) : done]
            newly_fooled = newly_fooled + (fooled & worst.robust[batch]).sum()
            report(done, len(indices), robust_before - int(newly_fooled.item()))

    run = run_attack(
        model, planned.entry, params, x, y, indices=indices, batch_size=settings.batching,
        generator=settings.generator, on_batch=on_batch,
    )
    findings = validity_findings(planned.label, run, eps=eps, norm=planned.norm)
    # confidence: this attack's valid images; elsewhere the worst-case image (clean in per-attack mode)
    top_prob = (worst.top_prob if cascade else clean.top_prob).clone().to(torch.float64)
    top_prob[indices] = torch.where(run.valid, run.top_prob.double(), top_prob[indices])
    if cascade:
        n_fooled = run.fooled.sum()
        worst = _fold(worst, indices, run)
        robust = worst.robust
        adversarial_accuracy = torch.full((), math.nan, dtype=torch.float64, device=x.device)
    else:
        # every sample was attacked; the misclassified ones stay as they are (fooled by their clean image)
        worst = worst.update(indices, fooled=run.fooled, valid=run.valid & clean.correct, margin=run.margin,
                             top_prob=run.top_prob)  # fmt: skip
        robust = clean.correct & ~run.fooled
        n_fooled = (run.fooled & clean.correct).sum()
        # an invalid image is no adversarial example: that sample keeps its clean prediction
        adversarial_accuracy = torch.where(run.valid, run.predicted == y, clean.correct).double().mean()
    # every number of the row in one transfer from the device
    numbers = torch.stack(
        [n_fooled.double(), robust.double().mean(), top_prob.mean(), run.valid.sum().double(), adversarial_accuracy]
    ).tolist()
    fooled_count, accuracy, confidence, n_valid, adversarial = numbers
    if cascade and after_white_box:
        findings += checks.check_cascade_gain(planned.entry, planned.label, eps=eps, n_new=int(fooled_count), n=n)
    row = AttackResult(
        label=planned.label,
        attack=planned.entry.name,
        params=dataclasses.asdict(params),
        norm=planned.norm,
        threat=planned.threat,
        eps=eps,
        accuracy=accuracy,
        confidence=confidence,
        cumulative=cascade,
        n_attacked=len(indices),
        n_fooled=int(fooled_count),
        n_invalid=len(indices) - int(n_valid),
        seconds=run.seconds,
        robust_mask=robust.cpu(),
        adversarial_accuracy=None if cascade else adversarial,
    )
    state = None if settings.generator is None else settings.generator.get_state()
    return RowOutcome(row=row, worst=worst, findings=tuple(findings), generator_state=state)


def evaluate_eps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    plan: Sequence[PlannedAttack],
    eps: float,
    *,
    clean: CleanPass,
    settings: CascadeSettings,
    chain: str = "",
) -> EpsOutcome:
    """Every attack of `plan` (one norm) at `eps`, in order; then the certified bound for that eps.

    With settings.cache, each row is looked up by its key (chained on `chain`, the key of the row
    before) and reused when found, else computed and stored; see `resume`.
    """
    norm = plan[0].norm
    worst = WorstCase.clean(clean.correct, clean.margin, clean.top_prob)
    rows: list[AttackResult] = []
    findings: list[Finding] = []
    n_reused = 0
    for index, planned in enumerate(plan, start=1):
        report = _reporter(settings.progress, planned, eps, row=index, rows=len(plan), n=len(y))
        outcome = None
        if settings.cache is not None:
            chain = row_key(chain, planned, eps, settings.generator)
            outcome = settings.cache.load(chain, planned, eps, device=x.device)
        reused = outcome is not None
        if outcome is not None:
            restore_generator(settings.generator, outcome.generator_state)
            n_reused += 1
        else:
            after_white_box = any(row.threat == "white-box" for row in rows)
            outcome = attack_row(
                model, x, y, planned, eps, worst=worst, clean=clean, settings=settings,
                after_white_box=after_white_box, report=report,
            )
            if settings.cache is not None:
                settings.cache.save(chain, planned, eps, outcome)
        worst = outcome.worst
        rows.append(outcome.row)
        findings += outcome.findings
        if report is not None:  # after the row is stored: an interruption from here on keeps it
            report(outcome.row.n_attacked, outcome.row.n_attacked, int(worst.robust.sum().item()), reused)
    if settings.mode == "per-attack":
        findings += black_box_gain(rows, clean.correct, eps=eps, n=len(y))
    certify_start = time.perf_counter()
    certified_mask, note, certify_findings = _certify_against(
        model, x, y, worst, clean, eps=eps, norm=norm, method=settings.certify_method
    )
    findings += certify_findings
    certified_mean = torch.full((), math.nan, dtype=torch.float64, device=x.device)
    if certified_mask is not None:
        certified_mean = certified_mask.double().mean()
    worst_accuracy, worst_confidence, certified_accuracy = torch.stack(
        [worst.robust.double().mean(), worst.top_prob.double().mean(), certified_mean]
    ).tolist()  # one transfer for the three numbers
    result = EpsResult(
        norm=norm,
        eps=eps,
        attacks=tuple(rows),
        worst_case_accuracy=worst_accuracy,
        worst_case_confidence=worst_confidence,
        certified_accuracy=None if certified_mask is None else certified_accuracy,
        certified_note=note,
        worst_case_mask=worst.robust.cpu(),
        certified_mask=None if certified_mask is None else certified_mask.cpu(),
        seconds_certify=time.perf_counter() - certify_start,
    )
    return EpsOutcome(result=result, findings=tuple(findings), chain=chain, rows_reused=n_reused)


# report(done, total, robust, reused=False): one row's progress, in the engine's terms
RowReporter = Callable[..., None]


def _reporter(
    progress: ProgressCallback | None, planned: PlannedAttack, eps: float, *, row: int, rows: int, n: int
) -> RowReporter | None:
    """Turn (done, total, robust) counts of one row into Progress records for the caller's callback."""
    if progress is None:
        return None

    def report(done: int, total: int, robust: int, reused: bool = False) -> None:
        progress(
            Progress(
                stage="attack", norm=planned.norm, eps=eps, attack=planned.label, unit=0, units=0, row=row, rows=rows,
                done=done, total=total, robust=robust, n=n, reused=reused,
            )
        )

    return report


def _fold(worst: WorstCase, indices: Tensor, run: AttackRun) -> WorstCase:
    return worst.update(indices, fooled=run.fooled, valid=run.valid, margin=run.margin, top_prob=run.top_prob)


def black_box_gain(rows: Sequence[AttackResult], clean_correct: Tensor, *, eps: float, n: int) -> list[Finding]:
    """Per-attack mode: samples each black-box or transfer attack fooled that no white-box attack did."""
    white = [row.robust_mask for row in rows if row.threat == "white-box"]
    if not white:
        return []
    white_robust = torch.stack(white).all(dim=0) & clean_correct.cpu()
    findings: list[Finding] = []
    for row in rows:
        if row.threat != "white-box":
            n_new = int((white_robust & ~row.robust_mask).sum().item())
            findings += checks.check_cascade_gain(get_attack(row.attack), row.label, eps=eps, n_new=n_new, n=n)
    return findings


def _certify_against(
    model: nn.Module, x: Tensor, y: Tensor, worst: WorstCase, clean: CleanPass, *, eps: float, norm: str, method: str | None
) -> tuple[Tensor | None, str | None, list[Finding]]:
    """The certified mask (or None and why not), and a failure if it certifies a sample an attack fooled."""
    if method is None:
        return None, None, []
    certified_mask, note = certified(model, x, y, clean.correct_indices, eps=eps, norm=norm, method=method)
    if certified_mask is None:
        return None, note, []
    contradicted = int((certified_mask & worst.fooled).sum().item())
    if not contradicted:
        return certified_mask, note, []
    return certified_mask, note, [
        Finding(
            "fail",
            "certified-vs-empirical",
            f"{contradicted} samples certified robust at {norm} eps={eps:g} were fooled by a verified "
            f"adversarial image: the certifier ({method}) or the model's determinism is wrong",
        )
    ]


def certified(
    model: nn.Module, x: Tensor, y: Tensor, correct_idx: Tensor, *, eps: float, norm: str, method: str
) -> tuple[Tensor | None, str | None]:
    """Per-sample certified mask (n,) on x's device, or None with a note saying why there is none."""
    if norm != "linf":
        return None, f"certified bounds are computed for L-inf only, not {norm}"
    mask = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    try:  # certify batches by itself, with a batch size that suits its memory use
        mask[correct_idx] = certify(model, x[correct_idx], y[correct_idx], eps=eps, method=method)
    except ModelError as exc:  # an architecture the certifier does not support: no bound, not a failure
        return None, str(exc)
    return mask, None
