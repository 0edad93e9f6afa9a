"""After a verb has written a run folder: render its reports and record it in the run index.

The run folder is the source of truth and is complete before this runs; rendering the reports and
updating `runs/index.sqlite` only read it. A failure here (an index on a read-only disk, a report
that cannot render) is reported on one stderr line and loses nothing: `redblue report RUN_DIR`
and `redblue runs --rebuild` redo both from the folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from redblue.errors import RedblueError
from redblue.runs.index import upsert_cell, upsert_run


def index_run(folder: str | os.PathLike[str]) -> str | None:
    """Add or refresh the run's rows in the index of its runs folder; None (and a warning) when that fails."""
    try:
        return upsert_run(folder)
    except (RedblueError, OSError) as exc:
        typer.echo(f"warning: {folder} was not added to the run index ({exc}); `redblue runs --rebuild` adds it later", err=True)
        return None


@contextmanager
def indexed_if_it_fails(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Run the block; if it raises (an error, Ctrl-C), index the run as it stands (failed, or running when
    killed) once its run.json exists, then let the exception go on."""
    try:
        yield
    except BaseException:
        if (Path(folder) / "run.json").is_file():
            index_run(folder)
        raise


def index_cell(folder: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Record one finished cell in the index as soon as it lands; a failure only warns (the folder holds it)."""
    try:
        upsert_cell(folder, record)
    except (RedblueError, OSError) as exc:
        typer.echo(f"warning: cell {record.get('id')} of {folder} was not indexed ({exc})", err=True)


def publish_run(folder: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Write report.md and report.html from the folder's results.json, then index the run; returns the report paths.

    A report that fails to render is an error (the run's results are still in the folder); an index
    that cannot be written only warns.
    """
    from redblue.report.pages import PageOptions, write_reports  # matplotlib and the page builders: only here

    paths = write_reports(folder, options=PageOptions(data_dir=str(data_dir) if data_dir is not None else None))
    index_run(folder)
    return paths
