"""The CLI on datasets that are not MNIST: a CIFAR-format tarball (3x32x32, 10 classes) and user
`.npz` files with odd shapes and class counts, trained, attacked and evaluated end to end.

The model's input and classes follow the dataset (`redblue.models.fit_spec`) unless the --model
text sets them; a mismatch, or a CNN on non-square images, is one `error:` line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_fixtures import cifar_spec, tiny_cifar

from cli_helpers import one_error_line, run
from redblue import data
from redblue.models import load_model


@pytest.fixture
def cifar_root(env, monkeypatch) -> Path:
    made = tiny_cifar()
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data))
    path = env / "root" / "tiny-cifar" / "cifar-10-python.tar.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(made.data)
    return env / "root"


def odd_npz(path: Path, *, n_train: int = 24, n_test: int = 8, shape=(17, 23, 1), classes: int = 7) -> str:
    """uint8 NHWC images with labels 0..classes-1 (every class present, so the count is `classes`)."""
    gen = np.random.default_rng(0)
    np.savez(path, x_train=gen.integers(0, 256, (n_train, *shape), dtype=np.uint8), y_train=np.arange(n_train) % classes,
             x_test=gen.integers(0, 256, (n_test, *shape), dtype=np.uint8), y_test=np.arange(n_test) % classes)
    return str(path)


def test_a_cifar_tarball_verifies_trains_cnn_small_and_is_attacked_and_evaluated(cifar_root, tmp_path, capsys):
    code, out, err = run(capsys, "data", "verify", "tiny-cifar", "--data-dir", cifar_root)
    assert code == 0, err
    model = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", "--dataset", "tiny-cifar", "--data-dir", cifar_root, "--model", "cnn-small",
                         "--epochs", "1", "--batch-size", "4", "--out", model, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["dataset"] == "tiny-cifar" and record["n_train"] == 10 and record["test"]["n"] == 2
    spec = record["model"]["spec"]
    assert (spec["in_channels"], spec["image_size"], spec["classes"]) == (3, 32, 10)
    loaded = load_model(model)
    assert loaded.model[0].in_channels == 3 and loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)

    # the dataset comes from the model's record
    code, out, err = run(capsys, "attack", model, "--attack", "fgsm:eps=0.03", "--data-dir", cifar_root, "--json")
    assert code == 0, err
    attacked = json.loads(out)
    assert attacked["dataset"] == "tiny-cifar" and attacked["n"] == 2
    code, out, err = run(capsys, "evaluate", model, "--attacks", "fgsm,pgd:steps=2", "--eps", "0.01,0.03",
                         "--data-dir", cifar_root, "--json")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["n"] == 2 and [row["eps"] for row in evaluated["results"]] == [0.01, 0.03]
    # certified bounds through the 3-channel convolutions (crown-ibp, the auto choice with convolutions)
    assert {row["certified"]["method"] for row in evaluated["results"]} == {"crown-ibp"}


def test_an_odd_shaped_npz_trains_the_paper_mlp_with_its_shape_and_classes(tmp_path, capsys):
    name = odd_npz(tmp_path / "odd.npz")
    model = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", "--dataset", name, "--epochs", "1", "--batch-size", "8", "--out", model, "--json")
    assert code == 0, err
    spec = json.loads(out)["model"]["spec"]
    assert (spec["in_features"], spec["classes"], spec["hidden"]) == (17 * 23, 7, 625)
    code, out, err = run(capsys, "attack", model, "--attack", "pgd:eps=0.1,steps=3", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 8


def test_a_cnn_on_non_square_images_is_one_error_line(tmp_path, capsys):
    name = odd_npz(tmp_path / "odd.npz")
    code, out, err = run(capsys, "train", "--dataset", name, "--model", "cnn-small", "--epochs", "1", "--out", tmp_path / "m.safetensors")
    assert code == 2 and out == ""
    assert one_error_line(err) == (f"error: cnn-small reads square images (image_size) but {name} has 17x23 images; "
                                   "use mlp, which reads any shape")


def test_a_model_field_the_user_sets_is_kept_and_a_mismatch_is_one_error_line(tmp_path, capsys):
    name = odd_npz(tmp_path / "rgb.npz", shape=(12, 12, 3), classes=4)
    code, out, err = run(capsys, "train", "--dataset", name, "--model", "cnn-small:in_channels=1", "--epochs", "1",
                         "--out", tmp_path / "m.safetensors")
    assert code == 2 and out == ""
    assert "has images of shape 3x12x12 but the model (cnn-small:classes=4,image_size=12) reads 1x12x12" in one_error_line(err)
