"""Rank every evaluated model in the run index by worst-case robust accuracy, certified and clean beside it.

Reads the `evaluations` table of `redblue.runs.index` (one row per evaluated model, norm and eps: an
`evaluate` run's results, or the rows an arena lists under "evaluations" in its results.json).
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redblue.runs.index import RunIndexError, index_path, reader

TIE_EPS = 0.1  # the default eps among equally common ones: the nearest to this (the paper's and the arena's budget)


def _or_below(value: float | None) -> float:
    """Accuracies sort descending; a missing one below every real one."""
    return -1.0 if value is None else value


@dataclass(frozen=True)
class Leaderboard:
    """Every evaluated model at one (norm, eps), best worst-case robust accuracy first."""

    norm: str
    eps: float
    rows: tuple[dict[str, Any], ...]
    available: tuple[tuple[str, float, int], ...]  # (norm, eps, models evaluated there)


def leaderboard(root: str | os.PathLike[str], *, eps: float | None = None, norm: str | None = None) -> Leaderboard:
    """Rank evaluated models by worst-case robust accuracy at `eps` (default: the eps most models have;
    among equals L-inf first, then the eps nearest 0.1, the paper's and the arena's budget).

    A model is one (model, dataset, split, n); evaluated several times, it takes the lowest worst
    case (every attack tried is a valid upper bound on its robust accuracy) and the highest
    certified accuracy (every certificate is a valid lower bound).
    """
    with closing(reader(Path(root))) as conn:
        counts = conn.execute(
            "SELECT norm, eps, COUNT(DISTINCT model || '|' || IFNULL(dataset, '') || '|' || IFNULL(split, '') || '|' ||"
            " IFNULL(n, '')) AS models FROM evaluations GROUP BY norm, eps ORDER BY norm, eps"
        ).fetchall()
        available = tuple((r["norm"], r["eps"], r["models"]) for r in counts)
        if not available:
            raise RunIndexError(f"no evaluated models in {index_path(root)}; run `redblue evaluate MODEL --out runs/NAME` first")
        candidates = [a for a in available if norm is None or a[0] == norm]
        if eps is None:
            if not candidates:
                raise RunIndexError(f"no evaluations in norm {norm!r}; the index has {', '.join(sorted({a[0] for a in available}))}")
            most = Counter({(a[0], a[1]): a[2] for a in candidates}).most_common()
            tied = [k for k, c in most if c == most[0][1]]
            chosen_norm, chosen_eps = min(tied, key=lambda k: (k[0] != "linf", abs(k[1] - TIE_EPS), k[1]))
        else:
            matches = [a for a in candidates if abs(a[1] - eps) <= 1e-9 * max(1.0, abs(eps))]
            if not matches:
                shown = ", ".join(f"{a[0]} {a[1]:g}" for a in available)
                raise RunIndexError(f"no model was evaluated at eps {eps:g}; evaluated: {shown}")
            chosen_norm, chosen_eps = matches[0][0], matches[0][1]
        rows = conn.execute(
            "SELECT e.*, r.id AS run_id, r.path AS run_path FROM evaluations e JOIN runs r ON r.id = e.run_id"
            " WHERE e.norm = ? AND e.eps = ? ORDER BY r.started", (chosen_norm, chosen_eps)
        ).fetchall()
    models: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row["model"], row["dataset"], row["split"], row["n"])
        entry = models.setdefault(key, {
            "model": row["model"], "dataset": row["dataset"], "split": row["split"], "n": row["n"],
            "worst_case_accuracy": row["worst_case_accuracy"], "clean_accuracy": row["clean_accuracy"],
            "certified_accuracy": None, "certified_method": None, "attacks": [], "runs": [],
        })
        if row["worst_case_accuracy"] < entry["worst_case_accuracy"]:
            entry["worst_case_accuracy"] = row["worst_case_accuracy"]
        certified = row["certified_accuracy"]
        if certified is not None and (entry["certified_accuracy"] is None or certified > entry["certified_accuracy"]):
            entry["certified_accuracy"], entry["certified_method"] = certified, row["certified_method"]
        if row["attacks"] and row["attacks"] not in entry["attacks"]:
            entry["attacks"].append(row["attacks"])
        entry["runs"].append(row["run_id"])
    ranked = sorted(
        models.values(),
        key=lambda e: (-e["worst_case_accuracy"], -_or_below(e["certified_accuracy"]), -_or_below(e["clean_accuracy"]), e["model"]),
    )
    for rank, entry in enumerate(ranked, start=1):
        entry["rank"] = rank
    return Leaderboard(norm=chosen_norm, eps=chosen_eps, rows=tuple(ranked), available=available)
