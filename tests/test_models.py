"""The model zoo: layer layouts against independent functional re-computations, parameter counts
against the papers', format-1 files still loading, and one-line errors for bad model files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from cli_helpers import run, one_error_line
from redblue.errors import ConfigError, ModelError
from redblue.models import (
    MODELS,
    CNNLargeSpec,
    CNNSmallSpec,
    CNNSpec,
    MLPSpec,
    build_model,
    check_fits,
    input_shape,
    load_model,
    parameter_count,
    parse_model,
    save_model,
    spec_text,
)

FIXTURES = Path(__file__).parent / "fixtures"
D = torch.float64


def seeded(spec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec).to(D).eval()


def images(n: int, channels: int = 1, size: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=D)


# ---- the zoo ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reference",
    [
        # 784*625 + 625 + 625*10 + 10
        ("mlp", 496_885),
        # Wong et al. (2018), "Conv-Small" on MNIST
        ("cnn-small", 166_406),
        # Madry et al.'s mnist_challenge model: 5*5*32+32 + 5*5*32*64+64 + 7*7*64*1024+1024 + 1024*10+10
        ("cnn", 3_274_634),
        # Wong et al. (2018), "Conv-Large" on MNIST (CROWN-IBP's model_cnn_4layer, width 8, linear 512)
        ("cnn-large", 1_974_762),
    ],
)
def test_parameter_counts_match_the_papers(name, reference):
    assert parameter_count(build_model(MODELS[name].spec_type())) == reference


def functional_cnn_small(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.conv2d(x, params["0.weight"], params["0.bias"], stride=2, padding=1))
    h = F.relu(F.conv2d(h, params["2.weight"], params["2.bias"], stride=2, padding=1))
    h = F.relu(h.flatten(1) @ params["5.weight"].T + params["5.bias"])
    return h @ params["7.weight"].T + params["7.bias"]


def functional_madry(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """conv 5x5 'same' -> relu -> 2x2 max-pool ('SAME': pad the far edge with -inf when odd), twice."""

    def pool(h: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = h.shape[2] % 2, h.shape[3] % 2
        return F.max_pool2d(F.pad(h, (0, pad_w, 0, pad_h), value=float("-inf")), 2)

    h = pool(F.relu(F.conv2d(x, params["0.weight"], params["0.bias"], padding=2)))
    h = pool(F.relu(F.conv2d(h, params["3.weight"], params["3.bias"], padding=2)))
    h = F.relu(h.flatten(1) @ params["7.weight"].T + params["7.bias"])
    return h @ params["9.weight"].T + params["9.bias"]


def functional_cnn_large(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.conv2d(x, params["0.weight"], params["0.bias"], padding=1))
    h = F.relu(F.conv2d(h, params["2.weight"], params["2.bias"], stride=2, padding=1))
    h = F.relu(F.conv2d(h, params["4.weight"], params["4.bias"], padding=1))
    h = F.relu(F.conv2d(h, params["6.weight"], params["6.bias"], stride=2, padding=1))
    h = F.relu(h.flatten(1) @ params["9.weight"].T + params["9.bias"])
    h = F.relu(h @ params["11.weight"].T + params["11.bias"])
    return h @ params["13.weight"].T + params["13.bias"]


@pytest.mark.parametrize(
    "spec, functional",
    [
        (CNNSmallSpec(channels1=3, channels2=4, hidden=6), functional_cnn_small),
        (CNNSmallSpec(channels1=3, channels2=4, hidden=6, in_channels=3, image_size=32, classes=5), functional_cnn_small),
        (CNNSpec(channels1=3, channels2=4, hidden=6), functional_madry),
        (CNNSpec(channels1=3, channels2=4, hidden=6, image_size=13, classes=4), functional_madry),  # odd: pools pad
        (CNNLargeSpec(channels1=3, channels2=4, hidden=6), functional_cnn_large),
        (CNNLargeSpec(channels1=3, channels2=4, hidden=6, in_channels=2, image_size=17, classes=3), functional_cnn_large),
    ],
    ids=["small", "small-3x32x32", "madry", "madry-13x13", "large", "large-2x17x17"],
)
def test_cnns_compute_the_layers_they_document(spec, functional):
    model = seeded(spec)
    x = images(3, spec.in_channels, spec.image_size)
    params = {name: t.detach() for name, t in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, spec.classes)
    torch.testing.assert_close(logits, functional(params, x), rtol=1e-12, atol=1e-12)


def test_madry_cnn_keeps_28_by_28_through_same_padding_and_halves_it_twice():
    model = build_model(CNNSpec())
    shapes = []
    h = torch.zeros(1, 1, 28, 28)
    for layer in model:
        h = layer(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes[:7] == [(32, 28, 28), (32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 14, 14), (64, 7, 7), (3136,)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_saves_and_loads_to_the_same_logits(name, tmp_path):
    spec = parse_model(f"{name}:classes=7")
    torch.manual_seed(3)
    model = build_model(spec).eval()
    with torch.no_grad():  # BatchNorm's running statistics are saved too: make them differ from a fresh model's
        for buffer_name, buffer in model.named_buffers():
            if buffer.is_floating_point() and buffer_name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    save_model(tmp_path / "m.safetensors", model, spec)
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.spec == spec and not loaded.model.training
    x = torch.rand(2, *input_shape(spec))  # the defaults: 1x28x28 for the MNIST models, 3x32x32 for the CIFAR ones
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        assert handle.metadata()["redblue.format"] == "2" and handle.metadata()["redblue.arch"] == name


def test_spec_text_names_only_what_differs_and_parses_back():
    spec = CNNLargeSpec(hidden=256, classes=3)
    assert spec_text(spec) == "cnn-large:hidden=256,classes=3"
    assert parse_model(spec_text(spec)) == spec
    assert spec_text(MLPSpec()) == "mlp"


def test_input_shapes_and_the_fit_check():
    assert input_shape(MLPSpec()) == (784,)
    assert input_shape(CNNSpec(in_channels=3, image_size=32)) == (3, 32, 32)
    check_fits(MLPSpec(), image_shape=(1, 28, 28), classes=10)
    check_fits(CNNSmallSpec(), image_shape=(1, 28, 28), classes=10)
    with pytest.raises(ModelError, match="shape 3x32x32 .* reads 784 pixels"):
        check_fits(MLPSpec(), image_shape=(3, 32, 32), classes=10)
    with pytest.raises(ModelError, match="has 26 classes but the model \\(cnn\\) has 10"):
        check_fits(CNNSpec(), image_shape=(1, 28, 28), classes=26)


@pytest.mark.parametrize(
    "text, message",
    [
        ("resnet", "unknown model 'resnet'; choose one of: mlp, cnn-small, cnn, cnn-large"),
        ("cnn:kernel=3", "model 'cnn' has no parameter kernel"),
        ("cnn-small:image_size=3", "image_size must be >= 4"),
        ("cnn-large:channels1=0", "channels1"),
    ],
)
def test_bad_model_specs_fail_with_one_line(text, message):
    with pytest.raises((ConfigError, ModelError), match=message) as info:
        parse_model(text)
    assert "\n" not in str(info.value)


# ---- files written before the zoo (format 1) ------------------------------------------------


def raw_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


def test_a_format_1_cnn_file_loads_as_the_small_cnn():
    """tests/fixtures/format1-cnn.safetensors was written by redblue 5006399, whose `cnn` was the
    small CNN with spec {channels1, channels2, hidden, classes}."""
    path = FIXTURES / "format1-cnn.safetensors"
    tensors, metadata = raw_tensors(path)
    assert metadata["redblue.format"] == "1" and metadata["redblue.arch"] == "cnn"
    assert json.loads(metadata["redblue.spec"]) == {"channels1": 2, "channels2": 3, "hidden": 5, "classes": 10}
    loaded = load_model(path)
    assert loaded.spec == CNNSmallSpec(channels1=2, channels2=3, hidden=5)
    x = images(4).float()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), functional_cnn_small(tensors, x), rtol=1e-5, atol=1e-6)


def test_a_format_1_mlp_file_loads_unchanged():
    path = FIXTURES / "format1-mlp.safetensors"
    tensors, _ = raw_tensors(path)
    loaded = load_model(path)
    assert loaded.spec == MLPSpec(hidden=6)
    x = images(4).float()
    expected = F.relu(x.flatten(1) @ tensors["2.weight"].T + tensors["2.bias"]) @ tensors["5.weight"].T + tensors["5.bias"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), expected, rtol=1e-5, atol=1e-6)


# ---- bad model files: one line that names the problem -----------------------------------------


def rewrite(path: Path, out: Path, *, tensors=None, metadata=None) -> Path:
    old_tensors, old_metadata = raw_tensors(path)
    save_file(old_tensors if tensors is None else tensors, str(out), metadata=old_metadata if metadata is None else metadata)
    return out


@pytest.fixture
def model_file(tmp_path) -> Path:
    spec = MLPSpec(hidden=8)
    torch.manual_seed(0)
    save_model(tmp_path / "model.safetensors", build_model(spec), spec)
    return tmp_path / "model.safetensors"


def test_a_folder_is_called_a_folder_and_its_model_files_are_named(tmp_path, model_file):
    with pytest.raises(ModelError, match=r"is a folder, not a model file; .* \(it holds model.safetensors\)$"):
        load_model(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"empty is a folder, not a model file; pass the .safetensors file itself$"):
        load_model(empty)


def test_a_wrong_shape_names_the_tensor_and_both_shapes(tmp_path, model_file):
    tensors, _ = raw_tensors(model_file)
    tensors["2.weight"] = torch.zeros(8, 700)
    bad = rewrite(model_file, tmp_path / "bad.safetensors", tensors=tensors)
    with pytest.raises(ModelError) as info:
        load_model(bad)
    assert str(info.value) == (
        f"{bad}: tensor '2.weight' has shape (8, 700) but its spec mlp:hidden=8 needs (8, 784); "
        "the weights and the spec disagree, re-save the model"
    )


def test_a_missing_and_an_unexpected_tensor_are_named(tmp_path, model_file):
    tensors, _ = raw_tensors(model_file)
    del tensors["5.bias"]
    missing = rewrite(model_file, tmp_path / "missing.safetensors", tensors=tensors)
    with pytest.raises(ModelError, match=r"lacks tensor '5.bias', which its spec mlp:hidden=8 needs"):
        load_model(missing)
    tensors, _ = raw_tensors(model_file)
    tensors["7.weight"] = torch.zeros(2)
    tensors["8.weight"] = torch.zeros(2)
    extra = rewrite(model_file, tmp_path / "extra.safetensors", tensors=tensors)
    with pytest.raises(ModelError, match=r"has tensor '7.weight' \(and 1 more\), which its spec mlp:hidden=8 does not"):
        load_model(extra)


def test_a_newer_format_is_refused_with_upgrade_advice(tmp_path, model_file):
    _, metadata = raw_tensors(model_file)
    newer = rewrite(model_file, tmp_path / "newer.safetensors", metadata={**metadata, "redblue.format": "9"})
    with pytest.raises(ModelError, match="model format 9, which this redblue does not know .*; upgrade redblue"):
        load_model(newer)


def test_a_format_1_file_cannot_name_the_new_architectures(tmp_path, model_file):
    _, metadata = raw_tensors(model_file)
    odd = rewrite(model_file, tmp_path / "odd.safetensors", metadata={**metadata, "redblue.format": "1", "redblue.arch": "cnn-large"})
    with pytest.raises(ModelError, match="no redblue model spec"):
        load_model(odd)


@pytest.mark.parametrize("case", ["folder", "wrong-shape"])
def test_bad_model_files_through_the_cli_are_one_error_line_with_exit_2(case, tmp_path, model_file, capsys):
    if case == "folder":
        target, fragment = tmp_path, "is a folder, not a model file"
    else:
        tensors, _ = raw_tensors(model_file)
        tensors["5.weight"] = torch.zeros(3, 8)
        target = rewrite(model_file, tmp_path / "bad.safetensors", tensors=tensors)
        fragment = "tensor '5.weight' has shape (3, 8) but its spec mlp:hidden=8 needs (10, 8)"
    code, out, err = run(capsys, "evaluate", target, "--device", "cpu", "--limit", "10", "--eps", "0.1", "--attacks", "fgsm")
    assert code == 2 and out == ""
    assert fragment in one_error_line(err)


# ---- redblue models --------------------------------------------------------------------------


def test_models_verb_lists_every_model_with_its_parameter_count(capsys):
    code, out, err = run(capsys, "models", "--json")
    assert code == 0 and err == ""
    rows = {row["name"]: row for row in json.loads(out)["models"]}
    assert {name: row["parameter_count"] for name, row in rows.items()} == {
        "mlp": 496_885, "cnn-small": 166_406, "cnn": 3_274_634, "cnn-large": 1_974_762,
        "preact-resnet18": 11_172_170, "cnn-7": 17_192_650,
    }
    assert rows["cnn-7"]["input_shape"] == [3, 32, 32]
    assert rows["cnn"]["input_shape"] == [1, 28, 28]
    assert [p["name"] for p in rows["cnn-small"]["params"]] == ["channels1", "channels2", "hidden", "classes", "in_channels", "image_size"]
    code, out, _ = run(capsys, "models")
    assert code == 0
    for name in ("mlp", "cnn-small", "cnn-large", "3,274,634", "166,406"):
        assert name in out
