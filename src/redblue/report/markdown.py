"""report.md of a reproduce run: the protocol and why, every paper table as paper | ours | difference, figures.

Reads only the results dict (results.json), so it can be re-rendered from a saved run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redblue.config import same

PAPER_TITLE = "Adversarial Machine Learning: The Attacks and the Defenses"
TABLE1_LABELS = {
    ("accuracy", None): "Test accuracy",
    ("confidence", None): "Test confidence",
}


def _number(value: float | None, digits: int = 4) -> str:
    return "not run" if value is None else f"{value:.{digits}f}"


def _ours(row: dict[str, Any]) -> str:
    if row["ours"] is None:
        return "not run"
    text = f"{row['ours']:.4f}"
    return f"{text} ± {row['ours_std']:.4f}" if row["ours_std"] is not None else text


def _difference(row: dict[str, Any]) -> str:
    return "—" if row["difference"] is None else f"{row['difference']:+.4f}"


def _quantity(metric: str, eps: float | None) -> str:
    if eps is None:
        return TABLE1_LABELS[(metric, None)]
    return f"Adversarial {metric} (eps = {eps:g})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _lam(value: float) -> str:
    return "0" if value == 0 else f"{value:g}"


def _protocol(results: dict[str, Any]) -> list[str]:
    experiment = results["experiment"]
    model, train, fgsm = experiment["model"], experiment["train"], experiment["fgsm"]
    objective = train["objective"]
    notes = experiment.get("notes", {})
    n_train = results["cells"][0]["n_train"] if results["cells"] else None
    n_test = results["cells"][0]["n_test"] if results["cells"] else None
    seeds = experiment["seeds"]
    seed_text = (
        f"{seeds} seeds per cell ({experiment['seed']}..{experiment['seed'] + seeds - 1}); every number of ours is "
        "mean ± sample standard deviation over them (the paper reports one run per cell)"
        if seeds > 1
        else f"one run per cell, seed {experiment['seed']}, as in the paper"
    )
    if objective["name"] == "clean":
        objective_text = "clean cross-entropy"
    elif objective["name"] == "fgsm":
        objective_text = (
            f"Goodfellow adversarial training, {objective['alpha']:g}·CE(x) + {1 - objective['alpha']:g}·CE(FGSM(x, "
            f"eps={objective['eps']:g}))"
        )
    else:
        objective_text = f"{objective['name']} ({', '.join(f'{k}={v}' for k, v in objective.items() if k != 'name')})"
    evaluated = [point["eps"] for point in results["models"][0]["curve"]] if results["models"] else []
    eps_text = ", ".join(f"{e:g}" for e in evaluated) or "none"
    clip_text = "clipped to [0, 1]" if fgsm["clip"] else "not clipped (the paper's equation (3) as written; pixels may leave [0, 1])"
    lines = [
        "## Protocol",
        "",
        f"- Data: {experiment['dataset']}, {n_train} training images"
        + (f" (the first {experiment['train_subset']})" if experiment.get("train_subset") else " (all)")
        + f", {n_test} test images" + (f" (the first {experiment['test_subset']})" if experiment.get("test_subset") else " (all)") + ".",
        f"- Blue team: {model['in_features']} → {model['hidden']} (ReLU) → {model['classes']}, dropout "
        f"{model['dropout_input']:g} on the input and {model['dropout_hidden']:g} on the hidden layer, "
        f"{'with' if model['bias'] else 'no'} biases, init {model['init']}.",
        f"- Training: {objective_text} + λ1·Σ|w| + λ2·Σw² over the weights"
        + (" and biases" if train["penalize_bias"] else " (biases not penalised)")
        + f"; {train['optimizer']} (lr {train['lr']:g}, mean-square decay {train['rho']:g}, eps {train['rms_eps']:g}), "
        f"batch {train['batch_size']}, {_epochs(results)}.",
        f"- Grid: λ1 ∈ {{{', '.join(map(_lam, experiment['grid']['l1']))}}}, λ2 ∈ {{{', '.join(map(_lam, experiment['grid']['l2']))}}}; {seed_text}.",
        f"- Red team: FGSM, x + eps·sign(∇x CE), {clip_text}, at eps {eps_text}.",
        f"- Profile `{results['profile']}`; device {results['device']}; {_executor(results)}, "
        f"{results['torch_threads_per_cell']} torch thread{'s' if results['torch_threads_per_cell'] != 1 else ''} per cell.",
        "",
    ]
    why = [(title, notes.get(key, "")) for title, key in (("Protocol", "protocol"), ("Hyperparameters", "hyperparameters"), ("Clipping", "clip"))]
    why = [(title, text) for title, text in why if text]
    if why:
        lines += ["Why these choices:", ""] + [f"- **{title}.** {text.strip()}" for title, text in why] + [""]
    return lines


def _executor(results: dict[str, Any]) -> str:
    if not results["cells_trained"]:
        return "every cell reused (no executor ran)"
    return f"executor {results.get('executor', 'local')} with {results['workers']} worker(s)"


def _epochs(results: dict[str, Any]) -> str:
    """The epochs the cells actually trained (from their histories), as "5 epochs per model"."""
    runs = results.get("epochs_run") or [results["experiment"]["train"]["epochs"]]
    text = " or ".join(str(n) for n in runs)
    return f"{text} epoch{'s' if runs != [1] else ''} per model"


def _timing(results: dict[str, Any]) -> str:
    """This run's wall time, and the wall time the cells took when they were computed (kept when a rerun reuses them)."""
    n_trained, n_reused = len(results["cells_trained"]), len(results["cells_reused"])
    this_run = (
        f"This run: {results['wall_seconds']:.1f} s wall time, {n_trained} cell{'s' if n_trained != 1 else ''} trained, "
        f"{n_reused} reused from an earlier run of this folder."
    )
    original = results.get("compute_wall_seconds")
    invocations = results.get("compute_invocations", 1)
    if n_reused == 0:
        computed = ""
    elif original is None:
        computed = " The reused cells were computed before this folder recorded wall times."
    else:
        over = f" over {invocations} runs" if invocations > 1 else ""
        computed = f" Computing the cells took {original:.1f} s of wall time{over}."
    return f"{this_run}{computed} Training time summed over cells: {results['train_seconds_total']:.1f} s."


