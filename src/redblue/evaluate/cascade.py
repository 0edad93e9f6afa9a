"""The cascade at one eps: attacks in plan order, the per-sample worst case, and the certified bound beside it.

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
import time
from typing import Any

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.registry import AttackEntry, get_attack
from redblue.errors import ModelError
from redblue.evaluate import checks as sanity
from redblue.evaluate.checks import Finding
from redblue.evaluate.results import AttackResult, EpsResult
from redblue.evaluate.verify import (
    _PER_SAMPLE,
    AttackRun,
    run_attack,
    validity_findings,
)

CERTIFY_METHODS = ("auto", "ibp", "crown", "crown-ibp")


def auto_certify_method(model: nn.Module) -> str:
    """Full CROWN for fully connected nets (0.5 s per 1000 MNIST images for the paper's MLP);
    CROWN-IBP once there is a convolution, where full CROWN's backward pass per unstable neuron
    costs minutes per 1000 images on a CPU (measured: 600-3800 s for a small MNIST CNN)."""
    return "crown-ibp" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "crown"


class _WorstCase:
    """Per-sample worst case so far at one eps: fooled, true-class margin and top prob of the worst image."""

    def __init__(self, clean_correct: Tensor, clean_margin: Tensor, clean_top: Tensor) -> None:
        self.fooled = ~clean_correct
        self.margin = clean_margin.clone()
        self.top_prob = clean_top.clone()

    def update(self, indices: Tensor, run: AttackRun) -> None:
        cur_fooled, cur_margin = self.fooled[indices], self.margin[indices]
        better = run.valid & (
            (run.fooled & ~cur_fooled) | ((run.fooled == cur_fooled) & (run.margin < cur_margin))
        )
        self.fooled[indices] = cur_fooled | run.fooled
        self.margin[indices] = torch.where(better, run.margin, cur_margin)
        self.top_prob[indices] = torch.where(better, run.top_prob.to(self.top_prob.dtype), self.top_prob[indices])


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    logits = logits.double()
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    return true_logit - logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def _evaluate_eps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    plan: list[tuple[str, tuple[AttackEntry, Any]]],
    norm: str,
    eps: float,
    *,
    mode: str,
    clean_correct: Tensor,
    clean_margin: Tensor,
    clean_top: Tensor,
    batch_size: int,
    generator: Generator | None,
    certify_method: str | None,
    findings: list[Finding],
) -> EpsResult:
    n = len(y)
    worst = _WorstCase(clean_correct, clean_margin, clean_top)
    correct_idx = clean_correct.nonzero().squeeze(1)
    all_idx = torch.arange(n, device=x.device)
    rows: list[AttackResult] = []
    white_box_ran = False
    for label, (entry, base_params) in plan:
        params = dataclasses.replace(base_params, eps=eps)
        # the cascade attacks what is still robust; per-attack mode attacks every sample (the paper's protocol)
        indices = (~worst.fooled).nonzero().squeeze(1) if mode == "worst-case" else all_idx
        run = run_attack(model, entry, params, x, y, indices=indices, batch_size=batch_size, generator=generator)
        findings += validity_findings(label, run, eps=eps, norm=norm)
        # confidence: this attack's valid images; elsewhere the worst-case image (clean in per-attack mode)
        top_prob = (worst.top_prob if mode == "worst-case" else clean_top).clone().to(torch.float64)
        valid_idx = indices[run.valid]
        top_prob[valid_idx] = run.top_prob[run.valid].double()
        adversarial_accuracy = None
        if mode == "worst-case":
            n_fooled = int(run.fooled.sum().item())
            worst.update(indices, run)
            robust = ~worst.fooled
            if white_box_ran:  # what a black-box or transfer attack adds after gradients had their turn
                findings += sanity.check_cascade_gain(entry, label, eps=eps, n_new=n_fooled, n=n)
        else:
            worst.update(correct_idx, _select(run, clean_correct))
            robust = clean_correct & ~run.fooled
            n_fooled = int((run.fooled & clean_correct).sum().item())
            # an invalid image is no adversarial example: that sample keeps its clean prediction
            adversarial_correct = torch.where(run.valid, run.predicted == y, clean_correct)
            adversarial_accuracy = adversarial_correct.double().mean().item()
        white_box_ran |= entry.threat == "white-box"
        rows.append(
            AttackResult(
                label=label,
                attack=entry.name,
                params=dataclasses.asdict(params),
                norm=norm,
                threat=entry.threat,
                eps=eps,
                accuracy=robust.double().mean().item(),
                confidence=top_prob.mean().item(),
                cumulative=mode == "worst-case",
                n_attacked=len(indices),
                n_fooled=n_fooled,
                n_invalid=len(indices) - int(run.valid.sum().item()),
                seconds=run.seconds,
                robust_mask=robust.cpu(),
                adversarial_accuracy=adversarial_accuracy,
            )
        )
    if mode == "per-attack":
        findings += _black_box_gain(rows, clean_correct, eps=eps, n=n)
    worst_mask = ~worst.fooled
    certified_mask, note = None, None
    certify_start = time.perf_counter()
    if certify_method is not None:
        certified_mask, note = _certified(model, x, y, correct_idx, eps=eps, norm=norm, method=certify_method)
        if certified_mask is not None:
            contradicted = int((certified_mask & ~worst_mask).sum().item())
            if contradicted:
                findings.append(
                    Finding(
                        "fail",
                        "certified-vs-empirical",
                        f"{contradicted} samples certified robust at {norm} eps={eps:g} were fooled by a verified "
                        f"adversarial image: the certifier ({certify_method}) or the model's determinism is wrong",
                    )
                )
    return EpsResult(
        norm=norm,
        eps=eps,
        attacks=tuple(rows),
        worst_case_accuracy=worst_mask.double().mean().item(),
        worst_case_confidence=worst.top_prob.double().mean().item(),
        certified_accuracy=None if certified_mask is None else certified_mask.double().mean().item(),
        certified_note=note,
        worst_case_mask=worst_mask.cpu(),
        certified_mask=None if certified_mask is None else certified_mask.cpu(),
        seconds_certify=time.perf_counter() - certify_start,
    )


def _select(run: AttackRun, keep: Tensor) -> AttackRun:
    """The rows of `run` where `keep` (bool, one per attacked sample) is True."""
    return dataclasses.replace(run, **{name: getattr(run, name)[keep] for name in _PER_SAMPLE})


def _black_box_gain(rows: list[AttackResult], clean_correct: Tensor, *, eps: float, n: int) -> list[Finding]:
    """Per-attack mode: samples each black-box or transfer attack fooled that no white-box attack did."""
    white = [row.robust_mask for row in rows if row.threat == "white-box"]
    if not white:
        return []
    white_robust = torch.stack(white).all(dim=0) & clean_correct.cpu()
    findings: list[Finding] = []
    for row in rows:
        if row.threat != "white-box":
            n_new = int((white_robust & ~row.robust_mask).sum().item())
            findings += sanity.check_cascade_gain(get_attack(row.attack), row.label, eps=eps, n_new=n_new, n=n)
    return findings


def _certified(
    model: nn.Module, x: Tensor, y: Tensor, correct_idx: Tensor, *, eps: float, norm: str, method: str
) -> tuple[Tensor | None, str | None]:
    """Per-sample certified mask (n,) on x's device, or None with a note saying why there is none."""
    if norm != "linf":
        return None, f"certified bounds are computed for L-inf only, not {norm}"
    try:
        from redblue import certify as certify_module
    except ImportError:
        return None, "certified bounds need redblue.certify, which is not available in this install"
    mask = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    try:  # certify batches by itself, with a batch size that suits its memory use
        mask[correct_idx] = certify_module.certify(model, x[correct_idx], y[correct_idx], eps=eps, method=method)
    except ModelError as exc:  # an architecture the certifier does not support: no bound, not a failure
        return None, str(exc)
    return mask, None
