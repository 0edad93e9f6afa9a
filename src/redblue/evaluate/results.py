"""What an evaluation returns: one row per attack and eps, the worst case per eps, the whole Evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from redblue.evaluate.checks import Finding
from redblue.evaluate.verify import BALL_ATOL, BALL_RTOL, BOX_ATOL


@dataclass(frozen=True)
class Progress:
    """Where a running evaluation is, for a progress display (the engine prints nothing itself).

    stage: "attack" while an attack row runs (or is reused from a run folder), "checks" once the
    sanity checks start. unit / units: this (norm, eps) among all; row / rows: this attack among the
    eps's; done / total: samples this row has attacked / will attack; robust: samples still robust in
    the worst case at this eps (after the batches done); n: all samples; reused: the row was read
    back from an earlier, interrupted run instead of computed.
    """

    stage: str
    norm: str
    eps: float
    attack: str
    unit: int
    units: int
    row: int
    rows: int
    done: int
    total: int
    robust: int
    n: int
    reused: bool = False


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class AttackResult:
    """One attack at one eps. In worst-case mode `cumulative` is True: accuracy is after this and all earlier attacks."""

    label: str
    attack: str
    params: dict[str, Any]
    norm: str
    threat: str
    eps: float
    accuracy: float  # robust accuracy: correct on the clean image and on the attacked one
    confidence: float
    cumulative: bool
    n_attacked: int
    n_fooled: int  # correctly classified samples this attack fooled with a valid image
    n_invalid: int  # images that failed verification (counted as not fooled)
    seconds: float
    robust_mask: Tensor = field(repr=False, compare=False)  # (n,) bool on CPU
    # per-attack mode only: accuracy on the attacked images of every sample, misclassified ones
    # included (the paper's protocol); None in the cascade, which never attacks misclassified samples
    adversarial_accuracy: float | None = None


@dataclass(frozen=True)
class EpsResult:
    """All attacks of one norm at one eps, the per-sample worst case and the certified lower bound."""

    norm: str
    eps: float
    attacks: tuple[AttackResult, ...]
    worst_case_accuracy: float
    worst_case_confidence: float
    certified_accuracy: float | None
    certified_note: str | None
    worst_case_mask: Tensor = field(repr=False, compare=False)  # (n,) bool on CPU
    certified_mask: Tensor | None = field(default=None, repr=False, compare=False)
    seconds_certify: float = 0.0

    @property
    def interval(self) -> tuple[float, float] | None:
        """[certified, empirical worst case]: the true robust accuracy lies in between."""
        if self.certified_accuracy is None:
            return None
        return (self.certified_accuracy, self.worst_case_accuracy)


@dataclass(frozen=True)
class Evaluation:
    """The result of `evaluate`: clean scores, one EpsResult per (norm, eps), and the findings."""

    n: int
    mode: str
    clean_accuracy: float
    clean_confidence: float
    results: tuple[EpsResult, ...]
    findings: tuple[Finding, ...]
    certify_method: str | None
    checks: bool
    seconds_attacks: float
    seconds_checks: float
    seconds_certify: float
    clean_mask: Tensor = field(repr=False, compare=False)
    rows_reused: int = 0  # (attack x eps) rows read back from an earlier, interrupted run
    batch_size: int = 0  # samples per attack call (the random draws depend on it)
    chunk_size: int = 0  # samples per model call at the end (lowered by out-of-memory errors; no number depends on it)

    def result(self, eps: float, norm: str = "linf") -> EpsResult:
        for r in self.results:
            if r.eps == eps and r.norm == norm:
                return r
        raise KeyError(f"no result for {norm} eps={eps}")

    def masks(self) -> dict[str, Tensor]:
        """Every per-sample bool mask (n,), by name: `clean_correct`, then per norm and eps
        `<norm>/eps=<eps>/worst_case`, `.../certified` (where there is a bound) and `.../<attack label>`."""
        masks = {"clean_correct": self.clean_mask}
        for r in self.results:
            masks[f"{r.norm}/eps={r.eps:g}/worst_case"] = r.worst_case_mask
            if r.certified_mask is not None:
                masks[f"{r.norm}/eps={r.eps:g}/certified"] = r.certified_mask
            for a in r.attacks:
                masks[f"{r.norm}/eps={r.eps:g}/{a.label}"] = a.robust_mask
        return masks

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the per-sample masks are left out)."""

        def attack_dict(a: AttackResult) -> dict[str, Any]:
            return {f.name: getattr(a, f.name) for f in dataclasses.fields(a) if f.name != "robust_mask"}

        return {
            "n": self.n,
            "mode": self.mode,
            "clean": {"accuracy": self.clean_accuracy, "confidence": self.clean_confidence},
            "results": [
                {
                    "norm": r.norm,
                    "eps": r.eps,
                    "attacks": [attack_dict(a) for a in r.attacks],
                    "worst_case": {"accuracy": r.worst_case_accuracy, "confidence": r.worst_case_confidence},
                    "certified": {"method": self.certify_method, "accuracy": r.certified_accuracy, "note": r.certified_note},
                    "interval": list(r.interval) if r.interval else None,
                }
                for r in self.results
            ],
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "settings": {
                "checks": self.checks,
                "ball_tolerance": {"atol": BALL_ATOL, "rtol": BALL_RTOL},
                "box_tolerance": BOX_ATOL,
                "batch_size": self.batch_size,
                "chunk_size": self.chunk_size,
            },
            "seconds": {"attacks": self.seconds_attacks, "checks": self.seconds_checks, "certify": self.seconds_certify},
            "rows": {"total": sum(len(r.attacks) for r in self.results), "reused": self.rows_reused},
        }
