"""Run folders: the config check that refuses mixing runs, done records, atomic files."""

from __future__ import annotations

import json
import re

import pytest

from redblue.errors import ConfigError
from redblue.runs.store import RunFolder, RunJournal, differing_keys, environment, normalized


def test_prepare_records_the_config_and_recognises_it_again(tmp_path):
    folder = RunFolder(tmp_path / "run")
    config = {"name": "paper", "grid": {"l1": (0.0, 1e-4)}, "subset": None}
    assert folder.prepare(config) is False  # new folder
    assert (tmp_path / "run" / "config.toml").is_file()
    assert folder.prepare(dict(config)) is True  # tuples vs lists and dropped Nones compare equal
    assert normalized(config) == {"name": "paper", "grid": {"l1": [0.0, 1e-4]}}


def test_prepare_refuses_another_config_in_one_line_naming_what_differs(tmp_path):
    folder = RunFolder(tmp_path)
    folder.prepare({"train": {"epochs": 3, "lr": 1e-3}, "seeds": 1})
    with pytest.raises(ConfigError) as info:
        folder.prepare({"train": {"epochs": 5, "lr": 1e-3}, "seeds": 1})
    message = str(info.value)
    assert "\n" not in message
    assert "train.epochs" in message and "lr" not in message.split("differs in:")[1].split(")")[0]
    # the stored config is untouched by the refusal
    assert RunFolder(tmp_path).prepare({"train": {"epochs": 3, "lr": 1e-3}, "seeds": 1}) is True


def test_prepare_with_force_replaces_the_config(tmp_path):
    folder = RunFolder(tmp_path)
    folder.prepare({"epochs": 3})
    assert folder.prepare({"epochs": 5}, force=True) is False
    assert folder.prepare({"epochs": 5}) is True


def test_differing_keys_lists_changed_added_and_removed_keys():
    a = {"x": 1, "t": {"a": 1, "b": 2}, "gone": 0}
    b = {"x": 1, "t": {"a": 1, "b": 3}, "new": 0}
    assert differing_keys(a, b) == ["gone", "new", "t.b"]
    assert differing_keys(a, a) == []


def test_a_cell_is_done_only_when_its_record_and_every_artefact_it_lists_exist(tmp_path):
    folder = RunFolder(tmp_path)
    folder.prepare({"name": "x"})
    assert folder.read_cell("c0ffee") is None
    record = {"id": "c0ffee", "metrics": {"accuracy": 0.5}, "artefacts": ["models/c0ffee.safetensors"]}
    folder.write_cell("c0ffee", record)
    assert folder.read_cell("c0ffee") is None  # record without its model: not done
    assert folder.write_artefact(folder.model_path("c0ffee"), b"weights") == "models/c0ffee.safetensors"
    assert folder.read_cell("c0ffee") == record
    folder.cell_path("c0ffee").write_text("{truncated")
    assert folder.read_cell("c0ffee") is None  # unreadable record: redo the cell
    for listed in (["../outside.bin"], ["/etc/passwd"], "models/c0ffee.safetensors"):
        folder.write_cell("c0ffee", {**record, "artefacts": listed})
        assert folder.read_cell("c0ffee") is None  # only files inside the folder, listed as a list, count


def test_run_json_follows_a_run_through_its_invocations(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    first = RunJournal(folder, kind="reproduce", name="paper-quick", device="cpu", executor="local")
    run = folder.read_run()
    assert {k: run[k] for k in ("kind", "name", "status", "finished", "device")} == {
        "kind": "reproduce", "name": "paper-quick", "status": "running", "finished": None, "device": "cpu"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["started"]) and run["host"] and run["redblue"]
    first.cell_done(computed=True)
    first.cell_done(computed=True)
    (entry,) = folder.read_run()["invocations"]  # written at each cell: a kill -9 keeps the counts and the time so far
    assert (entry["computed"], entry["reused"], entry["status"], entry["executor"]) == (2, 0, "running", "local")
    first.finish("failed", error="interrupted")
    second = RunJournal(folder, kind="reproduce", name="paper-quick", device="cpu")
    second.cell_done(computed=False)
    second.finish("done")
    run = folder.read_run()
    assert run["status"] == "done" and run["started"] == first.run["started"]  # the run began with its first invocation
    assert [(i["computed"], i["reused"], i["status"]) for i in run["invocations"]] == [(2, 0, "failed"), (0, 1, "done")]
    assert run["invocations"][0]["error"] == "interrupted" and second.earlier_invocations == run["invocations"][:1]


def test_writes_leave_no_temporary_files(tmp_path):
    folder = RunFolder(tmp_path)
    folder.prepare({"a": 1})
    folder.write_json("results.json", {"n": 1.5})
    folder.write_text("report.md", "# r\n")
    folder.write_cell("c", {"k": [1, 2]})
    RunJournal(folder, kind="sweep", name="s", device="cpu").finish("done")
    assert json.loads((tmp_path / "results.json").read_text()) == {"n": 1.5}
    names = [p.name for p in tmp_path.rglob("*")]
    assert not [n for n in names if n.startswith(".") or n.endswith(".part")]


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "l1=0"])
def test_cell_names_cannot_escape_the_folder(tmp_path, name):
    with pytest.raises(ConfigError):
        RunFolder(tmp_path).cell_path(name)
    with pytest.raises(ConfigError):
        RunFolder(tmp_path).artefact_path(name or "..", "c0ffee", ".bin")
    with pytest.raises(ConfigError):
        RunFolder(tmp_path).artefact_path("models", "c0ffee", f"/{name}")


def test_an_unwritable_out_folder_fails_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write to"):
        RunFolder(blocker / "run").prepare({"a": 1})


def test_a_read_only_folder_fails_in_one_line(tmp_path, monkeypatch):
    # chmod does not stop root, so the refusal is simulated where the folder is probed
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("redblue.runs.store.tempfile.mkstemp", denied)
    with pytest.raises(ConfigError, match="cannot write to"):
        RunFolder(tmp_path).prepare({"a": 1})


def test_environment_records_versions_and_extras():
    env = environment(device="cpu", seeds=[0, 1])
    assert env["device"] == "cpu" and env["seeds"] == [0, 1]
    assert env["versions"]["torch"] != "not installed"
    assert {"python", "redblue", "safetensors"} <= set(env["versions"])
