"""Gradient-masking sanity checks: small functions that each return findings the report shows.

A robustness number is only as good as the attacks behind it. Masked or obfuscated gradients
(Athalye et al., 2018; Carlini et al., 2019) make weak attacks look strong defenses. Each check
here looks for one known symptom and returns `Finding`s that say what was seen, what it means
and what to do. The checks here read numbers the evaluation produced, or call the model once;
the checks that run attacks of their own are in `probes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from redblue.attacks.core import ce_loss, eval_mode, margin_loss
from redblue.attacks.registry import AttackEntry

Severity = Literal["ok", "warning", "fail"]

# Rows of non-negative numbers that sum to 1 within this tolerance are read as probabilities.
PROBABILITY_SUM_TOLERANCE = 1e-3
# A rise of robust accuracy with eps larger than this is reported: max(0.5 percentage point,
# 3 samples). Single-restart attacks legitimately wobble by a sample or two.
MIN_TOLERANCE = 0.005
TOLERANCE_SAMPLES = 3
# A rise or a gap larger than this (absolute accuracy) is a failure rather than a warning.
FAIL_GAP = 0.05
# Clean accuracy within this many binomial standard errors of the best input-blind rate is chance level.
CHANCE_SIGMAS = 3.0
# Fraction of samples with an all-zero input gradient above which the gradient check warns / fails.
ZERO_GRADIENT_WARN = 0.01
ZERO_GRADIENT_FAIL = 0.5


@dataclass(frozen=True)
class Finding:
    """One sanity-check result: how bad, which check, and a message (what it means, what to do)."""

    severity: Severity
    check: str
    message: str


def tolerance(n: int) -> float:
    """Accuracy differences below this are sampling noise for n samples: max(0.5 pp, 3 samples)."""
    return max(MIN_TOLERANCE, TOLERANCE_SAMPLES / max(n, 1))


def spread_subset(indices: Tensor, size: int) -> Tensor:
    """At most `size` of `indices`, evenly spread (deterministic, no random draw)."""
    if len(indices) <= size:
        return indices
    picks = torch.linspace(0, len(indices) - 1, size, device=indices.device).round().long()
    return indices[picks]


def check_chance_level(accuracy: float, *, n: int, classes: int, majority: float) -> list[Finding]:
    """Clean accuracy must be clearly above what a model that ignores its input can reach.

    accuracy: clean accuracy on n samples; classes: the model's output classes; majority: the
    fraction of the samples in their most common class. A classifier blind to the image scores at
    most chance = max(1/classes, majority) on average; an accuracy within CHANCE_SIGMAS binomial
    standard errors (sqrt(chance (1 - chance) / n)) of it is at chance level. That is a failure, not
    a warning: every robust accuracy of such a model is at most chance too and says nothing about
    robustness, and the usual causes (a model evaluated on a dataset it was not trained on, an
    untrained or broken model) make the whole evaluation meaningless.
    """
    chance = max(1.0 / classes, majority)
    threshold = chance + CHANCE_SIGMAS * math.sqrt(chance * (1.0 - chance) / max(n, 1))
    where = f"chance is {1 / classes:.1%} for {classes} classes, {majority:.1%} for the most common class"
    if accuracy <= threshold:
        return [
            Finding(
                "fail",
                "chance-level",
                f"clean accuracy {accuracy:.1%} on {n} samples is at chance level ({where}; within "
                f"{CHANCE_SIGMAS:g} standard errors): the model does not recognise these images — evaluate it on the "
                "dataset it was trained on (--dataset), or check that it was trained at all; robust accuracies "
                "below mean nothing",
            )
        ]
    return [Finding("ok", "chance-level", f"clean accuracy {accuracy:.1%} is well above chance ({where})")]


def looks_like_probabilities(logits: Tensor) -> bool:
    """True when every row is non-negative, at most 1 and sums to 1: a softmax output, not logits."""
    logits = logits.double()
    in_unit = bool(((logits >= -1e-7) & (logits <= 1 + 1e-7)).all())
    sums_to_one = bool(((logits.sum(dim=1) - 1).abs() <= PROBABILITY_SUM_TOLERANCE).all())
    return in_unit and sums_to_one


PROBABILITIES_MESSAGE = (
    "the model returns probabilities (rows non-negative, summing to 1); attacks need logits — "
    "remove the final softmax from the model"
)


@torch.no_grad()
def check_outputs(model: nn.Module, x: Tensor) -> list[Finding]:
    """Logits, not probabilities; the same output twice for the same input; outputs depend on x.

    x: a small batch (a few hundred images is plenty).
    """
    with eval_mode(model):
        first = model(x)
        second = model(x)
    findings: list[Finding] = []
    if looks_like_probabilities(first):
        findings.append(Finding("fail", "logits", PROBABILITIES_MESSAGE))
    else:
        findings.append(Finding("ok", "logits", "the model returns logits (rows are not probability vectors)"))
    if not torch.equal(first, second):
        findings.append(
            Finding(
                "warning",
                "deterministic",
                "the model gives different outputs for the same input in eval mode (a randomised "
                "defense?); single-draw attacks overestimate its robustness — attack the expectation (EOT)",
            )
        )
    else:
        findings.append(Finding("ok", "deterministic", "the model gives the same output for the same input"))
    if len(first) > 1 and bool((first == first[:1]).all()):
        findings.append(
            Finding(
                "fail",
                "input-dependent",
                "the model returns the same output for every input; it does not look at the image — check the weights",
            )
        )
    return findings


def _zero_gradient_fraction(model: nn.Module, x: Tensor, y: Tensor, loss: Callable[[Tensor, Tensor], Tensor]) -> tuple[float, bool]:
    with eval_mode(model), torch.enable_grad():
        x_var = x.detach().clone().requires_grad_(True)
        losses = loss(model(x_var), y)
        (grad,) = torch.autograd.grad(losses.sum(), x_var, allow_unused=True)
    if grad is None:  # the output does not depend on the input through autograd at all
        return 1.0, True
    finite = bool(torch.isfinite(grad).all())
    zero = (grad.flatten(1) == 0).all(dim=1)
    return zero.double().mean().item(), finite


def check_gradients(model: nn.Module, x: Tensor, y: Tensor) -> list[Finding]:
    """Input gradients must be finite and non-zero; zero CE and margin gradients mean masking.

    x, y: a small batch of correctly classified images. The margin loss (max other logit minus
    true logit) does not saturate, so a zero margin gradient cannot be blamed on a confident
    softmax: something in the model (rounding, quantisation, a step function) blocks it.
    """
    zero_ce, finite_ce = _zero_gradient_fraction(model, x, y, ce_loss)
    zero_margin, finite_margin = _zero_gradient_fraction(model, x, y, margin_loss)
    if not (finite_ce and finite_margin):
        return [
            Finding(
                "fail",
                "gradients",
                "the model's input gradient is NaN or infinite on clean images; gradient attacks cannot "
                "run — look for log(0), division by zero or overflow inside the model",
            )
        ]
    if zero_margin > ZERO_GRADIENT_WARN:
        severity: Severity = "fail" if zero_margin > ZERO_GRADIENT_FAIL else "warning"
        return [
            Finding(
                severity,
                "gradients",
                f"the input gradient is exactly zero for {zero_margin:.0%} of the samples, with the CE and the "
                "margin loss alike: a non-differentiable step (rounding, quantisation, thresholding) masks the "
                "gradient, so white-box numbers overstate robustness — trust black-box attacks (square) or "
                "attack a differentiable approximation (BPDA)",
            )
        ]
    if zero_ce > ZERO_GRADIENT_WARN:
        return [
            Finding(
                "warning",
                "gradients",
                f"the cross-entropy gradient underflows to zero for {zero_ce:.0%} of the samples (the softmax is "
                "saturated) while the margin gradient is not zero: CE attacks (fgsm, pgd) stall there — add a "
                "margin or DLR attack (pgd-cw, apgd-dlr, apgd-t)",
            )
        ]
    return [Finding("ok", "gradients", "input gradients are finite and non-zero")]


def check_monotonic(curves: dict[str, Sequence[tuple[float, float]]], *, n: int, what: str) -> list[Finding]:
    """Robust accuracy must not rise with eps: a larger ball contains every image of a smaller one.

    curves: label -> [(eps, accuracy), ...]; n: samples behind each accuracy; what: "standalone"
    or "cumulative" (how to read the numbers). Rises within `tolerance(n)` are sampling noise.
    """
    tol = tolerance(n)
    findings: list[Finding] = []
    for label, points in curves.items():
        points = sorted(points)
        for (eps_a, acc_a), (eps_b, acc_b) in zip(points, points[1:]):
            rise = acc_b - acc_a
            if rise > tol:
                findings.append(
                    Finding(
                        "fail" if rise > FAIL_GAP else "warning",
                        "monotonic-eps",
                        f"{label} ({what}) accuracy rises from {acc_a:.2%} at eps={eps_a:g} to {acc_b:.2%} at "
                        f"eps={eps_b:g} (tolerance {tol:.2%}); an attack that does worse with a larger budget is "
                        "lost in the loss landscape (masked gradients or a too-large step) — add restarts or more "
                        "steps, or a black-box attack",
                    )
                )
    if not findings:
        findings.append(
            Finding("ok", "monotonic-eps", f"accuracy never rises with eps beyond {tol:.2%} ({what} numbers)")
        )
    return findings


@dataclass(frozen=True)
class StandaloneAccuracy:
    """One attack's own robust accuracy at one eps (on the full set or a subset)."""

    label: str
    entry: AttackEntry
    eps: float
    accuracy: float
    # aims at one chosen class (pgd-t, target=random): weaker than untargeted attacks by design,
    # so it is not held to the iterative-vs-single-step comparison
    targeted: bool = False


