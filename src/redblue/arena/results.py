"""An arena's numbers as one results dict (results.json): matrix, worst cases, rounds, scoreboard, leaderboard.

Built from the cell records alone (and the states the game went through), so a resumed run that
reuses every record builds the same dict. Timing lives under keys named `*_seconds` and in
"invocation", so a comparison of two runs can leave it out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from redblue.arena.config import ArenaConfig, red_label
from redblue.arena.game import Pick, scoreboard
from redblue.config import same


def _by_kind(records: Mapping[str, dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records.values() if r["config"]["kind"] == kind]


def worst_case(n: int, clean_wrong: Sequence[int], fooled_sets: Sequence[Sequence[int]]) -> float:
    """Robust accuracy in the worst case over attacks: a sample counts when it is classified right and no
    attack fooled it, i.e. 1 - |clean mistakes ∪ every attack's fooled set| / n."""
    lost = set(clean_wrong)
    for fooled in fooled_sets:
        lost.update(fooled)
    return (n - len(lost)) / n


def matrix_rows(config: ArenaConfig, records: Mapping[str, dict[str, Any]], states: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per (defense, round, attack, eps), in the order of the states and the roster."""
    labels = {red.name: red_label(red) for red in config.red}
    by_cell = {(r["config"]["model_key"], r["config"]["red"], r["config"]["eps"]): r for r in _by_kind(records, "matrix")}
    rows = []
    for state in states:
        for red in config.red:
            for eps in config.all_eps:
                record = by_cell.get((state.key, red.name, eps))
                if record is None:  # an attack with its own eps runs at that eps only
                    continue
                m = record["metrics"]
                rows.append({
                    "defense": state.defense, "round": state.round, "red": red.name, "attack": labels[red.name], "eps": eps,
                    "robust_accuracy": m["robust_accuracy"], "adversarial_accuracy": m["adversarial_accuracy"],
                    "confidence": m["confidence"], "n": m["n"], "n_fooled": len(m["fooled"]), "n_invalid": m["n_invalid"],
                    "cell": record["id"], "attack_seconds": m["attack_seconds"],
                })
    return rows


def state_rows(config: ArenaConfig, records: Mapping[str, dict[str, Any]], states: Sequence[Any]) -> list[dict[str, Any]]:
    """Per state and eps: clean, worst case over the roster (union of fooled sets), certified, the strongest attack."""
    clean = {r["config"]["model_key"]: r for r in _by_kind(records, "clean")}
    matrix = _by_kind(records, "matrix")
    rows = []
    for state in states:
        c = clean[state.key]["metrics"]
        for eps in config.all_eps:
            cells = [r["metrics"] for r in matrix if r["config"]["model_key"] == state.key and same(r["config"]["eps"], eps)]
            if not cells:
                continue
            best = min(cells, key=lambda m: (m["robust_accuracy"], [red.name for red in config.red].index(m["red"])))
            certified = next((p["accuracy"] for p in c["certified"] if same(p["eps"], eps)), None)
            rows.append({
                "defense": state.defense, "round": state.round, "model": state.key, "parent": state.parent, "eps": eps,
                "clean_accuracy": c["clean_accuracy"], "clean_confidence": c["clean_confidence"],
                "worst_case_accuracy": worst_case(c["n"], c["clean_wrong"], [m["fooled"] for m in cells]),
                "strongest": best["red"], "strongest_accuracy": best["robust_accuracy"],
                "certified_accuracy": certified, "certified_method": c["certified_method"] if certified is not None else None,
            })
    return rows


def leaderboard(config: ArenaConfig, records: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The final models ranked by the preset's worst-case robust accuracy at the budget eps (then clean accuracy)."""
    rows = []
    for record in _by_kind(records, "leaderboard"):
        m = record["metrics"]
        rows.append({
            "defense": m["defense"], "round": m["round"], "model": record["config"]["model_key"], "eps": m["eps"],
            "attacks": m["attacks"], "worst_case_accuracy": m["worst_case_accuracy"], "clean_accuracy": m["clean_accuracy"],
            "certified_accuracy": m["certified_accuracy"], "certified_method": m["certified_method"],
            "per_attack": m["per_attack"], "n": m["n"],
        })
    order = [blue.name for blue in config.blue]
    rows.sort(key=lambda r: (-r["worst_case_accuracy"], -r["clean_accuracy"], order.index(r["defense"])))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def evaluation_rows(config: ArenaConfig, board: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leaderboard as `redblue.runs.folders.EvaluationRow` dicts, for the run index and `redblue leaderboard`."""
    return [
        {
            "model": f"{config.name}/{row['defense']}" + (f" (round {row['round']})" if row["round"] else ""),
            "norm": config.budget.norm, "eps": row["eps"], "worst_case_accuracy": row["worst_case_accuracy"],
            "clean_accuracy": row["clean_accuracy"], "certified_accuracy": row["certified_accuracy"],
            "certified_method": row["certified_method"], "dataset": config.dataset, "split": "test", "n": row["n"],
            "attacks": row["attacks"],
        }
        for row in board
    ]


def build_results(
    config: ArenaConfig,
    records: Mapping[str, dict[str, Any]],
    states: Sequence[Any],
    final_states: Mapping[str, Any],
    initial: Mapping[str, Pick],
    final: Mapping[str, Pick],
    rounds: Sequence[Sequence[dict[str, Any]]],
) -> dict[str, Any]:
    """Every number of the arena (see the module docstring); the report reads only this."""
    board = leaderboard(config, records)
    score = scoreboard(initial, final, rounds, threshold=config.threshold, max_rounds=config.rounds)
    per_state = state_rows(config, records, states)
    budget_eps = config.budget.max_eps
    strongest = [
        {"defense": r["defense"], "round": r["round"], "red": r["strongest"], "robust_accuracy": r["strongest_accuracy"]}
        for r in per_state if same(r["eps"], budget_eps)
    ]
    trainings = [
        {"role": m["role"], "name": m["name"], "round": m["round"], "cell": r["id"], "parent": m["parent"],
         "objective": r["config"]["train"]["objective"], "epochs": m["epochs"], "kept_epoch": m["kept_epoch"],
         "final_train_accuracy": m["final_train_accuracy"], "val_robust_accuracy": m["val_robust_accuracy"],
         "train_seconds": m["train_seconds"]}
        for r in _by_kind(records, "train") for m in [r["metrics"]]
    ]
    top = board[0] if board else None
    summary = {
        "name": config.name, "dataset": config.dataset, "n_test": next((r["metrics"]["n"] for r in _by_kind(records, "clean")), None),
        "defenses": len(config.blue), "attacks": len(config.red), "norm": config.budget.norm, "budget_eps": budget_eps,
        "knowledge": config.budget.knowledge, "rounds_declared": config.rounds, "rounds_played": score["rounds_played"],
        "threshold": config.threshold, "winner": score["winner"],
        "red_success_initial": score["red_success_initial"], "red_success_final": score["red_success_final"],
        "top_defense": top["defense"] if top else None,
        "top_worst_case_accuracy": top["worst_case_accuracy"] if top else None,
        "cells": len(records),
    }
    return {
        "kind": "arena",
        "name": config.name,
        "summary": summary,
        "config": config.record(),
        "eps": list(config.all_eps),
        "budget": {"norm": config.budget.norm, "max_eps": budget_eps, "knowledge": config.budget.knowledge,
                   "queries": config.budget.queries, "steps": config.budget.steps, "restarts": config.budget.restarts},
        "red": [{"name": red.name, "attack": red.attack, "label": red_label(red)} for red in config.red],
        "blue": [{"name": blue.name, "file": blue.file, "code": blue.code, "weights": blue.weights,
                  "model": None if blue.given else blue.model, "objective": None if blue.given else blue.objective,
                  "l1": blue.l1, "l2": blue.l2} for blue in config.blue],
        "final_models": {name: state.key for name, state in final_states.items()},
        "matrix": matrix_rows(config, records, states),
        "states": per_state,
        "strongest": strongest,
        "trainings": trainings,
        "rounds": [{"round": i, "entries": list(entries)} for i, entries in enumerate(rounds, start=1)],
        "scoreboard": score,
        "leaderboard": board,
        "evaluations": evaluation_rows(config, board),
    }
