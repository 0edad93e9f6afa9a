"""The run index on real runs: kinds inferred, numbers copied exactly, rebuilt identically, concurrent writers lose nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from run_fixtures import EVAL_EPS, copy_runs, real_runs  # noqa: F401 (fixture)

from redblue.config import tomllib
from redblue.runs import index, ranking
from redblue.runs.folders import normalize_time

REAL_KINDS = {"reproduce-tiny": "reproduce", "evaluate-a": "evaluate", "evaluate-a-fgsm": "evaluate",
              "evaluate-b": "evaluate", "attack-a": "attack"}


def _rows(root) -> dict[str, list[tuple]]:
    """Every row of every table, minus the time each run was indexed."""
    with sqlite3.connect(index.index_path(root)) as conn:
        dump = {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall()) for table in ("cells", "evaluations")}
        columns = [c[1] for c in conn.execute("PRAGMA table_info(runs)")]
        keep = [c for c in columns if c != "indexed"]
        dump["runs"] = sorted(conn.execute(f"SELECT {', '.join(keep)} FROM runs").fetchall())
    return dump


def _write_run(folder, *, kind="sweep", status="running", started="2026-11-27T10:00:00+02:00", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    run = {"kind": kind, "name": folder.name, "status": status, "started": started, "host": "box", "device": "cuda:0",
           "redblue": "9.9", **extra}
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def _write_cell(folder, i, accuracy):
    record = {"id": f"cell-{i:03d}", "config": {"i": i}, "metrics": {"accuracy": accuracy, "label": "x"}}
    (folder / "cells").mkdir(exist_ok=True)
    (folder / "cells" / f"cell-{i:03d}.json").write_text(json.dumps(record))
    return record


@pytest.fixture
def runs(real_runs, tmp_path):  # noqa: F811
    return copy_runs(real_runs, tmp_path)


def test_rebuild_reads_every_real_run_and_copies_its_numbers_exactly(runs):
    report = index.rebuild(runs.root)
    assert (report.added, report.skipped) == (5, ())
    listed = {run.path: run for run in index.list_runs(runs.root)}
    assert {path: run.kind for path, run in listed.items()} == REAL_KINDS
    assert all(run.status == "done" and run.device == "cpu" for run in listed.values())
    # evaluate --out and reproduce write run.json (the run-folder contract); attack's kind is inferred from its files
    assert {path for path, run in listed.items() if not run.inferred} == {"evaluate-a", "evaluate-a-fgsm", "evaluate-b",
                                                                          "reproduce-tiny"}

    reproduce = listed["reproduce-tiny"]
    results = runs.results("reproduce-tiny")
    chosen = next(m for m in results["models"] if (m["l1"], m["l2"]) == (1e-4, 0.0))
    assert reproduce.metrics["clean_accuracy"] == chosen["curve"][0]["accuracy"]["mean"]
    assert reproduce.n_cells == len(list((runs.root / "reproduce-tiny" / "cells").glob("*.json"))) == 2
    run_json = json.loads((runs.root / "reproduce-tiny" / "run.json").read_text())
    assert (reproduce.started, reproduce.finished) == (normalize_time(run_json["started"]), normalize_time(run_json["finished"]))
    config = tomllib.loads((runs.root / "reproduce-tiny" / "config.toml").read_text())
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    assert reproduce.config_hash == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert reproduce.id == hashlib.sha256(b"reproduce-tiny").hexdigest()[:12]

    evaluation = runs.results("evaluate-a")
    for row in evaluation["results"]:
        assert listed["evaluate-a"].metrics[f"worst_case@{row['eps']:g}"] == row["worst_case"]["accuracy"]
        assert listed["evaluate-a"].metrics[f"certified@{row['eps']:g}"] == row["certified"]["accuracy"]
    attack = runs.results("attack-a")
    assert listed["attack-a"].metrics["adversarial_accuracy"] == attack["adversarial"]["accuracy"]

    cells = index.find_run(runs.root, "reproduce-tiny").cells
    for cell in cells:
        record = json.loads((runs.root / "reproduce-tiny" / cell["record_path"]).read_text())
        assert cell["id"] == record["id"] and cell["artefact_path"] == f"models/{record['id']}.safetensors"
        assert cell["metrics"]["clean_accuracy"] == record["metrics"]["curve"][0]["accuracy"]


def test_the_index_is_wal_and_a_deleted_database_is_rebuilt_row_for_row(runs):
    index.rebuild(runs.root)
    with sqlite3.connect(index.index_path(runs.root)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    before = _rows(runs.root)
    for suffix in ("", "-wal", "-shm"):
        (runs.root / f"index.sqlite{suffix}").unlink(missing_ok=True)
    assert index.rebuild(runs.root).added == 5
    assert _rows(runs.root) == before


def test_a_corrupt_database_is_one_clear_error_and_rebuild_recovers(runs):
    index.index_path(runs.root).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(index.RunIndexError, match=r"not a usable run index \(file is not a database\).*`redblue runs --rebuild`"):
        index.list_runs(runs.root)
    assert index.rebuild(runs.root).added == 5


def test_sync_reads_new_and_changed_folders_and_drops_vanished_ones(runs, tmp_path):
    index.sync(runs.root)
    assert index.sync(runs.root) == index.SyncReport(unchanged=5)
    shutil.rmtree(runs.root / "evaluate-b")
    _write_run(runs.root / "group" / "new-sweep")
    report = index.sync(runs.root)
    assert (report.added, report.removed, report.unchanged) == (1, 1, 4)
    assert {run.path for run in index.list_runs(runs.root)} == set(REAL_KINDS) - {"evaluate-b"} | {"group/new-sweep"}


def test_a_folder_that_cannot_be_read_is_skipped_with_its_reason(runs):
    (runs.root / "evaluate-a-fgsm" / "results.json").write_text("{ half a file")
    report = index.rebuild(runs.root)
    assert report.added == 4
    assert [path for path, _ in report.skipped] == ["evaluate-a-fgsm"]
    assert "not readable JSON" in report.skipped[0][1]


def test_upsert_run_and_upsert_cell_follow_a_run_from_start_to_end(tmp_path):
    root = tmp_path / "runs"
    folder = _write_run(root / "sweep-1")
    assert index.upsert_run(folder) == index.run_id("sweep-1")  # root: the folder's parent
    run = index.find_run(root, "sweep-1")
    assert (run.status, run.started, run.host, run.device, run.n_cells, run.inferred) == (
        "running", "2026-11-27T08:00:00Z", "box", "cuda:0", 0, False)
    for i in range(3):
        assert index.upsert_cell(folder, _write_cell(folder, i, i / 4)) == f"cell-{i:03d}"
    index.upsert_cell(folder, _write_cell(folder, 1, 0.9))  # a cell recomputed: replaced, not added
    run = index.find_run(root, "sweep-1")
    assert run.n_cells == 3
    assert [c["metrics"] for c in run.cells] == [{"accuracy": 0.0, "label": "x"}, {"accuracy": 0.9, "label": "x"},
                                                 {"accuracy": 0.5, "label": "x"}]
    _write_run(folder, status="done", finished="2026-11-27T09:30:00Z")
    (folder / "results.json").write_text(json.dumps({"summary": {"best_accuracy": 0.9, "note": "ok", "nested": {"x": 1}}}))
    index.upsert_run(folder)
    run = index.find_run(root, "sweep-1")
    assert (run.status, run.finished, run.n_cells, run.metrics) == ("done", "2026-11-27T09:30:00Z", 3,
                                                                    {"best_accuracy": 0.9, "note": "ok"})


def test_upsert_cell_of_an_unindexed_run_indexes_the_run_and_a_nested_run_finds_the_root_index(tmp_path):
    root = tmp_path / "runs"
    index.rebuild(_write_run(root / "first").parent)  # runs/index.sqlite exists now
    folder = _write_run(root / "arena" / "round-1", kind="arena")
    index.upsert_cell(folder, _write_cell(folder, 0, 0.5))
    run = index.find_run(root, "arena/round-1")
    assert (run.kind, run.n_cells) == ("arena", 1)
    assert not (root / "arena" / "index.sqlite").exists()


def test_list_runs_filters_by_kind_status_and_start(tmp_path):
    root = tmp_path / "runs"
    _write_run(root / "old", started="2026-10-31T23:59:59Z", status="done")
    _write_run(root / "new", started="2026-11-01T00:00:00Z", kind="arena", status="failed")
    _write_run(root / "newer", started="2026-11-02T12:00:00-05:00", kind="arena")
    index.sync(root)
    assert [r.name for r in index.list_runs(root)] == ["newer", "new", "old"]  # newest first
    assert [r.name for r in index.list_runs(root, kind="arena", since="2026-11-01")] == ["newer", "new"]
    assert [r.name for r in index.list_runs(root, since="2026-11-02T17:00:00Z")] == ["newer"]
    assert [r.name for r in index.list_runs(root, since="2026-11-02T17:00:01Z")] == []
    assert [r.name for r in index.list_runs(root, status="failed")] == ["new"]
    assert normalize_time("2026-11-02T12:00:00-05:00") == "2026-11-02T17:00:00Z"


def test_find_run_takes_an_id_prefix_a_path_or_a_name_and_refuses_an_ambiguous_one(runs):
    index.sync(runs.root)
    run_id = index.run_id("evaluate-b")
    assert index.find_run(runs.root, run_id[:8]).path == "evaluate-b"
    assert index.find_run(runs.root, "evaluate-a").path == "evaluate-a"  # exact beats prefix
    assert index.find_run(runs.root, "attack").path == "attack-a"
    with pytest.raises(index.RunIndexError, match="matches 3 runs"):
        index.find_run(runs.root, "evaluate")
    with pytest.raises(index.RunIndexError, match="no run 'zzz'"):
        index.find_run(runs.root, "zzz")
    with pytest.raises(index.RunIndexError, match="no run '%'"):  # LIKE wildcards are literal
        index.find_run(runs.root, "%")


def test_leaderboard_ranks_models_by_their_lowest_worst_case_with_the_highest_certificate(runs):
    index.sync(runs.root)
    board = ranking.leaderboard(runs.root)
    assert (board.norm, board.eps) == ("linf", 0.1)  # the only eps both models were evaluated at
    assert board.available == tuple(("linf", e, 2 if e == 0.1 else 1) for e in EVAL_EPS)
    a_runs = [runs.results("evaluate-a"), runs.results("evaluate-a-fgsm")]
    b_run = runs.results("evaluate-b")

    def at(results, eps):
        return next(r for r in results["results"] if r["eps"] == eps)

    expected = {
        str(runs.model_a): (min(at(r, 0.1)["worst_case"]["accuracy"] for r in a_runs),
                            max(at(r, 0.1)["certified"]["accuracy"] for r in a_runs), a_runs[0]["clean"]["accuracy"], 2),
        str(runs.model_b): (at(b_run, 0.1)["worst_case"]["accuracy"], at(b_run, 0.1)["certified"]["accuracy"],
                            b_run["clean"]["accuracy"], 1),
    }
    got = {r["model"]: (r["worst_case_accuracy"], r["certified_accuracy"], r["clean_accuracy"], len(r["runs"])) for r in board.rows}
    assert got == expected
    assert [r["worst_case_accuracy"] for r in board.rows] == sorted((v[0] for v in expected.values()), reverse=True)
    assert [r["rank"] for r in board.rows] == [1, 2]
    only_a = ranking.leaderboard(runs.root, eps=0.2)
    assert [r["model"] for r in only_a.rows] == [str(runs.model_a)]
    with pytest.raises(index.RunIndexError, match="no model was evaluated at eps 0.3; evaluated: linf 0.05, linf 0.1, linf 0.2"):
        ranking.leaderboard(runs.root, eps=0.3)


WRITER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from redblue.runs.index import upsert_cell, upsert_run
    root, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    mine, shared = root / name, root / "shared"
    for folder in (mine, shared):
        (folder / "cells").mkdir(parents=True, exist_ok=True)
    (mine / "run.json").write_text(json.dumps({"kind": "sweep", "name": name, "status": "running"}))
    (root / f"ready-{name}").touch()
    while not (root / "go").exists():
        time.sleep(0.001)
    upsert_run(mine, root=root)
    for i in range(n):
        for folder in (mine, shared):
            record = {"id": f"{name}-{i:03d}", "config": {"i": i}, "metrics": {"accuracy": i / n}}
            part = folder / "cells" / f".{name}-{i:03d}.json.part"  # atomically, as redblue.runs.store writes: the
            part.write_text(json.dumps(record))                        # other writer may read the shared folder now
            os.replace(part, folder / "cells" / f"{name}-{i:03d}.json")
            upsert_cell(folder, record, root=root)
    upsert_run(mine, root=root)
""")


