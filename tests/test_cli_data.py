"""`redblue data info|verify|fetch`: exit codes, one JSON object on stdout, one error line on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import TEST_LABELS, TRAIN_IMAGES, closed_port_url, http_mirror, tiny_files, write_dataset

from cli_helpers import check_error_stdout, one_error_line, run
from redblue import data

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"



def test_info_json_shows_roots_and_where_each_file_is(env, capsys, monkeypatch):
    write_dataset(env / "arg", tiny_files())
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "env"))
    code, out, err = run(capsys, "data", "info", "--data-dir", str(env / "arg"), "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert [(r["origin"], r["path"], r["exists"]) for r in result["roots"]] == [
        ("--data-dir", str(env / "arg"), True),
        ("REDBLUE_DATA_DIR", str(env / "env"), False),
        ("cache", str(env / "xdg-cache" / "redblue"), False),
    ]
    by_name = {d["name"]: d for d in result["datasets"]}
    assert set(by_name) == {"mnist", "fashion-mnist", "kmnist", "tiny"}
    assert by_name["tiny"]["complete"] and not by_name["mnist"]["complete"]
    first = by_name["tiny"]["files"][0]
    assert first == {
        "filename": TRAIN_IMAGES, "path": str(env / "arg" / "tiny" / f"{TRAIN_IMAGES}.gz"), "origin": "--data-dir"
    }


def test_verify_ok_and_failure(env, capsys):
    folder = write_dataset(env / "root", tiny_files())
    code, out, err = run(capsys, "data", "verify", "tiny", "--data-dir", str(env / "root"), "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["ok"] and [f["check"] for f in result["files"]] == ["sha256"] * 4

    (folder / f"{TEST_LABELS}.gz").write_bytes(b"\x1f\x8b\x08\x00 cut")
    code, out, err = run(capsys, "data", "verify", "tiny", "--data-dir", str(env / "root"), "--json")
    assert code == 2
    result = json.loads(out)
    assert not result["ok"] and [f["status"] for f in result["files"]] == ["ok", "ok", "ok", "corrupt"]
    line = one_error_line(err)
    assert "1 of 4 files failed verification" in line and str(folder / f"{TEST_LABELS}.gz") in line


def test_verify_with_nothing_found_says_where_to_put_files(env, capsys, monkeypatch):
    monkeypatch.delitem(data.DATASETS, "tiny")
    code, out, err = run(capsys, "data", "verify", "--data-dir", str(env / "nothing"))
    assert code == 2 and out == ""
    assert "redblue data fetch mnist" in one_error_line(err)


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="shared MNIST copy not present")
def test_verify_real_mnist(env, capsys, monkeypatch):
    monkeypatch.delitem(data.DATASETS, "tiny")
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(SHARED_DATA))
    code, out, err = run(capsys, "data", "verify", "--json")
    assert code == 0 and err == ""
    files = json.loads(out)["files"]
    assert [(f["dataset"], f["status"], f["check"], f["origin"]) for f in files] == [
        ("mnist", "ok", "sha256", "REDBLUE_DATA_DIR")
    ] * 4


def test_fetch_from_a_mirror_then_again_finds_them_present(env, capsys):
    served = write_dataset(env / "served", tiny_files(), name="files")
    with http_mirror(served) as mirror:
        argv = ["data", "fetch", "tiny", "--data-dir", str(env / "dl"), "--mirror", closed_port_url(),
                "--mirror", mirror.url, "--timeout", "5", "--json"]
        code, out, err = run(capsys, *argv)
        assert code == 0 and err == ""
        result = json.loads(out)
        assert result["target"] == str(env / "dl" / "tiny")
        assert [f["action"] for f in result["files"]] == ["downloaded"] * 4
        code, out, err = run(capsys, *argv)
        assert code == 0 and [f["action"] for f in json.loads(out)["files"]] == ["present"] * 4
        assert len(mirror.requests) == 4


def test_fetch_without_network_is_one_line_and_exit_2(env, capsys):
    code, out, err = run(capsys, "data", "fetch", "tiny", "--mirror", closed_port_url(), "--json")
    line = one_error_line(err)
    assert code == 2
    check_error_stdout(out, line, code, as_json=True)
    assert "could not download tiny/" in line and "to work offline, put the files" in line
    assert str(env / "xdg-cache" / "redblue" / "tiny") in line  # the default target is the cache
    assert not (env / "xdg-cache" / "redblue" / "tiny").exists()


def test_unknown_dataset_is_exit_2(env, capsys):
    code, out, err = run(capsys, "data", "verify", "svhn")
    assert code == 2 and "unknown dataset 'svhn'" in one_error_line(err)
