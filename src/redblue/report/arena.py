"""The report page of an arena run, from its results.json alone: the matrix as heatmaps, the scoreboard,
the rounds, the leaderboard, the trainings and the environment.

Importing this module registers the page (`@register_page("arena")`); `redblue.cli` imports it, so
`redblue report RUN_DIR` regenerates an arena's report.md and report.html like any other run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redblue.report.builders import PageOptions, environment_section, register_page, run_header
from redblue.report.page import Block, Curves, Heatmap, KeyValues, Page, Section, Series, Table, Text


def _state_name(defense: str, round_: int) -> str:
    return defense if round_ == 0 else f"{defense} (round {round_})"


def matrix_heatmap(results: dict[str, Any], states: Sequence[tuple[str, int]], title: str) -> Heatmap:
    """Rows: model states; columns: attack @ eps, then the worst case per eps (union of the fooled sets)."""
    eps_list = results["eps"]
    cell = {(r["defense"], r["round"], r["red"], r["eps"]): r["robust_accuracy"] for r in results["matrix"]}
    worst = {(r["defense"], r["round"], r["eps"]): r["worst_case_accuracy"] for r in results["states"]}
    columns = [(red["name"], eps) for red in results["red"] for eps in eps_list
               if any((d, k, red["name"], eps) in cell for d, k in states)]
    labels = [f"{red} @ {eps:g}" for red, eps in columns] + [f"worst case @ {eps:g}" for eps in eps_list]
    values = tuple(
        tuple(cell.get((d, k, red, eps)) for red, eps in columns) + tuple(worst.get((d, k, eps)) for eps in eps_list)
        for d, k in states
    )
    return Heatmap(title, tuple(_state_name(d, k) for d, k in states), tuple(labels), values, row_header="defense",
                   col_header="attack @ eps",
                   caption="Robust accuracy on the test subset: correct on the clean image and on the attack's verified "
                           "image. Worst case: no attack of the roster fooled the sample (the union of the fooled sets).")


def _summary(results: dict[str, Any]) -> KeyValues:
    s, score = results["summary"], results["scoreboard"]
    budget = results["budget"]
    compute = ", ".join(f"{k} ≤ {budget[k]}" for k in ("steps", "restarts", "queries") if budget.get(k) is not None)
    return KeyValues((
        ("defenses", s["defenses"]), ("attacks", s["attacks"]), ("test images", s["n_test"]),
        ("budget", f"{budget['norm']} eps ≤ {budget['max_eps']:g}, {budget['knowledge']}" + (f", {compute}" if compute else "")),
        ("threshold", f"red breaks a defense below {score['threshold']:.0%} robust accuracy"),
        ("rounds played", f"{score['rounds_played']} of {s['rounds_declared']}"),
        ("winner", f"{score['winner']} ({score['ended']})"),
        ("red's success, first models → final models", f"{score['red_success_initial']:.1%} → {score['red_success_final']:.1%}"),
        ("top of the leaderboard", f"{s['top_defense']} ({s['top_worst_case_accuracy']:.2%})" if s["top_defense"] else None),
        ("cells", s["cells"]),
    ))


def _scoreboard(results: dict[str, Any]) -> list[Block]:
    score = results["scoreboard"]
    blocks: list[Block] = [Table(
        ("round", "fine-tuned", "red's success before", "red's success after", "red wins", "blue wins", "round winner"),
        tuple((r["round"], ", ".join(r["fine_tuned"]) or "none", r["red_success_before"], r["red_success_after"],
               r["red_wins"], r["blue_wins"], r["winner"]) for r in score["rounds"]),
        ("", "", "%", "%", "", "", ""),
        caption="Red's success: 1 - the robust accuracy its best attack leaves at the budget eps, averaged over the "
                "defenses; before and after blue's fine-tuning in the round.",
    )]
    if score["rounds"]:
        x = tuple(float(r["round"]) for r in score["rounds"])
        blocks.append(Curves("Red's success per round, before and after blue's fine-tuning", x, (
            Series("before fine-tuning", tuple(r["red_success_before"] for r in score["rounds"])),
            Series("after fine-tuning", tuple(r["red_success_after"] for r in score["rounds"])),
        ), x_label="round", y_label="red's success"))
    blocks.append(Text((f"Game: {score['winner']} wins ({score['ended']}). Rounds won: red {score['rounds_won']['red']}, "
                        f"blue {score['rounds_won']['blue']}. Holding at the end: {', '.join(score['held']) or 'none'}; "
                        f"broken: {', '.join(score['broken']) or 'none'}.",)))
    return blocks


def _rounds(results: dict[str, Any]) -> Table:
    rows = tuple(
        (r["round"], e["defense"], e["attack_before"], e["robust_before"], e["objective"] or "—", e["attack_after"],
         e["robust_after"], e["winner"])
        for r in results["rounds"] for e in r["entries"]
    )
    return Table(("round", "defense", "red's pick", "robust before", "blue's fine-tuning", "red's pick after", "robust after",
                  "winner"), rows, ("", "", "", "%", "", "", "%", ""),
                 caption="A defense red does not break (robust accuracy at or above the threshold) is not fine-tuned.")


def _leaderboard(results: dict[str, Any]) -> Table:
    rows = tuple(
        (r["rank"], _state_name(r["defense"], r["round"]), r["worst_case_accuracy"], r["clean_accuracy"], r["certified_accuracy"],
         r["certified_method"], ", ".join(f"{a['label']} {a['accuracy']:.1%}" for a in r["per_attack"]))
        for r in results["leaderboard"]
    )
    eps = results["budget"]["max_eps"]
    attacks = results["leaderboard"][0]["attacks"] if results["leaderboard"] else "standard"
    return Table(("rank", "defense (final model)", f"{attacks} worst case", "clean", "certified", "method", "per attack"), rows,
                 ("", "", "%", "%", "%", "", ""),
                 caption=f"Ranked by the worst case over the {attacks} preset at eps {eps:g} ({results['budget']['norm']}); "
                         "certified accuracy is a proven lower bound, the worst case an upper bound. Per attack: cumulative, "
                         "each attack ran on the samples the ones before it left robust.")


@register_page("arena")
def arena_page(results: dict[str, Any], folder: Path, options: PageOptions) -> Page:
    """Summary, matrix heatmaps (first and final models), strongest attacks, scoreboard, rounds, leaderboard, cells, environment."""
    initial = [(b["name"], 0) for b in results["blue"]]
    final_round = {r["defense"]: r["round"] for r in results["states"] if results["final_models"].get(r["defense"]) == r["model"]}
    final = [(name, final_round[name]) for name, _ in initial if name in final_round]
    sections = [Section("summary", "Summary", (_summary(results),))]
    matrix_blocks: list[Block] = [matrix_heatmap(results, initial, "Robust accuracy: the blue roster against the red roster")]
    if final != initial:
        matrix_blocks.append(matrix_heatmap(results, final, "Robust accuracy of the final models, after the rounds"))
    budget_eps = results["budget"]["max_eps"]
    matrix_blocks.append(Table(
        ("defense", "round", "eps", "clean", "worst case", "certified", "strongest attack", "its robust accuracy"),
        tuple((r["defense"], r["round"], r["eps"], r["clean_accuracy"], r["worst_case_accuracy"], r["certified_accuracy"],
               r["strongest"], r["strongest_accuracy"]) for r in results["states"]),
        ("", "", "g", "%", "%", "%", "", "%"),
        caption=f"Every model the game produced; red picks the strongest attack at the budget eps {budget_eps:g}."))
    sections.append(Section("matrix", "The matrix", tuple(matrix_blocks)))
    sections.append(Section("scoreboard", "Scoreboard", tuple(_scoreboard(results))))
    if results["rounds"]:
        sections.append(Section("rounds", "Rounds", (_rounds(results),)))
    sections.append(Section("leaderboard", "Leaderboard", (_leaderboard(results),)))
    sections.append(Section("cells", "Matrix cells and trainings", (
        Table(("defense", "round", "attack", "eps", "robust", "adversarial accuracy", "confidence", "fooled", "invalid", "seconds"),
              tuple((r["defense"], r["round"], r["attack"], r["eps"], r["robust_accuracy"], r["adversarial_accuracy"],
                     r["confidence"], r["n_fooled"], r["n_invalid"], r["attack_seconds"]) for r in results["matrix"]),
              ("", "", "", "g", "%", "%", ".3f", "", "", ".1f")),
        Table(("role", "name", "round", "objective", "epochs", "kept epoch", "train accuracy", "validation robust", "seconds"),
              tuple((t["role"], t["name"], t["round"], t["objective"].get("name"), t["epochs"], t["kept_epoch"],
                     t["final_train_accuracy"], t["val_robust_accuracy"], t["train_seconds"]) for t in results["trainings"]),
              ("", "", "", "", "", "", "%", "%", ".1f")),
    )))
    invocation = results.get("invocation", {})
    sections.append(environment_section(folder, fallback=results.get("environment"), extra=tuple(
        (f"this invocation: {k}", v) for k, v in invocation.items())))
    s = results["summary"]
    return Page(f"Arena: {s['name']}", "arena", tuple(sections),
                subtitle=f"{run_header(folder)} · {s['defenses']} defenses × {s['attacks']} attacks × eps "
                         f"{', '.join(f'{e:g}' for e in results['eps'])} · {s['dataset']}")
