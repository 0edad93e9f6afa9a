"""Bring your own model: `--model-code MODULE:FACTORY --weights FILE.safetensors` from the CLI.

The user's model is a small residual network written here (no torchvision), in a module file in a
temporary folder, with briefly trained weights saved by safetensors itself. The CLI's numbers must
equal the Python API's on the same images and seed, where the reference builds the model without
redblue's loader (importlib from the file, `safetensors.torch.load_file`, `load_state_dict`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
from cli_helpers import check_error_stdout, one_error_line, run
from safetensors.torch import load_file, save_file

from redblue.data import load_dataset
from redblue.evaluate import evaluate

LIMIT, EPS, SEED = 50, 0.1, 0
MODULE = "byo_nets"  # a name no other test imports: Python caches modules by name

NETS = textwrap.dedent('''
    """A small ResNet for MNIST, torchvision-free: a strided stem, two residual blocks, global pooling."""
    import torch
    from torch import nn

    from redblue.models import Normalize

    WIDTH = 8


    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(out)))


    class SmallResNet(nn.Module):
        def __init__(self, width, classes):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.blocks = nn.Sequential(Block(width), Block(width))
            self.head = nn.Linear(width, classes)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


    def resnet(width=WIDTH, classes=10):
        return nn.Sequential(Normalize((0.1307,), (0.3081,)), SmallResNet(width, classes))


    def broken():
        raise ValueError("width must be even")


    def not_a_module():
        return 3


    def flat_output():
        return nn.Sequential(nn.Flatten(0))


    def rgb_only():
        return nn.Sequential(nn.Conv2d(3, 10, 28), nn.Flatten())


    class Tuple(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10], x
''')


def import_reference(folder: Path):
    """The user's module imported straight from its file, not through redblue."""
    spec = importlib.util.spec_from_file_location(f"{MODULE}_reference", folder / f"{MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> Path:
    """The module file and a state_dict trained for 5 epochs on 2000 MNIST images (a model that is not chance)."""
    folder = tmp_path_factory.mktemp("byo")
    (folder / f"{MODULE}.py").write_text(NETS)
    module = import_reference(folder)
    torch.manual_seed(0)
    model = module.resnet()
    train = load_dataset("mnist", "train")
    x, y = train.x[:2000], train.y[:2000]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        for start in range(0, len(y), 50):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[start:start + 50]), y[start:start + 50]).backward()
            optimiser.step()
    save_file(model.state_dict(), str(folder / "w.safetensors"))
    return folder


@pytest.fixture
def in_user_folder(user_files, monkeypatch):
    """Run from the folder that holds the module, as a user would; forget the module afterwards."""
    monkeypatch.chdir(user_files)
    yield user_files
    sys.modules.pop(MODULE, None)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_evaluate_standard_equals_the_python_api(in_user_folder, tmp_path, capsys):
    out = tmp_path / "runs" / "byo"
    code, stdout, err = run(capsys, "evaluate", "--model-code", f"{MODULE}:resnet", "--weights", "w.safetensors",
                            "--attacks", "standard", "--eps", EPS, "--limit", LIMIT, "--seed", SEED, "--out", out,
                            "--json", "--device", "cpu", "--threads", "1")
    assert code == 0, err
    record = json.loads(stdout)

    model = import_reference(in_user_folder).resnet()
    model.load_state_dict(load_file(str(in_user_folder / "w.safetensors")), strict=True)
    model.eval()
    test = load_dataset("mnist", "test")
    evaluation = evaluate(model, test.x[:LIMIT], test.y[:LIMIT], "standard", [EPS],
                          generator=torch.Generator().manual_seed(SEED))
    expected = evaluation.to_dict()

    assert 0.5 < expected["clean"]["accuracy"] < 1.0  # trained, and not every image survives: the attacks mattered
    assert record["clean"] == expected["clean"]
    (row,), (reference,) = record["results"], expected["results"]
    assert row["worst_case"] == reference["worst_case"]
    assert reference["worst_case"]["accuracy"] < expected["clean"]["accuracy"]
    assert [a["label"] for a in row["attacks"]] == [a["label"] for a in reference["attacks"]]
    for got, want in zip(row["attacks"], reference["attacks"]):
        assert {k: v for k, v in got.items() if "seconds" not in k} == {k: v for k, v in want.items() if "seconds" not in k}
    assert row["certified"] == reference["certified"]
    assert [(f["severity"], f["check"]) for f in record["findings"]] == [(f["severity"], f["check"]) for f in expected["findings"]]
    masks = load_file(str(out / "masks.safetensors"))
    assert masks.keys() == evaluation.masks().keys()
    for name, mask in evaluation.masks().items():  # the same images fooled, one by one
        assert torch.equal(masks[name].bool(), mask.bool()), name

    # the record names the code and the weights judged, in results.json and config.toml alike
    judged = {
        "code": f"{MODULE}:resnet",
        "module_file": str((in_user_folder / f"{MODULE}.py").resolve()),
        "module_sha256": sha256(in_user_folder / f"{MODULE}.py"),
        "weights": "w.safetensors",
        "weights_sha256": sha256(in_user_folder / "w.safetensors"),
    }
    assert {k: record["model_code"][k] for k in judged} == judged
    assert json.loads((out / "results.json").read_text())["model_code"] == record["model_code"]
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["model_code"] == record["model_code"] and config["model"] == f"{MODULE}:resnet + w.safetensors"

    # the run index and the leaderboard name the model by its code and weights file
    code, stdout, err = run(capsys, "leaderboard", "--root", tmp_path / "runs", "--json")
    assert code == 0, err
    (entry,) = json.loads(stdout)["rows"]
    assert entry["model"] == f"{MODULE}:resnet + w.safetensors"
    assert entry["worst_case_accuracy"] == reference["worst_case"]["accuracy"]
    code, stdout, err = run(capsys, "runs", "--root", tmp_path / "runs", "--json")
    assert code == 0, err
    (listed,) = json.loads(stdout)["runs"]
    assert listed["metrics"]["model"] == f"{MODULE}:resnet + w.safetensors"


