"""Cell functions for the sweep engine's tests: cheap, deterministic, and they log every call they make.

They live in a module (not in a test file) so spawned pool workers, Ray workers and the kill -9
subprocess can import them by name.
"""

from __future__ import annotations

import os
import struct
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from redblue.errors import ConfigError
from redblue.sweep import Artefact, Cell, CellOutput

CALLS_ENV = "REDBLUE_TEST_CELL_CALLS"  # a folder where every call of toy_cell leaves a file (inherited by workers)


@dataclass(frozen=True)
class ToyConfig:
    """x and seed decide the numbers; sleep slows the cell down; fail makes it raise."""

    x: float
    seed: int
    sleep: float = 0.0
    fail: bool = False


def toy_cell(config: ToyConfig) -> CellOutput:
    """square = x^2; noise = the first draw of torch.rand from a generator seeded with `seed` (so threads and
    processes cannot change it); one artefact holding x^2 as a float64."""
    if os.environ.get(CALLS_ENV):
        Path(os.environ[CALLS_ENV], f"{config.x:g}-{config.seed}-{uuid.uuid4().hex}").touch()
    time.sleep(config.sleep)
    if config.fail:
        raise ConfigError(f"cell x={config.x:g} was asked to fail")
    noise = torch.rand((), generator=torch.Generator().manual_seed(config.seed), dtype=torch.float64).item()
    return CellOutput(
        metrics={"square": config.x**2, "noise": noise, "threads": torch.get_num_threads()},
        artefacts=(Artefact("blobs", ".bin", struct.pack("<d", config.x**2)),),
    )


BATCHES_ENV = "REDBLUE_TEST_BATCH_CALLS"  # a folder where every call of toy_batch leaves a file naming its cells


def toy_batch(configs: tuple[ToyConfig, ...]) -> tuple[CellOutput, ...]:
    """Several toy cells in one call (one output per config, each toy_cell's), logged as one batch call."""
    if os.environ.get(BATCHES_ENV):
        names = "+".join(f"{c.x:g}" for c in configs)
        Path(os.environ[BATCHES_ENV], f"{names}-{uuid.uuid4().hex}").touch()
    return tuple(toy_cell(config) for config in configs)


def toy_key(config: ToyConfig) -> int | None:
    """Cells batch by the parity of x; a negative x never batches."""
    return None if config.x < 0 else int(config.x) % 2


def toy_cells(n: int, *, sleep: float = 0.0) -> list[Cell]:
    return [Cell(ToyConfig(x=float(i), seed=100 + i, sleep=sleep), f"x-{i}") for i in range(n)]


def calls_made(calls: str | os.PathLike[str]) -> list[str]:
    """The "x-seed" of every call the cells logged into the folder `calls`."""
    return sorted(name.rsplit("-", 1)[0] for name in os.listdir(calls))


def main(argv: list[str]) -> None:
    """The kill -9 test's child process: OUT N SLEEP WORKERS -> one toy sweep into OUT."""
    from redblue.runs.store import RunFolder
    from redblue.sweep import run_sweep

    out, n, sleep, workers = argv[0], int(argv[1]), float(argv[2]), int(argv[3])
    result = run_sweep(toy_cells(n, sleep=sleep), toy_cell, RunFolder(out), workers=workers)
    sys.stdout.write(f"computed {len(result.computed)} reused {len(result.reused)}\n")
