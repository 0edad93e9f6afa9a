"""One attack on every sample of a set (the paper's protocol), the engine behind `redblue attack`.

Every image is attacked, misclassified ones included; `adversarial_accuracy` is the accuracy on the
attacked images (the paper's number), `robust_accuracy` counts only samples correct both clean and
attacked. Each image is verified (eps-ball, [0, 1], finite) and re-predicted by the evaluator; an
image that fails verification is no adversarial example, so its sample keeps its clean prediction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import eval_mode, per_sample_norm
from redblue.attacks.registry import AttackEntry
from redblue.evaluate.batching import (
    AUTO,
    Batching,
    BatchSize,
    ChunkedModel,
    choose_batching,
    require_batch_size,
    with_retry,
)
from redblue.evaluate.checks import Finding
from redblue.evaluate.engine import PROBE_SIZE
from redblue.evaluate.plan import attack_label
from redblue.evaluate.verify import (
    BatchCallback,
    require_logits,
    run_attack,
    validity_findings,
)
from redblue.metrics import predict_logits


@dataclass(frozen=True, eq=False)  # eq=False: == on tensors is elementwise, not a bool
class AttackOutcome:
    """One attack on every sample: scores, perturbation sizes, defects found, and the images themselves.

    x_adv: (n, ...) as the attack returned them; predicted: (n,) the evaluator's prediction (the clean
    one where the image failed verification); valid: (n,) bool, the image passed verification.
    """

    label: str
    entry: AttackEntry
    params: Any
    n: int
    clean_accuracy: float
    clean_confidence: float
    adversarial_accuracy: float
    adversarial_confidence: float
    robust_accuracy: float
    perturbation: dict[str, float]  # linf_mean, linf_max, l2_mean, l2_max (pixel units)
    n_outside_ball: int
    n_outside_box: int
    n_nonfinite: int
    n_box_exempt: int
    findings: tuple[Finding, ...]
    seconds: float
    x_adv: Tensor
    predicted: Tensor
    valid: Tensor

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers (the images and per-sample tensors left out)."""
        return {
            "n": self.n,
            "attack": {
                "name": self.entry.name,
                "label": self.label,
                "norm": self.entry.norm,
                "threat": self.entry.threat,
                "params": dataclasses.asdict(self.params),
            },
            "eps": self.params.eps,
            "clean": {"accuracy": self.clean_accuracy, "confidence": self.clean_confidence},
            "adversarial": {
                "accuracy": self.adversarial_accuracy,
                "confidence": self.adversarial_confidence,
                "robust_accuracy": self.robust_accuracy,
            },
            "perturbation": dict(self.perturbation),
            "invalid": {
                "outside_ball": self.n_outside_ball,
                "outside_box": self.n_outside_box,
                "nonfinite": self.n_nonfinite,
                "outside_box_allowed": self.n_box_exempt,
            },
            "findings": [dataclasses.asdict(f) for f in self.findings],
        }


def attack_every_sample(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    entry: AttackEntry,
    params: Any,
    *,
    batch_size: BatchSize | Batching = AUTO,
    generator: Generator | None = None,
    on_batch: BatchCallback | None = None,
) -> AttackOutcome:
    """Attack every sample of (x, y) once with `entry` at `params` and score clean against adversarial.

    x: (N, C, H, W) pixels in [0, 1] on the model's device; y: (N,) labels. batch_size: samples per
    attack call, or "auto" (see `redblue.evaluate.batching`). Raises ModelError when the model returns
    probabilities instead of logits.
    """
    require_batch_size(batch_size)
    batching = choose_batching(model, x, y, batch_size)
    with eval_mode(model):
        chunked = ChunkedModel(model, batching)
        with_retry(lambda: require_logits(chunked, x[:PROBE_SIZE]), batching)
        clean_logits = with_retry(lambda: predict_logits(chunked, x, batch_size=batching.size), batching)
    clean_top, clean_pred = clean_logits.softmax(dim=1).max(dim=1)
    clean_correct = clean_pred == y
    run = run_attack(
        model, entry, params, x, y, batch_size=batching, generator=generator, keep_images=True, on_batch=on_batch
    )
    assert run.x_adv is not None  # keep_images=True
    label = attack_label(entry, params)
    predicted = torch.where(run.valid, run.predicted, clean_pred)
    top_prob = torch.where(run.valid, run.top_prob, clean_top)
    adv_correct = predicted == y
    delta = (run.x_adv - x).double()
    linf, l2 = per_sample_norm(delta, "linf"), per_sample_norm(delta, "l2")
    n = len(y)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    means = [t.double().mean() for t in (clean_correct, clean_top, adv_correct, top_prob, clean_correct & adv_correct)]
    sizes = [linf.mean(), linf.max(), l2.mean(), l2.max()] if n else [zero] * 4
    numbers = torch.stack([*means, *sizes]).tolist()  # one transfer for every number
    return AttackOutcome(
        label=label,
        entry=entry,
        params=params,
        n=n,
        clean_accuracy=numbers[0],
        clean_confidence=numbers[1],
        adversarial_accuracy=numbers[2],
        adversarial_confidence=numbers[3],
        robust_accuracy=numbers[4],
        perturbation=dict(zip(("linf_mean", "linf_max", "l2_mean", "l2_max"), numbers[5:])),
        n_outside_ball=run.n_outside_ball,
        n_outside_box=run.n_outside_box,
        n_nonfinite=run.n_nonfinite,
        n_box_exempt=run.n_box_exempt,
        findings=tuple(validity_findings(label, run, eps=params.eps, norm=entry.norm)),
        seconds=run.seconds,
        x_adv=run.x_adv,
        predicted=predicted,
        valid=run.valid,
    )
