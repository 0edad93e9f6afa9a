"""Attack x eps grids over a dataset: verified adversarial examples, the per-sample worst case
over attacks, certified lower bounds beside it, and the gradient-masking sanity checks.

Every image an attack returns is re-checked here before it counts: finite, inside [0, 1], inside
the eps-ball of the attack's norm (|delta| <= eps + BALL_ATOL + BALL_RTOL * eps, in float64), and
re-predicted by the model in eval mode. Success is the evaluator's own argmax != y, never the
attack's word. An image that fails a check counts as a failed attack for its sample and is
reported as a bug of the attack, not clipped into shape. (FGSM with clip=False is the one
documented exception to the [0, 1] check; it is reported as a warning.)

Two modes:

* `worst-case` (the cascade): per eps, each attack runs only on the samples every earlier attack
  left robust: white-box attacks first, cheapest first, then black-box and transfer attacks, so
  whatever those still find is a sign of masked gradients. The worst case per eps is exact and
  fast; the attack rows are *cumulative* (robust accuracy after this attack and all before it).
* `per-attack`: each attack runs on every sample, so each row is that attack's own robust
  accuracy, and also its `adversarial_accuracy` (accuracy on the attacked images of all samples,
  misclassified ones included: the paper's protocol); the worst case per eps is the same
  per-sample minimum.

Samples the model misclassifies clean are non-robust at every eps; the cascade never attacks them.
Robust accuracy and confidence are over all n samples; confidence is the mean top softmax
probability on the images an attack produced (the paper's adversarial confidence), taking the
sample's current worst-case image where the attack was not run or its image was invalid. The
worst-case image of a sample is the valid image with the lowest true-class margin
(z_y - max_{j != y} z_j), clean included.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Generator, Tensor, nn

from redblue import sanity
from redblue.attacks.core import check_eps, check_inputs, eval_mode, per_sample_norm
from redblue.attacks.registry import ATTACKS, AttackEntry, get_attack
from redblue.config import split_spec
from redblue.errors import AttackError, ConfigError, ModelError, require_choice
from redblue.metrics import DEFAULT_BATCH, batches, correct_and_confidence, predict_logits
from redblue.sanity import Finding

MODES = ("worst-case", "per-attack")
CERTIFY_METHODS = ("auto", "ibp", "crown", "crown-ibp")


def auto_certify_method(model: nn.Module) -> str:
    """Full CROWN for fully connected nets (0.5 s per 1000 MNIST images for the paper's MLP);
    CROWN-IBP once there is a convolution, where full CROWN's backward pass per unstable neuron
    costs minutes per 1000 images on a CPU (measured: 600-3800 s for a small MNIST CNN)."""
    return "crown-ibp" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "crown"

# An image is inside the eps-ball when its distance (float64) is <= eps + BALL_ATOL + BALL_RTOL*eps:
# float32 rounding of x + eps*sign or of an L2 rescaling stays far below this, a real bug does not.
BALL_ATOL = 1e-5
BALL_RTOL = 1e-5
# Pixels may leave [0, 1] by at most this much (pixel units).
BOX_ATOL = 1e-6
# Sanity checks that run attacks use at most this many samples.
CHECK_SUBSET = 200
# Outputs and gradients are inspected on this many images.
PROBE_SIZE = 256

# AutoAttack's "standard" version without FAB (Croce & Hein, 2020): fixed budgets, so numbers are
# comparable across models without tuning. `fast` is a quick first look, not a robustness claim.
PRESETS: dict[str, tuple[str, ...]] = {
    "standard": (
        "apgd-ce:n_iter=100,restarts=1,rho=0.75",
        "apgd-t:n_iter=100,restarts=1,rho=0.75,n_target_classes=9",
        "square:n_queries=5000,p_init=0.8,restarts=1",
    ),
    "fast": ("fgsm", "pgd:steps=40"),
}

_COST_FIELDS = ("steps", "iterations", "n_iter", "max_iter", "iters")
_MULTIPLIER_FIELDS = ("restarts", "n_restarts", "n_target_classes", "n_targets")
_QUERY_FIELDS = ("queries", "n_queries", "max_queries")


# --- parsing attack lists ---------------------------------------------------------------------


def parse_attack_list(text: str, *, eps: float) -> tuple[list[tuple[AttackEntry, Any]], bool]:
    """`fgsm,pgd:steps=40,standard` -> [(entry, params), ...] with params.eps = eps, and whether a preset was used.

    eps comes from the eps list (`--eps`), so an eps inside an attack spec is an error rather than a
    silent override; a preset name expands to its fixed attacks.
    """
    from redblue.attacks.registry import split_attack_list

    plan: list[tuple[AttackEntry, Any]] = []
    used_preset = False
    for spec in split_attack_list(text):
        name, values = split_spec(spec)
        if name in PRESETS:
            if values:
                raise ConfigError(f"preset {name!r} takes no parameters; list the attacks yourself to change them")
            used_preset = True
            for preset_spec in PRESETS[name]:
                preset_name, _ = split_spec(preset_spec)
                if preset_name not in ATTACKS:
                    raise ConfigError(f"preset {name!r} needs attack {preset_name!r}, which is not registered")
                plan.append(_parse_one(preset_spec, eps))
            continue
        if "eps" in values:
            raise ConfigError(f"attack spec {spec!r} sets eps; give eps values with --eps instead")
        if name not in ATTACKS:
            get_attack(name)  # raises the one-line "unknown attack" error listing the valid names
        plan.append(_parse_one(spec, eps))
    return plan, used_preset


def _parse_one(spec: str, eps: float) -> tuple[AttackEntry, Any]:
    from redblue.attacks.registry import parse_attack

    name, _ = split_spec(spec)
    check_eps(eps, get_attack(name).norm)
    return parse_attack(spec, eps=eps)


def attack_label(entry: AttackEntry, params: Any) -> str:
    """`pgd:steps=100` — the name and the parameters that differ from their defaults (eps left out)."""
    changed = []
    for f in dataclasses.fields(params):
        if f.name == "eps":
            continue
        value = getattr(params, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            changed.append(f"{f.name}={value}")
    return entry.name + (":" + ",".join(changed) if changed else "")


def estimated_cost(entry: AttackEntry, params: Any) -> float:
    """Rough gradient evaluations per sample, to run cheap attacks first in the cascade.

    Steps x restarts x targets for gradient attacks; a third of the queries for black-box ones
    (a forward pass costs about a third of a forward + backward).
    """
    if not entry.iterative:
        return 1.0
    names = {f.name for f in dataclasses.fields(params)}
    cost = 1.0
    for name in _COST_FIELDS:
        if name in names:
            cost *= max(1, getattr(params, name))
    for name in _MULTIPLIER_FIELDS:
        if name in names and isinstance(getattr(params, name), int):
            cost *= max(1, getattr(params, name))
    for name in _QUERY_FIELDS:
        if name in names:
            cost *= max(1, getattr(params, name)) / 3
    threat_rank = {"white-box": 1.0, "transfer": 1.01, "black-box": 1.02}[entry.threat]
    return cost * threat_rank


# --- running and verifying one attack -----------------------------------------------------------


@dataclass(frozen=True)
class AttackRun:
    """One attack on a set of samples, every image verified by the evaluator.

    Tensors are on the data's device, one entry per attacked sample. `fooled` is True only for
    valid images the model misclassifies; `margin` (z_y - max other, float64) is +inf for invalid ones.
    """

    fooled: Tensor
    valid: Tensor
    top_prob: Tensor
    predicted: Tensor
    margin: Tensor
    n_nonfinite: int
    n_outside_box: int
    n_outside_ball: int
    n_box_exempt: int  # valid images outside [0, 1] that the attack may return (FGSM clip=False)
    seconds: float
    x_adv: Tensor | None = None


def box_exempt(params: Any) -> bool:
    """FGSM with clip=False follows the paper's unclipped equation; it is the one attack allowed outside [0, 1]."""
    return getattr(params, "clip", True) is False


_PER_SAMPLE = ("fooled", "valid", "top_prob", "predicted", "margin")
_COUNTS = ("nonfinite", "outside_box", "outside_ball", "box_exempt")


@torch.no_grad()
def _verify(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, eps: float, norm: str, exempt: bool) -> dict[str, Tensor]:
    finite = torch.isfinite(x_adv).flatten(1).all(dim=1)
    distance = per_sample_norm(x_adv.double() - x.double(), norm)  # NaN compares False
    in_ball = distance <= eps + BALL_ATOL + BALL_RTOL * eps
    in_box = ((x_adv >= -BOX_ATOL) & (x_adv <= 1 + BOX_ATOL)).flatten(1).all(dim=1)
    valid = finite & in_ball & (in_box | exempt)
    shape = (-1,) + (1,) * (x.dim() - 1)
    logits = model(torch.where(valid.view(shape), x_adv, x))  # invalid rows are ignored; keep NaN out
    top_prob, predicted = logits.softmax(dim=1).max(dim=1)
    logits64 = logits.double()
    true_logit = logits64.gather(1, y[:, None]).squeeze(1)
    best_other = logits64.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return {
        "fooled": valid & (predicted != y),
        "valid": valid,
        "top_prob": top_prob,
        "predicted": predicted,
        "margin": torch.where(valid, true_logit - best_other, torch.full_like(true_logit, math.inf)),
        "nonfinite": (~finite).sum(),
        "outside_box": (finite & ~in_box).sum() * (not exempt),
        "outside_ball": (finite & ~in_ball).sum(),
        "box_exempt": (valid & ~in_box).sum(),
    }


def run_attack(
    model: nn.Module,
    entry: AttackEntry,
    params: Any,
    x: Tensor,
    y: Tensor,
    *,
    indices: Tensor | None = None,
    batch_size: int = DEFAULT_BATCH,
    generator: Generator | None = None,
    keep_images: bool = False,
) -> AttackRun:
    """Run `entry` on x[indices] (all of x when None) in batches, verifying and re-predicting each image.

    The model runs in eval mode (restored afterwards). Raises AttackError when the attack returns a
    tensor of the wrong shape or device (nothing can be verified then); every other defect is counted.
    """
    with eval_mode(model):
        return _run_attack(model, entry, params, x, y, indices, batch_size, generator, keep_images)


def _run_attack(
    model: nn.Module, entry: AttackEntry, params: Any, x: Tensor, y: Tensor, indices: Tensor | None,
    batch_size: int, generator: Generator | None, keep_images: bool,
) -> AttackRun:
    indices = torch.arange(len(x), device=x.device) if indices is None else indices
    parts: list[dict[str, Tensor]] = []
    images: list[Tensor] = []
    start = time.perf_counter()
    for (idx,) in batches(indices, size=batch_size):
        xb, yb = x[idx], y[idx]
        x_adv = entry(model, xb, yb, params, generator=generator)
        if x_adv.shape != xb.shape or x_adv.device != xb.device:
            raise AttackError(
                f"attack {entry.name!r} returned {tuple(x_adv.shape)} on {x_adv.device} for input "
                f"{tuple(xb.shape)} on {xb.device}: the attack has a bug"
            )
        # x[idx] again: a fresh copy of the clean images, in case the attack wrote into xb
        parts.append(_verify(model, x[idx], x_adv.detach(), yb, eps=params.eps, norm=entry.norm, exempt=box_exempt(params)))
        if keep_images:
            images.append(x_adv.detach())
    if not parts:  # nothing to attack: verify an empty batch so every field has its dtype
        parts.append(_verify(model, x[:0], x[:0], y[:0], eps=params.eps, norm=entry.norm, exempt=box_exempt(params)))
    merged = {key: torch.cat([p[key] for p in parts]) for key in _PER_SAMPLE}
    counts = torch.stack([torch.stack([p[key] for p in parts]).sum() for key in _COUNTS]).tolist()
    return AttackRun(
        fooled=merged["fooled"],
        valid=merged["valid"],
        top_prob=merged["top_prob"],
        predicted=merged["predicted"],
        margin=merged["margin"],
        n_nonfinite=counts[0],
        n_outside_box=counts[1],
        n_outside_ball=counts[2],
        n_box_exempt=counts[3],
        seconds=time.perf_counter() - start,  # after the sync of .tolist() above
        x_adv=(torch.cat(images) if images else x[:0].clone()) if keep_images else None,
    )


def validity_findings(label: str, run: AttackRun, *, eps: float, norm: str) -> list[Finding]:
    """Findings for images that failed verification (a bug of the attack) or left [0, 1] by permission."""
    findings = []
    where = f"at {norm} eps={eps:g}"
    for count, what in (
        (run.n_outside_ball, "outside the eps-ball"),
        (run.n_outside_box, "outside [0, 1]"),
        (run.n_nonfinite, "with NaN or infinite pixels"),
    ):
        if count:
            findings.append(
                Finding(
                    "fail",
                    "attack-validity",
                    f"attack {label} returned {count} images {what} {where}: the attack has a bug; "
                    "those samples were counted as not fooled",
                )
            )
    if run.n_box_exempt:
        findings.append(
            Finding(
                "warning",
                "attack-validity",
                f"{label} runs with clip=False: {run.n_box_exempt} images {where} leave [0, 1] (the paper's "
                "unclipped FGSM); these are not valid images, so its numbers are not comparable to clipped attacks",
            )
        )
    return findings


# --- results ------------------------------------------------------------------------------------


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

    def result(self, eps: float, norm: str = "linf") -> EpsResult:
        for r in self.results:
            if r.eps == eps and r.norm == norm:
                return r
        raise KeyError(f"no result for {norm} eps={eps}")

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
            },
            "seconds": {"attacks": self.seconds_attacks, "checks": self.seconds_checks, "certify": self.seconds_certify},
        }


