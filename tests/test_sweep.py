"""The sweep engine: cell ids, reuse, atomic records, progress, errors, and the local and Ray executors."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from sweep_fixtures import CALLS_ENV, ToyConfig, calls_made, toy_cell, toy_cells

from redblue.errors import ConfigError
from redblue.runs.store import RunFolder
from redblue.sweep import Cell, SweepProgress, cell_id, make_executor, run_sweep
from redblue.sweep.executors import InProcessExecutor, ProcessPoolCellExecutor

TIMING_KEYS = ("host", "pid", "started", "finished", "seconds")


@dataclass(frozen=True)
class Nested:
    lam: tuple[float, ...]
    name: str
    subset: int | None = None


def _numbers(records) -> list[dict]:
    """Records without where and when they ran: what must not depend on the executor or on resuming."""
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def test_cell_id_is_the_sha256_of_the_canonical_json_written_by_hand():
    config = Nested(lam=(0.0, 1e-05, 0.1), name="mlp")
    # sorted keys, no spaces, None dropped, tuples as lists, floats as repr writes them
    text = '{"lam":[0.0,1e-05,0.1],"name":"mlp"}'
    assert cell_id(config) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert cell_id({"name": "mlp", "lam": [0.0, 1e-05, 0.1]}) == cell_id(config)  # a dict with the same content
    assert cell_id(Nested(lam=(0.0, 1e-05, 0.1), name="mlp", subset=5)) != cell_id(config)
    assert cell_id(Nested(lam=(0.0, 1e-04, 0.1), name="mlp")) != cell_id(config)


def test_cell_id_is_the_same_in_another_interpreter_with_another_hash_seed():
    config = ToyConfig(x=0.3, seed=7)
    code = "from sweep_fixtures import ToyConfig; from redblue.sweep import cell_id; print(cell_id(ToyConfig(x=0.3, seed=7)))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.path.dirname(__file__)}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == cell_id(config)


def test_a_cell_config_must_be_json(tmp_path):
    with pytest.raises(ConfigError, match="plain JSON data"):
        cell_id({"x": float("nan")})
    with pytest.raises(ConfigError, match="same config"):
        run_sweep([Cell(ToyConfig(1.0, 1), "a"), Cell(ToyConfig(1.0, 1), "b")], toy_cell, RunFolder(tmp_path))


@pytest.fixture
def calls(tmp_path, monkeypatch):
    """A folder where each call of toy_cell leaves a file."""
    folder = tmp_path / "calls"
    folder.mkdir()
    monkeypatch.setenv(CALLS_ENV, str(folder))
    return folder


def test_finished_cells_are_written_after_their_artefacts_and_reused_without_a_call(tmp_path, calls):
    folder = RunFolder(tmp_path / "run")
    cells = toy_cells(3)
    first = run_sweep(cells, toy_cell, folder, workers=1)
    assert calls_made(calls) == ["0-100", "1-101", "2-102"]
    assert first.computed == tuple(c.id for c in cells) and first.reused == ()
    for cell, record in zip(cells, first.records):
        assert record["id"] == cell.id and record["label"] == cell.label
        assert record["config"] == {"x": cell.config.x, "seed": cell.config.seed, "sleep": 0.0, "fail": False}
        assert record["metrics"]["square"] == cell.config.x**2
        assert record["artefacts"] == [f"blobs/{cell.id}.bin"]
        blob = (folder.root / "blobs" / f"{cell.id}.bin").read_bytes()
        assert struct.unpack("<d", blob)[0] == cell.config.x**2
        assert json.loads(folder.cell_path(cell.id).read_text()) == record
    again = run_sweep(cells, toy_cell, folder, workers=1)
    assert len(calls_made(calls)) == 3  # nothing recomputed
    assert again.computed == () and again.reused == first.computed
    assert _numbers(again.records) == _numbers(first.records)


def test_a_cell_with_a_missing_artefact_a_torn_record_or_another_config_is_recomputed(tmp_path, calls):
    folder = RunFolder(tmp_path / "run")
    cells = toy_cells(3)
    first = run_sweep(cells, toy_cell, folder, workers=1)
    (folder.root / "blobs" / f"{cells[0].id}.bin").unlink()  # its artefact is gone
    folder.cell_path(cells[1].id).write_text('{"id": "trunc')  # a torn record (not our writer's, but a disk's)
    stored = json.loads(folder.cell_path(cells[2].id).read_text())
    folder.cell_path(cells[2].id).write_text(json.dumps({**stored, "config": {**stored["config"], "x": 9.0}}))
    second = run_sweep(cells, toy_cell, folder, workers=1)
    assert sorted(second.computed) == sorted(c.id for c in cells) and len(calls_made(calls)) == 6
    assert _numbers(second.records) == _numbers(first.records)


def test_progress_reports_queued_running_finished_and_reused(tmp_path):
    events: list[SweepProgress] = []
    folder = RunFolder(tmp_path)
    before = time.time()
    cells = toy_cells(3)
    run_sweep(cells[:1], toy_cell, folder, workers=1)
    run_sweep(cells, toy_cell, folder, workers=1, on_progress=events.append)
    summary = [(e.event, e.cell.label, e.queued, [r.label for r in e.running], e.finished, e.reused) for e in events]
    assert summary == [
        ("reused", "x-0", 2, [], 0, 1),
        ("started", "x-1", 1, ["x-1"], 0, 1),
        ("finished", "x-1", 1, [], 1, 1),
        ("started", "x-2", 0, ["x-2"], 1, 1),
        ("finished", "x-2", 0, [], 2, 1),
    ]
    assert before <= events[1].running[0].since <= events[3].running[0].since <= time.time()
    assert events[-1].done == events[-1].total == 3 and events[-1].record["metrics"]["square"] == 4.0


def test_a_failing_cell_stops_the_sweep_and_keeps_the_finished_ones(tmp_path):
    folder = RunFolder(tmp_path)
    cells = [*toy_cells(2), Cell(ToyConfig(x=5.0, seed=1, fail=True), "bad")]
    with pytest.raises(ConfigError, match="cell x=5 was asked to fail"):
        run_sweep(cells, toy_cell, folder, workers=1)
    assert [folder.read_cell(c.id) is not None for c in cells] == [True, True, False]


def test_the_local_executor_sizes_itself_to_the_work():
    assert isinstance(make_executor("local", workers=4, gpu=False, cells=1), InProcessExecutor)
    assert isinstance(make_executor("local", workers=1, gpu=False, cells=9), InProcessExecutor)
    pool = make_executor("local", workers=2, gpu=False, cells=9)
    try:
        assert isinstance(pool, ProcessPoolCellExecutor) and pool.slots == 2
    finally:
        pool.close(cancel=True)
    with pytest.raises(ConfigError, match="unknown executor 'dask'; choose one of: local, ray"):
        make_executor("dask", workers=None, gpu=False, cells=3)


def test_a_process_pool_gives_the_records_of_a_run_in_this_process(tmp_path):
    cells = toy_cells(4)
    here = run_sweep(cells, toy_cell, RunFolder(tmp_path / "here"), workers=1)
    pool = run_sweep(cells, toy_cell, RunFolder(tmp_path / "pool"), workers=2)
    assert pool.workers == 2 and here.workers == 1
    assert _numbers(pool.records) == _numbers(here.records)
    assert len({r["pid"] for r in pool.records}) >= 1 and all(r["pid"] != os.getpid() for r in pool.records)
    assert all(r["metrics"]["threads"] == 1 for r in pool.records + here.records)  # one torch thread per cell


def test_without_ray_the_ray_executor_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is absent
    with pytest.raises(ConfigError) as info:
        run_sweep(toy_cells(2), toy_cell, RunFolder(tmp_path), executor="ray")
    message = str(info.value)
    assert "\n" not in message and "pip install 'redblue[ray]'" in message
    assert not (tmp_path / "cells").exists()


def test_ray_tasks_give_the_records_of_the_local_executor(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'redblue[ray]'")
    # Ray's workers start from the environment of the instance: let them import the toy cell
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])))
    cells = toy_cells(4)
    here = run_sweep(cells, toy_cell, RunFolder(tmp_path / "here"), workers=1)
    on_ray = run_sweep(cells, toy_cell, RunFolder(tmp_path / "ray"), executor="ray", workers=2)
    assert (on_ray.executor, on_ray.workers) == ("ray", 2)
    assert _numbers(on_ray.records) == _numbers(here.records)
    assert all(r["pid"] != os.getpid() for r in on_ray.records)
    import ray

    assert not ray.is_initialized()  # the sweep shut down the Ray instance it started
