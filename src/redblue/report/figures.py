"""PNG figures of a reproduce run: Figure 1 (one digit under FGSM at each eps) and accuracy/confidence curves.

Uses matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend state), and
writes each PNG atomically.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from redblue.config import atomic_write_bytes
from redblue.report.paper_values import paper_value, same

if TYPE_CHECKING:
    from redblue.reproduce import FigureOne

PANEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _write_png(path: str | os.PathLike[str], figure: Figure) -> None:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def save_figure_one_png(path: str | os.PathLike[str], figure_one: FigureOne) -> None:
    """One row of images, (a) eps = 0 ... , each with the predicted label and confidence under it."""
    n = len(figure_one.eps)
    figure = Figure(figsize=(1.5 * n, 2.2))
    axes = figure.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        # unclipped FGSM images may leave [0, 1]; show them on the same fixed scale, saturated
        ax.imshow(figure_one.images[i].clamp(0.0, 1.0).numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"({PANEL_LETTERS[i % 26]}) eps = {figure_one.eps[i]:g}", fontsize=8)
        ax.set_xlabel(f"pred {figure_one.predicted[i]}, conf {figure_one.confidence[i]:.2f}", fontsize=8)
    outside = bool(((figure_one.images < 0) | (figure_one.images > 1)).any())
    figure.suptitle(
        f"FGSM on the first test-set {figure_one.label} (index {figure_one.test_index}), model {figure_one.cell}"
        + ("; unclipped pixels outside [0, 1] shown saturated" if outside else ""),
        fontsize=9,
    )
    figure.tight_layout()
    _write_png(path, figure)


def save_curves_png(path: str | os.PathLike[str], results: dict[str, Any]) -> None:
    """Accuracy and confidence against eps for every grid model (mean over seeds, a band of ±1 std),
    with the paper's values as markers where it reports them."""
    figure = Figure(figsize=(11, 4.2))
    ax_accuracy, ax_confidence = figure.subplots(1, 2)
    palette = [f"C{i}" for i in range(10)]
    for index, entry in enumerate(results["models"]):
        color = palette[index % len(palette)]
        label = f"λ1={entry['l1']:g}, λ2={entry['l2']:g}"
        eps = [point["eps"] for point in entry["curve"]]
        for ax, metric in ((ax_accuracy, "accuracy"), (ax_confidence, "confidence")):
            means = [point[metric]["mean"] for point in entry["curve"]]
            ax.plot(eps, means, color=color, marker=".", label=label)
            stds = [point[metric]["std"] for point in entry["curve"]]
            if all(s is not None for s in stds):
                ax.fill_between(eps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], color=color, alpha=0.15)
            paper_points = [
                (e, paper_value(entry["l1"], entry["l2"], metric, None if same(e, 0.0) else e)) for e in eps
            ]
            paper_points = [(e, v.value) for e, v in paper_points if v is not None]
            if paper_points:
                ax.scatter(*zip(*paper_points), color=color, marker="x", s=40, zorder=3)
    for ax, metric in ((ax_accuracy, "accuracy"), (ax_confidence, "confidence (mean top softmax probability)")):
        ax.set_xlabel("FGSM eps")
        ax.set_ylabel(metric)
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
    ax_accuracy.set_title("FGSM accuracy (x: the paper's values)", fontsize=10)
    ax_confidence.set_title("FGSM confidence (x: the paper's values)", fontsize=10)
    ax_accuracy.legend(fontsize=7)
    figure.tight_layout()
    _write_png(path, figure)
