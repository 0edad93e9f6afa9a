"""`redblue attack` and `redblue evaluate`: files written atomically, one JSON result, one error line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from cli_helpers import check_error_stdout, one_error_line, run
from mlp_fixtures import trained_mlp
from safetensors.torch import load_file
from torch import nn

import redblue.cli.model_options as model_options
import redblue.cli.verbs_evaluate as verbs_evaluate
import redblue.models.files
from redblue.cli import main
from redblue.data import load_dataset
from redblue.models import LoadedModel, MLPSpec, build_model, save_model

LIMIT = 150


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """The fixture MLP (784-100-10) saved as a redblue MLP without dropout."""
    trained, _, _ = trained_mlp()
    spec = MLPSpec(hidden=100, dropout_input=0.0, dropout_hidden=0.0)
    model = build_model(spec)
    hidden, output = (layer for layer in trained if isinstance(layer, nn.Linear))
    with torch.no_grad():  # redblue's MLP: Flatten, Dropout, Linear, ReLU, Dropout, Linear
        model[2].load_state_dict(hidden.state_dict())
        model[5].load_state_dict(output.state_dict())
    path = tmp_path_factory.mktemp("model") / "mlp.safetensors"
    save_model(path, model, spec)
    return path


def plain_fgsm(path: Path, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, x_adv) of an FGSM written here in plain PyTorch on the saved weights and the first images."""
    tensors = load_file(str(path))
    data = load_dataset("mnist", "test")
    x, y = data.x[:LIMIT], data.y[:LIMIT]

    def logits(images: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(images.flatten(1) @ tensors["2.weight"].T + tensors["2.bias"])
        return hidden @ tensors["5.weight"].T + tensors["5.bias"]

    x_var = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(logits(x_var), y, reduction="sum").backward()
    x_adv = (x + eps * x_var.grad.sign()).clamp(0, 1)
    with torch.no_grad():
        return logits(x).argmax(dim=1), y, logits(x_adv).argmax(dim=1)


def test_attack_writes_images_and_metrics_and_json(saved_model, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "attack", saved_model, "--attack", "fgsm:eps=0.1", "--limit", LIMIT,
                            "--out", out, "--json", "--device", "cpu", "--threads", "1")
    assert code == 0, err
    result = json.loads(stdout)
    assert stdout.count("\n") == 1 and result["threads"] == 1 and result["seed"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["adversarial.safetensors", "metrics.json"]  # no .part left
    assert json.loads((out / "metrics.json").read_text())["adversarial"] == result["adversarial"]
    clean_pred, y, adv_pred = plain_fgsm(saved_model, 0.1)
    assert result["n"] == LIMIT
    assert result["clean"]["accuracy"] == pytest.approx((clean_pred == y).double().mean().item())
    assert result["adversarial"]["accuracy"] == pytest.approx((adv_pred == y).double().mean().item(), abs=0.001)
    assert result["adversarial"]["robust_accuracy"] == pytest.approx(
        ((clean_pred == y) & (adv_pred == y)).double().mean().item(), abs=0.001
    )
    images = load_file(str(out / "adversarial.safetensors"))
    x = load_dataset("mnist", "test").x[:LIMIT]
    assert images["x_adv"].shape == x.shape and torch.equal(images["y"], y)
    assert (images["x_adv"] - x).abs().max() <= 0.1 + 1e-6 and images["x_adv"].min() >= 0 and images["x_adv"].max() <= 1
    assert torch.equal(images["predicted"], adv_pred)
    assert result["invalid"] == {"outside_ball": 0, "outside_box": 0, "nonfinite": 0, "outside_box_allowed": 0}


def test_attack_leaves_nothing_behind_when_writing_fails(saved_model, tmp_path, monkeypatch, capsys):
    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(redblue.models.files, "save_file", failing_save)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="disk full"):
        main(["attack", str(saved_model), "--attack", "fgsm:eps=0.1", "--limit", "20", "--out", str(out), "--device", "cpu", "--threads", "1"])
    assert list(out.iterdir()) == []


def test_evaluate_json_has_attacks_worst_case_certified_and_findings(saved_model, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = run(capsys, "evaluate", saved_model, "--attacks", "fgsm,pgd:steps=10", "--eps", "0.05,0.1",
                            "--limit", 100, "--json", "--out", out, "--device", "cpu", "--threads", "1")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["mode"] == "per-attack"  # a list given by hand: exact per-attack rows
    assert [r["eps"] for r in result["results"]] == [0.05, 0.1]
    clean_pred, y, adv_pred = (t[:100] for t in plain_fgsm(saved_model, 0.1))
    at_01 = result["results"][1]
    fgsm_row = next(a for a in at_01["attacks"] if a["attack"] == "fgsm")
    assert fgsm_row["accuracy"] == pytest.approx(((clean_pred == y) & (adv_pred == y)).double().mean().item(), abs=0.001)
    assert fgsm_row["adversarial_accuracy"] == pytest.approx((adv_pred == y).double().mean().item(), abs=0.001)
    for r in result["results"]:
        low, high = r["interval"]
        assert r["certified"]["method"] == "crown" and low == r["certified"]["accuracy"] <= high
        assert high == r["worst_case"]["accuracy"] <= min(a["accuracy"] for a in r["attacks"])
    checks = {f["check"] for f in result["findings"]}
    assert {"logits", "gradients", "monotonic-eps", "eps-zero", "unbounded-eps", "attack-strength"} <= checks
    assert all(set(f) == {"severity", "check", "message"} for f in result["findings"])
    assert sorted(p.name for p in out.iterdir()) == [
        "cells", "config.toml", "environment.json", "masks", "masks.safetensors", "report.html", "report.md",
        "results.json", "run.json",
    ]
    assert json.loads((out / "results.json").read_text()) == result
    with sqlite3.connect(out.parent / "index.sqlite") as index:  # the run is in the index of its runs folder
        kind, n_evaluations = index.execute(
            "SELECT kind, (SELECT COUNT(*) FROM evaluations) FROM runs WHERE path = ?", (out.name,)
        ).fetchone()
    assert (kind, n_evaluations) == ("evaluate", 2)  # one leaderboard row per eps
    run_record = json.loads((out / "run.json").read_text())
    assert (run_record["kind"], run_record["status"]) == ("evaluate", "done") and run_record["finished"] >= run_record["started"]
    assert len(list((out / "cells").glob("*.json"))) == 4  # fgsm and pgd at two eps
    masks = load_file(str(out / "masks.safetensors"))
    assert masks["linf/eps=0.1/worst_case"].double().mean().item() == pytest.approx(at_01["worst_case"]["accuracy"])


def test_evaluate_prints_a_table_with_findings(saved_model, capsys):
    code, stdout, err = run(capsys, "evaluate", saved_model, "--attacks", "fgsm", "--eps", "0.1", "--limit", "50",
                            "--device", "cpu", "--threads", "1")
    assert code == 0, err
    assert "worst case" in stdout and "certified (crown)" in stdout and "sanity findings" in stdout
    assert "robust accuracy in" in stdout


class Softmaxed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)


BAD_INPUTS = [
    (["attack", "{model}", "--attack", "nope:eps=0.1"], "unknown attack 'nope'"),
    (["attack", "{model}", "--attack", "fgsm:eps=0.1,steps=3"], "has no parameter steps"),
    (["attack", "{model}", "--attack", "fgsm:eps=1.5"], "eps must be in [0.0, 1.0]"),
    (["attack", "{model}", "--attack", "fgsm:eps=-0.1"], "eps must be in [0.0, 1.0]"),
    (["attack", "{model}", "--attack", "fgsm"], "needs eps"),
    (["attack", "{missing}", "--attack", "fgsm:eps=0.1"], "does not exist"),
    (["evaluate", "{model}", "--attacks", "nope"], "unknown attack 'nope'"),
    (["evaluate", "{model}", "--attacks", "pgd:stepz=3"], "has no parameter stepz"),
    (["evaluate", "{model}", "--attacks", "fgsm", "--eps", "0.1,1.5"], "eps must be in [0.0, 1.0]"),
    (["evaluate", "{model}", "--attacks", "fgsm", "--eps", "-0.05"], "eps must be in [0.0, 1.0]"),
    (["evaluate", "{model}", "--attacks", "fgsm", "--eps", "a,b"], "comma-separated list of numbers"),
    (["evaluate", "{model}", "--attacks", "fgsm", "--eps", "8/0"], "comma-separated list of numbers"),
    (["evaluate", "{model}", "--attacks", "fgsm", "--eps", "300/255"], "eps must be in [0.0, 1.0]"),
    (["evaluate", "{model}", "--attacks", "fgsm:eps=0.1"], "give eps values with --eps"),
    (["evaluate", "{model}", "--attacks", "standard:n_iter=3"], "takes no parameters"),
    (["evaluate", "{model}", "--attacks", "fgsm", "--mode", "best"], "unknown --mode 'best'"),
    (["evaluate", "{model}", "--attacks", "fgsm", "--certify", "magic"], "unknown --certify 'magic'"),
    (["evaluate", "{model}", "--attacks", "fgsm", "--limit", "0"], "--limit must be > 0"),
    (["evaluate", "{missing}", "--attacks", "fgsm"], "does not exist"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(a[2:]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(saved_model, tmp_path, capsys, argv, message):
    argv = [a.format(model=saved_model, missing=tmp_path / "none.safetensors") for a in argv]
    code, stdout, err = run(capsys, *argv, "--device", "cpu", "--threads", "1", "--json")
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert code == 2
    check_error_stdout(stdout, lines[0], code, as_json=True)
    assert "Traceback" not in err


@pytest.mark.parametrize("verb", [["attack", "--attack", "fgsm:eps=0.1"], ["evaluate", "--attacks", "fgsm"]])
def test_a_model_returning_probabilities_is_refused(saved_model, monkeypatch, capsys, verb):
    loaded = model_options.load_model(saved_model)
    monkeypatch.setattr(model_options, "load_model", lambda path, device: LoadedModel(Softmaxed(loaded.model), loaded.spec, {}))
    code, stdout, err = run(capsys, verb[0], saved_model, *verb[1:], "--limit", "20", "--device", "cpu", "--threads", "1")
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and "remove the final softmax" in err and "Traceback" not in err


@pytest.mark.parametrize("verb", [["attack", "--attack", "fgsm:eps=0.1"], ["evaluate", "--attacks", "fgsm"]])
def test_an_unwritable_out_is_refused_before_any_attack(saved_model, capsys, monkeypatch, verb):
    calls = []
    monkeypatch.setattr(verbs_evaluate, "attack_every_sample", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(verbs_evaluate, "evaluate", lambda *a, **k: calls.append(a))
    code, stdout, err = run(capsys, verb[0], saved_model, *verb[1:], "--limit", "20", "--out", "/proc/redblue-test",
                            "--device", "cpu", "--threads", "1")
    assert code == 2 and one_error_line(err).startswith("error: cannot write to /proc/redblue-test (")
    assert calls == [] and stdout == ""