def test_attack_records_the_code_and_weights(in_user_folder, tmp_path, capsys):
    out = tmp_path / "attack"
    code, stdout, err = run(capsys, "attack", "--model-code", f"{MODULE}:resnet:width=8", "--weights", "w.safetensors",
                            "--attack", f"fgsm:eps={EPS}", "--limit", 20, "--out", out, "--json", "--device", "cpu",
                            "--threads", "1")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == f"{MODULE}:resnet:width=8 + w.safetensors"
    assert metrics["model_code"]["weights_sha256"] == sha256(in_user_folder / "w.safetensors")
    assert metrics["model_code"]["module_sha256"] == sha256(in_user_folder / f"{MODULE}.py")
    # the state digest is of the tensors loaded: the trained ones, not the factory's initial ones
    expected = hashlib.sha256()
    for name, tensor in sorted(load_file(str(in_user_folder / "w.safetensors")).items()):
        expected.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        expected.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert metrics["model_code"]["state_sha256"] == expected.hexdigest()


def _weights(folder: Path, name: str, change) -> Path:
    """The trained weights with one change applied (a tensor dropped, added or reshaped)."""
    tensors = load_file(str(folder / "w.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / name))
    return folder / name


def _not_safetensors(folder: Path) -> Path:
    (folder / "garbage.safetensors").write_bytes(b"\x07not a safetensors file at all")
    return folder / "garbage.safetensors"


def _pickled(folder: Path) -> Path:
    torch.save({"w": torch.zeros(2)}, folder / "w.pth")
    return folder / "w.pth"


ERRORS = [
    # (--model-code, --weights maker or None, what the one line says)
    ("no_such_module:resnet", None, "no module 'no_such_module' in "),
    (f"{MODULE}:nope", None, "defines no 'nope'; it defines "),
    (f"{MODULE}:WIDTH", None, f"{MODULE}.WIDTH is a int, not a function"),
    (f"{MODULE}:broken", None, f"{MODULE}.broken() raised ValueError: width must be even"),
    (f"{MODULE}:not_a_module", None, "returned a int, not a torch.nn.Module"),
    (f"{MODULE}:resnet:depth=3", None, f"{MODULE}.resnet(depth=3) raised TypeError: resnet() got an unexpected keyword argument 'depth'"),
    ("resnet", None, "must be MODULE:FACTORY"),
    (f"{MODULE}:resnet", _not_safetensors, "is not a readable safetensors file"),
    (f"{MODULE}:resnet", _pickled, "is a torch.save archive (a pickle); redblue does not load it"),
    (f"{MODULE}:resnet", lambda f: _weights(f, "missing.safetensors", lambda t: t.pop("1.head.bias")),
     "does not fit byo_nets.resnet(): it lacks '1.head.bias'"),
    (f"{MODULE}:resnet", lambda f: _weights(f, "extra.safetensors", lambda t: t.update(extra=torch.zeros(1))),
     "it has unexpected 'extra'"),
    (f"{MODULE}:resnet:width=4", lambda f: f / "w.safetensors",
     "tensor '1.stem.0.weight' has shape (8, 1, 3, 3) but byo_nets.resnet(width=4) needs (4, 1, 3, 3)"),
    (f"{MODULE}:resnet:classes=5", None, "the model outputs 5 classes but mnist has 10 classes"),
    (f"{MODULE}:flat_output", None, "it must return float logits of shape (N, classes)"),
    (f"{MODULE}:rgb_only", None, "the model cannot read mnist images of shape (1, 28, 28): RuntimeError: "),
    (f"{MODULE}:Tuple", None, "the model returned a tuple on mnist images, not a tensor of logits"),
    ("torch.nn:Identity", None, "returned torch.float32 of shape (2, 1, 28, 28) for 2 mnist images"),  # an installed package
]


@pytest.mark.parametrize("verb", ["evaluate", "attack"])
@pytest.mark.parametrize(("model_code", "make_weights", "says"), ERRORS, ids=[e[0] + str(i) for i, e in enumerate(ERRORS)])
def test_a_bad_user_model_is_one_error_line_and_writes_nothing(verb, model_code, make_weights, says, in_user_folder, tmp_path, capsys):
    weights = [] if make_weights is None else ["--weights", make_weights(in_user_folder)]
    out = tmp_path / "out"
    how = ["--attacks", "fgsm", "--eps", "0.1"] if verb == "evaluate" else ["--attack", "fgsm:eps=0.1"]
    code, stdout, err = run(capsys, verb, "--model-code", model_code, *weights, *how, "--limit", 10, "--out", out,
                            "--json", "--device", "cpu", "--threads", "1")
    line = one_error_line(err)
    assert code == 2 and says in line, line
    check_error_stdout(stdout, line, code, as_json=True)
    assert not out.exists()


@pytest.mark.parametrize(("args", "says"), [
    (["MODEL.safetensors", "--model-code", f"{MODULE}:resnet"], "give either MODEL"),
    ([], "give a MODEL file from `redblue train`, or your own model with --model-code"),
    (["--weights", "w.safetensors"], "--weights goes with --model-code"),
])
def test_model_and_model_code_are_one_choice(args, says, in_user_folder, capsys):
    code, stdout, err = run(capsys, "evaluate", *args, "--attacks", "fgsm", "--eps", "0.1", "--device", "cpu")
    assert code == 2 and says in one_error_line(err), err


def test_a_redblue_model_file_records_its_digest(tmp_path, capsys):
    from redblue.models import MLPSpec, build_model, save_model

    path = tmp_path / "mlp.safetensors"
    torch.manual_seed(0)
    save_model(path, build_model(MLPSpec(hidden=16)), MLPSpec(hidden=16))
    out = tmp_path / "attack"
    code, stdout, err = run(capsys, "attack", path, "--attack", "fgsm:eps=0.1", "--limit", 10, "--out", out, "--json",
                            "--device", "cpu", "--threads", "1")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == str(path) and metrics["model_sha256"] == sha256(path) and "model_code" not in metrics


CIFAR_NETS = '''
from torch import nn
from redblue.models import CIFAR10_MEAN, CIFAR10_STD, Normalize

def small():
    return nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD), nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
'''


def test_a_cifar_shaped_user_model_on_a_cifar_layout_dataset(env, tmp_path, monkeypatch, capsys):
    """3x32x32 images (a tiny CIFAR-10-layout tarball), a Normalize-first model: the CLI equals the Python API."""
    from cifar_fixtures import cifar_spec, tiny_cifar

    from redblue import data

    made = tiny_cifar()
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data))
    (tmp_path / "root" / "tiny-cifar").mkdir(parents=True)
    (tmp_path / "root" / "tiny-cifar" / "cifar-10-python.tar.gz").write_bytes(made.data)
    (tmp_path / "cifar_nets.py").write_text(CIFAR_NETS)
    torch.manual_seed(0)
    spec = importlib.util.spec_from_file_location("cifar_nets_reference", tmp_path / "cifar_nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.small().eval()
    save_file(model.state_dict(), str(tmp_path / "c.safetensors"))
    monkeypatch.chdir(tmp_path)
    try:
        code, stdout, err = run(capsys, "evaluate", "--model-code", "cifar_nets:small", "--weights", "c.safetensors",
                                "--dataset", "tiny-cifar", "--split", "train", "--data-dir", tmp_path / "root",
                                "--attacks", "fgsm,pgd:steps=5", "--eps", "0.03", "--no-checks", "--json",
                                "--device", "cpu", "--threads", "1")
    finally:
        sys.modules.pop("cifar_nets", None)
    assert code == 0, err
    record = json.loads(stdout)
    train = load_dataset("tiny-cifar", "train", data_dir=tmp_path / "root")
    assert train.x.shape == (10, 3, 32, 32)
    expected = evaluate(model, train.x, train.y, "fgsm,pgd:steps=5", [0.03], mode="per-attack", checks=False,
                        generator=torch.Generator().manual_seed(0)).to_dict()
    assert record["n"] == 10 and record["clean"] == expected["clean"]
    for got, want in zip(record["results"][0]["attacks"], expected["results"][0]["attacks"]):
        assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}
