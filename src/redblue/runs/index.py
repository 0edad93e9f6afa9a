"""The run index: one SQLite database at the root of a runs folder, a row per run, per cell, per evaluated model.

The run folders are the source of truth (`redblue.runs.folders` reads them); the index is a cache
for listing, filtering and ranking, rebuilt from them at any time (`rebuild`). It lives at
`<root>/index.sqlite` in WAL mode: readers never block the writer, and writers wait for each
other (busy timeout) inside `BEGIN IMMEDIATE` transactions, so concurrent runs lose no rows.

`redblue.runs.ranking` ranks the evaluated models it holds. The engines feed it while they run (the
CLI passes these as callbacks):
    upsert_run(folder)          # when a run starts (after run.json/config.toml) and when it ends
    upsert_cell(folder, record) # after each cells/<id>.json is written
Without a `root`, both use the nearest folder above `folder` that holds index.sqlite, else the
folder's parent (`runs/` for `runs/reproduce-quick`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from redblue.errors import ConfigError, RedblueError
from redblue.runs.folders import (
    CellSummary,
    RunFolderError,
    RunSummary,
    find_run_folders,
    normalize_time,
    signature,
    summarize_cell,
    summarize_run,
)

INDEX_FILE = "index.sqlite"
SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 60.0
ANCESTORS_SEARCHED = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,             -- first 12 hex digits of sha256(path)
    path TEXT NOT NULL UNIQUE,       -- the run folder, relative to the index root (absolute if outside it)
    kind TEXT NOT NULL,              -- reproduce | evaluate | arena | sweep | train | attack
    name TEXT NOT NULL,
    status TEXT NOT NULL,            -- running | done | failed | incomplete
    config_hash TEXT,                -- sha256 of the config as canonical JSON, 16 hex digits
    started TEXT, finished TEXT,     -- ISO-8601 UTC, 2026-11-27T23:36:01Z
    host TEXT, device TEXT, redblue TEXT,
    n_cells INTEGER NOT NULL,
    metrics TEXT NOT NULL,           -- JSON object of key scalars
    inferred INTEGER NOT NULL,       -- 1: no run.json, kind/status/times read from the files
    signature TEXT NOT NULL,         -- file times and sizes when indexed (see runfolders.signature)
    indexed TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_started ON runs (started);
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    config_hash TEXT,
    status TEXT NOT NULL,
    metrics TEXT NOT NULL,
    record_path TEXT NOT NULL,       -- relative to the run folder
    artefact_path TEXT,
    finished TEXT,
    PRIMARY KEY (run_id, id)
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    model TEXT NOT NULL, norm TEXT NOT NULL, eps REAL NOT NULL,
    worst_case_accuracy REAL NOT NULL, clean_accuracy REAL,
    certified_accuracy REAL, certified_method TEXT,
    dataset TEXT, split TEXT, n INTEGER, attacks TEXT,
    PRIMARY KEY (run_id, model, norm, eps)
);
"""
TABLES = ("evaluations", "cells", "runs", "meta")
RUN_COLUMNS = ("id", "path", "kind", "name", "status", "config_hash", "started", "finished", "host", "device",
               "redblue", "n_cells", "metrics", "inferred", "signature", "indexed")


class RunIndexError(RedblueError):
    """The index database cannot be opened or used, or a run is not found in it."""


@dataclass(frozen=True)
class IndexedRun:
    """One row of the runs table; `cells` filled only by `find_run`."""

    id: str
    path: str
    kind: str
    name: str
    status: str
    config_hash: str | None
    started: str | None
    finished: str | None
    host: str | None
    device: str | None
    redblue: str | None
    n_cells: int
    metrics: dict[str, Any]
    inferred: bool
    cells: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["cells"] = list(self.cells)
        return data


@dataclass(frozen=True)
class SyncReport:
    """What `sync` or `rebuild` changed, and the folders it could not read (path, reason)."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)


# --- the database -------------------------------------------------------------------------------


def index_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / INDEX_FILE


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unusable(path: Path, exc: sqlite3.Error) -> RunIndexError:
    return RunIndexError(
        f"{path} is not a usable run index ({exc}); the run folders are the source of truth: "
        "run `redblue runs --rebuild` to recreate it"
    )


def connect(root: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating if needed) the index under `root`: WAL, a busy timeout, foreign keys, the schema checked."""
    root = Path(root)
    if not root.is_dir():
        raise RunIndexError(f"no runs folder at {root}; give the folder that holds the run folders (--root)")
    path = index_path(root)
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return _open(path)
        except sqlite3.OperationalError as exc:
            # Two processes creating the index at once: switching a new database to WAL takes an
            # exclusive lock for which SQLite does not call its busy handler; wait and open again.
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise _unusable(path, exc) from None
            time.sleep(0.05)
        except sqlite3.Error as exc:
            raise _unusable(path, exc) from None


