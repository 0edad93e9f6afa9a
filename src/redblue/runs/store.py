"""Run folders: the exact config a run ran, what ran it (run.json), one "done" record per finished cell.

A run folder holds `run.json` (kind, status, start and end times, host, device, one entry per
invocation), `config.toml` (the whole configuration, written before any work starts),
`environment.json` (library versions, device, seeds) and, per cell, its artefacts (e.g.
`models/<cell-id>.safetensors`) and `cells/<cell-id>.json`. Every file is written to a temporary
name and renamed into place, and a cell's JSON is written after its artefacts and lists them, so
the JSON is the cell's "done" marker: a killed run leaves whole files only, and a rerun redoes
just the missing cells.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import tomli_w

from redblue.config import atomic_write_bytes, read_toml, tomllib
from redblue.errors import ConfigError

CONFIG_FILE = "config.toml"
ENVIRONMENT_FILE = "environment.json"
RUN_FILE = "run.json"
RUN_STATUSES = ("running", "done", "failed")
LIBRARIES = ("redblue", "torch", "numpy", "safetensors", "matplotlib", "typer", "rich")
CELL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+")


def utc_now() -> str:
    """The current time as ISO-8601 UTC to the second, e.g. 2026-11-28T09:30:00Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries a result depends on."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment(**extra: Any) -> dict[str, Any]:
    """What a run records beside its results: versions, platform, CPU count, plus `extra` (device, seeds...)."""
    return {
        "versions": library_versions(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        **extra,
    }


def normalized(data: dict[str, Any]) -> dict[str, Any]:
    """`data` as it reads back from TOML (tuples become lists, None values dropped), for comparisons."""
    return tomllib.loads(tomli_w.dumps(_drop_none(data)))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (a key missing on one side differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in a or key not in b:
                keys.append(name)
            else:
                keys.extend(differing_keys(a[key], b[key], name))
        return keys
    return [] if a == b else [prefix or "(root)"]


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=1, default=str) + "\n").encode()


