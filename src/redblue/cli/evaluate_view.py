"""What `redblue attack` and `redblue evaluate` print: result tables, sanity findings, and a progress line.

The progress line is drawn on stderr, and only when both stdout and stderr are terminals and the
verb runs without --json: logs, pipes and machine-readable output never contain it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from redblue.evaluate import Evaluation, ProgressCallback
from redblue.evaluate import Progress as EvaluationProgress
from redblue.evaluate.single import AttackOutcome

SEVERITY_STYLE = {"ok": ("ok", "green"), "warning": ("warning", "yellow"), "fail": ("FAIL", "bold red")}


def interactive() -> bool:
    """A person is watching: stdout and stderr are both terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def progress_line(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A callback that draws the evaluation's progress on stderr while the block runs (None when not enabled).

    One line: [eps i/of, row j/of] the attack, its norm and eps, a bar over the samples it attacks,
    samples still robust at that eps, and the time left for the row. It disappears when the block ends.
    """
    if not enabled:
        yield None
        return
    display = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TextColumn("{task.fields[robust]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True, force_terminal=True),
        transient=True,
    )
    task = display.add_task("starting", total=None, robust="")

    def show(event: EvaluationProgress) -> None:
        if event.stage == "checks":
            display.update(task, description="sanity checks", total=None, completed=0, robust="", refresh=True)
            return
        where = f"[{event.unit}/{event.units} {event.row}/{event.rows}] {event.attack} {event.norm} eps={event.eps:g}"
        robust = f"robust {event.robust}/{event.n}" + (" (reused)" if event.reused else "")
        # drawn at once when a row starts or ends; in between, rich redraws ten times a second
        edge = event.done in (0, event.total)
        display.update(task, description=where, total=max(event.total, 1), completed=event.done, robust=robust, refresh=edge)

    with display:
        yield show


@contextlib.contextmanager
def batch_progress_line(enabled: bool, *, description: str, total: int) -> Iterator[Any]:
    """`on_batch(done, fooled)` for one attack over `total` samples, drawn like `progress_line`."""
    if not enabled:
        yield None
        return
    display = Progress(
        TextColumn(description), BarColumn(bar_width=16), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True, force_terminal=True), transient=True,
    )
    task = display.add_task(description, total=max(total, 1))
    with display:
        yield lambda done, fooled: display.update(task, completed=done)


def _cell(accuracy: float, confidence: float | None = None) -> str:
    return f"{accuracy:.2%}" + (f" · {confidence:.2f}" if confidence is not None else "")


def print_evaluation(console: Console, result: Evaluation, *, title: str) -> None:
    """One table per norm (rows: clean, each attack, worst case, certified, the interval), the stages, the findings."""
    cumulative = result.mode == "worst-case"
    for norm in dict.fromkeys(r.norm for r in result.results):
        here = [r for r in result.results if r.norm == norm]
        table = Table(
            "attack", *[f"eps={r.eps:g}" for r in here],
            title=f"{title}: robust accuracy · confidence ({norm}, {result.mode} mode)",
            caption=(
                "attack rows are cumulative: each attack ran only on the samples every row above left robust"
                if cumulative
                else "each attack ran on every sample; rows are robust accuracy (correct clean and attacked); worst case = per-sample minimum"
            ),
        )
        table.add_row("clean", *[_cell(result.clean_accuracy, result.clean_confidence)] * len(here))
        for i, first in enumerate(here[0].attacks):
            name = ("+ " if cumulative and i else "") + first.label
            table.add_row(name, *[_cell(r.attacks[i].accuracy, r.attacks[i].confidence) for r in here])
        table.add_row("[bold]worst case[/bold]", *[f"[bold]{_cell(r.worst_case_accuracy, r.worst_case_confidence)}[/bold]" for r in here])
        if result.certify_method is not None:
            table.add_row(
                f"certified ({result.certify_method})",
                *[_cell(r.certified_accuracy) if r.certified_accuracy is not None else "—" for r in here],
            )
            table.add_row(
                "robust accuracy in",
                *[f"[{r.interval[0]:.2%}, {r.interval[1]:.2%}]" if r.interval else "—" for r in here],
            )
        console.print(table)
        notes = sorted({r.certified_note for r in here if r.certified_note})
        for note in notes:
            console.print(f"certified bound not available: {note}")
    stages = Table("stage", "eps", "attacked", "fooled", "invalid", "seconds", title="attack stages")
    for r in result.results:
        for a in r.attacks:
            stages.add_row(a.label, f"{r.eps:g}", str(a.n_attacked), str(a.n_fooled), str(a.n_invalid), f"{a.seconds:.2f}")
    console.print(stages)
    console.print(f"attacks {result.seconds_attacks:.1f} s, sanity checks {result.seconds_checks:.1f} s")
    print_findings(console, [dataclasses.asdict(f) for f in result.findings])


def print_attack(console: Console, outcome: AttackOutcome, *, dataset: str, split: str) -> None:
    """Clean against adversarial accuracy and confidence, the perturbation sizes, the findings."""
    title = f"{outcome.label} at {outcome.entry.norm} eps={outcome.params.eps:g} on {outcome.n} {dataset} {split} images"
    table = Table("", "accuracy", "confidence", title=title)
    table.add_row("clean", f"{outcome.clean_accuracy:.2%}", f"{outcome.clean_confidence:.3f}")
    table.add_row("adversarial", f"{outcome.adversarial_accuracy:.2%}", f"{outcome.adversarial_confidence:.3f}")
    table.add_row("robust (correct both)", f"{outcome.robust_accuracy:.2%}", "")
    console.print(table)
    pert = outcome.perturbation
    console.print(
        f"perturbation: L-inf mean {pert['linf_mean']:.4f} max {pert['linf_max']:.4f}; "
        f"L2 mean {pert['l2_mean']:.3f} max {pert['l2_max']:.3f}"
    )
    print_findings(console, [dataclasses.asdict(f) for f in outcome.findings])


def print_findings(console: Console, findings: list[dict[str, str]]) -> None:
    if not findings:
        return
    console.print("[bold]sanity findings[/bold]")
    for f in sorted(findings, key=lambda f: ("fail", "warning", "ok").index(f["severity"])):
        word, style = SEVERITY_STYLE[f["severity"]]
        console.print(f"  [{style}]{word:>7}[/{style}] {f['check']}: {f['message']}", highlight=False)
