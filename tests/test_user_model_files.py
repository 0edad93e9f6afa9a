"""Why redblue refuses TorchScript and pickle files, shown on crafted archives; the Normalize layer; MODULE:FACTORY specs.

Two facts about `torch.jit.load` decide it. Its pickles (data.pkl, constants.pkl) are read by torch's
C++ Unpickler, which resolves a fixed set of globals (torch's tensor rebuilders, a few list and
dtype helpers) and sends every other name to the archive's own TorchScript types: a data.pkl that
names `os.system` or `builtins.eval` is refused. But the archive's code/ section is a TorchScript
program that runs while loading (a module's `__setstate__`), and TorchScript can map any file into
a tensor and write into it (`torch.from_file(path, shared=True)`): loading one can overwrite files.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from cli_helpers import one_error_line, run
from torch import nn

from redblue.bounds.network import linearize
from redblue.errors import ConfigError
from redblue.models import CIFAR10_MEAN, CIFAR10_STD, Normalize
from redblue.models.user import ModelCode, foreign_format, parse_model_code

# torch 2.13 deprecates TorchScript; these tests build TorchScript archives to show what loading one does
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


class Linear2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def with_data_pkl(archive: Path, data_pkl: bytes, out: Path) -> Path:
    """A copy of a torch.jit.save archive with its data.pkl replaced."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            target.writestr(name, data_pkl if name.endswith("/data.pkl") else source.read(name))
    return out


@pytest.mark.parametrize(("module", "name"), [("os", "system"), ("builtins", "eval"), ("subprocess", "call")])
def test_torch_jit_load_resolves_no_python_global_in_data_pkl(module, name, tmp_path):
    torch.jit.save(torch.jit.script(Linear2()), str(tmp_path / "ok.pt"))
    marker = tmp_path / "pwned"
    # protocol 2: GLOBAL module name, the argument tuple (a shell command / an expression), REDUCE
    command = f"open({str(marker)!r}, 'w')" if name == "eval" else f"touch {marker}"
    argument = command.encode() if name != "call" else b""
    payload = (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(argument).to_bytes(4, "little") + argument
               + b"\x85R.")
    evil = with_data_pkl(tmp_path / "ok.pt", payload, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match=f"Unknown type name '{module}.{name}'"):
        torch.jit.load(str(evil))
    assert not marker.exists()


class OverwritesOnLoad(nn.Module):
    """A TorchScript module whose __setstate__ (run by torch.jit.load) overwrites the first bytes of a file."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim
        self.kept = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.victim, self.kept, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.victim, self.training = state[0], state[2]
        mapped = torch.from_file(self.victim, shared=True, size=5, dtype=torch.uint8)
        mapped.fill_(88)  # "XXXXX"
        self.kept = mapped  # kept, so that the compiler does not drop the write as dead code


@pytest.fixture
def overwriting_archive(tmp_path) -> tuple[Path, Path]:
    victim = tmp_path / "victim.txt"
    victim.write_text("hello world\n")
    archive = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(OverwritesOnLoad(str(victim))), str(archive))
    victim.write_text("hello world\n")  # scripting ran nothing, but start clean anyway
    return archive, victim


def test_torchscript_code_runs_while_loading_and_can_overwrite_files(overwriting_archive):
    archive, victim = overwriting_archive
    torch.jit.load(str(archive))
    assert victim.read_text() == "XXXXX world\n"


@pytest.mark.parametrize("as_weights", [False, True])
def test_redblue_refuses_torchscript_without_running_it(as_weights, overwriting_archive, tmp_path, capsys, monkeypatch):
    archive, victim = overwriting_archive
    (tmp_path / "nets.py").write_text("from torch import nn\n\ndef net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    monkeypatch.chdir(tmp_path)
    model = ["--model-code", "nets:net", "--weights", archive] if as_weights else [archive]
    code, _, err = run(capsys, "evaluate", *model, "--attacks", "fgsm", "--eps", "0.1", "--limit", 5, "--device", "cpu")
    line = one_error_line(err)
    assert code == 2 and "is a TorchScript archive (torch.jit.save); redblue does not load it" in line, line
    assert "--model-code MODULE:FACTORY --weights FILE.safetensors" in line
    assert victim.read_text() == "hello world\n"  # torch.jit.load never ran


def test_foreign_formats_are_told_apart_by_their_bytes(tmp_path):
    torch.jit.save(torch.jit.script(Linear2()), str(tmp_path / "script.pt"))
    torch.save(Linear2().state_dict(), tmp_path / "state.pt")
    torch.save(Linear2().state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file(Linear2().state_dict(), str(tmp_path / "w.safetensors"))  # its header is 128+ bytes: it opens with 0x80 too
    assert foreign_format(tmp_path / "script.pt") == "a TorchScript archive (torch.jit.save)"
    assert foreign_format(tmp_path / "state.pt") == "a torch.save archive (a pickle)"
    assert foreign_format(tmp_path / "legacy.pt") == "a pickle (torch.save or pickle.dump)"
    assert foreign_format(tmp_path / "w.safetensors") is None


def test_normalize_is_per_channel_standardisation_and_not_in_the_state_dict():
    layer = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    x = torch.rand(2, 3, 4, 4)
    expected = torch.stack([(x[:, c] - CIFAR10_MEAN[c]) / CIFAR10_STD[c] for c in range(3)], dim=1)
    torch.testing.assert_close(layer(x), expected)
    net = nn.Sequential(layer, nn.Flatten(), nn.Linear(48, 10))
    assert list(net.state_dict()) == ["2.weight", "2.bias"]  # the statistics live in the code, not the weights
    with pytest.raises(ConfigError, match="std must be > 0"):
        Normalize((0.5,), (0.0,))


def test_the_bounds_read_normalize_as_its_affine_map():
    net = nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD), nn.Flatten(), nn.Linear(48, 10)).double()
    chain = linearize(net, torch.rand(1, 3, 4, 4, dtype=torch.float64))
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64)
    out = x
    for op in chain:
        out = op.forward(out)
    torch.testing.assert_close(out, net(x))


@pytest.mark.parametrize(("text", "expected"), [
    ("nets:resnet", ModelCode("nets", "resnet")),
    ("my_pkg.nets:resnet18:num_classes=10,width=0.5,pre=True,name=wide",
     ModelCode("my_pkg.nets", "resnet18", (("num_classes", 10), ("width", 0.5), ("pre", True), ("name", "wide")))),
])
def test_model_code_specs(text, expected):
    code = parse_model_code(text)
    assert code == expected
    assert parse_model_code(code.text) == code


@pytest.mark.parametrize("text", ["nets", ":resnet", "nets:", "my-nets:resnet", "nets:res.net", "nets:resnet:width"])
def test_bad_model_code_specs(text):
    with pytest.raises(ConfigError):
        parse_model_code(text)
