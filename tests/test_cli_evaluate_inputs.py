"""`redblue evaluate` / `attack` inputs: the dataset follows the model's record, a model that does not fit
the dataset is refused, a model at chance level is flagged, --batch-size and --threads."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import check_error_stdout, one_error_line, run
from data_fixtures import tiny_files, write_dataset

from redblue.data import load_dataset
from redblue.models import MLPSpec, build_model, save_model
from redblue.train import init_model

SHARED = ["--device", "cpu", "--threads", "1", "--certify", "none"]


def _saved(path, spec: MLPSpec, *, dataset: str | None, seed: int = 0):
    model = init_model(lambda: build_model(spec), seed=seed)
    save_model(path, model, spec, record={} if dataset is None else {"dataset": dataset})
    return path


def test_the_dataset_defaults_to_the_one_the_model_was_trained_on(env, capsys):
    """A model whose record names the tiny dataset is evaluated on it without --dataset; one trained on
    fashion-mnist looks for fashion-mnist (absent here, so the error names it)."""
    write_dataset(env / "data", tiny_files())
    spec = MLPSpec(hidden=8, dropout_input=0.0, dropout_hidden=0.0)
    tiny_model = _saved(env / "tiny.safetensors", spec, dataset="tiny")
    code, out, err = run(capsys, "evaluate", tiny_model, "--attacks", "fgsm", "--eps", "0.1", "--data-dir", env / "data",
                         "--json", *SHARED)
    assert code == 0, err
    result = json.loads(out)
    assert (result["dataset"], result["n"]) == ("tiny", 2)
    code, out, err = run(capsys, "attack", tiny_model, "--attack", "fgsm:eps=0.1", "--data-dir", env / "data", "--json",
                         "--device", "cpu", "--threads", "1")
    assert code == 0 and json.loads(out)["dataset"] == "tiny", err
    fashion_model = _saved(env / "fashion.safetensors", spec, dataset="fashion-mnist")
    for verb in (["evaluate", fashion_model, "--attacks", "fgsm"], ["attack", fashion_model, "--attack", "fgsm:eps=0.1"]):
        code, out, err = run(capsys, *verb, "--data-dir", env / "data", "--device", "cpu", "--threads", "1")
        assert code == 2 and "fashion-mnist files not found" in one_error_line(err)
    # a record without a dataset means MNIST, the only dataset older models were trained on
    unrecorded = _saved(env / "old.safetensors", spec, dataset=None)
    code, out, err = run(capsys, "evaluate", unrecorded, "--attacks", "fgsm", "--data-dir", env / "data", *SHARED)
    assert code == 2 and "mnist files not found" in one_error_line(err)


@pytest.mark.parametrize(
    "spec, message",
    [
        (MLPSpec(hidden=8, classes=5), "the model outputs 5 classes but mnist has 10 classes; it was trained on fashion-mnist"),
        (MLPSpec(hidden=8, in_features=100), "the model cannot read mnist images of shape (1, 28, 28)"),
    ],
    ids=["classes", "input-shape"],
)
@pytest.mark.parametrize("verb", [["evaluate", "--attacks", "fgsm"], ["attack", "--attack", "fgsm:eps=0.1"]])
def test_a_dataset_the_model_does_not_fit_is_refused_in_one_line(tmp_path, capsys, spec, message, verb):
    model = _saved(tmp_path / "model.safetensors", spec, dataset="fashion-mnist")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, verb[0], model, *verb[1:], "--dataset", "mnist", "--limit", 20, "--out", out_dir,
                         "--json", "--device", "cpu", "--threads", "1")
    line = one_error_line(err)
    assert code == 2 and message in line, line
    check_error_stdout(out, line, code, as_json=True)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_clean_accuracy_at_chance_level_is_a_failure_finding(tmp_path, capsys):
    data = load_dataset("mnist", "test")
    x, y = data.x[:500], data.y[:500]  # what --limit 500 evaluates
    spec = MLPSpec(hidden=8, dropout_input=0.0, dropout_hidden=0.0)
    untrained = init_model(lambda: build_model(spec), seed=0).eval()
    with torch.no_grad():
        accuracy = (untrained(x).argmax(1) == y).double().mean().item()
    majority = torch.bincount(y, minlength=10).max().item() / len(y)
    # chance level: at most max(1/10, majority) plus 3 standard errors on 500 samples
    chance = max(0.1, majority)
    assert accuracy <= chance + 3 * (chance * (1 - chance) / len(y)) ** 0.5, (accuracy, majority)
    save_model(tmp_path / "untrained.safetensors", untrained, spec, record={"dataset": "mnist"})
    code, out, err = run(capsys, "evaluate", tmp_path / "untrained.safetensors", "--attacks", "fgsm", "--eps", "0.1",
                         "--limit", 500, "--json", *SHARED)
    assert code == 0, err
    (finding,) = [f for f in json.loads(out)["findings"] if f["check"] == "chance-level"]
    assert finding["severity"] == "fail" and "--dataset" in finding["message"]


@pytest.mark.parametrize("verb", [["evaluate", "--attacks", "fgsm"], ["attack", "--attack", "fgsm:eps=0.1"]])
@pytest.mark.parametrize("value", ["0", "-3", "1.5", "automatic"])
def test_batch_size_errors_name_the_option_one_way(tmp_path, capsys, verb, value):
    model = _saved(tmp_path / "model.safetensors", MLPSpec(hidden=8), dataset="mnist")
    code, out, err = run(capsys, verb[0], model, *verb[1:], "--batch-size", value, "--device", "cpu", "--threads", "1")
    assert code == 2 and one_error_line(err) == f"error: --batch-size must be auto or an integer >= 1, got {value}"


def test_threads_apply_to_the_verb_and_are_given_back(tmp_path, capsys, monkeypatch):
    model = _saved(tmp_path / "model.safetensors", MLPSpec(hidden=8), dataset="mnist")
    calls: list[int] = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    before = torch.get_num_threads()
    code, out, err = run(capsys, "evaluate", model, "--attacks", "fgsm", "--eps", "0.1", "--limit", 20, "--threads", 3,
                         "--no-checks", "--device", "cpu", "--certify", "none")
    assert code == 0, err
    assert calls == [3, before] and torch.get_num_threads() == before
    code, out, err = run(capsys, "attack", model, "--attack", "fgsm:eps=0.1", "--limit", 20, "--threads", "none")
    assert code == 2 and "--threads must be auto or an integer >= 1" in one_error_line(err)
