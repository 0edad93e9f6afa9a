"""The sweep loop: look every cell up in the run folder, hand the rest to an executor, write each as it finishes.

A cell is `fn(config) -> CellOutput`: `config` is a frozen dataclass that holds everything the
cell's numbers depend on (its seed included), `fn` a module-level function (or a
`functools.partial` of one, for inputs that change no number, such as where the data lies). Its
id is the SHA-256 of the config's canonical JSON (sorted keys, no spaces, floats as `repr`
writes them), so it is the same in every process, on every machine and Python version.

`run_sweep` looks each cell up in the run folder first: a cell whose `cells/<id>.json` is there,
whose artefacts are there and whose stored config equals its own is reused, never recomputed.
The others go to an executor; as each finishes, this process writes its artefacts, then its
record (`store.RunFolder`, atomically), so a run killed at any moment (even `kill -9`) keeps every
finished cell and the same call resumes from them. The records are JSON round-tripped before they
are returned, so a fresh cell and a reused one read the same.

Executors (`redblue.sweep.executors`): `local` (a process pool sized to the machine; this process
alone for one worker; one process per GPU when the cells run on CUDA) and `ray` (Ray core tasks on
a local Ray instance, or on the cluster `RAY_ADDRESS` names).

Batches (optional, `Batching`): cells that can be computed together faster than one by one (e.g.
models of one architecture trained as one batched model) name the same batch key; the pending
cells of one key are split into at most one task per worker, each task one call of the batch
function on their configs, and each member is then written (artefacts, record) as its own cell.
Ids, reuse and records stay per cell; a task is the unit of work a kill can lose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, is_dataclass
from functools import cached_property
from typing import Any, Literal

from redblue.config import to_dict
from redblue.errors import ConfigError
from redblue.runs.store import RunFolder, RunJournal, json_bytes, utc_now
from redblue.sweep.choose import make_executor
from redblue.sweep.executors import CellOutput, Executor, Finished

log = logging.getLogger(__name__)
ID_HEX_DIGITS = 16  # 64 bits: a collision among a sweep's cells is out of reach (and the stored config is compared too)


def config_json(config: Any) -> Any:
    """The config as JSON reads it back: a dataclass through `to_dict` (tuples -> lists, None dropped)."""
    data = to_dict(config) if is_dataclass(config) and not isinstance(config, type) else config
    return json.loads(canonical_json(data))


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no whitespace, ASCII, no NaN (floats as `repr`, stable since Python 3.1)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a cell's config must be plain JSON data (no NaN, no objects): {exc}") from None


def cell_id(config: Any) -> str:
    """The cell's id: the first 16 hex digits of the SHA-256 of its config's canonical JSON."""
    return hashlib.sha256(canonical_json(config_json(config)).encode()).hexdigest()[:ID_HEX_DIGITS]


@dataclass(frozen=True)
class Cell:
    """One unit of work: a frozen config (seed included) and a label for people (`l1-0_l2-0_seed-0`)."""

    config: Any
    label: str = ""

    @cached_property
    def id(self) -> str:
        return cell_id(self.config)

    @cached_property
    def config_json(self) -> Any:
        return config_json(self.config)


@dataclass(frozen=True)
class Running:
    """A cell handed to a worker, since `since` (seconds since the epoch)."""

    id: str
    label: str
    since: float


@dataclass(frozen=True)
class SweepProgress:
    """What the sweep is doing, sent to `on_progress` at each event.

    event: "reused" (found done in the folder), "started" (handed to a worker) or "finished"
    (its record written); `cell` is the cell the event is about and `record` its record (None
    for "started"). queued: cells not yet handed out; running: the cells in flight, oldest first;
    finished: cells computed by this call; reused: cells found done.
    """

    event: Literal["reused", "started", "finished"]
    cell: Cell
    record: dict[str, Any] | None
    total: int
    queued: int
    running: tuple[Running, ...]
    finished: int
    reused: int

    @property
    def done(self) -> int:
        return self.finished + self.reused


@dataclass(frozen=True)
class SweepResult:
    """Every cell's record in the order the cells were given, and what this call did."""

    records: tuple[dict[str, Any], ...]
    computed: tuple[str, ...]  # ids of the cells computed by this call
    reused: tuple[str, ...]  # ids of the cells found done
    executor: str
    workers: int
    wall_seconds: float


