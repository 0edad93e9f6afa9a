"""`redblue reproduce` end to end on a tiny experiment: files, resume, refusal of mixed configs, numbers."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import redblue.reproduce.cell as cell_module
import redblue.reproduce.run as run_module
from redblue.attacks import fgsm
from redblue.cli import main
from redblue.data import load_dataset
from redblue.errors import ConfigError
from redblue.metrics import score
from redblue.report.reproduce_files import write_reproduce_report
from redblue.reproduce import PAPER_TOML, Expectations, fgsm_curve, grid_cells, load_experiment, reproduce
from redblue.sweep import cell_id

TINY_TOML = """
name = "tiny"
seeds = 1
train_subset = 512
test_subset = 200
chosen_l1 = 1e-4
chosen_l2 = 0.0

[model]
hidden = 16

[train]
epochs = 1
batch_size = 64
lr = 0.003

[grid]
l1 = [0.0, 1e-4]
l2 = [0.0]

[fgsm]
curve_eps = [0.0, 0.1, 0.2]
table_eps = [0.1]
table3_eps = [0.05]

[notes]
clip = "clipped: valid images"

[profiles.tiny]

[profiles.tiny2]
train = { epochs = 2 }
"""
CELLS = ["l1-0_l2-0_seed-0", "l1-0.0001_l2-0_seed-0"]


@pytest.fixture
def tiny_toml(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.fixture
def count_training(monkeypatch):
    """Count the models `reproduce` trains in this process, one by one or as members of a batched grid."""
    calls = []
    real_train, real_train_grid = cell_module.train, cell_module.train_grid

    def counting_train(model, x, y, config, **kwargs):
        calls.append((config.l1, config.l2, config.seed))
        return real_train(model, x, y, config, **kwargs)

    def counting_train_grid(build, configs, x, y, **kwargs):
        calls.extend((config.l1, config.l2, config.seed) for config in configs)
        return real_train_grid(build, configs, x, y, **kwargs)

    monkeypatch.setattr(cell_module, "train", counting_train)
    monkeypatch.setattr(cell_module, "train_grid", counting_train_grid)
    return calls


def _model_path(out, experiment, label):
    """models/<cell-id>.safetensors of the cell named `label`."""
    (config,) = [c for c in grid_cells(experiment, torch.device("cpu")) if c.label == label]
    return out / "models" / f"{cell_id(config)}.safetensors"


def test_paper_toml_loads_both_profiles_with_the_paper_grid():
    quick, full = load_experiment(PAPER_TOML, profile="quick"), load_experiment(PAPER_TOML, profile="full")
    for experiment in (quick, full):
        assert experiment.grid.l1 == experiment.grid.l2 == (0.0, 1e-5, 1e-4)
        assert experiment.train.batch_size == 128 and experiment.train.rho == 0.9
        assert {0.0, 0.05, 0.075, 0.1, 0.25, 0.3} <= set(experiment.fgsm.all_eps)
    assert full.train_subset is None and full.test_subset is None  # the paper's 60k / 10k
    assert quick.test_subset is None  # every table is on the whole test set in both profiles
    assert load_experiment(PAPER_TOML, profile="quick", seeds=3).seed_list == (0, 1, 2)
    # each profile is judged by its own ranges, which change no number (not in the folder's config)
    assert full.expect == Expectations(basis=full.expect.basis) and "20 epochs" in full.expect.basis
    assert quick.expect.l1_clean_confidence == (0.92, 0.96) and "seeds 0-2 of this profile" in quick.expect.basis
    assert quick.record() == {**full.record(), "profile": "quick", "train": {**full.record()["train"], "epochs": 5}}


def test_experiment_file_errors_are_one_line(tiny_toml, tmp_path):
    with pytest.raises(ConfigError, match="no profile 'nope'; choose one of: tiny, tiny2"):
        load_experiment(tiny_toml, profile="nope")
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_TOML.replace("epochs = 1\n", "epochs = 1\nl1 = 0.1\n"))
    with pytest.raises(ConfigError, match=r"\[train\] sets l1; lambdas belong in \[grid\]"):
        load_experiment(bad, profile="tiny")
    bad.write_text(TINY_TOML.replace("l2 = [0.0]", "l2 = [-1.0]"))
    with pytest.raises(ConfigError, match="grid.l2 must be >= 0"):
        load_experiment(bad, profile="tiny")
    bad.write_text(TINY_TOML.replace('hidden = 16', 'hidden = 16\nwidth = 3'))
    with pytest.raises(ConfigError, match="has no field 'width'"):
        load_experiment(bad, profile="tiny")


def test_objective_can_be_given_as_a_spec_string(tiny_toml, tmp_path):
    path = tmp_path / "adv.toml"
    path.write_text(TINY_TOML.replace("lr = 0.003", 'lr = 0.003\nobjective = "fgsm:eps=0.1,alpha=0.5"'))
    objective = load_experiment(path, profile="tiny").train.objective
    assert (objective.name, objective.eps, objective.alpha) == ("fgsm", 0.1, 0.5)


def test_cells_batch_by_everything_but_l1_l2_and_seed_and_unsupported_training_runs_alone(tiny_toml, tmp_path):
    from redblue.reproduce.cell import batch_key

    configs = grid_cells(load_experiment(tiny_toml, profile="tiny", seeds=2), torch.device("cpu"))
    assert len(configs) == 4 and len({batch_key(c) for c in configs}) == 1 and batch_key(configs[0]) is not None
    two = grid_cells(load_experiment(tiny_toml, profile="tiny2"), torch.device("cpu"))
    assert batch_key(two[0]) != batch_key(configs[0])  # 2 epochs, not 1: another batch
    adversarial = tmp_path / "adv.toml"
    adversarial.write_text(TINY_TOML.replace("lr = 0.003", 'lr = 0.003\nobjective = "fgsm:eps=0.1,alpha=0.5"'))
    configs = grid_cells(load_experiment(adversarial, profile="tiny"), torch.device("cpu"))
    assert [batch_key(c) for c in configs] == [None, None]  # the grid trainer supports clean training only


def test_profiles_override_nested_keys(tiny_toml):
    assert load_experiment(tiny_toml, profile="tiny").train.epochs == 1
    two = load_experiment(tiny_toml, profile="tiny2")
    assert two.train.epochs == 2 and two.train.lr == 0.003  # the rest of [train] is kept


def test_fgsm_curve_equals_the_registered_fgsm_at_every_eps(generator):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 20), nn.ReLU(), nn.Linear(20, 10))
    x = torch.rand(70, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (70,), generator=generator)
    eps_values = (0.0, 0.05, 0.3)
    for clip in (True, False):
        curve = fgsm_curve(model, x, y, eps_values, clip=clip, batch_size=32)
        for point, eps in zip(curve, eps_values):
            expected = score(model, fgsm(model, x, y, eps=eps, clip=clip), y)
            assert point.eps == eps
            assert point.accuracy == pytest.approx(expected.accuracy, abs=1.5 / len(y))  # at most one flip by rounding
            assert point.confidence == pytest.approx(expected.confidence, abs=1e-3)


def _independent_scores(model_path, x, y, eps: float) -> tuple[float, float, float]:
    """Clean, clipped-FGSM and unclipped-FGSM accuracy of saved weights, in plain PyTorch (no redblue code)."""
    weights = load_file(str(model_path))
    w1, b1, w2, b2 = (weights[k].double() for k in ("2.weight", "2.bias", "5.weight", "5.bias"))

    def logits(images):
        return F.relu(images.flatten(1).double() @ w1.T + b1) @ w2.T + b2

    clean = (logits(x).argmax(1) == y).double().mean().item()
    x_var = x.clone().double().requires_grad_(True)
    F.cross_entropy(logits(x_var), y, reduction="sum").backward()
    x_adv = x.double() + eps * x_var.grad.sign()

    def accuracy(images):
        return (logits(images).argmax(1) == y).double().mean().item()

    return clean, accuracy(x_adv.clamp(0, 1)), accuracy(x_adv)


def test_reproduce_writes_every_file_and_numbers_match_an_independent_recomputation(tiny_toml, tmp_path, count_training):
    out = tmp_path / "run"
    experiment = load_experiment(tiny_toml, profile="tiny")
    result = reproduce(experiment, out, workers=1)
    assert not (out / "report.md").exists()  # the engine returns values; the report is rendered by redblue.report
    write_reproduce_report(out, result.results, result.figure)
    for name in ("report.md", "results.json", "figure1.png", "curves.png", "config.toml", "environment.json", "run.json"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert (run["kind"], run["status"], run["device"]) == ("reproduce", "done", "cpu")
    assert run["started"] <= run["finished"] and run["invocations"][0]["computed"] == 2
    assert sorted(result.trained) == sorted(CELLS) and result.reused == ()
    assert len(count_training) == 2
    results = json.loads((out / "results.json").read_text())
    assert results["cells_trained"] == list(result.trained) and results["wall_seconds"] > 0

    test_set = load_dataset("mnist", "test")
    x, y = test_set.x[:200], test_set.y[:200]
    for cell in results["cells"]:
        assert cell["n_train"] == 512 and cell["n_test"] == 200
        curve = {round(p["eps"], 6): p["accuracy"] for p in cell["curve"]}
        clean, clipped, unclipped = _independent_scores(_model_path(out, experiment, cell["cell"]), x, y, 0.1)
        assert curve[0.0] == pytest.approx(clean, abs=1e-9)
        assert curve[0.1] == pytest.approx(clipped, abs=1.5 / 200)  # float32 vs float64: one flip at most
        other = {round(p["eps"], 6): p["accuracy"] for p in cell["other_clip_curve"]}
        assert sorted(other) == [0.05, 0.1]  # the tables' eps of this file
        assert other[0.1] == pytest.approx(unclipped, abs=1.5 / 200)
        assert curve[0.1] < curve[0.0]

    report = (out / "report.md").read_text()
    assert "| Test accuracy | 0.9750 |" in report  # Table 1's paper value beside ours
    assert "| 0.0001 | 0 | 0.9689 |" in report  # Table 2, l1 = 1e-4, l2 = 0
    assert "clipped: valid images" in report
    figure = results["figure1"]
    assert figure["label"] == 7 and int(test_set.y[figure["test_index"]]) == 7
    assert int((test_set.y[: figure["test_index"]] == 7).sum()) == 0  # the first 7
    assert [p["eps"] for p in figure["panels"]] == [0.0, 0.05, 0.075, 0.1, 0.15, 0.175, 0.2, 0.25, 0.3]
    assert figure["cell"] == "l1-0.0001_l2-0_seed-0"  # the chosen pair of this file


@pytest.mark.parametrize("grid_size", [1, 2])
def test_a_killed_run_resumes_without_retraining_finished_cells(tiny_toml, tmp_path, monkeypatch, count_training, grid_size):
    """One by one (grid_size 1) or two models per batched grid: Ctrl-C after the first task keeps its cells."""
    out = tmp_path / "run"
    experiment = load_experiment(tiny_toml, profile="tiny", seeds=2)  # 4 cells
    labels = [c.label for c in grid_cells(experiment, torch.device("cpu"))]
    real_run_cell, real_run_cells = run_module.run_cell, run_module.run_cells

    def killed_after_first(real):
        def run(config, **kwargs):
            if count_training:  # the first task finished: Ctrl-C before the next one
                raise KeyboardInterrupt
            return real(config, **kwargs)
        return run

    monkeypatch.setattr(run_module, "run_cell", killed_after_first(real_run_cell))
    monkeypatch.setattr(run_module, "run_cells", killed_after_first(real_run_cells))
    with pytest.raises(KeyboardInterrupt):
        reproduce(experiment, out, workers=1, grid_size=grid_size)
    assert len(count_training) == grid_size and not (out / "results.json").exists()
    assert len(list((out / "cells").glob("*.json"))) == grid_size
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(run_module, "run_cell", real_run_cell)
    monkeypatch.setattr(run_module, "run_cells", real_run_cells)

    resumed = reproduce(experiment, out, workers=1, grid_size=grid_size)
    assert len(count_training) == 4  # only the unfinished cells were trained
    assert resumed.reused == tuple(labels[:grid_size]) and resumed.trained == tuple(labels[grid_size:])
    again = reproduce(experiment, out, workers=1)
    assert len(count_training) == 4 and again.trained == () and sorted(again.reused) == sorted(labels)
    assert again.results["models"] == resumed.results["models"]


def test_a_rerun_with_another_config_is_refused_and_force_retrains_only_changed_cells(tiny_toml, tmp_path, count_training):
    out = tmp_path / "run"
    reproduce(load_experiment(tiny_toml, profile="tiny"), out, workers=1)
    before = (out / "results.json").read_bytes()
    with pytest.raises(ConfigError, match="different config") as info:
        reproduce(load_experiment(tiny_toml, profile="tiny2"), out, workers=1)
    assert "\n" not in str(info.value) and "train.epochs" in str(info.value)
    assert (out / "results.json").read_bytes() == before and len(count_training) == 2

    wider = tmp_path / "wider.toml"
    wider.write_text(TINY_TOML.replace("l2 = [0.0]", "l2 = [0.0, 1e-5]"))
    result = reproduce(load_experiment(wider, profile="tiny"), out, workers=1, force=True)
    assert sorted(result.reused) == sorted(CELLS)  # their own config did not change
    assert sorted(result.trained) == ["l1-0.0001_l2-1e-05_seed-0", "l1-0_l2-1e-05_seed-0"]


def test_cells_compute_with_the_runs_thread_count_which_is_part_of_its_config(tiny_toml, tmp_path, capsys, monkeypatch):
    """threads: torch threads per cell, in workers and in process; recorded in the folder's config and
    every cell's id, so another count is another config; the CLI's auto shares the idle cores among
    the workers, and a rerun with auto keeps the recorded count."""
    experiment = load_experiment(tiny_toml, profile="tiny")
    pooled = reproduce(experiment, tmp_path / "pool", workers=2, threads=2)
    assert {c["torch_threads"] for c in pooled.results["cells"]} == {2} and pooled.results["torch_threads_per_cell"] == 2
    assert torch.get_num_threads() == 1  # this process's own count is put back
    one = grid_cells(experiment, torch.device("cpu"))
    two = grid_cells(experiment, torch.device("cpu"), threads=2)
    assert [c.threads for c in one] == [1, 1] and {cell_id(a) for a in one}.isdisjoint(cell_id(b) for b in two)
    with pytest.raises(ConfigError, match=r"different config.*threads"):
        reproduce(experiment, tmp_path / "pool", workers=1)
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        reproduce(experiment, tmp_path / "bad", threads=0)

    import redblue.cli.verbs_reproduce as verbs

    out = tmp_path / "cli"
    args = ["reproduce", "--config", str(tiny_toml), "--profile", "tiny", "--out", str(out), "--threads", "auto", "--json"]
    monkeypatch.setattr(verbs, "idle_cores", lambda: 4)
    assert main([*args, "--workers", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["torch_threads_per_cell"] == 2  # 4 idle cores, 2 workers
    monkeypatch.setattr(verbs, "idle_cores", lambda: 1)
    assert main([*args, "--workers", "1"]) == 0  # busier now, but the folder's record holds
    printed = json.loads(capsys.readouterr().out)
    assert printed["torch_threads_per_cell"] == 2 and printed["cells_trained"] == []
    assert main([*args[:-3], "--json", "--workers", "1"]) == 2  # the default, 1 thread: another config
    assert "threads" in capsys.readouterr().err


def test_cli_refuses_a_mixed_run_in_one_line_with_exit_code_2(tiny_toml, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["reproduce", "--config", str(tiny_toml), "--out", str(out), "--workers", "1"]
    assert main([*args, "--profile", "tiny", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["profile"] == "tiny" and set(printed["files"]) >= {"report", "results", "figure1", "curves", "html"}
    assert "<html" in (out / "report.html").read_text()[:200].lower()
    with sqlite3.connect(tmp_path / "index.sqlite") as index:  # the CLI indexed the run with its cells
        assert index.execute("SELECT kind, status, n_cells FROM runs WHERE path = 'run'").fetchone() == ("reproduce", "done", 2)
    assert main([*args, "--profile", "tiny", "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "seeds" in err


REFERENCE = Path(__file__).resolve().parent / "reproduce_tiny_reference.json"


def _numbers(cell: dict) -> dict:
    """What a cell computed, without how long it took."""
    history = [{k: row[k] for k in ("epoch", "loss", "penalty", "accuracy")} for row in cell["history"]]
    keys = ("cell", "l1", "l2", "seed", "n_train", "n_test", "curve", "other_clip_curve")
    return {**{k: cell[k] for k in keys}, "history": history}


def _assert_near_reference(cells: list[dict], reference: list[dict]) -> None:
    """Within float32 rounding of numbers computed on another CPU: the same cells, accuracies at most
    one image apart (another SIMD path may flip a sample that sits on a decision boundary), losses and
    confidences within 1e-5 relative (measured: 2e-9 between an Intel and an AMD EPYC machine)."""
    assert [(c["cell"], c["l1"], c["l2"], c["seed"], c["n_train"], c["n_test"]) for c in cells] == [
        (c["cell"], c["l1"], c["l2"], c["seed"], c["n_train"], c["n_test"]) for c in reference
    ]
    for ours, theirs in zip(cells, reference):
        for name, n in (("curve", ours["n_test"]), ("other_clip_curve", ours["n_test"])):
            assert [p["eps"] for p in ours[name]] == [p["eps"] for p in theirs[name]]
            for a, b in zip(ours[name], theirs[name]):
                assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1 / n + 1e-12)
                assert a["confidence"] == pytest.approx(b["confidence"], rel=1e-5)
        assert [row["epoch"] for row in ours["history"]] == [row["epoch"] for row in theirs["history"]]
        for a, b in zip(ours["history"], theirs["history"]):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["penalty"] == pytest.approx(b["penalty"], rel=1e-5)
            assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1 / ours["n_train"] + 1e-12)


def test_the_sweep_engine_gives_the_same_numbers_in_workers_in_process_and_one_by_one(tiny_toml, tmp_path):
    """Two spawned workers (two batched grids of 2 models), this process (one grid of 4) and
    one-by-one training give every cell to the last bit, on this machine; and the numbers of the
    code before the sweep engine within float rounding.

    tests/reproduce_tiny_reference.json was written by the previous implementation (commit f85c1c6:
    its own process pool, data sent to the workers as uint8, every model trained alone) on this
    file's tiny experiment with --seeds 2, torch 2.13, on another machine's CPU: bit identity holds
    only on one CPU (the BLAS takes other SIMD paths on others), so that file is compared with a
    tolerance (`_assert_near_reference`), and bit identity between the three ways here.
    """
    experiment = load_experiment(tiny_toml, profile="tiny", seeds=2)
    pooled = reproduce(experiment, tmp_path / "pool", workers=2)
    assert (pooled.results["executor"], pooled.results["workers"]) == ("local", 2)
    assert [c["grid_members"] for c in pooled.results["cells"]] == [2, 2, 2, 2]
    here = reproduce(experiment, tmp_path / "here", workers=1)
    assert [c["grid_members"] for c in here.results["cells"]] == [4, 4, 4, 4]
    alone = reproduce(experiment, tmp_path / "alone", workers=1, grid_size=1)
    assert [c["grid_members"] for c in alone.results["cells"]] == [1, 1, 1, 1]
    numbers = [_numbers(c) for c in pooled.results["cells"]]
    assert [_numbers(c) for c in here.results["cells"]] == numbers
    assert [_numbers(c) for c in alone.results["cells"]] == numbers
    _assert_near_reference(numbers, json.loads(REFERENCE.read_text())["cells"])

    (no_reg, _) = pooled.results["models"]
    clean = no_reg["curve"][0]["accuracy"]
    values = [c["curve"][0]["accuracy"] for c in numbers if c["l1"] == 0.0]
    assert no_reg["seeds"] == [0, 1] and clean["values"] == values
    assert clean["mean"] == pytest.approx(sum(values) / 2)
    assert clean["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert values[0] != values[1]  # different seeds, different models
    write_reproduce_report(tmp_path / "pool", pooled.results, pooled.figure)
    assert "± " in (tmp_path / "pool" / "report.md").read_text()


def test_the_cli_shows_cells_in_flight_and_a_rerun_keeps_the_original_wall_time(tiny_toml, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["reproduce", "--config", str(tiny_toml), "--profile", "tiny", "--out", str(out), "--workers", "1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    # not a terminal: plain lines on stderr, each cell when it starts (with what is in flight) and when it ends
    # (on one worker both models train as one batched grid: both start together)
    assert err[0] == "started l1-0_l2-0_seed-0 (0/2 cells done, 2 running, 0 queued)"
    assert err[1] == "started l1-0.0001_l2-0_seed-0 (0/2 cells done, 2 running, 0 queued)"
    computed = {c["cell"]: {round(p["eps"], 6): p["accuracy"] for p in c["curve"]}
                for c in json.loads((out / "results.json").read_text())["cells"]}
    shown = f"clean accuracy {computed['l1-0_l2-0_seed-0'][0.0]:.4f}, FGSM(0.1) accuracy {computed['l1-0_l2-0_seed-0'][0.1]:.4f} ("
    assert err[2].startswith("[1/2] l1-0_l2-0_seed-0: " + shown)
    assert err[3].startswith("[2/2] l1-0.0001_l2-0_seed-0: ") and len(err) == 4
    assert main([*args[:-4], "--out", str(tmp_path / "alone"), "--workers", "1", "--grid-size", "1"]) == 0
    err = capsys.readouterr().err.splitlines()  # one by one: one cell in flight at a time
    assert err[0] == "started l1-0_l2-0_seed-0 (0/2 cells done, 1 running, 1 queued)"
    assert err[1].startswith("[1/2] l1-0_l2-0_seed-0: " + shown)
    assert err[2] == "started l1-0.0001_l2-0_seed-0 (1/2 cells done, 1 running, 0 queued)"
    assert "2 cells trained, 0 reused" in captured.out
    first = json.loads((out / "results.json").read_text())
    first_invocation = json.loads((out / "run.json").read_text())["invocations"][0]

    assert main([*args, "--resume"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "all 2 cells found done in the run folder; reusing them\n"
    again = json.loads((out / "results.json").read_text())
    assert again["cells_reused"] == first["cells_trained"] and again["cells_trained"] == []
    # the first run's time as its invocation recorded it in run.json (not the rerun's own time)
    assert again["compute_wall_seconds"] == first_invocation["wall_seconds"] != again["wall_seconds"]
    assert f"(the run's cells took {again['compute_wall_seconds']:.1f} s of wall time to compute)" in captured.out
    report = (out / "report.md").read_text()
    assert f"Computing the cells took {again['compute_wall_seconds']:.1f} s of wall time." in report
    assert "Profile `tiny`, 1 epoch per model." in report
    assert [c["curve"] for c in again["cells"]] == [c["curve"] for c in first["cells"]]
    run = json.loads((out / "run.json").read_text())
    assert [(i["computed"], i["reused"], i["status"]) for i in run["invocations"]] == [(2, 0, "done"), (0, 2, "done")]

    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["cells_reused"] == first["cells_trained"]


def test_resume_without_a_run_and_ray_without_ray_are_one_line_each(tiny_toml, tmp_path, capsys, monkeypatch):
    args = ["reproduce", "--config", str(tiny_toml), "--profile", "tiny", "--out", str(tmp_path / "none")]
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "holds no run to resume" in err
    assert not (tmp_path / "none").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main([*args, "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == "error: the ray executor needs Ray, which is not installed; pip install 'redblue[ray]', or use --executor local\n"
    assert not (tmp_path / "none").exists()
    assert main([*args, "--executor", "dask"]) == 2
    assert "choose one of: local, ray" in capsys.readouterr().err


def test_reproduce_on_ray_gives_the_numbers_of_the_local_executor(tiny_toml, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'redblue[ray]'")
    experiment = load_experiment(tiny_toml, profile="tiny", seeds=2)
    local = reproduce(experiment, tmp_path / "local", workers=2)
    result = reproduce(experiment, tmp_path / "ray", executor="ray", workers=2)
    assert (result.results["executor"], result.results["workers"]) == ("ray", 2)
    assert [_numbers(c) for c in result.results["cells"]] == [_numbers(c) for c in local.results["cells"]]


@pytest.mark.slow
def test_quick_profile_shows_no_failed_check(tmp_path):
    """The README's main command (~2 min on 2 cores): a healthy quick run passes its own 43 checks."""
    result = reproduce(load_experiment(PAPER_TOML, profile="quick"), tmp_path / "quick")
    checks = result.results["checks"]
    assert len(checks) == 43 and [c["check"] for c in checks if c["passed"] is not True] == []
    assert result.results["epochs_run"] == [5]


@pytest.mark.slow
def test_full_profile_has_the_papers_shape(tmp_path):
    """The paper's protocol end to end (~6 min on 2 cores): every shape check of the issue passes."""
    result = reproduce(load_experiment(PAPER_TOML, profile="full"), tmp_path / "full")
    checks = result.results["checks"]
    assert len(checks) == 43
    assert [c["check"] for c in checks if c["passed"] is not True] == []
    assert result.results["clip_comparison"]["mean_abs_difference"]["unclipped"] < 0.06