def _open(path: Path) -> sqlite3.Connection:
    """One attempt at `connect`; raises sqlite3.Error."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise sqlite3.OperationalError("the file system does not support WAL mode")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")  # safe in WAL mode: a crash loses at most the last commit
        with _transaction(conn):
            for statement in SCHEMA.split(";"):  # not executescript: it would commit
                if statement.strip():
                    conn.execute(statement)
            stored = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if stored is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif stored[0] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {stored[0]}, this redblue reads {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE: take the write lock up front (waiting on others), so no upgrade can deadlock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def find_root(folder: str | os.PathLike[str]) -> Path:
    """The index root for a run folder: the nearest ancestor holding index.sqlite, else its parent."""
    folder = Path(folder).resolve()
    for ancestor in list(folder.parents)[:ANCESTORS_SEARCHED]:
        if index_path(ancestor).is_file():
            return ancestor
    return folder.parent


def relative_path(folder: Path, root: Path) -> str:
    folder, root = folder.resolve(), root.resolve()
    return folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder.as_posix()


def run_id(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:12]


# --- writing ------------------------------------------------------------------------------------


def _write_cell(conn: sqlite3.Connection, rid: str, cell: CellSummary) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO cells (run_id, id, config_hash, status, metrics, record_path, artefact_path, finished)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (rid, cell.id, cell.config_hash, cell.status, json.dumps(cell.metrics, default=str), cell.record_path,
         cell.artefact_path, cell.finished),
    )


def _write_run(conn: sqlite3.Connection, summary: RunSummary, path: str) -> str:
    """Replace everything the index holds about one run by `summary`."""
    rid = run_id(path)
    conn.execute("DELETE FROM runs WHERE id = ?", (rid,))  # cascades to its cells and evaluations
    conn.execute(
        f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
        (rid, path, summary.kind, summary.name, summary.status, summary.config_hash, summary.started, summary.finished,
         summary.host, summary.device, summary.redblue, len(summary.cells), json.dumps(summary.metrics, default=str),
         int(summary.inferred), summary.signature, _now()),
    )
    for cell in summary.cells:
        _write_cell(conn, rid, cell)
    for row in summary.evaluations:
        conn.execute(
            "INSERT OR REPLACE INTO evaluations (run_id, model, norm, eps, worst_case_accuracy, clean_accuracy,"
            " certified_accuracy, certified_method, dataset, split, n, attacks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rid, row.model, row.norm, row.eps, row.worst_case_accuracy, row.clean_accuracy, row.certified_accuracy,
             row.certified_method, row.dataset, row.split, row.n, row.attacks),
        )
    return rid


def _summarize(folder: Path) -> RunSummary:
    try:
        return summarize_run(folder)
    except RunFolderError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a results file of an unexpected shape
        raise RunFolderError(f"{folder}: its files do not have the shape redblue writes ({type(exc).__name__}: {exc})") from None


def upsert_run(folder: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> str:
    """Read `folder` and replace its rows (run, cells, evaluations) in the index; returns the run id.

    Call it when a run starts (after writing run.json and config.toml) and when it ends (after
    results.json and run.json's final status). Raises RunFolderError for an unreadable folder.
    """
    folder = Path(folder)
    root = Path(root) if root is not None else find_root(folder)
    summary = _summarize(folder)
    with closing(connect(root)) as conn, _transaction(conn):
        return _write_run(conn, summary, relative_path(folder, root))


def upsert_cell(folder: str | os.PathLike[str], record: dict[str, Any], *, root: str | os.PathLike[str] | None = None) -> str:
    """Add or replace one finished cell (its record as written to cells/<id>.json); returns the cell id.

    Cheap: reads only the record (and the run folder when its run is not indexed yet).
    """
    folder = Path(folder)
    root = Path(root) if root is not None else find_root(folder)
    cell = summarize_cell(folder, record)
    path = relative_path(folder, root)
    rid = run_id(path)
    with closing(connect(root)) as conn:
        known = conn.execute("SELECT 1 FROM runs WHERE id = ?", (rid,)).fetchone() is not None
        summary = None if known else _summarize(folder)
        with _transaction(conn):
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (rid,)).fetchone() is None:
                _write_run(conn, summary or _summarize(folder), path)
            _write_cell(conn, rid, cell)
            conn.execute("UPDATE runs SET n_cells = (SELECT COUNT(*) FROM cells WHERE run_id = ?) WHERE id = ?", (rid, rid))
    return cell.id


def sync(root: str | os.PathLike[str]) -> SyncReport:
    """Bring the index in line with the folders under `root`: read new or changed folders, drop vanished ones."""
    root = Path(root)
    with closing(connect(root)) as conn:
        stored = dict(conn.execute("SELECT path, signature FROM runs").fetchall())
        current = {relative_path(folder, root): folder for folder in find_run_folders(root)}
        changed, skipped = {}, []
        for path, folder in current.items():
            if stored.get(path) != signature(folder):
                try:
                    changed[path] = _summarize(folder)
                except RunFolderError as exc:
                    skipped.append((path, str(exc)))
        gone = [path for path in stored if path not in current and not Path(path).is_absolute()]
        if changed or gone:
            with _transaction(conn):
                for path, summary in changed.items():
                    _write_run(conn, summary, path)
                for path in gone:
                    conn.execute("DELETE FROM runs WHERE path = ?", (path,))
    added = sum(1 for path in changed if path not in stored)
    return SyncReport(
        added=added,
        updated=len(changed) - added,
        removed=len(gone),
        unchanged=len(current) - len(changed) - len(skipped),
        skipped=tuple(skipped),
    )


def rebuild(root: str | os.PathLike[str]) -> SyncReport:
    """Recreate the index from the run folders under `root` (a deleted or corrupt database included)."""
    root = Path(root)
    if not root.is_dir():
        raise RunIndexError(f"no runs folder at {root}; give the folder that holds the run folders (--root)")
    try:
        conn = connect(root)
    except RunIndexError:  # unreadable: the folders hold everything it held
        for suffix in ("", "-wal", "-shm"):
            Path(f"{index_path(root)}{suffix}").unlink(missing_ok=True)
        conn = connect(root)
    with closing(conn), _transaction(conn):
        for table in TABLES[:-1]:
            conn.execute(f"DELETE FROM {table}")
    report = sync(root)
    return SyncReport(added=report.added, skipped=report.skipped)


# --- reading ------------------------------------------------------------------------------------


def _run_from_row(row: sqlite3.Row, cells: Sequence[dict[str, Any]] = ()) -> IndexedRun:
    return IndexedRun(
        id=row["id"], path=row["path"], kind=row["kind"], name=row["name"], status=row["status"],
        config_hash=row["config_hash"], started=row["started"], finished=row["finished"], host=row["host"],
        device=row["device"], redblue=row["redblue"], n_cells=row["n_cells"], metrics=json.loads(row["metrics"]),
        inferred=bool(row["inferred"]), cells=tuple(cells),
    )


def reader(root: Path) -> sqlite3.Connection:
    """A connection to the index under `root` whose rows are sqlite3.Row (columns by name)."""
    conn = connect(root)
    conn.row_factory = sqlite3.Row
    return conn


def parse_since(text: str) -> str:
    """A --since value (2026-11-01, or a time with an offset) as the index's UTC text, for comparison."""
    normalized = normalize_time(text)
    if normalized is None:
        raise ConfigError(f"--since must be a date or time such as 2026-11-01 or 2026-11-01T12:00Z, got {text!r}")
    return normalized


def list_runs(
    root: str | os.PathLike[str], *, kind: str | None = None, since: str | None = None, status: str | None = None
) -> list[IndexedRun]:
    """Indexed runs, newest first; `since` is an ISO date or time (runs started at or after it)."""
    clauses, params = [], []
    for column, value in (("kind", kind), ("status", status)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("started >= ?")
        params.append(parse_since(since))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with closing(reader(Path(root))) as conn:
        rows = conn.execute(f"SELECT * FROM runs {where} ORDER BY started DESC, path", params).fetchall()
    return [_run_from_row(row) for row in rows]


def find_run(root: str | os.PathLike[str], ref: str) -> IndexedRun:
    """The run whose id, path or name is `ref`, else the one whose id, path or name starts with it; with its cells."""
    ref = ref.rstrip("/")
    pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    with closing(reader(Path(root))) as conn:
        rows = conn.execute("SELECT * FROM runs WHERE ? IN (id, path, name)", (ref,)).fetchall()
        if not rows:
            rows = conn.execute(
                "SELECT * FROM runs WHERE id LIKE ?1 ESCAPE '\\' OR path LIKE ?1 ESCAPE '\\' OR name LIKE ?1 ESCAPE '\\'"
                " ORDER BY path", (pattern,)
            ).fetchall()
        if not rows:
            raise RunIndexError(f"no run {ref!r} in {index_path(root)}; list them with `redblue runs`")
        if len(rows) > 1:
            shown = ", ".join(f"{r['id']} ({r['path']})" for r in rows[:5])
            raise RunIndexError(f"{ref!r} matches {len(rows)} runs: {shown}; give more of the id or the whole name")
        cells = conn.execute(
            "SELECT id, config_hash, status, metrics, record_path, artefact_path, finished FROM cells"
            " WHERE run_id = ? ORDER BY id", (rows[0]["id"],)
        ).fetchall()
    return _run_from_row(rows[0], [{**dict(c), "metrics": json.loads(c["metrics"])} for c in cells])
