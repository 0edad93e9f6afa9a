"""Finished attack rows kept on disk, so an interrupted evaluation resumes where it stopped.

The unit kept is one (attack x eps) row. In the cascade a row depends on every row before it at the
same eps (it attacks only what they left robust) and, through the shared random generator, on every
row before it at all; so a row is stored with what the next row needs to go on exactly as an
uninterrupted run would: the per-sample worst case after it (fooled, margin, top probability) and
the generator's state. A row is found again by a key that chains everything that determines it:

    key_0 = sha256(model weights and architecture, images, labels, mode, batch size, device, threads, versions)
    key_k = sha256(key_{k-1}, attack, its parameters at this eps, eps, the generator's state before it)

so a rerun with any other model, data, attack, eps, seed, batch size or order of rows computes
instead of reusing (an earlier row changed changes every later key), and a rerun with the same
settings reuses exactly the rows that were finished. Files: `cells/<id>.json` (the row, its
findings, the key) written atomically after `masks/<id>.safetensors` (the tensors), so a cell
whose JSON exists is complete; a cell that cannot be read back is computed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Generator, Tensor, nn

import redblue
from redblue.config import atomic_write_bytes
from redblue.evaluate.checks import Finding
from redblue.evaluate.plan import PlannedAttack
from redblue.evaluate.results import AttackResult
from redblue.metrics import WorstCase
from redblue.models import save_tensors

CELLS = "cells"
MASKS = "masks"


@dataclass(frozen=True, eq=False)
class RowOutcome:
    """One finished attack row at one eps, and what the next row needs to go on: the per-sample worst
    case after it and the generator's state after it (None without a generator)."""

    row: AttackResult
    worst: WorstCase
    findings: tuple[Finding, ...]
    generator_state: Tensor | None


class RowCache(Protocol):
    """Where finished rows are kept; `evaluate` reads and writes it by key (see `row_key`)."""

    def load(self, key: str, planned: PlannedAttack, eps: float, *, device: torch.device) -> RowOutcome | None: ...

    def save(self, key: str, planned: PlannedAttack, eps: float, stored: RowOutcome) -> None: ...


def _tensor_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def run_digest(model: nn.Module, x: Tensor, y: Tensor, *, mode: str, batch_size: int) -> str:
    """key_0: the digest of everything every row depends on, before any attack runs."""
    digest = hashlib.sha256()
    settings = {
        "mode": mode,
        "batch_size": batch_size,
        "device": x.device.type,
        "threads": torch.get_num_threads(),  # float sums may be ordered differently with more threads
        "torch": torch.__version__,
        "redblue": redblue.__version__,
        "architecture": repr(model),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in [*model.state_dict().items(), ("x", x), ("y", y)]:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def row_key(previous: str, planned: PlannedAttack, eps: float, generator: Generator | None) -> str:
    """key_k from key_{k-1} and what this row runs; the generator's state stands for the seed and
    every random draw made before this row."""
    state = None if generator is None else hashlib.sha256(_tensor_bytes(generator.get_state())).hexdigest()
    row = {
        "previous": previous,
        "label": planned.label,
        "attack": planned.entry.name,
        "params": dataclasses.asdict(planned.at(eps)),
        "eps": repr(float(eps)),
        "generator": state,
    }
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=repr).encode()).hexdigest()


def cell_id(key: str, planned: PlannedAttack, eps: float) -> str:
    """`linf-eps0.1-pgd-<20 hex digits of the key>`: readable, and unique by its key."""
    return f"{planned.norm}-eps{eps:g}-{planned.entry.name}-{key[:20]}"


class FolderRowCache:
    """Rows kept in a run folder: `cells/<id>.json` and `masks/<id>.safetensors` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _paths(self, key: str, planned: PlannedAttack, eps: float) -> tuple[Path, Path]:
        name = cell_id(key, planned, eps)
        return self.root / CELLS / f"{name}.json", self.root / MASKS / f"{name}.safetensors"

    def save(self, key: str, planned: PlannedAttack, eps: float, stored: RowOutcome) -> None:
        cell_path, masks_path = self._paths(key, planned, eps)
        tensors = {
            "robust_mask": stored.row.robust_mask,
            "worst_fooled": stored.worst.fooled,
            "worst_margin": stored.worst.margin,
            "worst_top_prob": stored.worst.top_prob,
        }
        if stored.generator_state is not None:
            tensors["generator_state"] = stored.generator_state
        save_tensors(masks_path, tensors, {"redblue.key": key})
        metrics = {f.name: getattr(stored.row, f.name) for f in dataclasses.fields(stored.row) if f.name != "robust_mask"}
        record = {
            "id": cell_path.stem,
            "key": key,
            "config": {"norm": planned.norm, "eps": eps, "label": planned.label, "attack": planned.entry.name,
                       "params": dataclasses.asdict(planned.at(eps))},
            "metrics": metrics,
            "findings": [dataclasses.asdict(f) for f in stored.findings],
            "n": len(stored.worst.fooled),
        }
        atomic_write_bytes(cell_path, (json.dumps(record, indent=1, default=repr) + "\n").encode())

    def load(self, key: str, planned: PlannedAttack, eps: float, *, device: torch.device) -> RowOutcome | None:
        cell_path, masks_path = self._paths(key, planned, eps)
        try:
            record = json.loads(cell_path.read_text())
            tensors = load_file(str(masks_path))
            if record["key"] != key:
                return None
            row = AttackResult(**record["metrics"], robust_mask=tensors["robust_mask"])
            worst = WorstCase(
                fooled=tensors["worst_fooled"].to(device),
                margin=tensors["worst_margin"].to(device),
                top_prob=tensors["worst_top_prob"].to(device),
            )
            findings = tuple(Finding(**f) for f in record["findings"])
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            return None  # missing, half-written by an older version, or damaged: compute the row again
        if not (len(worst.fooled) == len(worst.margin) == len(worst.top_prob) == len(row.robust_mask) == record["n"]):
            return None
        return RowOutcome(row=row, worst=worst, findings=findings, generator_state=tensors.get("generator_state"))


def restore_generator(generator: Generator | None, state: Tensor | None) -> None:
    """Put the generator where it stood after the stored row, as if that row had just run."""
    if generator is not None and state is not None:
        generator.set_state(state)
