"""`redblue runs` (list, filter, show, rebuild the run index), `redblue leaderboard`, `redblue report RUN_DIR`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from redblue.cli.app import DataDirOption, JsonOption, app, print_json, set_interrupt_message
from redblue.errors import ConfigError, require_choice
from redblue.report.leaderboard import (
    LEADERBOARD_HEADER,
    RUN_HEADER,
    aligned,
    leaderboard_csv,
    leaderboard_json,
    leaderboard_markdown,
    leaderboard_rows,
    leaderboard_title,
    run_row,
)
from redblue.runs.folders import KINDS, STATUSES
from redblue.runs.index import SyncReport, find_run, index_path, list_runs, parse_since, rebuild, sync
from redblue.runs.ranking import leaderboard

RootOption = Annotated[
    Path, typer.Option("--root", help="The runs folder; its index is ROOT/index.sqlite, rebuilt from the run folders in it.")
]
DEFAULT_ROOT = Path("runs")
FORMATS = ("table", "md", "csv")

runs_app = typer.Typer(help="The run index: list and filter past runs, show one, rebuild the index from the folders.")
app.add_typer(runs_app, name="runs")


def _warn_skipped(report: SyncReport) -> None:
    for path, reason in report.skipped:
        sys.stderr.write(f"warning: skipped {path}: {reason}\n")


@runs_app.callback(invoke_without_command=True)
def runs_command(
    ctx: typer.Context,
    root: RootOption = DEFAULT_ROOT,
    kind: Annotated[Optional[str], typer.Option("--kind", help=f"Only runs of this kind: {', '.join(KINDS)}.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only runs started at or after this date or time (UTC), e.g. 2026-11-01.")] = None,
    status: Annotated[Optional[str], typer.Option("--status", help=f"Only runs with this status: {', '.join(STATUSES)}.")] = None,
    rebuild_index: Annotated[bool, typer.Option("--rebuild", help="Recreate the index from the run folders first (e.g. after deleting it).")] = False,
    as_json: JsonOption = False,
) -> None:
    """List the runs under ROOT, newest first (the index is brought up to date with the folders first)."""
    if ctx.invoked_subcommand is not None:
        return
    if kind is not None:
        require_choice("--kind", kind, KINDS)
    if status is not None:
        require_choice("--status", status, STATUSES)
    if since is not None:
        parse_since(since)
    set_interrupt_message("interrupted; the index is unchanged or fully updated (each update is one transaction)")
    report = rebuild(root) if rebuild_index else sync(root)
    _warn_skipped(report)
    runs = list_runs(root, kind=kind, since=since, status=status)
    if as_json:
        print_json({
            "root": str(root), "index": str(index_path(root)), "rebuilt": rebuild_index, "sync": dataclasses.asdict(report),
            "runs": [{k: v for k, v in run.to_dict().items() if k != "cells"} for run in runs],
        })
        return
    if rebuild_index:
        typer.echo(f"rebuilt {index_path(root)} from {report.added} run folders" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    if not runs:
        typer.echo(f"no runs in {root}" + (" match the filters" if kind or since or status else ""))
        return
    typer.echo(aligned([list(RUN_HEADER), *(run_row(run) for run in runs)]))


@runs_app.command("show")
def show_command(
    ref: Annotated[str, typer.Argument(metavar="ID", help="A run id (a prefix is enough), or its folder or name.")],
    root: RootOption = DEFAULT_ROOT,
    as_json: JsonOption = False,
) -> None:
    """Show one run: where it is, its status, times, config hash, key metrics and cells."""
    _warn_skipped(sync(root))
    run = find_run(root, ref)
    folder = Path(run.path) if Path(run.path).is_absolute() else root / run.path
    if as_json:
        print_json({**run.to_dict(), "folder": str(folder)})
        return
    console = Console()
    details = Table.grid(padding=(0, 2))
    for key, value in (("id", run.id), ("kind", run.kind), ("name", run.name), ("folder", str(folder)), ("status", run.status),
                       ("started", run.started), ("finished", run.finished), ("host", run.host), ("device", run.device),
                       ("redblue", run.redblue), ("config hash", run.config_hash),
                       ("read from", "the files (no run.json)" if run.inferred else "run.json")):
        details.add_row(f"[bold]{key}[/bold]", "—" if value is None else str(value))
    for key, value in run.metrics.items():
        details.add_row(f"[bold]{key}[/bold]", f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(details)
    if run.cells:
        cells = Table("cell", "status", "config hash", "finished", "metrics", title=f"{len(run.cells)} cell(s)")
        for cell in run.cells:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(cell["metrics"].items())[:4])
            cells.add_row(cell["id"], cell["status"], cell["config_hash"] or "—", cell["finished"] or "—", shown)
        console.print(cells)


@app.command("leaderboard")
def leaderboard_command(
    root: RootOption = DEFAULT_ROOT,
    eps: Annotated[Optional[float], typer.Option("--eps", help="Rank at this eps. Default: the eps most models were evaluated at.")] = None,
    norm: Annotated[Optional[str], typer.Option("--norm", help="linf or l2. Default: linf when present.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, md (Markdown) or csv.")] = "table",
    as_json: JsonOption = False,
) -> None:
    """Rank every evaluated model in the index by worst-case robust accuracy, with certified and clean beside it."""
    require_choice("--format", output_format, FORMATS)
    if eps is not None and not 0 <= eps:
        raise ConfigError(f"--eps must be >= 0, got {eps}")
    _warn_skipped(sync(root))
    board = leaderboard(root, eps=eps, norm=norm)
    if as_json:
        print_json(leaderboard_json(board))
    elif output_format == "md":
        typer.echo(leaderboard_markdown(board), nl=False)
    elif output_format == "csv":
        typer.echo(leaderboard_csv(board), nl=False)
    else:
        table = Table(*LEADERBOARD_HEADER, title=leaderboard_title(board), box=box.SIMPLE_HEAD)
        for row in leaderboard_rows(board):
            table.add_row(*row)
        Console().print(table)


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run folder (one that holds results.json).")],
    samples: Annotated[
        Optional[str], typer.Option("--samples", help="Samples the image grid shows, as positions in the saved images, e.g. 0,3,7. Default: the first fooled ones.")
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Regenerate report.md and report.html of a run from its results.json (nothing is recomputed)."""
    from redblue.report.pages import PageOptions, write_reports

    chosen = None
    if samples is not None:
        try:
            chosen = tuple(int(part) for part in samples.split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"--samples must be comma-separated integers such as 0,3,7, got {samples!r}") from None
    set_interrupt_message(f"interrupted; {run_dir}/report.md and report.html are each either the old or the new file")
    paths = write_reports(run_dir, options=PageOptions(samples=chosen, data_dir=str(data_dir) if data_dir else None))
    if as_json:
        print_json({"files": {k: str(v) for k, v in paths.items()}})
        return
    typer.echo(f"wrote {paths['markdown']} and {paths['html']}")
