"""Sanity checks that run attacks: which checks run for a plan, on which attacks, samples and eps.

The checks themselves (`checks`) take a runner `(entry, params, indices) -> fooled`; here that runner
is the evaluator's verified `run_attack`, and here the plan decides which attack each check uses.
Every check runs on a small, evenly spread subset of the correctly classified samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from redblue.attacks.registry import ATTACKS, AttackEntry
from redblue.evaluate import checks as sanity
from redblue.evaluate import probes
from redblue.evaluate.cascade import CascadeSettings, CleanPass
from redblue.evaluate.checks import Finding
from redblue.evaluate.plan import (
    PlannedAttack,
    attack_label,
    cascade_order,
    estimated_cost,
)
from redblue.evaluate.results import EpsResult
from redblue.evaluate.verify import run_attack, validity_findings

# The iterative attack the masking probe runs where the plan has none, per norm.
MASKING_PROBES = {"linf": "pgd", "l2": "pgd-l2"}


def run_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    plan: Sequence[PlannedAttack],
    results: Sequence[EpsResult],
    *,
    clean: CleanPass,
    settings: CascadeSettings,
    subset: int,
) -> list[Finding]:
    """Every check that needs attacks or the finished results; returns their findings, in a fixed order.

    subset: at most this many correctly classified samples are attacked by each check.
    """
    findings: list[Finding] = []
    n = len(y)
    mode = settings.mode
    sample = sanity.spread_subset(clean.correct_indices, subset)

    def run(entry: AttackEntry, params: Any, indices: Tensor) -> Tensor:
        attack_run = run_attack(
            model, entry, params, x, y, indices=indices, batch_size=settings.batching, generator=settings.generator
        )
        # an attack that breaks its contract inside a check is as much a bug as inside the evaluation
        findings.extend(validity_findings(attack_label(entry, params), attack_run, eps=params.eps, norm=entry.norm))
        return attack_run.fooled

    what = "cumulative" if mode == "worst-case" else "standalone"
    for norm in dict.fromkeys(r.norm for r in results):
        here = [r for r in results if r.norm == norm]
        curves: dict[str, list[tuple[float, float]]] = {"worst case": [(r.eps, r.worst_case_accuracy) for r in here]}
        for planned in plan:
            points = [(r.eps, a.accuracy) for r in here for a in r.attacks if a.label == planned.label]
            if points:
                curves[planned.label] = points
        findings += sanity.check_monotonic(curves, n=n, what=what)

    if len(sample) == 0:
        return findings + [Finding("warning", "sanity", "no sample is classified correctly; the attack checks did not run")]

    # the cheapest attack (white-box first) at eps = 0: a check, not a second evaluation
    first = min(plan, key=cascade_order)
    findings += probes.check_eps_zero(run, first.entry, first.params, sample[: max(1, subset // 4)], label=first.label)

    if mode == "per-attack":
        by_label = {planned.label: planned for planned in plan}
        rows = [
            sanity.StandaloneAccuracy(
                a.label, by_label[a.label].entry, r.eps, a.accuracy,
                targeted=sanity.is_targeted(by_label[a.label].entry, by_label[a.label].params),
            )
            for r in results
            for a in r.attacks
        ]
        findings += sanity.check_attack_strength(rows, n=n, scope="all samples")
    else:
        findings += _strength_on_subset(run, plan, results, sample)
    findings += _masking_probe(run, plan, results, sample)

    unbounded_label, unbounded_entry, unbounded_params = _unbounded_attack(plan)
    findings += probes.check_unbounded(run, unbounded_entry, unbounded_params, sample, label=unbounded_label)

    cheapest = _cheapest_iterative(plan)
    if cheapest is not None:
        label, entry, params = cheapest
        target = _most_informative(results, entry.norm)
        survivors = target.worst_case_mask.to(x.device).nonzero().squeeze(1)
        findings += probes.check_more_steps(
            run, entry, dataclasses.replace(params, eps=target.eps), sanity.spread_subset(survivors, max(1, subset // 2)),
            n_survivors=len(survivors), n=n, label=label,
        )
    return findings


def _most_informative(results: Sequence[EpsResult], norm: str) -> EpsResult:
    """The eps whose worst-case accuracy is nearest half of its maximum: attacks are tested hardest there."""
    here = [r for r in results if r.norm == norm]
    top = max(r.worst_case_accuracy for r in here)
    return min(here, key=lambda r: abs(r.worst_case_accuracy - top / 2))


def _strength_on_subset(
    run: probes.AttackRunner, plan: Sequence[PlannedAttack], results: Sequence[EpsResult], sample: Tensor
) -> list[Finding]:
    """In the cascade, standalone numbers exist only on a subset: run each white-box attack there at one eps per norm.

    Without a single-step attack in the plan, FGSM (one gradient) joins as the reference for L-inf.
    Black-box and transfer attacks are not re-run: the cascade runs them after every white-box attack,
    and `check_cascade_gain` already reports anything they find that the gradients missed.
    """
    rows: list[sanity.StandaloneAccuracy] = []
    for norm in dict.fromkeys(r.norm for r in results):
        white = [(p.label, p.entry, p.params) for p in plan if p.norm == norm and p.threat == "white-box"]
        if not any(entry.iterative for _, entry, _ in white):
            continue
        if not any(not entry.iterative for _, entry, _ in white):
            if norm != "linf" or "fgsm" not in ATTACKS:
                continue
            reference = ATTACKS["fgsm"]
            white.append(("fgsm (reference)", reference, reference.params(eps=0.0)))
        eps = _most_informative(results, norm).eps
        for label, entry, params in white:
            fooled = run(entry, dataclasses.replace(params, eps=eps), sample)
            rows.append(
                sanity.StandaloneAccuracy(
                    label, entry, eps, 1.0 - fooled.double().mean().item(), targeted=sanity.is_targeted(entry, params)
                )
            )
    if not rows:
        return []
    return sanity.check_attack_strength(rows, n=len(sample), scope=f"standalone on {len(sample)} correct samples")


def _masking_probe(
    run: probes.AttackRunner, plan: Sequence[PlannedAttack], results: Sequence[EpsResult], sample: Tensor
) -> list[Finding]:
    """For each norm whose listed attacks hold no white-box iterative attack: the registry's default PGD
    (40 steps, random start) of that norm on the check subset, at every eps evaluated."""
    findings: list[Finding] = []
    for norm in dict.fromkeys(r.norm for r in results):
        listed = [p for p in plan if p.norm == norm]
        if any(p.threat == "white-box" and p.entry.iterative for p in listed) or MASKING_PROBES[norm] not in ATTACKS:
            continue
        entry = ATTACKS[MASKING_PROBES[norm]]
        on_sample = sample.cpu()
        points = [(r.eps, r.worst_case_mask[on_sample]) for r in results if r.norm == norm]
        findings += probes.check_masking_probe(
            run, entry, entry.params(eps=0.0), sample, points,
            label=f"{entry.name} ({entry.params(eps=0.0).steps} steps)",
            listed=", ".join(p.label for p in listed),
        )
    return findings


def _unbounded_attack(plan: Sequence[PlannedAttack]) -> tuple[str, AttackEntry, Any]:
    """The registry's default PGD (else the plan's strongest L-inf gradient attack, else FGSM) for the eps = 1 check."""
    if "pgd" in ATTACKS:
        entry = ATTACKS["pgd"]
        return "pgd", entry, entry.params(eps=1.0)
    linf = [(p.label, p.entry, p.params) for p in plan if p.norm == "linf" and p.threat == "white-box"]
    if linf:
        return max(linf, key=lambda m: estimated_cost(m[1], m[2]))
    entry = ATTACKS["fgsm"]
    return "fgsm", entry, entry.params(eps=1.0)


def _cheapest_iterative(plan: Sequence[PlannedAttack]) -> tuple[str, AttackEntry, Any] | None:
    """The white-box iterative attack with the smallest budget that has steps or restarts to raise.

    The samples re-attacked survived every attack of the plan, the strongest included, so whatever
    a stronger version of any of them still fools shows the evaluation has not converged; the
    cheapest keeps the check a fraction of the evaluation's cost.
    """
    candidates = [
        (p.label, p.entry, p.params)
        for p in plan
        if p.threat == "white-box" and p.entry.iterative and probes.stronger_params(p.params) is not None
    ]
    # an attack towards one random class is no measure of convergence unless nothing else is there
    untargeted = [m for m in candidates if not sanity.is_targeted(m[1], m[2])]
    candidates = untargeted or candidates
    return min(candidates, key=lambda m: estimated_cost(m[1], m[2])) if candidates else None
