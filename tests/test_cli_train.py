"""`redblue train`: one JSON result, a safetensors file with its exact run record, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import run, one_error_line
from redblue.data import load_dataset
from redblue.metrics import score
from redblue.models import MLPSpec, load_model


TINY = ("--model", "mlp:hidden=16,init=normal-0.01", "--train-subset", "600", "--epochs", "2", "--device", "cpu")


def test_train_json_saves_the_model_with_its_exact_config_seed_versions_and_device(tmp_path, capsys):
    out_path = tmp_path / "runs" / "m.safetensors"
    code, out, err = run(
        capsys, "train", *TINY, "--l1", "1e-4", "--l2", "1e-5", "--objective", "fgsm:eps=0.1,alpha=0.5,clip=false",
        "--seed", "3", "--lr", "0.002", "--out", str(out_path), "--json",
    )
    assert code == 0, err
    assert err == ""  # no progress bar when output is not a terminal
    result = json.loads(out)
    assert out.count("\n") == 1
    config = result["train_config"]
    assert (config["l1"], config["l2"], config["epochs"], config["lr"], config["seed"]) == (1e-4, 1e-5, 2, 0.002, 3)
    assert config["objective"] == {"name": "fgsm", "eps": 0.1, "alpha": 0.5, "clip": False}
    assert result["seed"] == 3 and result["device"] == "cpu" and result["n_train"] == 600
    assert set(result["versions"]) >= {"redblue", "torch", "python"}
    assert result["versions"]["torch"] == torch.__version__
    assert [row["epoch"] for row in result["history"]] == [1, 2]

    loaded = load_model(out_path)
    assert loaded.spec == MLPSpec(hidden=16, init="normal-0.01")
    assert loaded.record["train_config"] == config and loaded.record["seed"] == 3
    # the reported test metrics are those of the saved weights, recomputed here
    test = load_dataset("mnist", "test")
    scores = score(loaded.model, test.x, test.y)
    assert result["test"]["accuracy"] == pytest.approx(scores.accuracy, abs=1e-12)
    assert result["test"]["confidence"] == pytest.approx(scores.confidence, abs=1e-9)


def test_same_seed_gives_the_same_weights_and_human_output_names_the_file(tmp_path, capsys):
    paths = [tmp_path / f"m{i}.safetensors" for i in range(2)]
    code, out, err = run(capsys, "train", *TINY, "--epochs", "1", "--seed", "5", "--out", str(paths[0]))
    assert code == 0, err
    assert "test accuracy" in out and str(paths[0]) in out
    code, _, err = run(capsys, "train", *TINY, "--epochs", "1", "--seed", "5", "--out", str(paths[1]), "--json")
    assert code == 0, err
    first, second = (load_model(p).model.state_dict() for p in paths)
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--l1", "-0.0001"), "l1 must be >= 0"),
        (("--l2", "-1"), "l2 must be >= 0"),
        (("--model", "resnet"), "unknown model 'resnet'"),
        (("--model", "mlp:width=3"), "width"),
        (("--objective", "madry"), "unknown objective 'madry'"),
        (("--objective", "fgsm:eps=2"), "eps must be in"),
        (("--optimizer", "sgd"), "unknown optimizer 'sgd'"),
        (("--epochs", "-1"), "epochs must be an integer >= 0"),
        (("--lr", "0"), "lr must be > 0"),
        (("--dataset", "cifar"), "cifar"),
        (("--train-subset", "0"), "--train-subset must be >= 1"),
        (("--device", "tpu"), "unknown device 'tpu'"),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    out_path = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", *TINY, *args, "--out", str(out_path))
    assert code == 2 and out == ""
    assert message in one_error_line(err)
    assert not out_path.exists()


def test_out_that_is_a_folder_is_refused_before_training(tmp_path, capsys):
    code, out, err = run(capsys, "train", *TINY, "--out", str(tmp_path))
    assert code == 2 and "is a directory" in one_error_line(err)


def test_missing_data_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REDBLUE_DATA_DIR", raising=False)
    code, out, err = run(capsys, "train", *TINY, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.st"))
    assert code == 2 and "mnist" in one_error_line(err)
