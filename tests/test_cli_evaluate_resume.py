"""`redblue evaluate --out`: Ctrl-C keeps the finished rows and a rerun resumes; the progress line on a terminal.

Ctrl-C is simulated by raising KeyboardInterrupt from the engine's progress callback when the second
attack row starts (the first is stored by then), which is where a real SIGINT lands between rows.
"""

from __future__ import annotations

import importlib
import json
import re

import pytest
import torch
from mlp_fixtures import trained_mlp
from torch import nn

import redblue.cli.verbs_evaluate as verbs_evaluate
from cli_helpers import run
from redblue.models import MLPSpec, build_model, save_model

# one thread: on a busy 2-core machine a second one mostly spins (see --threads in the README)
ARGS = ["--attacks", "fgsm,pgd:steps=5", "--eps", "0.05,0.1", "--limit", 100, "--device", "cpu", "--threads", "1", "--certify", "none",
        "--threads", 1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    trained, _, _ = trained_mlp()
    spec = MLPSpec(hidden=100, dropout_input=0.0, dropout_hidden=0.0)
    model = build_model(spec)
    hidden, output = (layer for layer in trained if isinstance(layer, nn.Linear))
    with torch.no_grad():
        model[2].load_state_dict(hidden.state_dict())
        model[5].load_state_dict(output.state_dict())
    path = tmp_path_factory.mktemp("model") / "mlp.safetensors"
    save_model(path, model, spec, record={"dataset": "mnist"})
    return path


def _numbers(record: dict) -> dict:
    """The record without wall times and the reuse count."""
    record = json.loads(json.dumps(record))
    record.pop("seconds")
    record.pop("rows")
    for r in record["results"]:
        for a in r["attacks"]:
            a.pop("seconds")
    return record


def _interrupt_at_second_row(monkeypatch):
    """Make the engine's progress callback raise KeyboardInterrupt when the second attack row starts."""
    real_evaluate = verbs_evaluate.evaluate

    def evaluate(*args, progress=None, **kwargs):
        starts = []

        def interrupt(event):
            if event.stage == "attack" and event.done == 0:
                starts.append(event)
                if len(starts) == 2:
                    raise KeyboardInterrupt

        return real_evaluate(*args, progress=interrupt, **kwargs)

    monkeypatch.setattr(verbs_evaluate, "evaluate", evaluate)


def test_ctrl_c_keeps_finished_rows_and_the_same_command_resumes(model_path, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    with monkeypatch.context() as patch:
        _interrupt_at_second_row(patch)
        code, stdout, err = run(capsys, "evaluate", model_path, *ARGS, "--out", out, "--json")
    assert code == 130
    assert err == f"interrupted; finished attack rows are kept in {out / 'cells'}; run the same command again to resume\n"
    assert stdout == ""
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert not (out / "results.json").exists()
    assert len(list((out / "cells").glob("*.json"))) == 1
    code, stdout, err = run(capsys, "evaluate", model_path, *ARGS, "--out", out, "--json")
    assert code == 0, err
    resumed = json.loads(stdout)
    assert resumed["rows"] == {"total": 4, "reused": 1}
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    code, stdout, err = run(capsys, "evaluate", model_path, *ARGS, "--out", tmp_path / "fresh", "--json")
    fresh = json.loads(stdout)
    assert fresh["rows"] == {"total": 4, "reused": 0}
    assert _numbers(resumed) == _numbers(fresh)
    # once more: everything is reused, and the table says so
    code, stdout, err = run(capsys, "evaluate", model_path, *ARGS, "--out", out)
    assert code == 0 and f"reused 4 of 4 attack rows from {out / 'cells'}; wrote {out / 'results.json'}" in stdout
    # another seed draws other random starts: nothing of the earlier rows may be reused
    code, stdout, err = run(capsys, "evaluate", model_path, *ARGS, "--out", out, "--json", "--seed", 1)
    assert json.loads(stdout)["rows"] == {"total": 4, "reused": 0}


def test_a_rerun_under_another_load_keeps_the_recorded_thread_count_and_its_rows(model_path, tmp_path, capsys, monkeypatch):
    """--threads auto takes the idle cores; a rerun into a folder takes the count its config.toml
    recorded instead, so its rows are reused and its numbers are those of one uninterrupted run."""
    app = importlib.import_module("redblue.cli.app")  # the module (redblue.cli.app is also the Typer app's name)
    auto = [*ARGS[:-4], "--certify", "none", "--threads", "auto"]
    out = tmp_path / "eval"
    monkeypatch.setattr(app, "idle_cores", lambda: 1)  # a busy machine: auto is one thread
    with monkeypatch.context() as patch:
        _interrupt_at_second_row(patch)
        assert run(capsys, "evaluate", model_path, *auto, "--out", out, "--json")[0] == 130
    monkeypatch.setattr(app, "idle_cores", lambda: 2)  # quiet now: a fresh auto run would take two
    code, stdout, err = run(capsys, "evaluate", model_path, *auto, "--out", out, "--json")
    assert code == 0, err
    resumed = json.loads(stdout)
    assert resumed["threads"] == 1 and resumed["rows"] == {"total": 4, "reused": 1}
    code, stdout, err = run(capsys, "evaluate", model_path, *ARGS, "--out", tmp_path / "fresh", "--json")
    assert _numbers(resumed) == _numbers(json.loads(stdout))
    code, stdout, err = run(capsys, "evaluate", model_path, *auto, "--out", tmp_path / "new", "--json")
    assert json.loads(stdout)["threads"] == 2  # a new folder: auto takes the idle cores


def test_ctrl_c_without_out_says_nothing_was_kept(model_path, capsys, monkeypatch):
    _interrupt_at_second_row(monkeypatch)
    code, stdout, err = run(capsys, "evaluate", model_path, *ARGS)
    assert code == 130 and err.startswith("interrupted; nothing was saved") and err.count("\n") == 1


def _without_timings(text: str) -> str:
    return re.sub(r"\d+\.\d+ s|│ \d+\.\d\d +│", "T", text)


def test_a_progress_line_on_a_terminal_only(model_path, capsys, monkeypatch):
    code, plain, err = run(capsys, "evaluate", model_path, *ARGS)
    assert code == 0 and err == ""  # not a terminal (captured): nothing extra on stderr
    monkeypatch.setattr(verbs_evaluate, "interactive", lambda: True)
    code, shown, err = run(capsys, "evaluate", model_path, *ARGS)
    assert code == 0
    assert "robust" in err and "[2/2 2/2] pgd:steps=5 linf eps=0.1" in err
    assert _without_timings(shown) == _without_timings(plain)  # stdout unchanged
    code, stdout, err = run(capsys, "evaluate", model_path, *ARGS, "--json")
    assert code == 0 and err == ""  # --json: no progress line even on a terminal
