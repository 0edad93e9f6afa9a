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
from matplotlib.lines import Line2D

from redblue.config import atomic_write_bytes, same
from redblue.reproduce.paper import paper_value

if TYPE_CHECKING:
    from redblue.reproduce.results import FigureOne

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


LINE_STYLES = ("-", "--", ":", "-.")  # one per lambda2
LINE_WIDTHS = (2.6, 1.8, 1.6, 1.4)  # drawn in this order: the solid line under the others
PAPER_MARKERS = ("o", "s", "^", "D")  # the paper's values, one shape per lambda2


def _grid_values(models: list[dict[str, Any]], key: str) -> list[float]:
    values: list[float] = []
    for entry in models:
        if not any(same(entry[key], v) for v in values):
            values.append(entry[key])
    return values


def _index(values: list[float], value: float) -> int:
    return next(i for i, v in enumerate(values) if same(v, value))


def _lam(value: float) -> str:
    return "0" if value == 0 else f"{value:g}"


def save_curves_png(path: str | os.PathLike[str], results: dict[str, Any]) -> None:
    """curves.png: `curves_figure` as a PNG."""
    _write_png(path, curves_figure(results))


def curves_figure(results: dict[str, Any]) -> Figure:
    """Accuracy and confidence against eps for every grid model: colour by lambda1, line style by lambda2.

    Lines are means over seeds with a band of ±1 std; the paper's values are hollow markers in
    the model's colour (one shape per lambda2). The confidence axis spans the data, not [0, 1].
    """
    models = results["models"]
    l1_values, l2_values = _grid_values(models, "l1"), _grid_values(models, "l2")
    figure = Figure(figsize=(12, 4.8))
    ax_accuracy, ax_confidence = figure.subplots(1, 2)
    low = {"accuracy": 1.0, "confidence": 1.0}
    for entry in models:
        i, j = _index(l1_values, entry["l1"]), _index(l2_values, entry["l2"])
        color, style = f"C{i % 10}", LINE_STYLES[j % len(LINE_STYLES)]
        eps = [point["eps"] for point in entry["curve"]]
        for ax, metric in ((ax_accuracy, "accuracy"), (ax_confidence, "confidence")):
            means = [point[metric]["mean"] for point in entry["curve"]]
            stds = [point[metric]["std"] for point in entry["curve"]]
            ax.plot(eps, means, color=color, linestyle=style, linewidth=LINE_WIDTHS[j % len(LINE_WIDTHS)], zorder=2 + j)
            if all(s is not None for s in stds):
                ax.fill_between(eps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=color, alpha=0.12, linewidth=0)
                low[metric] = min(low[metric], *(m - s for m, s in zip(means, stds)))
            low[metric] = min(low[metric], *means)
            paper_points = [
                (e, paper_value(entry["l1"], entry["l2"], metric, None if same(e, 0.0) else e)) for e in eps
            ]
            paper_points = [(e, v.value) for e, v in paper_points if v is not None]
            if paper_points:
                low[metric] = min(low[metric], *(v for _, v in paper_points))
                ax.scatter(*zip(*paper_points), facecolors="none", edgecolors=color, s=42, linewidths=1.4,
                           marker=PAPER_MARKERS[j % len(PAPER_MARKERS)], zorder=10)
    for ax, metric, label in (
        (ax_accuracy, "accuracy", "accuracy"),
        (ax_confidence, "confidence", "confidence (mean top softmax probability)"),
    ):
        ax.set_xlabel("FGSM eps")
        ax.set_ylabel(label)
        bottom = 0.0 if metric == "accuracy" else max(0.0, low[metric] - 0.03)
        ax.set_ylim(bottom, 1.01)
        ax.grid(alpha=0.3)
    ax_accuracy.set_title("FGSM accuracy", fontsize=10)
    ax_confidence.set_title("FGSM confidence", fontsize=10)
    colour_handles = [Line2D([], [], color=f"C{i % 10}", linewidth=2.2, label=f"λ1 = {_lam(v)}") for i, v in enumerate(l1_values)]
    style_handles = [
        Line2D([], [], color="0.25", linestyle=LINE_STYLES[j % len(LINE_STYLES)], linewidth=LINE_WIDTHS[j % len(LINE_WIDTHS)],
               marker=PAPER_MARKERS[j % len(PAPER_MARKERS)], markerfacecolor="none", label=f"λ2 = {_lam(v)}")
        for j, v in enumerate(l2_values)
    ]
    ax_accuracy.legend(handles=colour_handles, title="colour", fontsize=8, title_fontsize=8, loc="upper right")
    ax_confidence.legend(handles=style_handles, title="line (ours), marker (paper)", fontsize=8, title_fontsize=8,
                         loc="lower left")
    n_seeds = len(models[0]["seeds"]) if models else 0
    band = f", band ±1 std over {n_seeds} seeds" if n_seeds > 1 else ""
    figure.suptitle(f"Every grid model under FGSM: lines are ours{band}; hollow markers the paper's Tables 1-3", fontsize=10)
    figure.tight_layout()
    return figure
