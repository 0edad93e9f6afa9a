"""`redblue runs`, `runs show`, `runs --rebuild`, `leaderboard` and `report` end to end on a folder of real runs."""

from __future__ import annotations

import csv
import io
import json

import pytest
from cli_helpers import check_error_stdout, one_error_line, run
from run_fixtures import copy_runs, real_runs  # noqa: F401 (fixture)

import redblue.cli.verbs_runs  # noqa: F401  (registers the verbs until cli/__init__ imports it)
from redblue.report.markdown import render_markdown


@pytest.fixture
def runs(real_runs, tmp_path):  # noqa: F811
    return copy_runs(real_runs, tmp_path)


def test_runs_lists_filters_and_shows_real_runs(capsys, runs):
    code, out, err = run(capsys, "runs", "--root", runs.root, "--json")
    assert (code, err) == (0, "")
    listed = json.loads(out)
    assert {r["path"]: r["kind"] for r in listed["runs"]} == {
        "reproduce-tiny": "reproduce", "evaluate-a": "evaluate", "evaluate-a-fgsm": "evaluate", "evaluate-b": "evaluate",
        "attack-a": "attack"}
    assert listed["sync"]["added"] == 5
    code, out, _ = run(capsys, "runs", "--root", runs.root, "--kind", "evaluate", "--since", "2000-01-01", "--json")
    assert sorted(r["path"] for r in json.loads(out)["runs"]) == ["evaluate-a", "evaluate-a-fgsm", "evaluate-b"]
    code, out, _ = run(capsys, "runs", "--root", runs.root, "--since", "2999-01-01")
    assert (code, out) == (0, f"no runs in {runs.root} match the filters\n")

    code, out, _ = run(capsys, "runs", "--root", runs.root)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "kind", "folder"] and len(lines) == 6
    reproduce_id = next(r["id"] for r in listed["runs"] if r["kind"] == "reproduce")
    code, out, _ = run(capsys, "runs", "show", reproduce_id[:6], "--root", runs.root, "--json")
    shown = json.loads(out)
    assert (code, shown["path"], len(shown["cells"])) == (0, "reproduce-tiny", 2)
    results = runs.results("reproduce-tiny")
    assert {c["id"] for c in shown["cells"]} == {c["id"] for c in results["cells"]}
    code, out, _ = run(capsys, "runs", "show", "reproduce-tiny", "--root", runs.root)
    assert code == 0 and reproduce_id in out and "2 cell(s)" in out


def test_runs_rebuild_recreates_a_deleted_index(capsys, runs):
    run(capsys, "runs", "--root", runs.root)
    (runs.root / "index.sqlite").unlink()
    code, out, _ = run(capsys, "runs", "--root", runs.root, "--rebuild")
    assert code == 0 and out.splitlines()[0] == f"rebuilt {runs.root / 'index.sqlite'} from 5 run folders"
    code, out, _ = run(capsys, "runs", "--root", runs.root, "--rebuild", "--json")
    assert json.loads(out)["rebuilt"] is True and len(json.loads(out)["runs"]) == 5


def test_leaderboard_formats_agree_with_the_evaluations(capsys, runs):
    code, out, _ = run(capsys, "leaderboard", "--root", runs.root, "--json")
    board = json.loads(out)
    assert (code, board["norm"], board["eps"]) == (0, "linf", 0.1)
    a = [runs.results("evaluate-a"), runs.results("evaluate-a-fgsm")]
    worst_a = min(r["results"][1]["worst_case"]["accuracy"] for r in a)
    worst_b = runs.results("evaluate-b")["results"][0]["worst_case"]["accuracy"]
    assert {r["model"]: r["worst_case_accuracy"] for r in board["rows"]} == {str(runs.model_a): worst_a, str(runs.model_b): worst_b}

    code, out, _ = run(capsys, "leaderboard", "--root", runs.root, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["rank"], r["model"], float(r["worst_case_accuracy"])) for r in rows] == [
        (str(row["rank"]), row["model"], row["worst_case_accuracy"]) for row in board["rows"]]

    code, out, _ = run(capsys, "leaderboard", "--root", runs.root, "--format", "md", "--eps", "0.2")
    lines = out.splitlines()
    worst_02 = runs.results("evaluate-a")["results"][2]["worst_case"]["accuracy"]
    assert lines[0] == "**Worst-case robust accuracy at linf eps 0.2**"
    assert lines[2].startswith("| rank | model | worst case | certified |") and len(lines) == 5
    assert lines[4].startswith(f"| 1 | {runs.model_a} | {min(worst_02, runs.results('evaluate-a-fgsm')['results'][2]['worst_case']['accuracy']):.2%} |")

    code, out, _ = run(capsys, "leaderboard", "--root", runs.root)
    assert code == 0 and "Worst-case robust accuracy at linf eps 0.1" in out


