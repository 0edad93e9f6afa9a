"""`redblue data info|verify|fetch`: exit codes, one JSON object on stdout, one error line on stderr."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from data_fixtures import TEST_LABELS, TRAIN_IMAGES, closed_port_url, http_mirror, tiny_files, tiny_spec, write_dataset

from cli_helpers import check_error_stdout, one_error_line, run
from redblue import data
from redblue.cli import verbs_data
from redblue.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"



def test_info_json_shows_roots_and_where_each_file_is(env, capsys, monkeypatch):
    write_dataset(env / "env", tiny_files())
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "env"))
    code, out, err = run(capsys, "data", "info", "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert [(r["origin"], r["path"], r["exists"]) for r in result["roots"]] == [
        ("REDBLUE_DATA_DIR", str(env / "env"), True),
        ("cache", str(env / "xdg-cache" / "redblue"), False),
    ]
    assert result["env"] == {"REDBLUE_DATA_DIR": str(env / "env")}
    by_name = {d["name"]: d for d in result["datasets"]}
    assert set(by_name) == {"mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "tiny"}
    assert by_name["tiny"]["complete"] and not by_name["mnist"]["complete"]
    first = by_name["tiny"]["files"][0]
    assert first == {
        "filename": TRAIN_IMAGES, "path": str(env / "env" / "tiny" / f"{TRAIN_IMAGES}.gz"), "origin": "REDBLUE_DATA_DIR"
    }


def test_info_with_a_data_dir_searches_only_it_and_says_so(env, capsys, monkeypatch):
    write_dataset(env / "env", tiny_files())
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "env"))
    code, out, err = run(capsys, "data", "info", "--data-dir", str(env / "arg"))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[:2] == ["searched, in this order:", f"  --data-dir: {env / 'arg'} (does not exist)"]
    assert "tiny: 0/4 files found" in lines  # the environment's copy is not used
    assert lines[-1].startswith("with --data-dir only that root is searched; ")
    assert f"`redblue data fetch NAME --data-dir {env / 'arg'}` downloads there" in lines[-1]


def test_info_outside_make_says_where_it_looked_and_how_to_point_at_data(env, capsys):
    # a newcomer after `make reproduce`: no REDBLUE_DATA_DIR, an empty cache
    code, out, err = run(capsys, "data", "info")
    assert code == 0 and err == ""
    lines = out.splitlines()
    cache = env / "xdg-cache" / "redblue"
    assert lines[:3] == ["searched, in this order:", f"  cache: {cache} (does not exist)", "  (REDBLUE_DATA_DIR is not set)"]
    assert "mnist: 0/4 files found" in lines
    assert lines[-1] == (
        "to use data from elsewhere, pass --data-dir DIR (with DIR/mnist/*.gz; then only DIR is searched) "
        f"or set REDBLUE_DATA_DIR=DIR; `redblue data fetch NAME` downloads into {cache}"
    )


def test_verify_ok_and_failure(env, capsys):
    folder = write_dataset(env / "root", tiny_files())
    code, out, err = run(capsys, "data", "verify", "tiny", "--data-dir", str(env / "root"), "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["ok"] and [(f["status"], f["check"]) for f in result["files"]] == [("good", "sha256")] * 4

    (folder / f"{TEST_LABELS}.gz").write_bytes(b"\x1f\x8b\x08\x00 cut")
    (folder / f"{TRAIN_IMAGES}.gz").unlink()
    code, out, err = run(capsys, "data", "verify", "tiny", "--data-dir", str(env / "root"), "--json")
    assert code == 2
    result = json.loads(out)
    assert not result["ok"] and [f["status"] for f in result["files"]] == ["missing", "good", "good", "corrupt"]
    line = one_error_line(err)
    assert "2 of 4 files are not good (1 corrupt, 1 missing); first: tiny files not found in " in line
    assert f"run `redblue data fetch tiny --data-dir {env / 'root'}`" in line


def test_verify_reports_an_unverifiable_copy_as_unverified_not_corrupt(env, capsys, monkeypatch):
    files = tiny_files()
    folder = write_dataset(env / "root", files)
    gz_md5 = hashlib.md5((folder / f"{TEST_LABELS}.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(files, kinds={TEST_LABELS: "none"}, gz_md5={TEST_LABELS: gz_md5}))
    (folder / f"{TEST_LABELS}.gz").unlink()
    (folder / TEST_LABELS).write_bytes(files[TEST_LABELS])  # gunzipped: well-formed, no digest applies
    code, out, err = run(capsys, "data", "verify", "tiny", "--data-dir", str(env / "root"))
    assert code == 2
    assert out.splitlines()[-1] == f"unverified tiny/{TEST_LABELS}: {folder / TEST_LABELS} (--data-dir)"
    line = one_error_line(err)
    assert line.startswith(f"error: 1 of 4 files are not good (1 unverified); first: {folder / TEST_LABELS} is unverified")
    assert "corrupt" not in line and f"redblue data fetch tiny --data-dir {env / 'root'}" in line


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
        ("mnist", "good", "sha256", "REDBLUE_DATA_DIR")
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
    assert not (env / "xdg-cache").exists()  # nothing new on disk


def test_unknown_dataset_is_exit_2(env, capsys):
    code, out, err = run(capsys, "data", "verify", "svhn")
    assert code == 2 and "unknown dataset 'svhn'" in one_error_line(err)


@pytest.mark.parametrize("name", ["tiny", None])
def test_verify_with_a_data_dir_does_not_fall_through_to_the_environment(env, capsys, monkeypatch, name):
    write_dataset(env / "env", tiny_files())
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "env"))
    (env / "empty").mkdir()
    argv = ["data", "verify", *([name] if name else []), "--data-dir", str(env / "empty")]
    code, out, err = run(capsys, *argv)
    assert code == 2
    line = one_error_line(err)
    dataset = name or "mnist"
    assert f"{dataset} files not found in {env / 'empty' / dataset} (--data-dir)" in line
    assert f"run `redblue data fetch {dataset} --data-dir {env / 'empty'}`" in line
    assert str(env / "env") not in out + err
    code, out, err = run(capsys, "data", "verify", "tiny")  # without --data-dir: the environment's copy
    assert code == 0 and err == ""


# ---------------------------------------------------------------------------------------------
# require_dataset: what the verbs that load data call, to download on first use with consent


def test_require_dataset_without_consent_is_one_line_naming_the_flag(env, monkeypatch):
    monkeypatch.delenv("REDBLUE_DOWNLOAD", raising=False)
    with pytest.raises(DataError) as exc:
        verbs_data.require_dataset("tiny", data_dir=env / "root")  # stdin is not a terminal under pytest
    assert "\n" not in str(exc.value) and "--download (or REDBLUE_DOWNLOAD=1)" in str(exc.value)
    assert not (env / "root").exists()


@pytest.mark.parametrize("consent", ["flag", "env", "yes on a terminal"])
def test_require_dataset_downloads_with_consent(env, monkeypatch, consent):
    monkeypatch.delenv("REDBLUE_DOWNLOAD", raising=False)
    questions = []
    if consent == "env":
        monkeypatch.setenv("REDBLUE_DOWNLOAD", "1")
    if consent == "yes on a terminal":
        monkeypatch.setattr(verbs_data, "_may_ask", lambda: True)
        monkeypatch.setattr(verbs_data.typer, "confirm", lambda text, **kw: questions.append((text, kw)) or True)
    with http_mirror(write_dataset(env / "served", tiny_files(), name="files")) as mirror:
        monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(mirrors=(mirror.url,)))
        verbs_data.require_dataset("tiny", data_dir=env / "root", download=consent == "flag")
        assert len(mirror.requests) == 4
    assert len(data.load_dataset("tiny", "train", data_dir=env / "root")) == 3
    if consent == "yes on a terminal":
        [(text, kw)] = questions
        assert text.startswith("tiny: 4 file(s) missing; download them") and str(env / "root" / "tiny") in text
        assert kw == {"default": False, "err": True}


def test_require_dataset_a_no_on_a_terminal_is_a_refusal(env, monkeypatch):
    monkeypatch.delenv("REDBLUE_DOWNLOAD", raising=False)
    monkeypatch.setattr(verbs_data, "_may_ask", lambda: True)
    monkeypatch.setattr(verbs_data.typer, "confirm", lambda text, **kw: False)
    with pytest.raises(DataError, match="--download"):
        verbs_data.require_dataset("tiny", data_dir=env / "root")
    assert not (env / "root").exists()


@pytest.mark.parametrize(("stdin_tty", "stderr_tty", "ci", "asks"), [
    (True, True, None, True),
    (True, True, "true", False),  # never a question in CI, even on a terminal
    (False, True, None, False),  # piped input: nobody to answer
    (True, False, None, False),  # stderr redirected: nobody sees the question
])
def test_require_dataset_asks_only_a_person_at_a_terminal(monkeypatch, stdin_tty, stderr_tty, ci, asks):
    monkeypatch.setattr(verbs_data.sys.stdin, "isatty", lambda: stdin_tty, raising=False)
    monkeypatch.setattr(verbs_data.sys.stderr, "isatty", lambda: stderr_tty, raising=False)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert verbs_data._may_ask() is asks


def test_require_dataset_does_nothing_when_the_files_are_there(env, monkeypatch):
    write_dataset(env / "root", tiny_files())
    monkeypatch.setattr(verbs_data, "_may_ask", lambda: pytest.fail("asked although nothing is missing"))
    verbs_data.require_dataset("tiny", data_dir=env / "root")


@pytest.mark.parametrize(("verb", "argv"), [
    ("train", ["train", "--epochs", "1", "--out", "{tmp}/m.safetensors"]),
    ("reproduce", ["reproduce", "--out", "{tmp}/run"]),
    ("evaluate", ["evaluate", "{model}", "--out", "{tmp}/eval"]),
    ("evaluate", ["attack", "{model}", "--attack", "fgsm:eps=0.1", "--out", "{tmp}/adv"]),
])
@pytest.mark.parametrize("flag", [True, False])
def test_verbs_that_load_data_pass_download_consent_before_any_work(capsys, monkeypatch, tmp_path, verb, argv, flag):
    """Every verb that loads a dataset calls require_dataset before any work, with --download as the consent."""
    import importlib

    from redblue.models import build_model, parse_model, save_model

    spec = parse_model("mlp:hidden=8")
    model_dir = tmp_path.parent / f"{tmp_path.name}-model"
    save_model(model_dir / "m.safetensors", build_model(spec), spec)
    module = importlib.import_module(f"redblue.cli.verbs_{verb}")
    calls = []

    def refuse(name, *, data_dir, download=False, splits=data.SPLITS):
        calls.append((name, data_dir, download))
        raise DataError("no data here (recorded by the test)")

    monkeypatch.setattr(module, "require_dataset", refuse)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{model}", str(model_dir / "m.safetensors")) for a in argv]
    args += ["--data-dir", str(tmp_path / "root")]
    code, out, err = run(capsys, *args, *(["--download"] if flag else []))
    assert code == 2 and one_error_line(err) == "error: no data here (recorded by the test)"
    assert calls == [("mnist", tmp_path / "root", flag)]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written before the data is there
