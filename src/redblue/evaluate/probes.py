"""Sanity checks that run attacks of their own: eps = 0, eps = 1, more steps, and the masking probe.

Each takes a `run` callable from the evaluator, so this module knows nothing about how attacks are
batched or verified, and each works on a small subset of correctly classified samples, so it stays
cheap beside the evaluation it checks. `audit` decides which attack each check uses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from redblue.attacks.registry import AttackEntry
from redblue.evaluate.checks import FAIL_GAP, Finding, tolerance

# (entry, params, sample indices) -> fooled (bool, len(indices)): the evaluator runs the attack,
# verifies every image (eps-ball, [0, 1], finite) and re-predicts it; invalid images are not fooled.
AttackRunner = Callable[[AttackEntry, Any, Tensor], Tensor]

# At eps = 1 (L-inf) every image is reachable; a gradient attack should leave almost nothing.
UNBOUNDED_OK = 0.02
UNBOUNDED_FAIL = 0.10
# How much stronger the re-run attack is in the convergence check.
MORE_STEPS_FACTOR = 3
MORE_RESTARTS_FACTOR = 2
STEP_FIELDS = ("steps", "iterations", "n_iter", "max_iter", "iters")
RESTART_FIELDS = ("restarts", "n_restarts")


def check_eps_zero(run: AttackRunner, entry: AttackEntry, params: Any, indices: Tensor, *, label: str) -> list[Finding]:
    """At eps = 0 the attack may not change anything: no sample of `indices` (all correct) is fooled."""
    fooled = run(entry, dataclasses.replace(params, eps=0.0), indices)
    n_fooled = int(fooled.sum().item())
    if n_fooled:
        return [
            Finding(
                "fail",
                "eps-zero",
                f"{label} at eps=0 fooled {n_fooled} of {len(indices)} correctly classified samples; with no "
                "budget nothing may change — the attack leaves its ball or the model is random",
            )
        ]
    return [Finding("ok", "eps-zero", f"{label} at eps=0 keeps the clean accuracy ({len(indices)} samples)")]


def check_unbounded(run: AttackRunner, entry: AttackEntry, params: Any, indices: Tensor, *, label: str) -> list[Finding]:
    """At L-inf eps = 1 every image is allowed; a gradient attack should fool (almost) every sample.

    params: the attack's parameters; eps is set to 1 and any random start is turned off, so a
    zero gradient cannot hide behind the random start's noise image.
    """
    changes: dict[str, Any] = {"eps": 1.0}
    if any(f.name == "random_start" for f in dataclasses.fields(params)):
        changes["random_start"] = False
    fooled = run(entry, dataclasses.replace(params, **changes), indices)
    accuracy = 1.0 - fooled.double().mean().item()
    if accuracy <= UNBOUNDED_OK:
        return [Finding("ok", "unbounded-eps", f"{label} at eps=1 leaves {accuracy:.1%} accuracy ({len(indices)} samples)")]
    return [
        Finding(
            "fail" if accuracy > UNBOUNDED_FAIL else "warning",
            "unbounded-eps",
            f"{label} at L-inf eps=1, where any image is allowed, still leaves {accuracy:.1%} of {len(indices)} "
            "samples correct: the gradient does not lead the attack (masked gradients), so every white-box "
            "number is suspect — check the gradient findings and trust black-box attacks",
        )
    ]


def stronger_params(params: Any) -> Any | None:
    """The same attack with MORE_STEPS_FACTOR x steps and MORE_RESTARTS_FACTOR x restarts; None if it has neither."""
    names = {f.name for f in dataclasses.fields(params)}
    changes: dict[str, Any] = {}
    for name in STEP_FIELDS:
        if name in names:
            changes[name] = getattr(params, name) * MORE_STEPS_FACTOR
    for name in RESTART_FIELDS:
        if name in names:
            changes[name] = max(1, getattr(params, name)) * MORE_RESTARTS_FACTOR
    return dataclasses.replace(params, **changes) if changes else None


def check_more_steps(
    run: AttackRunner, entry: AttackEntry, params: Any, survivors: Tensor, *, n_survivors: int, n: int, label: str
) -> list[Finding]:
    """Re-attack samples that survived every attack with a stronger budget; few should fall.

    survivors: indices of (a subset of) the samples robust in the worst case at params.eps;
    n_survivors: how many survived in all; n: all samples. The fraction fooled in the subset,
    scaled to all survivors, reads as points of robust accuracy the evaluation overstates.
    """
    stronger = stronger_params(params)
    if stronger is None or len(survivors) == 0:
        return []
    fooled = run(entry, stronger, survivors)
    n_fooled = int(fooled.sum().item())
    drop = n_fooled / len(survivors) * n_survivors / max(n, 1)
    budget = ", ".join(
        f"{name}={getattr(stronger, name)}" for name in STEP_FIELDS + RESTART_FIELDS if hasattr(stronger, name)
    )
    if drop > tolerance(n):
        return [
            Finding(
                "fail" if drop > FAIL_GAP else "warning",
                "more-steps",
                f"{label} with {budget} fooled {n_fooled} of {len(survivors)} samples that survived every attack at "
                f"eps={params.eps:g} (about -{drop:.2%} robust accuracy): the attacks have not converged — raise steps "
                "and restarts until the number stops moving",
            )
        ]
    return [
        Finding(
            "ok",
            "more-steps",
            f"{label} with {budget} fooled {n_fooled} of {len(survivors)} surviving samples at eps={params.eps:g}: converged",
        )
    ]


# The masking probe warns when its PGD beats the listed attacks, on the same samples, by more than
# MASKING_SIGMAS standard errors of an accuracy measured on that subset at its widest (p = 1/2):
# margin = MASKING_SIGMAS * 0.5 / sqrt(m), 10.6 points on the default subset of 200 samples, 21 on 50.
# A gap that size is no sampling accident of the subset; a healthy model's FGSM-to-PGD gap can come
# near it at mid-range eps, which is why the finding names weak attacks beside masking.
MASKING_SIGMAS = 3.0


def masking_margin(m: int) -> float:
    """The gap (absolute accuracy) past which the masking probe warns, for a subset of m samples."""
    return MASKING_SIGMAS * 0.5 / math.sqrt(max(m, 1))


def check_masking_probe(
    run: AttackRunner,
    entry: AttackEntry,
    params: Any,
    sample: Tensor,
    listed_robust: Sequence[tuple[float, Tensor]],
    *,
    label: str,
    listed: str,
) -> list[Finding]:
    """An evaluation without an iterative attack: does a small PGD find what the listed attacks missed?

    sample: indices of correctly classified samples; listed_robust: (eps, mask) per eps evaluated,
    mask (bool, len(sample)) = the sample survived every listed attack at that eps. The probe runs
    `entry` with `params` at each eps on `sample` and warns where its robust accuracy there is lower
    than the listed attacks' by more than `masking_margin(len(sample))`. listed: the attacks, for the message.
    """
    m = len(sample)
    if m == 0:
        return []
    margin = masking_margin(m)
    findings: list[Finding] = []
    for eps, robust in listed_robust:
        probe_accuracy = 1.0 - run(entry, dataclasses.replace(params, eps=eps), sample).double().mean().item()
        listed_accuracy = robust.double().mean().item()
        gap = listed_accuracy - probe_accuracy
        if gap > margin:
            findings.append(
                Finding(
                    "warning",
                    "masking-probe",
                    f"at {entry.norm} eps={eps:g}, {label} (a probe on {m} correctly classified samples) leaves "
                    f"{probe_accuracy:.1%} robust where the listed attacks ({listed}) leave {listed_accuracy:.1%} of the "
                    f"same samples: the probe finds {100 * gap:.1f} points more, past the {100 * margin:.1f}-point margin "
                    f"(3 standard errors on {m} samples) — gradient masking (typical of FGSM-trained models) or attacks too weak for this "
                    "model; the listed numbers overstate robustness: add an iterative attack (pgd, apgd-ce) or use "
                    "--attacks standard",
                )
            )
    if findings:
        return findings
    epsilons = ", ".join(f"{eps:g}" for eps, _ in listed_robust)
    return [
        Finding(
            "ok",
            "masking-probe",
            f"{label} (a probe on {m} correct samples at eps {epsilons}) finds no more than the listed attacks "
            f"beyond the {100 * margin:.1f}-point margin (3 standard errors on {m} samples)",
        )
    ]
