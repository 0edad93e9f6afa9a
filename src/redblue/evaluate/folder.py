"""The run folder of `redblue evaluate --out DIR`, in the layout every redblue run folder shares.

    run.json          {"kind": "evaluate", "name", "status": running|done|failed, "started", "finished",
                       "host", "device", "redblue"}; rewritten when the run ends
    config.toml       the exact settings of the latest run (model file and its SHA-256, data, attacks, eps...)
    environment.json  library versions, platform, device, seed
    cells/<id>.json   one finished (attack x eps) row, written after masks/<id>.safetensors (see `resume`)
    results.json      everything the report needs: the evaluation's numbers, findings and settings
    masks.safetensors every per-sample mask of the evaluation (clean, per row, worst case, certified)

A rerun into the same folder reuses the rows whose key matches (same model, data and settings) and
computes the rest; rows of other settings stay in cells/ unused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import tomli_w
import torch
from torch import Tensor

import redblue
from redblue.config import atomic_write_bytes
from redblue.errors import ConfigError
from redblue.evaluate.resume import FolderRowCache
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
    """One evaluation's run folder: started, finished or failed, with its row cache."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._run: dict[str, Any] = {}

    @property
    def cache(self) -> FolderRowCache:
        return FolderRowCache(self.root)

    def start(self, config: dict[str, Any], environment: dict[str, Any], *, device: str) -> None:
        """Create the folder (one error line if it cannot be written), record the config and mark the run running."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file; give a folder to write the results into")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.root / CONFIG_FILE, tomli_w.dumps(_toml_ready(config)).encode())
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot write to {self.root} ({reason}); choose a writable --out folder") from None
        atomic_write_bytes(self.root / ENVIRONMENT_FILE, _json(environment))
        self._run = {
            "kind": "evaluate",
            "name": self.root.resolve().name,
            "status": "running",
            "started": _now(),
            "finished": None,
            "host": socket.gethostname(),
            "device": device,
            "redblue": redblue.__version__,
        }
        atomic_write_bytes(self.root / RUN_FILE, _json(self._run))

    def finish(self, results: dict[str, Any], masks: dict[str, Tensor]) -> list[Path]:
        """Write the masks and results.json, then mark the run done; returns the files written."""
        uint8 = {name: mask.to(torch.uint8) for name, mask in masks.items()}  # 0/1, as earlier versions wrote them
        save_tensors(self.root / MASKS_FILE, uint8, {"redblue.kind": "evaluate"})
        atomic_write_bytes(self.root / RESULTS_FILE, _json(results))
        self._end("done")
        return [self.root / RESULTS_FILE, self.root / MASKS_FILE]

    def fail(self, reason: str) -> None:
        """Mark the run failed (interrupted, or an error); the finished rows stay for a rerun."""
        if self._run:
            self._end("failed", reason=reason)

    def _end(self, status: str, **extra: Any) -> None:
        self._run = {**self._run, "status": status, "finished": _now(), **extra}
        atomic_write_bytes(self.root / RUN_FILE, _json(self._run))
