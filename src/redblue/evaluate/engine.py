"""`evaluate`: attack x eps grids over a dataset, the per-sample worst case, certified bounds and sanity findings."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import check_eps, check_inputs, eval_mode
from redblue.attacks.registry import AttackEntry
from redblue.errors import ConfigError, ModelError, require_choice
from redblue.evaluate import checks as sanity
from redblue.evaluate.audit import run_checks
from redblue.evaluate.batching import (
    AUTO,
    Batching,
    BatchSize,
    ChunkedModel,
    choose_batching,
    require_batch_size,
    with_retry,
)
from redblue.evaluate.cascade import (
    CERTIFY_METHODS,
    CascadeSettings,
    CleanPass,
    auto_certify_method,
    evaluate_eps,
)
from redblue.evaluate.checks import Finding
from redblue.evaluate.plan import MODES, make_plan, parse_attack_list
from redblue.evaluate.results import EpsResult, Evaluation, Progress, ProgressCallback
from redblue.evaluate.resume import RowCache, run_digest
from redblue.evaluate.verify import require_logits
from redblue.metrics import predict_logits

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
    batch_size: BatchSize | Batching = AUTO,
    generator: Generator | None = None,
    certify_method: str | None = "auto",
    checks: bool = True,
    check_subset: int = CHECK_SUBSET,
    cache: RowCache | None = None,
    progress: ProgressCallback | None = None,
) -> Evaluation:
    """Robust accuracy and confidence for every attack x eps, the per-sample worst case, bounds and findings.

    x: (N, C, H, W) pixels in [0, 1] on the model's device; y: (N,) labels. attacks: (entry, params)
    pairs, or text such as "standard" or "fgsm,pgd:steps=100" (see `parse_attack_list`); params.eps is
    replaced by each eps of eps_list (dataclasses.replace). Attacks of a norm are evaluated at every eps
    with that norm's worst case. In worst-case mode white-box attacks run first, cheapest first, then
    black-box and transfer ones, so what those add is a sign of masked gradients. Certified bounds
    (L-inf only) come from `redblue.certify` when certify_method is "ibp", "crown", "crown-ibp" or
    "auto" (the default: see `auto_certify_method`), so each eps reads as an interval [certified, worst case]; None skips them. checks=False
    skips the gradient-masking sanity checks (on by default; they cost about a third of the attacks).
    batch_size: samples per attack call, or "auto" / None (the default): on a GPU the whole set, with the
    model's passes split to fit the free memory; on a CPU `batching.CPU_BATCH` (see `batching`). An
    out-of-memory error is never fatal: the model's passes are split smaller and the call runs again,
    with the same numbers.
    cache: keeps every finished (attack x eps) row and reuses those of an earlier, interrupted run with
    the same model, data and settings (see `resume`; needs a generator, so that a reused row leaves the
    random draws where the computed one would). progress: called as the rows run (see `Progress`).
    Raises ModelError when the model returns probabilities, ConfigError for a bad mode, method or eps.
    """
    require_choice("mode", mode, MODES)
    require_batch_size(batch_size)
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
    if cache is not None and generator is None:
        raise ConfigError("keeping rows to resume needs a seeded generator; pass generator=torch.Generator().manual_seed(...)")
    plan = make_plan(attacks, mode=mode)
    norms = list(dict.fromkeys(entry.norm for entry, _ in attacks))  # in the order given
    batching = choose_batching(model, x, y, batch_size)
    settings = CascadeSettings(
        mode=mode, batching=batching, generator=generator, certify_method=certify_method, cache=cache
    )
    units = [(norm, eps) for norm in norms for eps in eps_values]

    with eval_mode(model):
        # the model's passes here go through `chunked` too: no call, however small, may run out of memory
        chunked = ChunkedModel(model, batching)
        with_retry(lambda: require_logits(chunked, x[:PROBE_SIZE]), batching)
        check_start = time.perf_counter()
        clean_logits = with_retry(lambda: predict_logits(chunked, x, batch_size=batching.size), batching)
        _check_labels(y, classes=clean_logits.shape[1])
        clean = CleanPass.from_logits(clean_logits, y)
        findings = _chance_findings(clean, y, classes=clean_logits.shape[1])
        if checks:
            findings += with_retry(lambda: _model_findings(chunked, x, y, clean), batching)
        seconds_checks = time.perf_counter() - check_start

        attack_start = time.perf_counter()
        results: list[EpsResult] = []
        rows_reused = 0
        chain = run_digest(model, x, y, mode=mode, batch_size=batching.size) if cache is not None else ""
        for unit, (norm, eps) in enumerate(units, start=1):
            unit_settings = dataclasses.replace(settings, progress=_in_unit(progress, unit, len(units)))
            outcome = evaluate_eps(
                model, x, y, [p for p in plan if p.norm == norm], eps, clean=clean, settings=unit_settings, chain=chain
            )
            results.append(outcome.result)
            findings += outcome.findings
            chain, rows_reused = outcome.chain, rows_reused + outcome.rows_reused
        seconds_certify = sum(r.seconds_certify for r in results)
        seconds_attacks = time.perf_counter() - attack_start - seconds_certify

        if checks:
            check_start = time.perf_counter()
            if progress is not None:
                progress(
                    Progress(stage="checks", norm=norms[0], eps=eps_values[-1], attack="sanity checks", unit=len(units),
                             units=len(units), row=0, rows=0, done=0, total=0, robust=0, n=len(y))
                )
            findings += run_checks(model, x, y, plan, results, clean=clean, settings=settings, subset=check_subset)
            seconds_checks += time.perf_counter() - check_start

    clean_accuracy, clean_confidence = torch.stack([clean.correct.double().mean(), clean.top_prob.double().mean()]).tolist()
    return Evaluation(
        n=len(y),
        mode=mode,
        clean_accuracy=clean_accuracy,
        clean_confidence=clean_confidence,
        results=tuple(results),
        findings=tuple(findings),
        certify_method=certify_method,
        checks=checks,
        seconds_attacks=seconds_attacks,
        seconds_checks=seconds_checks,
        seconds_certify=seconds_certify,
        clean_mask=clean.correct.cpu(),
        rows_reused=rows_reused,
        batch_size=batching.size,
        chunk_size=batching.chunk,
    )


def _in_unit(progress: ProgressCallback | None, unit: int, units: int) -> ProgressCallback | None:
    """The caller's callback, with each record told which (norm, eps) unit of how many it belongs to."""
    if progress is None:
        return None
    return lambda record: progress(dataclasses.replace(record, unit=unit, units=units))


