"""The numbers of a reproduce run, from its cells' records: per-model aggregates over seeds, Figure 1, results.json.

Everything here returns values; `redblue.report` renders them (report.md, the PNGs).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from redblue.attacks import fgsm
from redblue.attacks.core import eval_mode
from redblue.config import same, to_dict
from redblue.errors import ConfigError
from redblue.reproduce.compare import clip_comparison, comparison_tables, shape_checks
from redblue.reproduce.experiment import Experiment


def _stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def _aggregate_curve(curves: list[list[dict[str, Any]]], eps_values: Sequence[float]) -> list[dict[str, Any]]:
    aggregated = []
    for i, eps in enumerate(eps_values):
        points = [curve[i] for curve in curves]
        assert all(same(p["eps"], eps) for p in points), "cell curves disagree on eps"
        aggregated.append(
            {
                "eps": eps,
                "accuracy": _stats([p["accuracy"] for p in points]),
                "confidence": _stats([p["confidence"] for p in points]),
            }
        )
    return aggregated


def aggregate(experiment: Experiment, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (l1, l2): accuracy and confidence at each eps as mean / std / values over seeds."""
    models = []
    for l1 in experiment.grid.l1:
        for l2 in experiment.grid.l2:
            mine = sorted((r for r in records if same(r["l1"], l1) and same(r["l2"], l2)), key=lambda r: r["seed"])
            models.append(
                {
                    "l1": l1,
                    "l2": l2,
                    "seeds": [r["seed"] for r in mine],
                    "train_seconds": _stats([r["train_seconds"] for r in mine]),
                    "curve": _aggregate_curve([r["curve"] for r in mine], experiment.fgsm.all_eps),
                    "other_clip": {
                        "clip": not experiment.fgsm.clip,
                        "curve": _aggregate_curve([r["other_clip_curve"] for r in mine], experiment.fgsm.other_clip_eps),
                    },
                }
            )
    return models


def model_value(models: Sequence[dict[str, Any]], l1: float, l2: float, metric: str, eps: float) -> dict[str, Any] | None:
    """The aggregated {mean, std, values} of one model's metric at eps, or None where not run."""
    for entry in models:
        if same(entry["l1"], l1) and same(entry["l2"], l2):
            for point in entry["curve"]:
                if same(point["eps"], eps):
                    return point[metric]
    return None


def select_by_fgsm_accuracy(models: Sequence[dict[str, Any]], eps: float) -> dict[str, Any] | None:
    """The paper's rule ("higher adversarial accuracy for eps = 0.10") applied to our numbers."""
    best = None
    for entry in models:
        value = model_value([entry], entry["l1"], entry["l2"], "accuracy", eps)
        if value is not None and (best is None or value["mean"] > best["accuracy"]):
            best = {"l1": entry["l1"], "l2": entry["l2"], "eps": eps, "accuracy": value["mean"]}
    return best


@dataclass(frozen=True)
class FigureOne:
    """The first test-set image of one digit under FGSM at each eps, with the model's prediction."""

    test_index: int
    label: int
    cell: str
    eps: tuple[float, ...]
    images: Tensor  # (len(eps), 28, 28) in [0, 1] (unclipped FGSM may leave it)
    predicted: tuple[int, ...]
    confidence: tuple[float, ...]


def figure_one(model: nn.Module, x_test: Tensor, y_test: Tensor, *, digit: int, eps_values: Sequence[float], clip: bool, cell: str) -> FigureOne:
    """FGSM images of the first test image labelled `digit` at each eps, with predicted label and confidence."""
    matches = (y_test == digit).nonzero()
    if len(matches) == 0:
        raise ConfigError(f"the test set has no image of digit {digit}; set fgsm.figure_digit to another digit")
    index = int(matches[0, 0])
    x, y = x_test[index : index + 1], y_test[index : index + 1]
    images = torch.cat([fgsm(model, x, y, eps=eps, clip=clip) for eps in eps_values])
    with torch.no_grad(), eval_mode(model):
        top_prob, predicted = model(images).softmax(dim=1).max(dim=1)
    return FigureOne(
        test_index=index,
        label=digit,
        cell=cell,
        eps=tuple(eps_values),
        images=images[:, 0].cpu(),
        predicted=tuple(predicted.tolist()),
        confidence=tuple(top_prob.tolist()),
    )


def build_results(
    experiment: Experiment,
    records: Sequence[dict[str, Any]],
    figure: FigureOne,
    *,
    trained: list[str],
    reused: list[str],
    executor: str,
    workers: int,
    device: torch.device,
    threads: int,
    files: dict[str, str],
    timing: dict[str, Any],
    environment: dict[str, Any],
) -> dict[str, Any]:
    """Every number of the run, as results.json holds it; the report and the plots read only this.

    records: each cell's metrics (`reproduce.cell.run_cell`) with its sweep "id", in grid order.
    timing: {"wall_seconds" (this invocation), "compute_wall_seconds" (the invocations that
    computed the cells), "invocations"}.
    """
    models = aggregate(experiment, records)
    table_eps = experiment.fgsm.table_eps[0] if experiment.fgsm.table_eps else 0.1
    results: dict[str, Any] = {
        "experiment": {**experiment.record(), "notes": to_dict(experiment.notes), "expect": to_dict(experiment.expect)},
        "profile": experiment.profile,
        "device": str(device),
        "executor": executor,
        "workers": workers,
        "torch_threads_per_cell": threads,
        **timing,
        "cells_trained": trained,
        "cells_reused": reused,
        "train_seconds_total": sum(r["train_seconds"] for r in records),
        "epochs_run": sorted({len(r["history"]) for r in records}),
        "cells": list(records),
        "models": models,
        "selection": {
            "paper": {"l1": experiment.chosen_l1, "l2": experiment.chosen_l2},
            "ours": select_by_fgsm_accuracy(models, table_eps),
            "rule": f"highest FGSM accuracy at eps {table_eps:g} (the paper's rule)",
        },
        "figure1": {
            "cell": figure.cell,
            "test_index": figure.test_index,
            "label": figure.label,
            "panels": [
                {"eps": e, "predicted": p, "confidence": c}
                for e, p, c in zip(figure.eps, figure.predicted, figure.confidence)
            ],
        },
        "files": files,
        "environment": environment,
    }
    results["tables"] = comparison_tables(results)
    results["checks"] = shape_checks(results, experiment.expect)
    results["clip_comparison"] = clip_comparison(results)
    return results