def _table1(rows: list[dict[str, Any]]) -> list[str]:
    body = [[_quantity(r["metric"], r["eps"]), _number(r["paper"]), _ours(r), _difference(r)] for r in rows]
    return ["## Table 1: no regularisation (λ1 = λ2 = 0)", ""] + _table(["Quantity", "paper", "ours", "difference"], body) + [""]


def _table2(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Table 2: with regularisation", ""]
    pairs: list[tuple[float, float]] = []
    for r in rows:
        if not any(same(r["l1"], a) and same(r["l2"], b) for a, b in pairs):
            pairs.append((r["l1"], r["l2"]))
    for eps, title in ((None, "clean test set"), (0.10, "FGSM, eps = 0.1"), (0.25, "FGSM, eps = 0.25")):
        body = []
        for l1, l2 in pairs:
            cells = [_lam(l1), _lam(l2)]
            for metric in ("accuracy", "confidence"):
                row = next(
                    r for r in rows if same(r["l1"], l1) and same(r["l2"], l2) and r["metric"] == metric and same(r["eps"], eps)
                )
                cells += [_number(row["paper"]), _ours(row), _difference(row)]
            body.append(cells)
        header = ["λ1", "λ2", "accuracy: paper", "ours", "difference", "confidence: paper", "ours", "difference"]
        lines += [f"**{title}**", ""] + _table(header, body) + [""]
    return lines


def _table3(rows: list[dict[str, Any]], chosen: tuple[float, float]) -> list[str]:
    with_reg = [r for r in rows if same(r["l1"], chosen[0]) and same(r["l2"], chosen[1])]
    without = [r for r in rows if same(r["l1"], 0.0) and same(r["l2"], 0.0)]
    body = []
    for a in with_reg:
        b = next(r for r in without if r["metric"] == a["metric"] and same(r["eps"], a["eps"]))
        body.append([_quantity(a["metric"], a["eps"]), _number(a["paper"]), _ours(a), _difference(a), _number(b["paper"]), _ours(b), _difference(b)])
    header = ["Quantity", "with reg.: paper", "ours", "difference", "without: paper", "ours", "difference"]
    title = f"## Table 3: with regularisation (λ1 = {_lam(chosen[0])}, λ2 = {_lam(chosen[1])}) against without"
    return [title, ""] + _table(header, body) + [""]


def _selection(results: dict[str, Any]) -> list[str]:
    selection = results["selection"]
    ours = selection.get("ours")
    paper = selection["paper"]
    if ours is None:
        return []
    agrees = same(ours["l1"], paper["l1"]) and same(ours["l2"], paper["l2"])
    return [
        "## Choice of λ",
        "",
        f"The paper opts for λ1 = {_lam(paper['l1'])}, λ2 = {_lam(paper['l2'])} by its rule, {selection['rule']}. "
        f"On our numbers the same rule picks λ1 = {_lam(ours['l1'])}, λ2 = {_lam(ours['l2'])} "
        f"(accuracy {ours['accuracy']:.4f}){'; the same pair' if agrees else ''}. Table 3 uses the paper's pair.",
        "",
    ]


def _clip(results: dict[str, Any]) -> list[str]:
    comparison = results.get("clip_comparison")
    if not comparison or not comparison["n_compared"]:
        return []
    mean_abs = comparison["mean_abs_difference"]
    closer = min(mean_abs, key=lambda name: mean_abs[name])
    body = [
        [r["source"], _lam(r["l1"]), _lam(r["l2"]), f"{r['eps']:g}", _number(r["paper"]), _number(r["clipped"]), _number(r["unclipped"])]
        for r in comparison["rows"]
        if r["clipped"] is not None and r["unclipped"] is not None
    ]
    return (
        [
            "## FGSM clipped to [0, 1] or not: which matches the paper",
            "",
            f"The tables above use {comparison['tables_use']} FGSM. Over the {comparison['n_compared']} adversarial "
            f"accuracies the paper reports and this run has, the mean |ours − paper| is "
            f"{mean_abs['clipped']:.4f} clipped and {mean_abs['unclipped']:.4f} unclipped: the paper's numbers are "
            f"closer to {closer} FGSM.",
            "",
        ]
        + _table(["table", "λ1", "λ2", "eps", "paper", "ours, clipped", "ours, unclipped"], body)
        + [""]
    )


def _checks(results: dict[str, Any]) -> list[str]:
    body = []
    for check in results["checks"]:
        value = check["value"]
        shown = f"{value:.4f}" if isinstance(value, float) else ("not run" if value is None else str(value))
        verdict = {True: "yes", False: "**no**", None: "not run"}[check["passed"]]
        body.append([check["check"], check["expected"], shown, verdict])
    passed = sum(1 for c in results["checks"] if c["passed"])
    total = sum(1 for c in results["checks"] if c["passed"] is not None)
    basis = results["experiment"].get("expect", {}).get("basis", "").strip()
    note = (
        f"The ranges are the `{results['profile']}` profile's expectations"
        + (f": {basis}" if basis else ".")
        + " The paper's own numbers stand beside ours in Tables 1-3 above."
    )
    return (
        ["## Shape checks", "", f"{passed} of {total} pass.", "", note, ""]
        + _table(["check", "expected", "ours", "pass"], body)
        + [""]
    )


def _figure(results: dict[str, Any]) -> list[str]:
    figure = results["figure1"]
    body = [[f"{p['eps']:g}", str(p["predicted"]), f"{p['confidence']:.4f}"] for p in figure["panels"]]
    return (
        [
            "## Figure 1",
            "",
            f"The first test-set {figure['label']} (test index {figure['test_index']}) under FGSM, model `{figure['cell']}`.",
            "",
            f"![Figure 1: FGSM images of a {figure['label']}]({results['files']['figure1']})",
            "",
        ]
        + _table(["eps", "predicted", "confidence"], body)
        + [""]
    )


def _curves(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Accuracy and confidence against eps",
        "",
        f"![accuracy and confidence against eps]({results['files']['curves']})",
        "",
    ]
    models = results["models"]
    if not models:
        return lines
    eps_values = [point["eps"] for point in models[0]["curve"]]
    for metric in ("accuracy", "confidence"):
        body = []
        for entry in models:
            body.append([_lam(entry["l1"]), _lam(entry["l2"])] + [f"{p[metric]['mean']:.4f}" for p in entry["curve"]])
        lines += [f"**FGSM {metric}**" + (" (mean over seeds)" if len(models[0]["seeds"]) > 1 else ""), ""]
        lines += _table(["λ1", "λ2"] + [f"{e:g}" for e in eps_values], body) + [""]
    return lines


def _cells(results: dict[str, Any]) -> list[str]:
    body = []
    for cell in results["cells"]:
        last = cell["history"][-1] if cell["history"] else {}
        status = "trained" if cell["cell"] in results["cells_trained"] else "reused"
        body.append([
            f"`{cell['cell']}`", f"`{cell['id']}`" if "id" in cell else "—", status, str(len(cell["history"])),
            f"{cell['train_seconds']:.1f}", _number(last.get("loss")), _number(last.get("accuracy")),
        ])
    header = ["cell", "id (cells/, models/)", "this run", "epochs", "train s", "final train loss", "final train accuracy"]
    return ["## Cells", ""] + _table(header, body) + [""]


def render_markdown(results: dict[str, Any]) -> str:
    """The whole report.md of a reproduce run."""
    tables = results["tables"]
    experiment = results["experiment"]
    chosen = (experiment["chosen_l1"], experiment["chosen_l2"])
    versions = results["environment"]["versions"]
    lines = [
        f"# Reproduction: {PAPER_TITLE}",
        "",
        f"Profile `{results['profile']}`, {_epochs(results)}. {_timing(results)}",
        "",
        "Every table gives the paper's number, ours, and ours minus the paper's.",
        "",
    ]
    lines += _protocol(results)
    lines += _table1(tables["table1"])
    lines += _table2(tables["table2"])
    lines += _table3(tables["table3"], chosen)
    lines += _selection(results)
    lines += _clip(results)
    lines += _checks(results)
    lines += _figure(results)
    lines += _curves(results)
    lines += _cells(results)
    lines += [
        "## Environment",
        "",
        ", ".join(f"{name} {version}" for name, version in versions.items()) + f"; {results['environment']['platform']}.",
        "",
    ]
    return "\n".join(lines)