# --- the engine -----------------------------------------------------------------------------------


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


def require_logits(model: nn.Module, x: Tensor) -> None:
    """Raise ModelError when the model's outputs on x are probability vectors instead of logits."""
    with eval_mode(model), torch.no_grad():
        if sanity.looks_like_probabilities(model(x)):
            raise ModelError(sanity.PROBABILITIES_MESSAGE)


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
    labels = _unique_labels(attacks)
    plan = list(zip(labels, attacks))
    if mode == "worst-case":
        plan.sort(key=_cascade_order)  # stable: equal keys keep the user's order
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
        for norm in _norms(attacks):
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
            findings += _run_checks(
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


def _cascade_order(item: tuple[str, tuple[AttackEntry, Any]]) -> tuple[bool, float]:
    entry, params = item[1]
    return (entry.threat != "white-box", estimated_cost(entry, params))


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    logits = logits.double()
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    return true_logit - logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def _norms(attacks: Sequence[tuple[AttackEntry, Any]]) -> list[str]:
    return list(dict.fromkeys(entry.norm for entry, _ in attacks))


def _unique_labels(attacks: Sequence[tuple[AttackEntry, Any]]) -> list[str]:
    labels: list[str] = []
    for entry, params in attacks:
        label = attack_label(entry, params)
        if label in labels:
            label = f"{label}#{sum(1 for seen in labels if seen.split('#')[0] == label) + 1}"
        labels.append(label)
    return labels


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


# --- sanity checks that need attacks -------------------------------------------------------------


def _run_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    plan: list[tuple[str, tuple[AttackEntry, Any]]],
    results: list[EpsResult],
    *,
    mode: str,
    clean_correct: Tensor,
    batch_size: int,
    generator: Generator | None,
    subset: int,
) -> list[Finding]:
    findings: list[Finding] = []
    n = len(y)
    correct_idx = clean_correct.nonzero().squeeze(1)
    sample = sanity.spread_subset(correct_idx, subset)

    def run(entry: AttackEntry, params: Any, indices: Tensor) -> Tensor:
        attack_run = run_attack(model, entry, params, x, y, indices=indices, batch_size=batch_size, generator=generator)
        findings.extend(validity_findings(attack_label(entry, params), attack_run, eps=params.eps, norm=entry.norm))
        return attack_run.fooled

    what = "cumulative" if mode == "worst-case" else "standalone"
    for norm in dict.fromkeys(r.norm for r in results):
        here = [r for r in results if r.norm == norm]
        curves: dict[str, list[tuple[float, float]]] = {"worst case": [(r.eps, r.worst_case_accuracy) for r in here]}
        for label, _ in plan:
            points = [(r.eps, a.accuracy) for r in here for a in r.attacks if a.label == label]
            if points:
                curves[label] = points
        findings += sanity.check_monotonic(curves, n=n, what=what)

    if len(sample) == 0:
        return findings + [Finding("warning", "sanity", "no sample is classified correctly; the attack checks did not run")]

    # the cheapest attack (white-box first) at eps = 0: a check, not a second evaluation
    first_label, (first_entry, first_params) = min(plan, key=_cascade_order)
    findings += sanity.check_eps_zero(run, first_entry, first_params, sample[: max(1, subset // 4)], label=first_label)

    if mode == "per-attack":
        rows = [
            sanity.StandaloneAccuracy(
                a.label, _attack_of(plan, a.label)[0], r.eps, a.accuracy, targeted=sanity.is_targeted(*_attack_of(plan, a.label))
            )
            for r in results
            for a in r.attacks
        ]
        findings += sanity.check_attack_strength(rows, n=n, scope="all samples")
    else:
        findings += _strength_on_subset(run, plan, results, sample)

    unbounded_label, unbounded_entry, unbounded_params = _unbounded_attack(plan)
    findings += sanity.check_unbounded(run, unbounded_entry, unbounded_params, sample, label=unbounded_label)

    cheapest = _cheapest_iterative(plan)
    if cheapest is not None:
        label, entry, params = cheapest
        target = _most_informative(results, entry.norm)
        survivors = target.worst_case_mask.to(x.device).nonzero().squeeze(1)
        findings += sanity.check_more_steps(
            run, entry, dataclasses.replace(params, eps=target.eps), sanity.spread_subset(survivors, max(1, subset // 2)),
            n_survivors=len(survivors), n=n, label=label,
        )
    return findings


def _attack_of(plan: list[tuple[str, tuple[AttackEntry, Any]]], label: str) -> tuple[AttackEntry, Any]:
    return next(attack for lab, attack in plan if lab == label)


def _most_informative(results: list[EpsResult], norm: str) -> EpsResult:
    """The eps whose worst-case accuracy is nearest half of its maximum: attacks are tested hardest there."""
    here = [r for r in results if r.norm == norm]
    top = max(r.worst_case_accuracy for r in here)
    return min(here, key=lambda r: abs(r.worst_case_accuracy - top / 2))


def _strength_on_subset(run: sanity.AttackRunner, plan, results: list[EpsResult], sample: Tensor) -> list[Finding]:
    """In the cascade, standalone numbers exist only on a subset: run each white-box attack there at one eps per norm.

    Without a single-step attack in the plan, FGSM (one gradient) joins as the reference for L-inf.
    Black-box and transfer attacks are not re-run: the cascade runs them after every white-box attack,
    and `check_cascade_gain` already reports anything they find that the gradients missed.
    """
    rows: list[sanity.StandaloneAccuracy] = []
    for norm in dict.fromkeys(r.norm for r in results):
        white = [(label, entry, params) for label, (entry, params) in plan if entry.norm == norm and entry.threat == "white-box"]
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


def _unbounded_attack(plan) -> tuple[str, AttackEntry, Any]:
    """The registry's default PGD (else the plan's strongest L-inf gradient attack, else FGSM) for the eps = 1 check."""
    if "pgd" in ATTACKS:
        entry = ATTACKS["pgd"]
        return "pgd", entry, entry.params(eps=1.0)
    linf = [(label, entry, params) for label, (entry, params) in plan if entry.norm == "linf" and entry.threat == "white-box"]
    if linf:
        return max(linf, key=lambda m: estimated_cost(m[1], m[2]))
    entry = ATTACKS["fgsm"]
    return "fgsm", entry, entry.params(eps=1.0)


def _cheapest_iterative(plan) -> tuple[str, AttackEntry, Any] | None:
    """The white-box iterative attack with the smallest budget that has steps or restarts to raise.

    The samples re-attacked survived every attack of the plan, the strongest included, so whatever
    a stronger version of any of them still fools shows the evaluation has not converged; the
    cheapest keeps the check a fraction of the evaluation's cost.
    """
    candidates = [
        (label, entry, params)
        for label, (entry, params) in plan
        if entry.threat == "white-box" and entry.iterative and sanity.stronger_params(params) is not None
    ]
    # an attack towards one random class is no measure of convergence unless nothing else is there
    untargeted = [m for m in candidates if not sanity.is_targeted(m[1], m[2])]
    candidates = untargeted or candidates
    return min(candidates, key=lambda m: estimated_cost(m[1], m[2])) if candidates else None
