"""Metrics over a dataset: accuracy, confidence (mean top softmax probability), true-class margins,
and the per-sample worst case over attacks. Core layer: tensors and modules only.
"""

from redblue.metrics.scores import (
    DEFAULT_BATCH,
    Scores,
    WorstCase,
    batches,
    correct_and_confidence,
    predict_logits,
    score,
    true_class_margin,
)

__all__ = [
    "DEFAULT_BATCH", "Scores", "WorstCase", "batches", "correct_and_confidence", "predict_logits", "score",
    "true_class_margin",
]