def check_attack_strength(rows: Sequence[StandaloneAccuracy], *, n: int, scope: str) -> list[Finding]:
    """Iterative must beat single-step; white-box must beat black-box and transfer attacks.

    rows: standalone accuracies (each attack alone on the same samples); n: their sample count;
    scope: where the numbers come from, e.g. "all samples" or "a subset of 200". Compared per
    (norm, eps); a gap within `tolerance(n)` is noise.
    """
    tol = tolerance(n)
    findings: list[Finding] = []
    compared: set[str] = set()
    keys = sorted({(r.entry.norm, r.eps) for r in rows})
    for norm, eps in keys:
        here = [r for r in rows if r.entry.norm == norm and r.eps == eps]
        white = [r for r in here if r.entry.threat == "white-box"]
        single = [r for r in white if not r.entry.iterative]
        iterative = [r for r in white if r.entry.iterative and not r.targeted]
        for it in iterative:
            for one in single:
                compared.add("iterative attacks beat single-step ones")
                gap = it.accuracy - one.accuracy
                if gap > tol:
                    findings.append(
                        Finding(
                            "fail" if gap > FAIL_GAP else "warning",
                            "iterative-vs-single-step",
                            f"iterative {it.label} leaves {it.accuracy:.2%} at {norm} eps={eps:g}, more than "
                            f"single-step {one.label} ({one.accuracy:.2%}); many steps should never do worse than "
                            "one — a sign of masked gradients or a too-small step size / too few steps",
                        )
                    )
        if not white:
            continue
        best_white = min(white, key=lambda r: r.accuracy)
        for other in (r for r in here if r.entry.threat in ("black-box", "transfer")):
            compared.add("white-box attacks beat black-box/transfer ones")
            gap = best_white.accuracy - other.accuracy
            if gap > tol:
                findings.append(
                    Finding(
                        "fail" if gap > FAIL_GAP else "warning",
                        "white-box-vs-black-box",
                        f"{other.entry.threat} attack {other.label} leaves {other.accuracy:.2%} at {norm} eps={eps:g}, "
                        f"less than the best white-box attack ({best_white.label}: {best_white.accuracy:.2%}); "
                        "with full access, gradients should do better than queries — the gradients are masked, "
                        "so trust the lower number and try BPDA/EOT",
                    )
                )
    if compared and not findings:
        findings.append(
            Finding(
                "ok",
                "attack-strength",
                f"{' and '.join(sorted(compared))} ({scope})",
            )
        )
    return findings


def check_cascade_gain(entry: AttackEntry, label: str, *, eps: float, n_new: int, n: int) -> list[Finding]:
    """A black-box or transfer attack should fool almost nothing that the white-box attacks missed.

    n_new: correctly classified samples it fooled that every white-box attack left robust (in the
    cascade: the samples it fooled, since it runs after them); n: all samples.
    """
    if entry.threat == "white-box" or n_new / max(n, 1) <= tolerance(n):
        return []
    return [
        Finding(
            "fail" if n_new / n > FAIL_GAP else "warning",
            "white-box-vs-black-box",
            f"{entry.threat} attack {label} fooled {n_new} samples ({n_new / n:.2%}) at {entry.norm} eps={eps:g} "
            "that every white-box attack missed: the gradients mislead the white-box attacks "
            "(masking) — trust the worst case, not the white-box rows",
        )
    ]


def is_targeted(entry: AttackEntry, params: Any) -> bool:
    """True for attacks that aim at one chosen class rather than at any wrong class."""
    return entry.targeted or getattr(params, "target", "none") != "none"
