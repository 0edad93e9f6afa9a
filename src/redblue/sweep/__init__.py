"""The sweep engine: run many cells (each a pure function of a frozen config -> a record) into a run folder.

A finished cell is found again by its id (a hash of its config) and never recomputed; a run killed
at any moment resumes from its finished cells. Executors: `local` (a process pool) and `ray`.
`engine` holds the loop, `executors` the local executors, `ray_executor` the Ray one, `choose` picks one by name.
"""

from redblue.sweep.choose import make_executor
from redblue.sweep.engine import (
    Batching,
    Cell,
    ProgressCallback,
    Running,
    SweepProgress,
    SweepResult,
    canonical_json,
    cell_id,
    config_json,
    run_sweep,
)
from redblue.sweep.executors import EXECUTORS, Artefact, CellOutput, Executor, Finished, default_workers

__all__ = [
    "EXECUTORS", "Artefact", "Batching", "Cell", "CellOutput", "ProgressCallback", "Executor", "Finished", "Running", "SweepProgress",
    "SweepResult", "canonical_json", "cell_id", "config_json", "default_workers", "make_executor", "run_sweep",
]
