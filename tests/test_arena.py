"""A tiny arena played for real: its matrix against direct attack calls on the same models and images, the worst
case against the union of those, the rounds' chain of fine-tunes, the leaderboard's rows, and its report."""

from __future__ import annotations

import json

import pytest
import torch
from arena_fixtures import write_tiny

from redblue.arena import arena, load_arena
from redblue.arena.cells import load_split
from redblue.attacks.fgsm import fgsm
from redblue.attacks.pgd import pgd
from redblue.attacks.transfer import transfer
from redblue.certify import certified_accuracy
from redblue.models import load_model
from redblue.report.pages import write_reports
from redblue.runs.folders import EvaluationRow, summarize_run


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arena")
    config = load_arena(write_tiny(tmp))
    result = arena(config, tmp / "run", workers=1)
    return config, result


def _test_images(config):
    return load_split(config.dataset, "test", config.test_subset, None)


def _model(result, key):
    return load_model(result.folder / "models" / f"{key}.safetensors").model


def _correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def test_matrix_cells_equal_direct_attacks_on_the_same_model_and_images(played):
    config, result = played
    x, y = _test_images(config)
    results = result.results
    surrogate = next(t["cell"] for t in results["trainings"] if t["role"] == "surrogate")
    surrogate_file = str(result.folder / "models" / f"{surrogate}.safetensors")
    checked = 0
    for state in results["states"]:
        model = _model(result, state["model"])
        clean = _correct(model, x, y)
        robust_all = clean.clone()
        eps = state["eps"]
        for red, make in (
            ("fgsm", lambda: fgsm(model, x, y, eps=eps)),
            ("pgd", lambda: pgd(model, x, y, eps=eps, steps=5, generator=torch.Generator().manual_seed(config.seed))),
            ("transfer", lambda: transfer(model, x, y, eps=eps, surrogate=surrogate_file, attack="pgd/steps=5",
                                          generator=torch.Generator().manual_seed(config.seed))),
        ):
            x_adv = make()
            robust = clean & _correct(model, x_adv, y)
            robust_all &= robust
            row = next(r for r in results["matrix"] if (r["defense"], r["round"], r["red"], r["eps"]) ==
                       (state["defense"], state["round"], red, eps))
            assert row["robust_accuracy"] == pytest.approx(robust.double().mean().item(), abs=1e-12), (state, red)
            with torch.no_grad():
                confidence = model(x_adv).softmax(dim=1).max(dim=1).values.double().mean().item()
            assert row["confidence"] == pytest.approx(confidence, abs=1e-6)
            checked += 1
        # the worst case: a sample robust to every attack, i.e. 1 - |mistakes ∪ fooled sets| / n
        assert state["worst_case_accuracy"] == pytest.approx(robust_all.double().mean().item(), abs=1e-12)
        assert state["clean_accuracy"] == pytest.approx(clean.double().mean().item(), abs=1e-12)
        assert state["certified_accuracy"] == pytest.approx(certified_accuracy(model, x, y, eps=eps, method="crown"), abs=1e-12)
        assert state["worst_case_accuracy"] <= min(r["robust_accuracy"] for r in results["matrix"]
                                                   if (r["defense"], r["round"], r["eps"]) == (state["defense"], state["round"], eps))
    assert checked == 3 * len(results["states"]) == 3 * 2 * 2 * 2  # 3 attacks x 2 eps x 2 defenses x (round 0, round 1)


def test_the_rounds_chain_fine_tunes_from_the_previous_model_and_red_picks_its_strongest(played):
    config, result = played
    results = result.results
    records = {p.stem: json.loads(p.read_text()) for p in (result.folder / "cells").glob("*.json")}
    (round_1,) = results["rounds"]
    for entry in round_1["entries"]:
        name = entry["defense"]
        first = next(s for s in results["states"] if s["defense"] == name and s["round"] == 0 and s["eps"] == 0.1)
        assert (entry["attack_before"], entry["robust_before"]) == (first["strongest"], first["strongest_accuracy"])
        if not entry["fine_tuned"]:
            assert entry["robust_before"] >= config.threshold
            continue
        assert entry["robust_before"] < config.threshold
        tuned = records[entry["fine_tune_cell"]]
        assert tuned["config"]["parent"] == first["model"] and tuned["config"]["round"] == 1  # ids chain
        objective = tuned["config"]["train"]["objective"]
        assert objective["name"] == ("fgsm" if entry["attack_before"] == "fgsm" else "pgd") and objective["eps"] == 0.1
        after = [r for r in results["matrix"] if (r["defense"], r["round"], r["eps"]) == (name, 1, 0.1)]
        assert entry["robust_after"] == min(r["robust_accuracy"] for r in after)
        assert entry["winner"] == ("red" if entry["robust_after"] < config.threshold else "blue")
        assert results["final_models"][name] == entry["fine_tune_cell"]
    line = results["scoreboard"]["rounds"][0]
    assert line["red_success_before"] == pytest.approx(sum(1 - e["robust_before"] for e in round_1["entries"]) / 2)


