"""Paper-versus-ours tables, the shape checks and the clip comparison of a reproduce run, as values.

Everything here reads only the results dict (what results.json holds) and the paper's values, so
it can be recomputed from a saved run; `reproduce` stores its output in results.json, and the
report renders that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redblue.config import same
from redblue.reproduce.experiment import Expectations
from redblue.reproduce.paper import PAPER_VALUES, PaperValue

TABLE_SOURCES = {"table1": "Table 1", "table2": "Table 2", "table3": "Table 3"}


def model_entry(results: dict[str, Any], l1: float, l2: float) -> dict[str, Any] | None:
    """The aggregated entry of the model trained with (l1, l2), or None when the run has none."""
    for entry in results["models"]:
        if same(entry["l1"], l1) and same(entry["l2"], l2):
            return entry
    return None


def ours(results: dict[str, Any], l1: float, l2: float, metric: str, eps: float | None) -> dict[str, Any] | None:
    """Our {mean, std, values} for one model, metric and eps (None: clean), or None where not run."""
    entry = model_entry(results, l1, l2)
    if entry is None:
        return None
    eps = 0.0 if eps is None else eps
    for point in entry["curve"]:
        if same(point["eps"], eps):
            return point[metric]
    return None


def comparison_row(results: dict[str, Any], paper: PaperValue) -> dict[str, Any]:
    """One cell of a paper table beside ours: paper, ours (mean over seeds), std, ours - paper."""
    value = ours(results, paper.l1, paper.l2, paper.metric, paper.eps)
    mean = None if value is None else value["mean"]
    return {
        "l1": paper.l1,
        "l2": paper.l2,
        "metric": paper.metric,
        "eps": paper.eps,
        "paper": paper.value,
        "ours": mean,
        "ours_std": None if value is None else value["std"],
        "n_seeds": 0 if value is None else len(value["values"]),
        "difference": None if mean is None else mean - paper.value,
    }


def comparison_tables(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Tables 1-3 of the paper, cell by cell, in the paper's order, each with ours beside it."""
    return {
        key: [comparison_row(results, v) for v in PAPER_VALUES if v.source == source]
        for key, source in TABLE_SOURCES.items()
    }


def _check(name: str, expected: str, value: Any, passed: bool | None) -> dict[str, Any]:
    return {"check": name, "expected": expected, "value": value, "passed": passed}


def _mean(results: dict[str, Any], l1: float, l2: float, metric: str, eps: float | None) -> float | None:
    value = ours(results, l1, l2, metric, eps)
    return None if value is None else value["mean"]


def _in(value: float | None, pair: Sequence[float]) -> bool | None:
    return None if value is None else pair[0] <= value <= pair[1]


def _range_text(pair: Sequence[float]) -> str:
    return f"<= {pair[1]:g}" if pair[0] == 0.0 else f"{pair[0]:g}-{pair[1]:g}"


