"""kill -9 of a real `redblue reproduce` mid-run, then the same command: it says how many cells it reused,
recomputes none of them, and its results equal an uninterrupted run's.

The killed run trains its four models two at a time as batched grids (`--grid-size 2`), so the kill
lands between two tasks; the uninterrupted run trains all four as one grid, so the comparison also
holds the batched trainer to the same numbers whatever the batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from redblue.reproduce import load_experiment, reproduce

KILL_TOML = """
name = "kill"
train_subset = 2048
test_subset = 200

[model]
hidden = 32

[train]
epochs = 2
batch_size = 64
lr = 0.003

[grid]
l1 = [0.0, 1e-4]
l2 = [0.0, 1e-4]

[fgsm]
curve_eps = [0.0, 0.1]
table_eps = [0.1]
table3_eps = [0.05]
figure_eps = [0.0, 0.1]

[profiles.kill]
"""
TIMING_KEYS = ("train_seconds", "eval_seconds", "grid_members")  # how a cell ran, not what it computed


def _numbers(cells: list[dict]) -> list[dict]:
    return [
        {**{k: v for k, v in c.items() if k not in TIMING_KEYS and k != "history"},
         "history": [{k: v for k, v in h.items() if k != "seconds"} for h in c["history"]]}
        for c in cells
    ]


def _kill_9_after_the_first_cell(command: list[str], out) -> dict[str, int]:
    """Start `command`, SIGKILL it once a cell is done; the finished cells' files and their mtimes."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("cells/*.json")):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("cells/*.json")}
    assert 1 <= len(done) < 4 and not (out / "results.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # killed: nobody could say otherwise
    return done


def _rerun_reuses(command: list[str], out, done: dict[str, int]) -> dict:
    """Run `command` again: it reuses every finished cell without rewriting one; its results.json."""
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{4 - len(done)} cells trained, {len(done)} reused" in rerun.stdout
    assert {name: (out / "cells" / name).stat().st_mtime_ns for name in done} == done  # not one rewritten
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and [i["reused"] for i in run["invocations"]] == [0, len(done)]
    return json.loads((out / "results.json").read_text())


def test_kill_9_mid_run_then_the_same_command_reuses_every_finished_cell(tmp_path):
    config = tmp_path / "kill.toml"
    config.write_text(KILL_TOML)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "redblue", "reproduce", "--config", str(config), "--profile", "kill",
               "--out", str(out), "--workers", "1", "--grid-size", "2", "--device", "cpu"]
    done = _kill_9_after_the_first_cell(command, out)
    resumed = _rerun_reuses(command, out, done)
    uninterrupted = reproduce(load_experiment(config, profile="kill"), tmp_path / "uninterrupted", workers=1).results
    assert _numbers(resumed["cells"]) == _numbers(uninterrupted["cells"])
    assert resumed["models"] != [] and [m["curve"] for m in resumed["models"]] == [m["curve"] for m in uninterrupted["models"]]
    assert os.path.isfile(out / "report.md") and os.path.isfile(out / "figure1.png")


# `redblue reproduce` in a process whose idle cores are forced, as if the machine's load were another
IDLE_CORES = (
    "import sys; import redblue.cli.verbs_reproduce as verbs; verbs.idle_cores = lambda: int(sys.argv[1]); "
    "from redblue.cli import main; sys.exit(main(sys.argv[2:]))"
)


def test_kill_9_then_a_rerun_under_another_load_keeps_the_recorded_thread_count(tmp_path):
    """--threads auto on a quiet machine (2 idle cores, one worker: 2 threads per cell), killed; the
    rerun sees one idle core, takes the folder's recorded 2 instead, and ends as an uninterrupted
    2-thread run does."""
    config = tmp_path / "kill.toml"
    config.write_text(KILL_TOML)
    out = tmp_path / "run"
    args = ["reproduce", "--config", str(config), "--profile", "kill", "--out", str(out), "--workers", "1",
            "--grid-size", "2", "--device", "cpu", "--threads", "auto"]
    done = _kill_9_after_the_first_cell([sys.executable, "-c", IDLE_CORES, "2", *args], out)
    resumed = _rerun_reuses([sys.executable, "-c", IDLE_CORES, "1", *args], out, done)
    assert resumed["torch_threads_per_cell"] == 2 and {c["torch_threads"] for c in resumed["cells"]} == {2}
    experiment = load_experiment(config, profile="kill")
    uninterrupted = reproduce(experiment, tmp_path / "uninterrupted", workers=1, threads=2).results
    assert _numbers(resumed["cells"]) == _numbers(uninterrupted["cells"])
