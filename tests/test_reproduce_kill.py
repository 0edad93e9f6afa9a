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


def test_kill_9_mid_run_then_the_same_command_reuses_every_finished_cell(tmp_path):
    config = tmp_path / "kill.toml"
    config.write_text(KILL_TOML)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "redblue", "reproduce", "--config", str(config), "--profile", "kill",
               "--out", str(out), "--workers", "1", "--grid-size", "2", "--device", "cpu"]
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

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{4 - len(done)} cells trained, {len(done)} reused" in rerun.stdout
    assert {name: (out / "cells" / name).stat().st_mtime_ns for name in done} == done  # not one rewritten
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and [i["reused"] for i in run["invocations"]] == [0, len(done)]

    resumed = json.loads((out / "results.json").read_text())
    uninterrupted = reproduce(load_experiment(config, profile="kill"), tmp_path / "uninterrupted", workers=1).results
    assert _numbers(resumed["cells"]) == _numbers(uninterrupted["cells"])
    assert resumed["models"] != [] and [m["curve"] for m in resumed["models"]] == [m["curve"] for m in uninterrupted["models"]]
    assert os.path.isfile(out / "report.md") and os.path.isfile(out / "figure1.png")