def shape_checks(results: dict[str, Any], expect: Expectations) -> list[dict[str, Any]]:
    """The paper's shape, as checks on our means against `expect`'s ranges (passed None: the run lacks that model or eps).

    The paper reports one run per cell, so the checks are on shape, not on the third decimal:
    clean accuracy of every model; FGSM accuracy of the unregularised model at each listed eps;
    for l1 = 1e-4 its FGSM accuracy at 0.1, its gain over no regularisation and its clean
    confidence; l1 = 1e-5 between l1 = 0 and 1e-4; every curve non-increasing and low at 0.25.
    """
    checks: list[dict[str, Any]] = []
    models: Sequence[dict[str, Any]] = results["models"]
    for entry in models:
        l1, l2 = entry["l1"], entry["l2"]
        clean = _mean(results, l1, l2, "accuracy", None)
        checks.append(_check(f"clean accuracy, l1={l1:g}, l2={l2:g}", _range_text(expect.clean_accuracy), clean,
                             _in(clean, expect.clean_accuracy)))
    for eps, low, high in expect.no_reg_fgsm:
        value = _mean(results, 0.0, 0.0, "accuracy", eps)
        checks.append(_check(f"FGSM accuracy at eps {eps:g}, no regularisation", _range_text((low, high)), value,
                             _in(value, (low, high))))
    base_10 = _mean(results, 0.0, 0.0, "accuracy", 0.10)
    for entry in models:
        l1, l2 = entry["l1"], entry["l2"]
        if not same(l1, 1e-4):
            continue
        label = f"l1=1e-4, l2={l2:g}"
        acc_10 = _mean(results, l1, l2, "accuracy", 0.10)
        checks.append(_check(f"FGSM accuracy at eps 0.1, {label}", _range_text(expect.l1_fgsm_10), acc_10,
                             _in(acc_10, expect.l1_fgsm_10)))
        gain = None if acc_10 is None or base_10 is None else acc_10 - base_10
        checks.append(
            _check(f"FGSM accuracy gain at eps 0.1 over no regularisation, {label}", f">= {expect.l1_gain_10:g}", gain,
                   None if gain is None else gain >= expect.l1_gain_10)
        )
        conf = _mean(results, l1, l2, "confidence", None)
        checks.append(_check(f"clean confidence, {label}", _range_text(expect.l1_clean_confidence), conf,
                             _in(conf, expect.l1_clean_confidence)))
    for entry in models:
        l1, l2 = entry["l1"], entry["l2"]
        if not same(l1, 1e-5):
            continue
        middle = _mean(results, l1, l2, "accuracy", 0.10)
        low = _mean(results, 0.0, l2, "accuracy", 0.10)
        high = _mean(results, 1e-4, l2, "accuracy", 0.10)
        passed = None if None in (middle, low, high) else min(low, high) <= middle <= max(low, high)  # type: ignore[type-var]
        checks.append(
            _check(f"FGSM accuracy at eps 0.1 of l1=1e-5, l2={l2:g} between l1=0 and l1=1e-4", "between", middle, passed)
        )
    for entry in models:
        label = f"l1={entry['l1']:g}, l2={entry['l2']:g}"
        accuracy = [point["accuracy"]["mean"] for point in entry["curve"]]
        rises = [
            f"{a['eps']:g}->{b['eps']:g}"
            for a, b in zip(entry["curve"], entry["curve"][1:])
            if b["accuracy"]["mean"] > a["accuracy"]["mean"]
        ]
        checks.append(_check(f"FGSM accuracy never rises with eps, {label}", "non-increasing",
                             "rises at " + ", ".join(rises) if rises else "non-increasing", not rises and len(accuracy) > 1))
        acc_25 = _mean(results, entry["l1"], entry["l2"], "accuracy", 0.25)
        checks.append(_check(f"FGSM accuracy at eps 0.25, {label}", f"< {expect.fgsm_25_below:g}", acc_25,
                             None if acc_25 is None else acc_25 < expect.fgsm_25_below))
    return checks


def _other_clip_mean(results: dict[str, Any], l1: float, l2: float, eps: float) -> float | None:
    entry = model_entry(results, l1, l2)
    if entry is None or "other_clip" not in entry:
        return None
    for point in entry["other_clip"]["curve"]:
        if same(point["eps"], eps):
            return point["accuracy"]["mean"]
    return None


def clip_comparison(results: dict[str, Any]) -> dict[str, Any]:
    """Every adversarial accuracy the paper reports beside ours with FGSM clipped to [0, 1] and not.

    mean_abs_difference: mean |ours - paper| over the values both settings have, per setting,
    which says which FGSM the paper's numbers match.
    """
    clip = results["experiment"]["fgsm"]["clip"]
    names = {True: "clipped", False: "unclipped"}
    rows = []
    for paper in PAPER_VALUES:
        if paper.metric != "accuracy" or paper.eps is None:
            continue
        main = _mean(results, paper.l1, paper.l2, "accuracy", paper.eps)
        other = _other_clip_mean(results, paper.l1, paper.l2, paper.eps)
        rows.append({"l1": paper.l1, "l2": paper.l2, "eps": paper.eps, "source": paper.source, "paper": paper.value,
                     names[clip]: main, names[not clip]: other})
    both = [r for r in rows if r["clipped"] is not None and r["unclipped"] is not None]
    mean_abs = {
        name: (sum(abs(r[name] - r["paper"]) for r in both) / len(both) if both else None)
        for name in ("clipped", "unclipped")
    }
    return {"tables_use": names[clip], "rows": rows, "n_compared": len(both), "mean_abs_difference": mean_abs}
