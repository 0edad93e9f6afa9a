"""How the CLI shows a sweep's progress: a live table of the cells in flight on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import time

from rich.console import Console

from redblue.cli.sweep_progress import LiveProgress, PlainProgress
from redblue.sweep import Cell, Running, SweepProgress

CELLS = [Cell({"x": i}, f"x-{i}") for i in range(4)]


def _describe(record: dict) -> str:
    return f"square {record['metrics']['square']:g}"


def _events(now: float) -> list[SweepProgress]:
    """Two reused cells, then x-2 and x-3 in flight on two workers, x-3 finishing first."""
    r2, r3 = Running("id2", "x-2", now - 75), Running("id3", "x-3", now - 3)
    record = {"metrics": {"square": 9.0}}
    return [
        SweepProgress("reused", CELLS[0], record, 4, 3, (), 0, 1),
        SweepProgress("reused", CELLS[1], record, 4, 2, (), 0, 2),
        SweepProgress("started", CELLS[2], None, 4, 1, (r2,), 0, 2),
        SweepProgress("started", CELLS[3], None, 4, 0, (r2, r3), 0, 2),
        SweepProgress("finished", CELLS[3], record, 4, 0, (r2,), 1, 2),
    ]


def test_plain_lines_say_what_was_reused_started_and_finished():
    stream = io.StringIO()
    progress = PlainProgress(_describe, stream=stream)
    for event in _events(time.time()):
        progress(event)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "2 of 4 cells found done in the run folder; reusing them",
        "started x-2 (2/4 cells done (2 reused), 1 running, 1 queued)",
        "started x-3 (2/4 cells done (2 reused), 2 running, 0 queued)",
        "[3/4] x-3: square 9",
    ]


def test_the_live_table_shows_each_cell_in_flight_and_for_how_long():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=80, color_system=None)
    progress = LiveProgress(_describe, title="demo", console=console)
    events = _events(time.time())
    try:
        for event in events[:4]:
            progress(event)
        table = _text(progress._render(), console)
        assert "demo: 2/4 cells done (2 reused), 2 running, 0 queued" in table
        rows = [line.split() for line in table.splitlines() if line.startswith("x-")]
        assert [(label, unit) for label, _, unit in rows] == [("x-2", "s"), ("x-3", "s")]
        assert 75 <= int(rows[0][1]) <= 85 and 3 <= int(rows[1][1]) <= 13  # seconds in flight (slack for a slow machine)
        progress(events[4])
        assert "x-3" not in _text(progress._render(), console) and "[3/4] x-3: square 9" in stream.getvalue()
    finally:
        progress.close()


def _text(renderable, console: Console) -> str:
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()