def test_the_leaderboard_ranks_the_final_models_and_feeds_the_run_index(played):
    config, result = played
    results = result.results
    board = results["leaderboard"]
    assert [r["model"] for r in board] != [] and {r["model"] for r in board} == set(results["final_models"].values())
    assert [r["worst_case_accuracy"] for r in board] == sorted((r["worst_case_accuracy"] for r in board), reverse=True)
    x, y = _test_images(config)
    for row in board:  # the fast preset in worst-case mode, recomputed: FGSM on every sample, PGD-40 on its survivors
        model = _model(result, row["model"])
        survivors = _correct(model, x, y) & _correct(model, fgsm(model, x, y, eps=0.1), y)
        x_pgd = pgd(model, x[survivors], y[survivors], eps=0.1, steps=40, generator=torch.Generator().manual_seed(config.seed))
        n_robust = _correct(model, x_pgd, y[survivors]).sum().item()
        assert row["worst_case_accuracy"] == pytest.approx(n_robust / len(y), abs=1e-12)
        assert row["clean_accuracy"] == pytest.approx(_correct(model, x, y).double().mean().item(), abs=1e-12)
    summary = summarize_run(result.folder)
    assert summary.kind == "arena" and summary.status == "done"
    assert [e.model for e in summary.evaluations] == [row["model"] for row in results["evaluations"]]
    assert all(isinstance(e, EvaluationRow) and e.eps == 0.1 and e.norm == "linf" for e in summary.evaluations)
    assert summary.metrics["winner"] == results["scoreboard"]["winner"]


def test_the_run_folder_keeps_the_contract(played):
    _, result = played
    folder = result.folder
    run = json.loads((folder / "run.json").read_text())
    assert {k: run[k] for k in ("kind", "name", "status")} == {"kind": "arena", "name": "tiny", "status": "done"}
    assert (folder / "config.toml").is_file() and (folder / "environment.json").is_file()
    cells = list((folder / "cells").glob("*.json"))
    assert len(cells) == result.computed == len(json.loads((folder / "results.json").read_text())["matrix"]) + 4 + 3 + 2 + 2
    for record in map(lambda p: json.loads(p.read_text()), cells):
        assert {"id", "config", "metrics"} <= set(record)


def test_report_renders_markdown_and_html_from_results_alone(played):
    import redblue.report.arena  # noqa: F401  (registers the page; `redblue.cli` imports it for `redblue report`)

    _, result = played
    paths = write_reports(result.folder)
    markdown = paths["markdown"].read_text()
    for heading in ("## The matrix", "## Scoreboard", "## Rounds", "## Leaderboard"):
        assert heading in markdown
    rows = {(r["red"], r["eps"]): r["robust_accuracy"] for r in result.results["matrix"] if (r["defense"], r["round"]) == ("clean", 0)}
    worst = [r["worst_case_accuracy"] for r in result.results["states"] if (r["defense"], r["round"]) == ("clean", 0)]
    cells = [rows[(red, eps)] for red in ("fgsm", "pgd", "transfer") for eps in (0.05, 0.1)] + worst
    assert "| clean | " + " | ".join(f"{v:.1%}" for v in cells) + " |" in markdown  # the heatmap's first row
    html = paths["html"].read_text()
    assert html.count('<table class="heatmap"') >= 1 and "Scoreboard" in html


