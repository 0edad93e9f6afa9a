"""The command line's own surface: help shown once, --version, --threads, the JSON error object, Ctrl-C lines."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

from cli_helpers import run
from redblue import __version__
import redblue.cli as cli
from redblue.cli import main
from redblue.errors import ConfigError

cli_app = importlib.import_module("redblue.cli.app")  # the module; `redblue.cli.app` the attribute is the Typer app


@pytest.mark.parametrize("argv", [[], ["data"]], ids=["bare", "data"])
def test_help_is_printed_once(argv):
    result = subprocess.run([sys.executable, "-m", "redblue", *argv], capture_output=True, text=True, timeout=60, check=False)
    shown = result.stdout + result.stderr
    assert shown.count("Usage:") == 1, shown
    assert "Traceback" not in shown


def test_version(capsys):
    code, out, err = run(capsys, "--version")
    assert code == 0 and out == f"redblue {__version__}\n" and err == ""


def test_an_error_with_json_is_one_json_object_on_stdout_too(capsys, tmp_path):
    code, out, err = run(capsys, "evaluate", tmp_path / "missing.safetensors", "--json")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert json.loads(out) == {"error": err.strip().removeprefix("error: "), "exit_code": 2}


def test_an_error_without_json_leaves_stdout_empty(capsys, tmp_path):
    code, out, _ = run(capsys, "evaluate", tmp_path / "missing.safetensors")
    assert code == 2 and out == ""


@pytest.mark.parametrize("text, expected", [("1", 1), ("3", 3)])
def test_threads_take_a_number(text, expected):
    assert cli_app.resolve_threads(text) == expected


@pytest.mark.parametrize(
    "cores, load, expected",
    [(16, 0.0, 4), (2, 0.3, 2), (2, 1.2, 1), (2, 9.5, 1), (8, 5.9, 3), (1, 0.0, 1)],
)
def test_threads_auto_is_the_idle_cores_capped(monkeypatch, cores, load, expected):
    monkeypatch.setattr(cli_app, "available_cores", lambda: cores)
    monkeypatch.setattr(cli_app.os, "getloadavg", lambda: (load, load, load))
    assert cli_app.resolve_threads("auto") == expected


@pytest.mark.parametrize("text", ["0", "-2", "many", ""])
def test_bad_threads_are_refused(text):
    with pytest.raises(ConfigError, match="--threads"):
        cli_app.resolve_threads(text)


def test_apply_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert cli_app.apply_threads("1") == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_interrupt_prints_what_the_verb_said_and_is_reset_between_runs(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        cli_app.set_interrupt_message("interrupted; kept X")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    assert main(["anything"]) == 130
    assert capsys.readouterr().err == "interrupted; kept X\n"

    def interrupted_silently(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted_silently)
    assert main(["anything"]) == 130
    assert capsys.readouterr().err == cli_app.DEFAULT_INTERRUPT_MESSAGE + "\n"