def test_two_processes_writing_at_once_lose_no_rows(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "shared").mkdir()
    (root / "shared" / "run.json").write_text(json.dumps({"kind": "sweep", "name": "shared", "status": "running"}))
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n = 60
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [subprocess.Popen([sys.executable, str(script), str(root), name, str(n)], env=env, stderr=subprocess.PIPE)
               for name in ("left", "right")]
    deadline = time.monotonic() + 60
    while not all((root / f"ready-{name}").exists() for name in ("left", "right")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (root / "go").touch()  # both start writing together, into an index neither has created yet
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()
    counts = {run.path: run.n_cells for run in index.list_runs(root)}
    assert counts == {"left": n, "right": n, "shared": 2 * n}
    with sqlite3.connect(index.index_path(root)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 4 * n


def test_an_arena_lists_its_evaluated_models_for_the_leaderboard(tmp_path):
    root = tmp_path / "runs"
    folder = _write_run(root / "arena-1", kind="arena", status="done")
    rows = [
        {"model": "blue/pgd-at", "norm": "linf", "eps": 0.1, "worst_case_accuracy": 0.81, "certified_accuracy": 0.42,
         "clean_accuracy": 0.97, "attacks": "standard"},
        {"model": "blue/clean", "norm": "linf", "eps": 0.1, "worst_case_accuracy": 0.02, "clean_accuracy": 0.98},
    ]
    (folder / "results.json").write_text(json.dumps({"summary": {"winner": "blue"}, "evaluations": rows}))
    index.sync(root)
    board = ranking.leaderboard(root)
    assert [(r["model"], r["worst_case_accuracy"], r["certified_accuracy"]) for r in board.rows] == [
        ("blue/pgd-at", 0.81, 0.42), ("blue/clean", 0.02, None)]
    assert index.find_run(root, "arena-1").metrics == {"winner": "blue"}