def test_redblue_report_regenerates_the_arena_page(played, capsys):
    from redblue.cli import main

    _, result = played
    (result.folder / "report.md").unlink(missing_ok=True)  # the engine writes none; another test may have
    assert main(["report", str(result.folder)]) == 0
    assert "## Scoreboard" in (result.folder / "report.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_kill_9_mid_run_then_the_same_command_reuses_every_finished_cell(played, tmp_path):
    """The uninterrupted run is the module's `played` arena (same config, same seeds, same machine)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from arena_fixtures import without_timing

    _, uninterrupted = played
    out = tmp_path / "run"
    command = [sys.executable, "-m", "redblue", "arena", str(write_tiny(tmp_path)), "--out", str(out), "--workers", "1",
               "--device", "cpu"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list(out.glob("cells/*.json"))) < 6:  # past the training stage, inside round 0's scoring
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("cells/*.json")}
    assert 6 <= len(done) < uninterrupted.computed and not (out / "results.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert rerun.returncode == 0, rerun.stderr
    assert f"{uninterrupted.computed - len(done)} cells computed, {len(done)} reused" in rerun.stdout
    assert {name: (out / "cells" / name).stat().st_mtime_ns for name in done} == done  # not one recomputed or rewritten
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and [i["reused"] for i in run["invocations"]] == [0, len(done)]
    resumed = json.loads((out / "results.json").read_text())
    assert without_timing(resumed) == without_timing(json.loads(json.dumps(uninterrupted.results)))
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    from redblue.runs.index import list_runs  # the verb fed the run index beside the folder as it ran

    (indexed,) = list_runs(tmp_path, kind="arena")
    assert (indexed.status, indexed.n_cells, indexed.metrics["winner"]) == ("done", uninterrupted.computed, resumed["summary"]["winner"])


def test_arena_report_opens_offline_in_chromium_with_its_heatmap_drawn(played):
    """The arena page in a real headless browser (the pattern of test_report_html_browser): no console error, no
    request but the file, the matrix heatmap drawn with each cell the colour of its value."""
    import io

    import numpy as np
    from chromium_driver import Chromium, find_chromium
    from PIL import Image as PILImage

    import redblue.report.arena  # noqa: F401
    from redblue.report.html import heat_color

    _, result = played
    path = write_reports(result.folder)["html"]
    executable = find_chromium()
    if executable is None:
        pytest.fail("Chromium not found: run `make setup-test` (installs Debian's chromium) or set REDBLUE_CHROMIUM")
    with Chromium(executable, width=1280, height=1000) as browser:
        url = path.resolve().as_uri()
        browser.open(url)
        assert browser.errors() == []
        assert [r for r in browser.requests() if not r.startswith("data:")] == [url]
        box = browser.rect("#matrix table.heatmap")
        pixels = np.asarray(PILImage.open(io.BytesIO(browser.screenshot(box))).convert("RGB")).astype(np.int64)
        assert pixels.mean(axis=2).std() > 12 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 16  # not blank
        # row 1 = the clean defense, column 2 (after the row header) = fgsm at eps 0.05
        value = next(r["robust_accuracy"] for r in result.results["matrix"]
                     if (r["defense"], r["round"], r["red"], r["eps"]) == ("clean", 0, "fgsm", 0.05))
        cell = browser.rect("#matrix table.heatmap tbody tr:nth-child(1) td:nth-child(2)")
        corner = {**cell, "x": cell["x"] + 4, "y": cell["y"] + 4, "width": 3, "height": 3}
        shot = np.asarray(PILImage.open(io.BytesIO(browser.screenshot(corner))).convert("RGB"))
        assert tuple(int(v) for v in shot[1, 1]) == heat_color(value, 0.0, 1.0)
        assert browser.errors() == []


def test_a_defense_given_as_a_model_file_is_scored_as_it_is(played, tmp_path):
    _, result = played
    given = tmp_path / "given.safetensors"
    given.write_bytes((result.folder / "models" / f"{result.results['final_models']['clean']}.safetensors").read_bytes())
    text = """
name = "given"
test_subset = 100
eps = [0.1]
leaderboard = "fgsm"
[[blue]]
name = "mine"
file = "given.safetensors"
[[red]]
name = "fgsm"
attack = "fgsm"
"""
    config = load_arena(write_tiny(tmp_path, text))
    played_given = arena(config, tmp_path / "run", workers=1)
    x, y = _test_images(config)
    model = load_model(given).model
    robust = (_correct(model, x, y) & _correct(model, fgsm(model, x, y, eps=0.1), y)).double().mean().item()
    (row,) = played_given.results["matrix"]
    assert row["robust_accuracy"] == pytest.approx(robust, abs=1e-12)
    assert played_given.results["leaderboard"][0]["worst_case_accuracy"] == pytest.approx(robust, abs=1e-12)
    assert played_given.results["trainings"] == [] and played_given.results["rounds"] == []
    import hashlib

    assert played_given.results["config"]["blue"][0]["file_sha256"] == hashlib.sha256(given.read_bytes()).hexdigest()


def test_on_ray_the_arena_gives_the_numbers_of_the_local_executor(played, tmp_path):
    """Every stage is a sweep, so the arena runs on the sweep engine's Ray executor (one Ray start for all stages)."""
    import ray
    from arena_fixtures import without_timing

    config, local = played
    on_ray = arena(config, tmp_path / "run", executor="ray", workers=2)
    assert on_ray.results["invocation"]["executor"] == "ray" and on_ray.computed == local.computed
    assert without_timing(on_ray.results) == without_timing(json.loads(json.dumps(local.results)))
    assert not ray.is_initialized()  # the arena started Ray, so it shut it down
