"""Running one attack and verifying every image it returns before it counts.

Every image is re-checked here: finite, inside [0, 1], inside the eps-ball of the attack's norm
(|delta| <= eps + BALL_ATOL + BALL_RTOL * eps, in float64), and re-predicted by the model in eval
mode. Success is the evaluator's own argmax != y, never the attack's word. An image that fails a
check counts as a failed attack for its sample and is reported as a bug of the attack, not clipped
into shape. (FGSM with clip=False is the one documented exception to the [0, 1] check; it is
reported as a warning.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import eval_mode, per_sample_norm
from redblue.attacks.registry import AttackEntry
from redblue.errors import AttackError, ModelError
from redblue.evaluate import checks
from redblue.evaluate.batching import AUTO, Batching, BatchSize, ChunkedModel, attempt, choose_batching, recover
from redblue.evaluate.checks import Finding
from redblue.metrics import true_class_margin

# An image is inside the eps-ball when its distance (float64) is <= eps + BALL_ATOL + BALL_RTOL*eps:
# float32 rounding of x + eps*sign or of an L2 rescaling stays far below this, a real bug does not.
BALL_ATOL = 1e-5
BALL_RTOL = 1e-5
# Pixels may leave [0, 1] by at most this much (pixel units).
BOX_ATOL = 1e-6
_VERIFY_ROWS = 1024  # images per float64 distance computation


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

# on_batch(samples done so far, fooled (bool, this batch)): called after each verified batch.
BatchCallback = Callable[[int, Tensor], None]


@torch.no_grad()
def _verify(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, eps: float, norm: str, exempt: bool) -> dict[str, Tensor]:
    """Per-sample verdicts (the _PER_SAMPLE keys) and 0-dim defect counts (the _COUNTS keys) for one batch."""
    finite = torch.isfinite(x_adv).flatten(1).all(dim=1)
    # in float64, a slice at a time: the whole batch's float64 copies would be 4x the images
    distance = torch.cat([
        per_sample_norm(adv.double() - clean.double(), norm)  # NaN compares False
        for adv, clean in zip(x_adv.split(_VERIFY_ROWS), x.split(_VERIFY_ROWS))
    ]) if len(x) else x.new_zeros(0, dtype=torch.float64)
    in_ball = distance <= eps + BALL_ATOL + BALL_RTOL * eps
    in_box = ((x_adv >= -BOX_ATOL) & (x_adv <= 1 + BOX_ATOL)).flatten(1).all(dim=1)
    valid = finite & in_ball & (in_box | exempt)
    shape = (-1,) + (1,) * (x.dim() - 1)
    logits = model(torch.where(valid.view(shape), x_adv, x))  # invalid rows are ignored; keep NaN out
    top_prob, predicted = logits.softmax(dim=1).max(dim=1)
    margin = true_class_margin(logits, y)
    return {
        "fooled": valid & (predicted != y),
        "valid": valid,
        "top_prob": top_prob,
        "predicted": predicted,
        "margin": torch.where(valid, margin, torch.full_like(margin, math.inf)),
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
    batch_size: BatchSize | Batching = AUTO,
    generator: Generator | None = None,
    keep_images: bool = False,
    on_batch: BatchCallback | None = None,
) -> AttackRun:
    """Run `entry` on x[indices] (all of x when None) in batches, verifying and re-predicting each image.

    batch_size: samples per attack call, "auto" (see `batching`), or a Batching shared with the caller
    (an out-of-memory error lowers its chunk for every later call too). An attack call that runs out of
    memory is run again with the model's passes split smaller (`batching.recover`), from the same
    generator state. The model runs in eval mode (restored afterwards). Raises AttackError when the
    attack returns a tensor of the wrong shape or device (nothing can be verified then); every other
    defect is counted. on_batch: told after each batch how many samples are done and which of the
    batch were fooled (this function itself reads no tensor until the end).
    """
    indices = torch.arange(len(x), device=x.device) if indices is None else indices
    exempt = box_exempt(params)
    parts: list[dict[str, Tensor]] = []
    images: list[Tensor] = []
    done = 0
    start = time.perf_counter()
    with eval_mode(model):
        batching = choose_batching(model, x, y, batch_size)
        chunked = ChunkedModel(model, batching)
        while done < len(indices) or not parts:  # an empty set still verifies one empty batch, for the dtypes
            idx = indices[done : done + batching.size]
            state = generator.get_state() if generator is not None else None
            ok, verdicts = attempt(lambda: _attack_and_verify(chunked, entry, params, x, y, idx, generator, exempt))
            if not ok:
                recover(batching, generator, state, cut_size=True)
                continue
            assert verdicts is not None
            x_adv = verdicts.pop("x_adv")
            parts.append(verdicts)
            if keep_images:
                images.append(x_adv)
            done += len(idx)
            if on_batch is not None and len(idx):
                on_batch(done, verdicts["fooled"])
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


def _attack_and_verify(
    model: nn.Module, entry: AttackEntry, params: Any, x: Tensor, y: Tensor, idx: Tensor, generator: Generator | None,
    exempt: bool,
) -> dict[str, Tensor]:
    """One attack call on x[idx] and its verdicts (see `_verify`), plus the images under "x_adv"."""
    xb, yb = x[idx], y[idx]
    if len(idx) == 0:  # nothing to attack: verify an empty batch so every field has its dtype
        return {**_verify(model, xb, xb, yb, eps=params.eps, norm=entry.norm, exempt=exempt), "x_adv": xb}
    x_adv = entry(model, xb, yb, params, generator=generator)
    if x_adv.shape != xb.shape or x_adv.device != xb.device:
        raise AttackError(
            f"attack {entry.name!r} returned {tuple(x_adv.shape)} on {x_adv.device} for input "
            f"{tuple(xb.shape)} on {xb.device}: the attack has a bug"
        )
    # x[idx] again: a fresh copy of the clean images, in case the attack wrote into xb
    verdicts = _verify(model, x[idx], x_adv.detach(), yb, eps=params.eps, norm=entry.norm, exempt=exempt)
    return {**verdicts, "x_adv": x_adv.detach()}


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


def require_logits(model: nn.Module, x: Tensor) -> None:
    """Raise ModelError when the model's outputs on x are probability vectors instead of logits."""
    with eval_mode(model), torch.no_grad():
        if checks.looks_like_probabilities(model(x)):
            raise ModelError(checks.PROBABILITIES_MESSAGE)