ProgressCallback = Callable[[SweepProgress], None]


@dataclass(frozen=True)
class Batching:
    """Which cells may be computed together, and how.

    key(config): cells with equal keys may share a task (None: this cell always runs alone, by the
    sweep's `fn`); fn(configs): computes a tuple of configs at once and returns one CellOutput per
    config, in their order (a module-level function or a partial of one, like a cell function).
    max_size: at most this many cells per task (None: the pending cells of a key are split evenly
    over the workers, one task each).
    """

    key: Callable[[Any], Hashable | None]
    fn: Callable[[tuple[Any, ...]], tuple[CellOutput, ...]]
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 1:
            raise ConfigError(f"a batch holds at least one cell, got max_size={self.max_size}")

    def tasks(self, cells: Sequence[Cell], slots: int) -> list[tuple[Cell, ...]]:
        """The cells as tasks, in the order each key first appears: a key's cells (in their order) in
        min(n, slots) even, contiguous parts (more when max_size asks); a cell keyed None alone."""
        order: list[Hashable] = []  # a key, or a lone cell
        groups: dict[Hashable, list[Cell]] = {}
        for cell in cells:
            key = self.key(cell.config)
            if key is None:
                order.append(cell)
            elif key not in groups:
                groups[key] = [cell]
                order.append(("key", key))
            else:
                groups[key].append(cell)
        tasks: list[tuple[Cell, ...]] = []
        for entry in order:
            if isinstance(entry, Cell):
                tasks.append((entry,))
                continue
            group = groups[entry[1]]  # type: ignore[index]
            parts = min(len(group), max(1, slots))
            if self.max_size is not None:
                parts = max(parts, -(-len(group) // self.max_size))
            size, extra = divmod(len(group), parts)
            start = 0
            for part in range(parts):
                stop = start + size + (1 if part < extra else 0)
                tasks.append(tuple(group[start:stop]))
                start = stop
        return tasks


def run_sweep(
    cells: Sequence[Cell],
    fn: Callable[[Any], CellOutput],
    folder: RunFolder,
    *,
    executor: str | Executor = "local",
    workers: int | None = None,
    gpu: bool = False,
    on_progress: ProgressCallback | None = None,
    journal: RunJournal | None = None,
    batching: Batching | None = None,
) -> SweepResult:
    """Compute every cell not already done in `folder` with `fn`, write each as it finishes, return all records.

    executor: "local", "ray", or an `Executor`; workers: tasks in flight at once (default: the
    executor's size for this machine or cluster); gpu: the cells run on CUDA (local: one process
    per GPU; ray: each task requests one GPU). batching: compute cells of one batch key together
    (see `Batching`; None: every cell is its own task). A cell that raises stops the sweep (the
    tasks in flight are cancelled; finished cells stay written) and its exception propagates.
    A record is {"id", "label", "config", "metrics", "artefacts", "host", "pid", "started",
    "finished", "seconds"}, and for a cell computed in a batch of several, "batch": the ids of
    the batch's cells (its "seconds" are the whole batch's).
    """
    started = time.perf_counter()
    _require_unique(cells)
    by_id: dict[str, dict[str, Any]] = {}
    reused: list[str] = []
    total = len(cells)
    for cell in cells:
        record = folder.read_cell(cell.id)
        if record is not None and record.get("config") == cell.config_json:
            by_id[cell.id] = record
            reused.append(cell.id)
            if on_progress is not None:
                on_progress(SweepProgress("reused", cell, record, total, total - len(by_id), (), 0, len(reused)))
    if reused and journal is not None:
        journal.cell_done(computed=False, count=len(reused))
    todo = [cell for cell in cells if cell.id not in by_id]
    computed: list[str] = []
    name, size = (executor, 0) if isinstance(executor, str) else (executor.name, executor.slots)
    if todo:
        pool = make_executor(executor, workers=workers, gpu=gpu, cells=len(todo)) if isinstance(executor, str) else executor
        name, size = pool.name, pool.slots
        log.info("%s: %d of %d cells done before, %d to compute on %s with %d worker(s)",
                 folder.root, len(reused), total, len(todo), pool.name, pool.slots)
        try:
            tasks = batching.tasks(todo, pool.slots) if batching is not None else [(cell,) for cell in todo]
            _drive(pool, tasks, fn, batching, folder, by_id, computed, total, len(reused), on_progress, journal)
        except BaseException:
            pool.close(cancel=True)
            raise
        pool.close(cancel=False)
    return SweepResult(
        records=tuple(by_id[cell.id] for cell in cells),
        computed=tuple(computed),
        reused=tuple(reused),
        executor=name,
        workers=size,
        wall_seconds=time.perf_counter() - started,
    )


def _drive(
    pool: Executor,
    tasks: list[tuple[Cell, ...]],
    fn: Callable[[Any], CellOutput],
    batching: Batching | None,
    folder: RunFolder,
    by_id: dict[str, dict[str, Any]],
    computed: list[str],
    total: int,
    n_reused: int,
    on_progress: ProgressCallback | None,
    journal: RunJournal | None,
) -> None:
    """Keep `pool.slots` tasks in flight (so "started" means a worker has the cell), write each cell as its task finishes."""
    queue = deque(tasks)
    in_flight: dict[str, tuple[Cell, ...]] = {}  # task key (its first cell's id) -> its cells
    running: dict[str, tuple[Cell, Running]] = {}

    def report(event: Literal["started", "finished"], cell: Cell, record: dict[str, Any] | None) -> None:
        if on_progress is not None:
            in_flight_cells = tuple(entry for _, entry in running.values())
            queued = sum(len(task) for task in queue)
            on_progress(SweepProgress(event, cell, record, total, queued, in_flight_cells, len(computed), n_reused))

    while queue or in_flight:
        while queue and len(in_flight) < pool.slots:
            task = queue.popleft()
            key = task[0].id
            if len(task) == 1:
                pool.start(key, fn, task[0].config)
            else:
                assert batching is not None
                pool.start(key, batching.fn, tuple(cell.config for cell in task))
            in_flight[key] = task
            since = time.time()
            running.update((cell.id, (cell, Running(cell.id, cell.label, since))) for cell in task)
            for cell in task:  # all of the task's cells are in flight from now
                report("started", cell, None)
        key, finished = pool.next_done()
        task = in_flight.pop(key)
        outputs = (finished.output,) if len(task) == 1 else finished.output
        if not isinstance(outputs, tuple) or len(outputs) != len(task):
            raise TypeError(f"a batch function must return one CellOutput per config ({len(task)}), got {outputs!r:.200}")
        batch = [cell.id for cell in task] if len(task) > 1 else None
        for cell, output in zip(task, outputs):
            running.pop(cell.id)
            record = _write_cell(folder, cell, finished, output, batch)
            by_id[cell.id] = record
            computed.append(cell.id)
            if journal is not None:
                journal.cell_done(computed=True)
            report("finished", cell, record)


def _write_cell(
    folder: RunFolder, cell: Cell, finished: Finished, output: CellOutput, batch: list[str] | None
) -> dict[str, Any]:
    """The cell's artefacts, then its record (the done marker); returns the record as JSON reads it back."""
    if not isinstance(output, CellOutput):
        raise TypeError(f"a cell function must return a CellOutput, got {type(output).__name__}")
    paths = [
        folder.write_artefact(folder.artefact_path(artefact.folder, cell.id, artefact.suffix), artefact.data)
        for artefact in output.artefacts
    ]
    record = {
        "id": cell.id,
        "label": cell.label,
        "config": cell.config_json,
        "metrics": output.metrics,
        "artefacts": paths,
        "host": finished.host,
        "pid": finished.pid,
        "started": finished.started,
        "finished": utc_now(),
        "seconds": finished.seconds,
    }
    if batch is not None:
        record["batch"] = batch
    record = json.loads(json_bytes(record))
    folder.write_cell(cell.id, record)
    return record


def _require_unique(cells: Sequence[Cell]) -> None:
    seen: dict[str, str] = {}
    for cell in cells:
        if cell.id in seen:
            raise ConfigError(
                f"cells {seen[cell.id]!r} and {cell.label!r} have the same config; list each value of a grid once"
            )
        seen[cell.id] = cell.label
