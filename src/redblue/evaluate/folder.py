"""The run folder of `redblue evaluate --out DIR`, in the layout every redblue run folder shares.

    run.json          {"kind": "evaluate", "name", "status": running|done|failed, "started", "finished",
                       "host", "device", "redblue"}; rewritten when the run ends
    config.toml       the exact settings of the latest run (model file and its SHA-256, data, attacks, eps...)
    environment.json  library versions, platform, device, seed
    cells/<id>.json   one finished (attack x eps) row, written after masks/<id>.safetensors (see `resume`)
    results.json      everything the report needs: the evaluation's numbers, findings and settings
    masks.safetensors every per-sample mask of the evaluation (clean, per row, worst case, certified)

A rerun into the same folder reuses the rows whose key matches (same model, data and settings) and
computes the rest; rows of other settings stay in cells/ unused. "started" is when the first row of
this run was stored (the folder stays empty until then).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
import torch
from torch import Tensor

import redblue
from redblue.config import atomic_write_bytes
from redblue.errors import ConfigError
from redblue.evaluate.plan import PlannedAttack
from redblue.evaluate.resume import FolderRowCache, RowOutcome
from redblue.models import save_tensors

RUN_FILE = "run.json"
CONFIG_FILE = "config.toml"
ENVIRONMENT_FILE = "environment.json"
RESULTS_FILE = "results.json"
MASKS_FILE = "masks.safetensors"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=1, default=str) + "\n").encode()


def _toml_ready(value: Any) -> Any:
    """TOML has no null: None values are left out; tuples become lists."""
    if isinstance(value, dict):
        return {k: _toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_ready(v) for v in value]
    return value


class EvaluationFolder:
    """One evaluation's run folder, and the row cache of that evaluation (`RowCache`).

    Nothing but the empty folder exists until the first row is stored: a run stopped by bad input
    before any row is finished leaves nothing behind; from then on run.json says how it ended.
    """

    def __init__(self, root: str | Path, config: dict[str, Any], environment: dict[str, Any], *, device: str) -> None:
        self.root = Path(root)
        self._config = config
        self._environment = environment
        self._device = device
        self._run: dict[str, Any] = {}
        self._rows = FolderRowCache(self.root)

    def check_writable(self) -> None:
        """Create the folder and prove a file can be written there, or fail with one line."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file; give a folder to write the results into")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".write-test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot write to {self.root} ({reason}); choose a writable --out folder") from None

    def load(self, key: str, planned: PlannedAttack, eps: float, *, device: torch.device) -> RowOutcome | None:
        return self._rows.load(key, planned, eps, device=device)

    def save(self, key: str, planned: PlannedAttack, eps: float, stored: RowOutcome) -> None:
        self._begin()
        self._rows.save(key, planned, eps, stored)

    def finish(self, results: dict[str, Any], masks: dict[str, Tensor]) -> list[Path]:
        """Write the masks and results.json, then mark the run done; returns the files written."""
        self._begin()
        uint8 = {name: mask.to(torch.uint8) for name, mask in masks.items()}  # 0/1, as earlier versions wrote them
        save_tensors(self.root / MASKS_FILE, uint8, {"redblue.kind": "evaluate"})
        atomic_write_bytes(self.root / RESULTS_FILE, _json(results))
        self._end("done")
        return [self.root / RESULTS_FILE, self.root / MASKS_FILE]

    def fail(self, reason: str) -> None:
        """Mark the run failed (interrupted, or an error) if it had stored anything; finished rows stay."""
        if self._run:
            self._end("failed", reason=reason)

    def _begin(self) -> None:
        """config.toml, environment.json and run.json (running), once, before the first file of results."""
        if self._run:
            return
        atomic_write_bytes(self.root / CONFIG_FILE, tomli_w.dumps(_toml_ready(self._config)).encode())
        atomic_write_bytes(self.root / ENVIRONMENT_FILE, _json(self._environment))
        self._run = {
            "kind": "evaluate",
            "name": self.root.resolve().name,
            "status": "running",
            "started": _now(),
            "finished": None,
            "host": socket.gethostname(),
            "device": self._device,
            "redblue": redblue.__version__,
        }
        atomic_write_bytes(self.root / RUN_FILE, _json(self._run))

    def _end(self, status: str, **extra: Any) -> None:
        self._run = {**self._run, "status": status, "finished": _now(), **extra}
        atomic_write_bytes(self.root / RUN_FILE, _json(self._run))
