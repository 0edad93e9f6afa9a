"""kill -9 of a real sweep process at several moments: every finished cell survives, none is recomputed,
the pool workers die with their parent, and the final records equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sweep_fixtures import CALLS_ENV, calls_made, toy_cell, toy_cells

from redblue.runs.store import RunFolder
from redblue.sweep import run_sweep

TESTS = Path(__file__).resolve().parent
N_CELLS, SLEEP_S, WORKERS = 8, 0.4, 2
CHILD = "import sys; import sweep_fixtures; sweep_fixtures.main(sys.argv[1:])"
TIMING_KEYS = ("host", "pid", "started", "finished", "seconds")


def _start(out: Path, calls: Path) -> subprocess.Popen:
    calls.mkdir()
    env = {**os.environ, CALLS_ENV: str(calls), "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-c", CHILD, str(out), str(N_CELLS), str(SLEEP_S), str(WORKERS)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(out: Path) -> set[str]:
    cells = out / "cells"
    return {p.stem for p in cells.glob("*.json")} if cells.is_dir() else set()


def _children(pid: int) -> list[int]:
    """The pids of `pid`'s child processes (from /proc/*/stat: Linux)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _kill_when(child: subprocess.Popen, out: Path, *, cells_done: int, timeout: float = 120.0) -> tuple[set[str], list[int]]:
    """Wait until `cells_done` cells are written (0: until the pool's workers exist), then kill -9 the child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = _children(child.pid)
        if child.poll() is not None:
            raise AssertionError(f"the sweep ended before it was killed: {child.communicate()}")
        if len(_done(out)) >= cells_done and (cells_done > 0 or len(workers) >= WORKERS):
            done = _done(out)
            child.send_signal(signal.SIGKILL)
            child.wait()
            return done, workers
        time.sleep(0.02)
    child.kill()
    raise AssertionError(f"no {cells_done} cells within {timeout} s")


def test_kill_9_at_any_moment_loses_no_finished_cell_and_recomputes_none(tmp_path):
    out = tmp_path / "run"
    finished_before: set[str] = set()
    # kill while the workers start (no cell done yet), then again once the resumed run has more cells done
    for round_, cells_done in enumerate((0, N_CELLS // 2)):
        child = _start(out, tmp_path / f"calls-{round_}")
        target = 0 if cells_done == 0 else max(cells_done, len(finished_before) + 1)  # at least one more than before
        done, workers = _kill_when(child, out, cells_done=target)
        assert finished_before <= done  # a finished cell is never lost
        ids = {cell.id: f"{cell.config.x:g}-{cell.config.seed}" for cell in toy_cells(N_CELLS, sleep=SLEEP_S)}
        recomputed = set(calls_made(tmp_path / f"calls-{round_}")) & {ids[i] for i in finished_before}
        assert recomputed == set()  # ... nor computed again
        finished_before = done
        # the workers die with their parent: at once when busy, after importing torch when still starting
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (round_, [pid for pid in workers if _alive(pid)]) == (round_, [])
        # every record on disk is whole and its artefact is there (a kill mid-write leaves only a temporary file)
        assert all(RunFolder(out).read_cell(stem) is not None for stem in _done(out))
    child = _start(out, tmp_path / "calls-last")
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    assert stdout.strip() == f"computed {N_CELLS - len(finished_before)} reused {len(finished_before)}"
    assert sorted(calls_made(tmp_path / "calls-last")) == sorted(
        f"{c.config.x:g}-{c.config.seed}" for c in toy_cells(N_CELLS, sleep=SLEEP_S) if c.id not in finished_before
    )

    cells = toy_cells(N_CELLS, sleep=SLEEP_S)
    resumed = [RunFolder(out).read_cell(cell.id) for cell in cells]
    uninterrupted = run_sweep(cells, toy_cell, RunFolder(tmp_path / "uninterrupted"), workers=1).records
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]  # noqa: E731
    assert strip(resumed) == strip(uninterrupted)
