"""The leaderboard and the run list as text: Markdown and CSV tables of what `redblue.runs.index` returns."""

from __future__ import annotations

import csv
import io
from typing import Any

from redblue.runs.index import IndexedRun
from redblue.runs.ranking import Leaderboard

CSV_COLUMNS = ("rank", "model", "dataset", "split", "n", "worst_case_accuracy", "certified_accuracy", "certified_method",
               "clean_accuracy", "attacks", "runs")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def leaderboard_title(board: Leaderboard) -> str:
    return f"Worst-case robust accuracy at {board.norm} eps {board.eps:g}"


def leaderboard_rows(board: Leaderboard) -> list[list[str]]:
    """One row of display text per model: rank, model, worst case, certified, clean, attacks, samples, runs."""
    rows = []
    for entry in board.rows:
        certified = _percent(entry["certified_accuracy"])
        if entry["certified_method"]:
            certified += f" ({entry['certified_method']})"
        rows.append([
            str(entry["rank"]), entry["model"], _percent(entry["worst_case_accuracy"]), certified,
            _percent(entry["clean_accuracy"]), "; ".join(entry["attacks"]) or "—",
            "—" if entry["n"] is None else str(entry["n"]), str(len(entry["runs"])),
        ])
    return rows


LEADERBOARD_HEADER = ("rank", "model", "worst case", "certified", "clean", "attacks", "samples", "evaluations")


def leaderboard_markdown(board: Leaderboard) -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [f"**{leaderboard_title(board)}**", "", "| " + " | ".join(LEADERBOARD_HEADER) + " |",
             "|" + "|".join("---" for _ in LEADERBOARD_HEADER) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in leaderboard_rows(board)]
    return "\n".join(lines) + "\n"


def leaderboard_csv(board: Leaderboard) -> str:
    """Raw values (accuracies in [0, 1]); attacks and runs joined with ';'."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in board.rows:
        writer.writerow([
            ";".join(entry[c]) if c in ("attacks", "runs") else ("" if entry[c] is None else entry[c]) for c in CSV_COLUMNS
        ])
    return buffer.getvalue()


def leaderboard_json(board: Leaderboard) -> dict[str, Any]:
    return {
        "norm": board.norm,
        "eps": board.eps,
        "rows": list(board.rows),
        "available": [{"norm": n, "eps": e, "models": m} for n, e, m in board.available],
    }


def metrics_summary(metrics: dict[str, Any], *, limit: int = 3) -> str:
    """A run's headline numbers in one short line: accuracies first, e.g. `clean_accuracy=0.98 worst_case@0.1=0.71`."""
    numbers = [(k, v) for k, v in metrics.items() if isinstance(v, float) and not isinstance(v, bool)]
    headline = [(k, v) for k, v in numbers if "accuracy" in k or "@" in k] or numbers
    return " ".join(f"{k}={v:.4g}" for k, v in headline[:limit])


def run_row(run: IndexedRun) -> list[str]:
    started = run.started.replace("T", " ").removesuffix("Z") if run.started else "—"
    return [run.id, run.kind, run.path, run.status, started, run.device or "—", str(run.n_cells), metrics_summary(run.metrics)]


RUN_HEADER = ("id", "kind", "folder", "status", "started (UTC)", "device", "cells", "key metrics")


def aligned(rows: list[list[str]]) -> str:
    """Plain text columns (two spaces apart, the last one unpadded), one line per row, like `git log --oneline`."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([cell.ljust(w) for cell, w in zip(row, widths)] + [row[-1]]).rstrip() for row in rows)