def require_model_fits(model: nn.Module, x: Tensor, *, classes: int, dataset: str, trained_on: str | None = None) -> None:
    """Raise ModelError (one line) when the model cannot read the dataset's images or outputs another
    number of classes than the dataset has. x: a few of the dataset's images; trained_on: the dataset
    the model's record names, if any, for the advice."""
    advice = f"it was trained on {trained_on}: pass --dataset {trained_on}" if trained_on else "pass the dataset it was trained on with --dataset"
    with eval_mode(model), torch.no_grad():
        try:
            logits = model(x[:1])
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"the model cannot read {dataset} images of shape {tuple(x.shape[1:])} ({reason}); {advice}") from None
    if logits.dim() != 2 or logits.shape[1] != classes:
        outputs = f"{logits.shape[1]} classes" if logits.dim() == 2 else f"shape {tuple(logits.shape[1:])}"
        raise ModelError(f"the model outputs {outputs} but {dataset} has {classes} classes; {advice}")


def _check_labels(y: Tensor, *, classes: int) -> None:
    """Raise ConfigError (one line) unless every label is a class the model outputs: 0..classes-1."""
    if y.dtype != torch.long:
        raise ConfigError(f"labels must be int64 class indices, got {y.dtype}")
    if len(y) == 0:
        return
    low, high = torch.stack(torch.aminmax(y)).tolist()  # one sync per evaluation
    if low < 0 or high >= classes:
        raise ConfigError(
            f"labels run from {low} to {high} but the model outputs {classes} classes (0..{classes - 1}); "
            "pass the labels of the dataset the model was trained on"
        )


def _chance_findings(clean: CleanPass, y: Tensor, *, classes: int) -> list[Finding]:
    counts = torch.bincount(y, minlength=classes)
    n = len(y)
    accuracy, majority = torch.stack([clean.correct.double().mean(), counts.max().double() / n]).tolist()
    return sanity.check_chance_level(accuracy, n=n, classes=classes, majority=majority)


def _model_findings(model: nn.Module, x: Tensor, y: Tensor, clean: CleanPass) -> list[Finding]:
    """Checks of the model alone, before any attack: logits, determinism, input gradients."""
    findings = sanity.check_outputs(model, x[:PROBE_SIZE])
    probe = sanity.spread_subset(clean.correct_indices, PROBE_SIZE)
    if len(probe):
        findings += sanity.check_gradients(model, x[probe], y[probe])
    return findings
