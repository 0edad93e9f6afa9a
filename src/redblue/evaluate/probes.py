"""Sanity checks that run attacks: eps = 0, eps = 1, more steps, and the masking probe.

Each takes a `run` callable from the evaluator, so this module knows nothing about how attacks are
batched or verified, and each works on a small subset of correctly classified samples, so it stays
cheap beside the evaluation it checks. `audit` decides which attack each check uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
