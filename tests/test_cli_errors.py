"""Bad input through the real command line: every case exits with 2, prints exactly one line on
stderr that starts with "error:", no traceback, nothing on stdout, and leaves nothing in --out.

Cases run in-process through `redblue.cli.main`; one runs `python -m redblue` in a subprocess to
show that what reaches a terminal is the same single line. Each case fails before any real work
(no training, at most a 10-image attack), so the whole file takes a few seconds.
"""

from __future__ import annotations

import gzip
import os
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cli_helpers import check_error_stdout
from redblue.cli import main
from redblue.models import MLPSpec, build_model, save_model

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


class OpensFileWhenUnpickled:
    """Unpickling this calls open(path, "w"): a pickle that runs code, as a malicious one would."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Model files, good and bad, shared by every case (written once)."""
    root = tmp_path_factory.mktemp("models")
    spec = MLPSpec(hidden=8)
    torch.manual_seed(0)
    model = build_model(spec)
    save_model(root / "model.safetensors", model, spec)

    nan_model = build_model(spec)
    with torch.no_grad():
        nan_model[2].weight[0, 0] = float("nan")
    save_model(root / "nan.safetensors", nan_model, spec)

    tensors = {name: t.contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(root / "no-metadata.safetensors"))  # valid safetensors, but not redblue's
    torch.save(model.state_dict(), root / "state-dict.pt")  # a real torch.save pickle
    (root / "text.safetensors").write_text("these are not weights\n")
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    (root / "random.safetensors").write_bytes(bytes(noise.tolist()))
    whole = (root / "model.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    wide_spec = MLPSpec(hidden=16)  # the metadata says 16 hidden units, the tensors have 8
    save_model(root / "wide.safetensors", build_model(wide_spec), wide_spec)
    with safe_open(str(root / "wide.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(root / "mismatch.safetensors"), metadata=metadata)
    return {path.stem: path for path in root.iterdir()}


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, fragment: str, argv: list[str]) -> None:
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert code == 2
    check_error_stdout(out, lines[0], code, as_json="--json" in argv)


def assert_nothing_written(out_dir: Path) -> None:
    left = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")) if out_dir.exists() else []
    assert left == [], f"left in --out: {left}"



def case(name: str, argv: list[str], fragment: str):
    """argv with {out} and {<model file stem>} placeholders; fragment: text the error line must hold."""
    return pytest.param(argv, fragment, id=name)


ATTACK = ["attack", "--device", "cpu", "--limit", "10", "--out", "{out}", "--json"]
EVALUATE = ["evaluate", "--device", "cpu", "--limit", "10", "--out", "{out}", "--json", "--no-checks"]
TRAIN = ["train", "--device", "cpu", "--train-subset", "100", "--epochs", "1", "--json",
         "--out", "{out}/model.safetensors"]
REPRODUCE = ["reproduce", "--device", "cpu", "--out", "{out}", "--json"]

CASES = [
    # eps out of range, as an attack parameter and as an evaluation grid
    case("attack-negative-eps", [*ATTACK, "{model}", "--attack", "fgsm:eps=-0.1"], "eps"),
    case("attack-eps-above-1", [*ATTACK, "{model}", "--attack", "pgd:eps=1.5"], "eps"),
    case("attack-nan-eps", [*ATTACK, "{model}", "--attack", "fgsm:eps=nan"], "eps"),
    case("evaluate-negative-eps", [*EVALUATE, "{model}", "--attacks", "fgsm", "--eps", "0.1,-0.1"], "eps"),
    case("evaluate-eps-above-1", [*EVALUATE, "{model}", "--attacks", "fgsm", "--eps", "1.5"], "eps"),
    case("evaluate-eps-not-a-number", [*EVALUATE, "{model}", "--attacks", "fgsm", "--eps", "abc"], "eps"),
    case("train-objective-negative-eps", [*TRAIN, "--objective", "fgsm:eps=-0.1"], "eps"),
    case("train-objective-eps-above-1", [*TRAIN, "--objective", "pgd:eps=1.5"], "eps"),
    # attacks and their parameters
    case("attack-unknown-attack", [*ATTACK, "{model}", "--attack", "nosuch:eps=0.1"], "unknown attack 'nosuch'"),
    case("attack-parameter-it-lacks", [*ATTACK, "{model}", "--attack", "fgsm:eps=0.1,steps=3"], "no parameter steps"),
    case("attack-parameter-wrong-type", [*ATTACK, "{model}", "--attack", "pgd:eps=0.1,steps=many"], "steps"),
    case("attack-without-eps", [*ATTACK, "{model}", "--attack", "fgsm"], "eps"),
    case("evaluate-unknown-attack", [*EVALUATE, "{model}", "--eps", "0.1", "--attacks", "fgsm,nosuch"], "unknown attack"),
    case("evaluate-parameter-it-lacks", [*EVALUATE, "{model}", "--eps", "0.1", "--attacks", "pgd:stepz=3"], "stepz"),
    case("evaluate-unknown-certify", [*EVALUATE, "{model}", "--eps", "0.1", "--attacks", "fgsm", "--certify", "dp"], "certify"),
    case("train-unknown-objective", [*TRAIN, "--objective", "nosuch"], "unknown objective"),
    case("train-objective-parameter-it-lacks", [*TRAIN, "--objective", "pgd:eps=0.1,stepz=3"], "no parameter stepz"),
    # models and lambdas
    case("train-unknown-model", [*TRAIN, "--model", "resnet"], "unknown model 'resnet'"),
    case("train-model-parameter-it-lacks", [*TRAIN, "--model", "mlp:widthh=3"], "no parameter widthh"),
    case("train-negative-l1", [*TRAIN, "--l1", "-0.1"], "l1"),
    case("train-negative-l2", [*TRAIN, "--l2", "-1e-5"], "l2"),
    case("train-nan-l1", [*TRAIN, "--l1", "nan"], "l1"),
    # weights files: missing, not safetensors, corrupt, pickles, not redblue's, not matching the spec
    case("attack-missing-model", [*ATTACK, "{out}.safetensors", "--attack", "fgsm:eps=0.1"], "does not exist"),
    case("attack-text-file-as-model", [*ATTACK, "{text}", "--attack", "fgsm:eps=0.1"], "safetensors"),
    case("attack-random-bytes-as-model", [*ATTACK, "{random}", "--attack", "fgsm:eps=0.1"], "safetensors"),
    case("attack-truncated-model", [*ATTACK, "{truncated}", "--attack", "fgsm:eps=0.1"], "safetensors"),
    case("attack-torch-save-pickle", [*ATTACK, "{state-dict}", "--attack", "fgsm:eps=0.1"], "safetensors"),
    case("evaluate-torch-save-pickle", [*EVALUATE, "{state-dict}", "--attacks", "fgsm", "--eps", "0.1"], "safetensors"),
    case("attack-safetensors-without-spec", [*ATTACK, "{no-metadata}", "--attack", "fgsm:eps=0.1"], "spec"),
    case("attack-weights-not-matching-spec", [*ATTACK, "{mismatch}", "--attack", "fgsm:eps=0.1"], "spec"),
    # NaN: weights that make the input gradient NaN must stop the attack, not give a zero step
    case("attack-nan-weights", [*ATTACK, "{nan}", "--attack", "fgsm:eps=0.1"], "nan"),
    case("evaluate-nan-weights", [*EVALUATE, "{nan}", "--attacks", "pgd:steps=3", "--eps", "0.1"], "nan"),
    # output paths
    case("attack-out-is-a-file", [*ATTACK, "{model}", "--attack", "fgsm:eps=0.1", "--out", "{random}"], "is a file"),
    # the experiment runner
    case("reproduce-unknown-profile", [*REPRODUCE, "--profile", "nosuch"], "profile"),
    case("reproduce-missing-config", [*REPRODUCE, "--config", "{out}.toml"], "does not exist"),
    case("reproduce-zero-seeds", [*REPRODUCE, "--seeds", "0"], "seeds"),
    case("data-verify-unknown-dataset", ["data", "verify", "nosuch", "--json"], "unknown dataset 'nosuch'"),
    # a key given twice is ambiguous: which eps did the run use?
    case(
        "attack-parameter-given-twice", [*ATTACK, "{model}", "--attack", "fgsm:eps=0.1,eps=0.3"], "eps"
    ),
    # an unknown option is bad input too; typer prints a multi-line usage panel for it
    case(
        "attack-unknown-option", [*ATTACK, "{model}", "--attack", "fgsm:eps=0.1", "--epss", "0.1"], "epss"
    ),
]


def expand(argv: list[str], files: dict[str, Path], out_dir: Path) -> list[str]:
    values = {"out": out_dir, **files}
    return [arg.format_map(values) for arg in argv]


@pytest.mark.parametrize("argv, fragment", CASES)
def test_bad_input_is_one_error_line_and_exit_code_2(argv, fragment, files, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = expand(argv, files, out_dir)
    code, out, err = run(capsys, argv)
    assert_one_line_error(code, out, err, fragment, argv)
    assert_nothing_written(out_dir)


def test_a_pickle_is_refused_without_being_unpickled(files, tmp_path, capsys):
    marker = tmp_path / "unpickled"
    pickled = tmp_path / "weights.pt"
    torch.save({"2.weight": OpensFileWhenUnpickled(str(marker))}, pickled)
    # the check is meaningful: the pickle inside calls open() on the marker when unpickled
    # (read from its opcodes, without running it)
    with zipfile.ZipFile(pickled) as archive:
        payload = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    opcodes = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]
    assert ("GLOBAL", "io open") in opcodes and ("REDUCE", None) in opcodes
    assert any(arg == str(marker) for _, arg in opcodes)
    disguised = tmp_path / "weights.safetensors"  # the name claims safetensors; the bytes are a pickle
    disguised.write_bytes(pickled.read_bytes())
    for verb, weights in ((ATTACK, pickled), (EVALUATE, disguised), (ATTACK, disguised)):
        spec = ["--attack", "fgsm:eps=0.1"] if verb is ATTACK else ["--attacks", "fgsm", "--eps", "0.1"]
        argv = expand([*verb, str(weights), *spec], files, tmp_path / "out")
        code, out, err = run(capsys, argv)
        assert_one_line_error(code, out, err, "safetensors", argv)
        assert not marker.exists()
        assert_nothing_written(tmp_path / "out")


@pytest.fixture
def no_data_anywhere(tmp_path, monkeypatch) -> Path:
    """No REDBLUE_DATA_DIR and an empty user cache; returns a --data-dir that does not exist."""
    monkeypatch.delenv("REDBLUE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    return tmp_path / "no-such-data-dir"


@pytest.mark.parametrize("verb", ["attack", "evaluate", "train"])
def test_missing_data_is_one_error_line_that_says_where_to_put_it(verb, files, no_data_anywhere, tmp_path, capsys):
    args = {
        "attack": [*ATTACK, "{model}", "--attack", "fgsm:eps=0.1"],
        "evaluate": [*EVALUATE, "{model}", "--attacks", "fgsm", "--eps", "0.1"],
        "train": TRAIN,
    }[verb]
    out_dir = tmp_path / "out"
    argv = [*expand(args, files, out_dir), "--data-dir", str(no_data_anywhere)]
    code, out, err = run(capsys, argv)
    assert_one_line_error(code, out, err, "not found", argv)
    assert str(no_data_anywhere) in err and "redblue data fetch mnist" in err
    assert_nothing_written(out_dir)


def test_corrupt_data_file_is_one_error_line_naming_it(files, tmp_path, monkeypatch, capsys):
    if not SHARED_MNIST.is_dir():
        pytest.skip("MNIST is not available")
    monkeypatch.delenv("REDBLUE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for path in SHARED_MNIST.glob("t10k-*"):
        (folder / path.name).write_bytes(path.read_bytes())
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # one label changed: a valid IDX file whose checksum is wrong
    labels.write_bytes(gzip.compress(bytes(raw)))
    out_dir = tmp_path / "out"
    argv = expand([*ATTACK, "{model}", "--attack", "fgsm:eps=0.1", "--data-dir", f"{tmp_path}/data"], files, out_dir)
    code, out, err = run(capsys, argv)
    assert_one_line_error(code, out, err, "t10k-labels-idx1-ubyte", argv)
    assert_nothing_written(out_dir)


def test_an_error_leaves_earlier_results_in_out_untouched(files, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, expand([*ATTACK, "{model}", "--attack", "fgsm:eps=0.1"], files, out_dir))
    assert code == 0 and out
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    assert set(before) == {"adversarial.safetensors", "metrics.json"}
    argv = expand([*ATTACK, "{nan}", "--attack", "fgsm:eps=0.1"], files, out_dir)
    code, out, err = run(capsys, argv)
    assert_one_line_error(code, out, err, "nan", argv)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


def test_python_dash_m_redblue_shows_one_line_and_no_traceback(files, tmp_path):
    # a subprocess, so what a terminal would show is checked end to end; the error comes from
    # deep inside an attack (a NaN gradient), not from argument parsing
    out_dir = tmp_path / "out"
    argv = expand([*ATTACK, "{nan}", "--attack", "pgd:eps=0.1,steps=3"], files, out_dir)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "redblue", *argv], capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
    assert "NaN" in result.stderr
    assert result.returncode == 2
    check_error_stdout(result.stdout, result.stderr.strip(), 2, as_json=True)
    assert_nothing_written(out_dir)
