"""The CLI on datasets that are not MNIST: a CIFAR-format tarball (3x32x32, 10 classes) and user
`.npz` files with odd shapes and class counts, trained, attacked and evaluated end to end.

The model's input and classes follow the dataset (`redblue.models.fit_spec`) unless the --model
text sets them; a mismatch, or a CNN on non-square images, is one `error:` line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from arena_fixtures import TINY_TOML, write_tiny
from PIL import Image as PILImage
from safetensors.numpy import load_file

from cli_helpers import one_error_line, run
from redblue.arena import arena, load_arena
from redblue.data import load_dataset
from redblue.models import load_model
from redblue.report.html import image_pixels, png_bytes
from redblue.report.page import ImageGrid
from redblue.report.pages import PageOptions, build_page, write_reports


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


def test_report_pages_of_rgb_attack_and_evaluate_runs_show_colour_images(cifar_root, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    assert run(capsys, "train", "--dataset", "tiny-cifar", "--data-dir", cifar_root, "--model", "cnn-small",
               "--epochs", "1", "--batch-size", "4", "--out", model)[0] == 0
    attack_dir, evaluate_dir = tmp_path / "attack-run", tmp_path / "evaluate-run"
    code, _, err = run(capsys, "attack", model, "--attack", "fgsm:eps=0.05", "--data-dir", cifar_root, "--out", attack_dir)
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", model, "--attacks", "fgsm", "--eps", "0.05", "--data-dir", cifar_root,
                       "--out", evaluate_dir)
    assert code == 0, err

    page = build_page(attack_dir, options=PageOptions(data_dir=str(cifar_root)))
    [grid] = [block for section in page.sections for block in section.blocks if isinstance(block, ImageGrid)]
    assert grid.columns == ("clean", "adversarial", "perturbation")
    saved = load_file(str(attack_dir / "adversarial.safetensors"))
    clean_set = load_dataset("tiny-cifar", "test", data_dir=cifar_root)
    for label, (clean, adversarial, perturbation) in grid.rows:
        i = int(label.split()[1])
        index = int(saved["indices"][i])
        np.testing.assert_array_equal(clean.pixels, clean_set.x[index].numpy().transpose(1, 2, 0))
        np.testing.assert_array_equal(adversarial.pixels, saved["x_adv"][i].transpose(1, 2, 0))
        delta = saved["x_adv"][i].astype(np.float64) - clean_set.x[index].numpy()
        np.testing.assert_allclose(perturbation.pixels, 0.5 + delta.transpose(1, 2, 0) / 0.1)
        # each renders as an RGB PNG of the image's size
        for image in (clean, adversarial, perturbation):
            decoded = PILImage.open(io.BytesIO(png_bytes(image_pixels(image))))
            assert decoded.mode == "RGB" and decoded.size == (32, 32)
    paths = write_reports(attack_dir, options=PageOptions(data_dir=str(cifar_root)))
    assert paths["html"].read_text().count("data:image/png;base64,") >= 3 * len(grid.rows)
    assert write_reports(evaluate_dir)["html"].is_file()


def test_the_arena_plays_a_quick_config_on_a_small_rgb_dataset(tmp_path):
    gen = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        """3x16x16 images of 5 classes; the class brightens channel (class mod 3), so an MLP can learn it."""
        y = np.arange(n) % 5
        x = gen.integers(0, 120, (n, 16, 16, 3))
        for i, label in enumerate(y):
            x[i, :, :, label % 3] += 60 * (1 + label // 3)
        return x.astype(np.uint8), y

    (x_train, y_train), (x_test, y_test) = split(200), split(60)
    np.savez(tmp_path / "rgb.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    text = (TINY_TOML.replace('name = "tiny"\n', f'name = "tiny"\ndataset = "{tmp_path / "rgb.npz"}"\n')
            .replace("train_subset = 1000", "train_subset = 200").replace("test_subset = 100", "test_subset = 60"))
    result = arena(load_arena(write_tiny(tmp_path, text)), tmp_path / "run", workers=1)
    results = result.results
    assert sorted(row["defense"] for row in results["leaderboard"]) == ["clean", "fgsm-at"]
    assert all(row["n"] == 60 for row in results["leaderboard"])
    for training in results["trainings"]:  # every model, surrogate included, was built for 3x16x16 and 5 classes
        loaded = load_model(result.folder / "models" / f"{training['cell']}.safetensors")
        assert (loaded.spec.in_features, loaded.spec.classes) == (3 * 16 * 16, 5)
    clean = next(row for row in results["leaderboard"] if row["defense"] == "clean")
    assert clean["clean_accuracy"] > 0.4  # learnt something: chance is 0.2


def test_the_cifar_models_train_through_the_cli_and_certified_training_refuses_batch_norm(cifar_root, tmp_path, capsys):
    model = tmp_path / "resnet.safetensors"
    code, out, err = run(capsys, "train", "--dataset", "tiny-cifar", "--data-dir", cifar_root, "--model", "preact-resnet18:width=4",
                         "--objective", "pgd:eps=0.03,steps=2", "--epochs", "1", "--batch-size", "5", "--val-size", "0",
                         "--out", model, "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["arch"] == "preact-resnet18" and load_model(model).spec.classes == 10
    code, out, err = run(capsys, "train", "--dataset", "tiny-cifar", "--data-dir", cifar_root, "--model", "cnn-7:width=4,linear_size=16",
                         "--objective", "ibp:eps=0.01", "--epochs", "1", "--val-size", "0", "--out", tmp_path / "cnn7.safetensors")
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == (
        "error: certified bounds cannot pass BatchNorm layer '1': in train mode it uses each batch's statistics; put the "
        "model in eval mode (certified training cannot train BatchNorm: use a model without it, e.g. cnn-7:batch_norm=false)")
    code, out, err = run(capsys, "train", "--dataset", "tiny-cifar", "--data-dir", cifar_root,
                         "--model", "cnn-7:width=4,linear_size=16,batch_norm=false", "--objective", "ibp:eps=0.01",
                         "--epochs", "1", "--val-size", "0", "--out", tmp_path / "cnn7.safetensors")
    assert code == 0, err
