"""The command-line side of a sweep (reproduce, arena): its options, their checks, and its progress on
stderr: a live table of the cells in flight on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from redblue.errors import ConfigError
from redblue.sweep import EXECUTORS, SweepProgress

Describe = Callable[[dict[str, Any]], str]  # a finished cell's record -> its summary ("clean accuracy 0.98 ...")

ExecutorOption = Annotated[
    str,
    typer.Option("--executor", help="Where cells run: local (processes on this machine) or ray (needs redblue[ray]; "
                 "attaches to $RAY_ADDRESS if set, else starts a local Ray)."),
]
WorkersOption = Annotated[
    Optional[int],
    typer.Option("--workers", help="Tasks in flight at once (one torch thread each, or reproduce's --threads; reproduce trains a batched grid of "
                 "models as one task). Default: the cores (local), the cluster's CPUs (ray), the GPUs with --device cuda."),
]
ResumeOption = Annotated[
    bool,
    typer.Option("--resume", help="Continue the run in --out (refused if it holds none); rerunning the same command "
                 "resumes too."),
]


def check_sweep_options(executor: str, workers: int | None) -> None:
    """One error line for a bad --executor or --workers, and for --executor ray without Ray, before any work."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown --executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if executor == "ray":
        from redblue.sweep.ray_executor import import_ray

        import_ray()


def _elapsed(since: float) -> str:
    seconds = max(0.0, time.time() - since)
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def _counts(progress: SweepProgress) -> str:
    reused = f" ({progress.reused} reused)" if progress.reused else ""
    return (
        f"{progress.done}/{progress.total} cells done{reused}, {len(progress.running)} running, {progress.queued} queued"
    )


class PlainProgress:
    """One line per event, for logs: reused cells summed up once, then each start and each finish."""

    def __init__(self, describe: Describe, *, stream: Any = None) -> None:
        self._describe = describe
        self._stream = stream or sys.stderr
        self._reused = 0

    def __call__(self, progress: SweepProgress) -> None:
        if progress.event == "reused":
            self._reused = progress.reused
            return
        if self._reused:
            self._write(f"{self._reused} of {progress.total} cells found done in the run folder; reusing them")
            self._reused = 0
        if progress.event == "started":
            self._write(f"started {progress.cell.label} ({_counts(progress)})")
        else:
            assert progress.record is not None
            self._write(f"[{progress.done}/{progress.total}] {progress.cell.label}: {self._describe(progress.record)}")

    def close(self) -> None:
        if self._reused:
            self._write(f"all {self._reused} cells found done in the run folder; reusing them")
            self._reused = 0

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class LiveProgress:
    """A rich live display on a terminal: the counts and a table of the cells in flight with their time so far;
    each finished cell's summary line is printed above it and stays."""

    def __init__(self, describe: Describe, *, title: str, console: Console | None = None) -> None:
        self._describe = describe
        self._title = title
        self._state: SweepProgress | None = None
        self._console = console or Console(stderr=True)
        self._live = Live(console=self._console, get_renderable=self._render, refresh_per_second=2, transient=True)
        self._live.start()

    def __call__(self, progress: SweepProgress) -> None:
        self._state = progress
        if progress.event == "finished":
            assert progress.record is not None
            line = f"[{progress.done}/{progress.total}] {progress.cell.label}: {self._describe(progress.record)}"
            self._console.print(line, markup=False)

    def _render(self) -> Group:
        state = self._state
        if state is None:
            return Group(Text(f"{self._title}: looking for finished cells..."))
        table = Table(box=None, show_header=bool(state.running), pad_edge=False)
        table.add_column("in flight")
        table.add_column("for", justify="right")
        for running in state.running:
            table.add_row(running.label, _elapsed(running.since))
        return Group(Text(f"{self._title}: {_counts(state)}"), table)

    def close(self) -> None:
        self._live.stop()


def sweep_progress(describe: Describe, *, title: str, enabled: bool) -> PlainProgress | LiveProgress | None:
    """The display for a sweep: None when disabled (--json), live on a terminal, plain lines otherwise."""
    if not enabled:
        return None
    if sys.stdout.isatty() and sys.stderr.isatty():
        return LiveProgress(describe, title=title)
    return PlainProgress(describe)