class RunFolder:
    """One run's folder on disk: config check, atomic writes, and the per-cell done records."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    def artefact_path(self, folder: str, cell: str, suffix: str) -> Path:
        """Where one cell's artefact lies: `<folder>/<cell-id><suffix>`, e.g. models/3f2a....safetensors."""
        return self.root / _check_name(folder) / f"{_check_name(cell)}{_check_suffix(suffix)}"

    def model_path(self, cell: str) -> Path:
        return self.artefact_path("models", cell, ".safetensors")

    def cell_path(self, cell: str) -> Path:
        return self.cells_dir / f"{_check_name(cell)}.json"

    def check_writable(self) -> None:
        """Create the folder and prove a file can be written there, or fail with one line."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".write-test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot write to {self.root} ({reason}); choose a writable --out folder") from None

    def prepare(self, config: dict[str, Any], *, force: bool = False) -> bool:
        """Record `config` as this folder's config; return True when the folder already held it.

        A folder that holds a different config is an error unless `force`, in which case the new
        config replaces it (cells whose own stored config still matches are then reused).
        """
        self.check_writable()
        wanted = normalized(config)
        path = self.root / CONFIG_FILE
        if path.exists():
            try:
                stored = read_toml(path)
            except ConfigError:
                stored = {"unreadable": True}
            if stored == wanted:
                return True
            if not force:
                keys = differing_keys(stored, wanted)
                shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
                raise ConfigError(
                    f"{self.root} holds a run with a different config (differs in: {shown}); "
                    "use another --out, delete it, or pass --force to recompute what changed"
                )
        atomic_write_bytes(path, tomli_w.dumps(wanted).encode())
        return False

    def read_cell(self, cell: str) -> dict[str, Any] | None:
        """The done record of `cell`, or None when the cell is unfinished.

        Unfinished: its JSON is missing or unreadable, or an artefact the record lists under
        "artefacts" (paths relative to the folder) is missing.
        """
        path = self.cell_path(cell)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict):
            return None
        artefacts = record.get("artefacts", [])
        if not isinstance(artefacts, list) or not all(self._is_artefact(name) for name in artefacts):
            return None
        return record

    def _is_artefact(self, name: Any) -> bool:
        if not isinstance(name, str) or name.startswith("/") or ".." in Path(name).parts:
            return False
        return (self.root / name).is_file()

    def write_artefact(self, path: Path, data: bytes) -> str:
        """Write one artefact atomically; returns its path relative to the folder, as a cell record lists it."""
        atomic_write_bytes(path, data)
        return path.relative_to(self.root).as_posix()

    def write_cell(self, cell: str, record: dict[str, Any]) -> None:
        """Mark `cell` done with its record; write the artefacts its record lists before calling this."""
        atomic_write_bytes(self.cell_path(cell), json_bytes(record))

    def read_run(self) -> dict[str, Any] | None:
        """run.json, or None when the folder has none (or an unreadable one)."""
        try:
            run = json.loads((self.root / RUN_FILE).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return run if isinstance(run, dict) else None

    def write_json(self, name: str, data: Any) -> Path:
        path = self.root / name
        atomic_write_bytes(path, json_bytes(data))
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        atomic_write_bytes(path, text.encode())
        return path


class RunJournal:
    """run.json of one run folder, kept current while a verb runs in it.

    run.json = {"kind", "name", "status" ("running" | "done" | "failed"), "started" (the folder's
    first invocation), "finished", "host", "device", "redblue" (version), "invocations": one entry
    per invocation: {"started", "finished", "wall_seconds", "computed", "reused", "status", ...}}.
    Each finished cell rewrites it (atomically), so a run killed with kill -9 still says how long
    its invocation ran and how many cells it computed; its status then stays "running".
    """

    def __init__(self, folder: RunFolder, *, kind: str, name: str, device: str, **details: Any) -> None:
        self.folder = folder
        self._clock = time.perf_counter()
        previous = folder.read_run() or {}
        invocations = previous.get("invocations") if isinstance(previous.get("invocations"), list) else []
        started = utc_now()
        self.invocation: dict[str, Any] = {
            "started": started, "finished": None, "wall_seconds": 0.0, "computed": 0, "reused": 0,
            "status": "running", **details,
        }
        self.run: dict[str, Any] = {
            "kind": kind,
            "name": name,
            "status": "running",
            "started": previous.get("started", started) if previous.get("kind") == kind else started,
            "finished": None,
            "host": socket.gethostname(),
            "device": device,
            "redblue": library_versions()["redblue"],
            "invocations": [*invocations, self.invocation],
        }
        self._write()

    @property
    def earlier_invocations(self) -> list[dict[str, Any]]:
        return self.run["invocations"][:-1]

    def cell_done(self, *, computed: bool, count: int = 1) -> None:
        """Count finished cells (computed here, or reused) and record the time so far."""
        self.invocation["computed" if computed else "reused"] += count
        self._write()

    def finish(self, status: str, *, error: str | None = None) -> None:
        """End this invocation with `status` ("done" or "failed")."""
        assert status in RUN_STATUSES, status
        self.invocation["status"] = self.run["status"] = status
        self.invocation["finished"] = self.run["finished"] = utc_now()
        if error is not None:
            self.invocation["error"] = error
        self._write()

    def _write(self) -> None:
        self.invocation["wall_seconds"] = time.perf_counter() - self._clock
        self.folder.write_json(RUN_FILE, self.run)


def _check_suffix(suffix: str) -> str:
    if not suffix.startswith(".") or not set(suffix[1:]) <= CELL_NAME_CHARS or "/" in suffix:
        raise ConfigError(f"artefact suffix {suffix!r} must start with '.' and hold only letters, digits and - _ . +")
    return suffix


def _check_name(cell: str) -> str:
    if not cell or not set(cell) <= CELL_NAME_CHARS or cell.startswith("."):
        raise ConfigError(f"cell name {cell!r} may hold only letters, digits and - _ . +")
    return cell