def test_report_regenerates_both_files_from_results_alone(capsys, runs, monkeypatch):
    import redblue.models

    def no_model(*args, **kwargs):
        raise AssertionError("the report must not load a model")

    monkeypatch.setattr(redblue.models, "load_model", no_model)
    folder = runs.root / "reproduce-tiny"
    written_by_reproduce = (folder / "report.md").read_text()
    (folder / "report.md").unlink()
    code, out, _ = run(capsys, "report", folder)
    assert (code, out) == (0, f"wrote {folder / 'report.md'} and {folder / 'report.html'}\n")
    assert (folder / "report.md").read_text() == written_by_reproduce == render_markdown(runs.results("reproduce-tiny"))
    assert (folder / "report.html").read_text().startswith("<!DOCTYPE html>")
    code, out, _ = run(capsys, "report", runs.root / "evaluate-a", "--json")
    assert code == 0 and set(json.loads(out)["files"]) == {"markdown", "html"}
    assert "| fgsm |" in (runs.root / "evaluate-a" / "report.md").read_text()


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(
    "argv, message",
    [
        (("runs", "--kind", "bogus"), "unknown --kind 'bogus'; choose one of: reproduce, evaluate, arena, sweep, train, attack"),
        (("runs", "--since", "last week"), "--since must be a date or time such as 2026-11-01"),
        (("runs", "show", "zzz"), "no run 'zzz' in"),
        (("leaderboard", "--format", "xml"), "unknown --format 'xml'; choose one of: table, md, csv"),
        (("leaderboard", "--eps", "0.3"), "no model was evaluated at eps 0.3"),
        (("report", "{root}/nowhere"), "is not a folder"),
        (("report", "{root}/reproduce-tiny/cells"), "holds no results.json"),
        (("report", "{root}/attack-a", "--samples", "0,99"), "--samples 99 is out of range; this run saved 16 samples"),
        (("report", "{root}/attack-a", "--samples", "a,b"), "--samples must be comma-separated integers"),
    ],
)
def test_bad_input_is_one_error_line(capsys, runs, argv, message, as_json):
    argv = [a.format(root=runs.root) for a in argv]
    if argv[0] in ("runs", "leaderboard"):
        argv += ["--root", str(runs.root)]
    code, out, err = run(capsys, *argv, *(["--json"] if as_json else []))
    line = one_error_line(err)
    assert code == 2 and message in line, line
    check_error_stdout(out, line, code, as_json=as_json)


def test_a_missing_runs_folder_or_corrupt_results_are_one_error_line(capsys, runs, tmp_path):
    code, out, err = run(capsys, "runs", "--root", tmp_path / "none")
    assert code == 2 and one_error_line(err) == f"error: no runs folder at {tmp_path / 'none'}; give the folder that holds the run folders (--root)"
    html = runs.root / "evaluate-b" / "report.html"
    written_by_evaluate = html.read_bytes()
    (runs.root / "evaluate-b" / "results.json").write_text("[1, 2")
    code, out, err = run(capsys, "report", runs.root / "evaluate-b")
    assert code == 2 and "results.json is not readable JSON" in one_error_line(err)
    assert html.read_bytes() == written_by_evaluate  # the failed regeneration left the run's report as it was
    code, out, err = run(capsys, "runs", "--root", runs.root)
    assert code == 0 and err.startswith("warning: skipped evaluate-b:") and "evaluate-b" not in out
