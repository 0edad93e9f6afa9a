"""`evaluate`: attack x eps grids over a dataset, the per-sample worst case, certified bounds and sanity findings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import Generator, Tensor, nn

from redblue.attacks.core import check_eps, check_inputs, eval_mode
from redblue.attacks.registry import AttackEntry
from redblue.errors import ConfigError, require_choice
from redblue.evaluate import checks as sanity
from redblue.evaluate.audit import run_checks
from redblue.evaluate.cascade import (
    CERTIFY_METHODS,
    _evaluate_eps,
    _margin,
    auto_certify_method,
)
from redblue.evaluate.checks import Finding
from redblue.evaluate.plan import (
    MODES,
    cascade_order,
    norms_of,
    parse_attack_list,
    unique_labels,
)
from redblue.evaluate.results import EpsResult, Evaluation
from redblue.evaluate.verify import require_logits
from redblue.metrics import DEFAULT_BATCH, correct_and_confidence, predict_logits

# Sanity checks that run attacks use at most this many samples.
CHECK_SUBSET = 200


# Outputs and gradients are inspected on this many images.
PROBE_SIZE = 256


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: str | Sequence[tuple[AttackEntry, Any]],
    eps_list: Sequence[float],
    *,
    mode: str = "worst-case",
    batch_size: int = DEFAULT_BATCH,
    generator: Generator | None = None,
    certify_method: str | None = "auto",
    checks: bool = True,
    check_subset: int = CHECK_SUBSET,
) -> Evaluation:
    """Robust accuracy and confidence for every attack x eps, the per-sample worst case, bounds and findings.

    x: (N, 1, 28, 28) pixels in [0, 1] on the model's device; y: (N,) labels. attacks: (entry, params)
    pairs, or text such as "standard" or "fgsm,pgd:steps=100" (see `parse_attack_list`); params.eps is
    replaced by each eps of eps_list (dataclasses.replace). Attacks of a norm are evaluated at every eps
    with that norm's worst case. In worst-case mode white-box attacks run first, cheapest first, then
    black-box and transfer ones, so what those add is a sign of masked gradients. Certified bounds
    (L-inf only) come from `redblue.certify` when certify_method is "ibp", "crown", "crown-ibp" or
    "auto" (the default: see `auto_certify_method`), so each eps reads as an interval [certified, worst case]; None skips them. checks=False
    skips the gradient-masking sanity checks (on by default; they cost about a third of the attacks).
    Raises ModelError when the model returns probabilities, ConfigError for a bad mode, method or eps.
    """
    require_choice("mode", mode, MODES)
    if certify_method is not None:
        require_choice("certify method", certify_method, CERTIFY_METHODS)
        if certify_method == "auto":
            certify_method = auto_certify_method(model)
    if not eps_list:
        raise ConfigError("no eps given; pass at least one, for example 0.1")
    eps_values = sorted(set(float(e) for e in eps_list))
    if isinstance(attacks, str):
        attacks = parse_attack_list(attacks, eps=eps_values[0])[0]
    if not attacks:
        raise ConfigError("no attack given; name at least one, for example fgsm")
    for entry, _ in attacks:
        for eps in eps_values:
            check_eps(eps, entry.norm)
    check_inputs(x, y)
    if len(y) == 0:
        raise ConfigError("no samples to evaluate on; pass at least one image")
    labels = unique_labels(attacks)
    plan = list(zip(labels, attacks))
    if mode == "worst-case":
        plan.sort(key=cascade_order)  # stable: equal keys keep the user's order
    n = len(y)

    with eval_mode(model):
        require_logits(model, x[:PROBE_SIZE])
        findings: list[Finding] = []
        check_start = time.perf_counter()
        clean_logits = predict_logits(model, x, batch_size=batch_size)
        clean_correct, clean_top = correct_and_confidence(clean_logits, y)
        clean_margin = _margin(clean_logits, y)
        correct_idx = clean_correct.nonzero().squeeze(1)
        if checks:
            findings += sanity.check_outputs(model, x[:PROBE_SIZE])
            probe = sanity.spread_subset(correct_idx, PROBE_SIZE)
            if len(probe):
                findings += sanity.check_gradients(model, x[probe], y[probe])
        seconds_checks = time.perf_counter() - check_start

        attack_start = time.perf_counter()
        results: list[EpsResult] = []
        for norm in norms_of(attacks):
            for eps in eps_values:
                results.append(
                    _evaluate_eps(
                        model, x, y, [item for item in plan if item[1][0].norm == norm], norm, eps,
                        mode=mode, clean_correct=clean_correct, clean_margin=clean_margin, clean_top=clean_top,
                        batch_size=batch_size, generator=generator, certify_method=certify_method, findings=findings,
                    )
                )
        seconds_certify = sum(r.seconds_certify for r in results)
        seconds_attacks = time.perf_counter() - attack_start - seconds_certify

        if checks:
            check_start = time.perf_counter()
            findings += run_checks(
                model, x, y, plan, results, mode=mode, clean_correct=clean_correct,
                batch_size=batch_size, generator=generator, subset=check_subset,
            )
            seconds_checks += time.perf_counter() - check_start

    return Evaluation(
        n=n,
        mode=mode,
        clean_accuracy=clean_correct.double().mean().item(),
        clean_confidence=clean_top.double().mean().item(),
        results=tuple(results),
        findings=tuple(findings),
        certify_method=certify_method,
        checks=checks,
        seconds_attacks=seconds_attacks,
        seconds_checks=seconds_checks,
        seconds_certify=seconds_certify,
        clean_mask=clean_correct.cpu(),
    )
