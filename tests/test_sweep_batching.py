"""The sweep engine's batches: cells that share a batch key computed by one call, each written as its own cell.

Toy cells (tests/sweep_fixtures.py) batch by the parity of x; their batch function computes each
member as the cell function does, so every record must equal an unbatched run's but for where,
when and with which cells it ran.
"""

from __future__ import annotations

import os

import pytest
from sweep_fixtures import BATCHES_ENV, CALLS_ENV, ToyConfig, calls_made, toy_batch, toy_cell, toy_cells, toy_key

from redblue.errors import ConfigError
from redblue.runs.store import RunFolder
from redblue.sweep import Batching, Cell, SweepProgress, run_sweep

HOW_KEYS = ("host", "pid", "started", "finished", "seconds", "batch")
BATCHING = Batching(key=toy_key, fn=toy_batch)


def _numbers(records) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in HOW_KEYS} for record in records]


@pytest.fixture
def batch_calls(tmp_path, monkeypatch):
    """(cell calls, batch calls): folders where each call of toy_cell / toy_batch leaves a file."""
    cells, batches = tmp_path / "calls", tmp_path / "batches"
    cells.mkdir()
    batches.mkdir()
    monkeypatch.setenv(CALLS_ENV, str(cells))
    monkeypatch.setenv(BATCHES_ENV, str(batches))
    return cells, batches


def _batches_made(folder) -> list[str]:
    return sorted(name.rsplit("-", 1)[0] for name in os.listdir(folder))


def _xs(tasks) -> list[list[int]]:
    return [[int(cell.config.x) for cell in task] for task in tasks]


def test_tasks_split_each_key_evenly_over_the_workers_in_the_order_keys_first_appear():
    cells = [Cell(ToyConfig(x=float(x), seed=x), f"x-{x}") for x in (0, 1, 2, 3, 4, 5, 6, 7, 8, -1)]
    # even x: key 0 (5 cells), odd x: key 1 (4 cells), x = -1 alone
    assert _xs(BATCHING.tasks(cells, 1)) == [[0, 2, 4, 6, 8], [1, 3, 5, 7], [-1]]
    assert _xs(BATCHING.tasks(cells, 2)) == [[0, 2, 4], [6, 8], [1, 3], [5, 7], [-1]]
    assert _xs(BATCHING.tasks(cells, 8)) == [[0], [2], [4], [6], [8], [1], [3], [5], [7], [-1]]
    capped = Batching(key=toy_key, fn=toy_batch, max_size=2)
    assert _xs(capped.tasks(cells, 1)) == [[0, 2], [4, 6], [8], [1, 3], [5, 7], [-1]]
    assert _xs(Batching(key=toy_key, fn=toy_batch, max_size=4).tasks(cells, 1)) == [[0, 2, 4], [6, 8], [1, 3, 5, 7], [-1]]
    with pytest.raises(ConfigError, match="at least one cell"):
        Batching(key=toy_key, fn=toy_batch, max_size=0)


def test_a_batched_sweep_writes_each_cell_and_equals_an_unbatched_one(tmp_path, batch_calls):
    cell_calls, batch_calls_folder = batch_calls
    cells = toy_cells(5)
    folder = RunFolder(tmp_path / "batched")
    batched = run_sweep(cells, toy_cell, folder, workers=1, batching=BATCHING)
    assert _batches_made(batch_calls_folder) == ["0+2+4", "1+3"]  # one call per key on one worker
    alone = run_sweep(cells, toy_cell, RunFolder(tmp_path / "alone"), workers=1)
    assert _numbers(batched.records) == _numbers(alone.records)
    assert batched.computed == (cells[0].id, cells[2].id, cells[4].id, cells[1].id, cells[3].id)
    for record in batched.records:
        assert folder.read_cell(record["id"]) == record and (folder.root / record["artefacts"][0]).is_file()
    evens = [cells[i].id for i in (0, 2, 4)]
    assert [batched.records[i]["batch"] for i in (0, 2, 4)] == [evens] * 3
    assert len({batched.records[i]["seconds"] for i in (0, 2, 4)}) == 1  # the batch's time

    # a lost cell is recomputed alone (a key with one pending cell runs the cell function)
    folder.cell_path(cells[2].id).unlink()
    again = run_sweep(cells, toy_cell, folder, workers=1, batching=BATCHING)
    assert again.computed == (cells[2].id,) and len(again.reused) == 4
    assert _batches_made(batch_calls_folder) == ["0+2+4", "1+3"] and "batch" not in again.records[2]
    assert calls_made(cell_calls).count("2-102") == 3  # batched, alone, and the recomputation
    assert _numbers(again.records) == _numbers(alone.records)


def test_progress_starts_every_cell_of_a_task_together(tmp_path):
    events: list[SweepProgress] = []
    run_sweep(toy_cells(3), toy_cell, RunFolder(tmp_path), workers=1, batching=BATCHING, on_progress=events.append)
    summary = [(e.event, e.cell.label, e.queued, [r.label for r in e.running], e.finished) for e in events]
    assert summary == [
        ("started", "x-0", 1, ["x-0", "x-2"], 0),
        ("started", "x-2", 1, ["x-0", "x-2"], 0),
        ("finished", "x-0", 1, ["x-2"], 1),
        ("finished", "x-2", 1, [], 2),
        ("started", "x-1", 0, ["x-1"], 2),
        ("finished", "x-1", 0, [], 3),
    ]


def test_batches_in_a_process_pool_give_the_records_of_one_by_one_cells(tmp_path, batch_calls):
    _, batch_calls_folder = batch_calls
    cells = toy_cells(8)
    pooled = run_sweep(cells, toy_cell, RunFolder(tmp_path / "pool"), workers=2, batching=BATCHING)
    # two keys of 4 cells, 2 workers: 2 tasks of 2 per key
    assert _batches_made(batch_calls_folder) == ["0+2", "1+3", "4+6", "5+7"]
    alone = run_sweep(cells, toy_cell, RunFolder(tmp_path / "alone"), workers=1)
    assert _numbers(pooled.records) == _numbers(alone.records)
    assert all(r["pid"] != os.getpid() and r["metrics"]["threads"] == 1 for r in pooled.records)


def test_a_failing_batch_stops_the_sweep_and_keeps_the_finished_tasks(tmp_path):
    folder = RunFolder(tmp_path)
    cells = [*toy_cells(2), Cell(ToyConfig(x=4.0, seed=1, fail=True), "bad"), Cell(ToyConfig(x=6.0, seed=2), "x-6")]
    batching = Batching(key=toy_key, fn=toy_batch, max_size=2)  # tasks: [0, 4-bad], [6], [1]
    with pytest.raises(ConfigError, match="cell x=4 was asked to fail"):
        run_sweep(cells, toy_cell, folder, workers=1, batching=batching)
    assert [folder.read_cell(c.id) is not None for c in cells] == [False, False, False, False]  # the first task failed
    batching = Batching(key=toy_key, fn=toy_batch, max_size=1)
    with pytest.raises(ConfigError, match="cell x=4 was asked to fail"):
        run_sweep(cells, toy_cell, folder, workers=1, batching=batching)
    assert [folder.read_cell(c.id) is not None for c in cells] == [True, False, False, False]
