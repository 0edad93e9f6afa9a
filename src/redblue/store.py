"""Run folders: the exact config a run ran, one "done" record per finished cell, and resume.

A run folder holds `config.toml` (the whole configuration, written before any work starts),
`environment.json` (library versions, device, seeds) and, per cell (one trained model),
`models/<cell>.safetensors` and `cells/<cell>.json`. Every file is written to a temporary name
and renamed into place, and a cell's JSON is written after its model, so the JSON is the cell's
"done" marker: a killed run leaves whole files only, and a rerun redoes just the missing cells.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import tomli_w

from redblue.config import atomic_write_bytes, read_toml, tomllib
from redblue.errors import ConfigError

CONFIG_FILE = "config.toml"
ENVIRONMENT_FILE = "environment.json"
LIBRARIES = ("redblue", "torch", "numpy", "safetensors", "matplotlib", "typer", "rich")
CELL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+")


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

    def model_path(self, cell: str) -> Path:
        return self.models_dir / f"{_check_name(cell)}.safetensors"

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
        """The done record of `cell`, or None when the cell is unfinished (its JSON or model is missing or unreadable)."""
        path = self.cell_path(cell)
        if not path.is_file() or not self.model_path(cell).is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def write_cell(self, cell: str, record: dict[str, Any]) -> None:
        """Mark `cell` done with its record; write its model (`model_path`) before calling this."""
        atomic_write_bytes(self.cell_path(cell), json_bytes(record))

    def write_json(self, name: str, data: Any) -> Path:
        path = self.root / name
        atomic_write_bytes(path, json_bytes(data))
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        atomic_write_bytes(path, text.encode())
        return path


def _check_name(cell: str) -> str:
    if not cell or not set(cell) <= CELL_NAME_CHARS or cell.startswith("."):
        raise ConfigError(f"cell name {cell!r} may hold only letters, digits and - _ . +")
    return cell
