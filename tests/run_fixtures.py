"""A runs folder of real, tiny runs for the index, CLI and report tests: made once per test session.

reproduce-tiny: the paper's grid shrunk to two 16-unit models, 1 epoch on 512 images, 200 test images.
evaluate-a, evaluate-a-fgsm: one small MLP evaluated twice (FGSM + PGD with checks; FGSM alone).
evaluate-b: a second MLP. attack-a: PGD images of model a (adversarial.safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from filelock import FileLock  # a dependency of torch

from redblue.cli import main

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

[profiles.tiny]
"""
EVAL_EPS = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class RealRuns:
    root: Path
    model_a: Path
    model_b: Path

    def results(self, name: str) -> dict:
        """The run's results as its verb wrote them (results.json; evaluate's evaluation.json; attack's metrics.json)."""
        folder = self.root / name
        path = next(folder / f for f in ("results.json", "evaluation.json", "metrics.json") if (folder / f).is_file())
        return json.loads(path.read_text())


def _cli(*argv: object) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, f"redblue {' '.join(map(str, argv))} exited with {code}"


def make_real_runs(root: Path) -> RealRuns:
    (root.parent / "tiny.toml").write_text(TINY_TOML)
    # as the verb leaves it: the engine writes results.json, the CLI renders report.md and the PNGs
    _cli("reproduce", "--config", root.parent / "tiny.toml", "--profile", "tiny", "--out", root / "reproduce-tiny",
         "--workers", 1, "--device", "cpu")
    models = root.parent / "models"
    models.mkdir()
    model_a, model_b = models / "a.safetensors", models / "b.safetensors"
    for path, hidden, seed in ((model_a, 32, 0), (model_b, 24, 1)):
        _cli("train", "--model", f"mlp:hidden={hidden}", "--epochs", 1, "--train-subset", 1000, "--seed", seed,
             "--out", path, "--device", "cpu")
    eps = ",".join(map(str, EVAL_EPS))
    _cli("evaluate", model_a, "--attacks", "fgsm,pgd:steps=3", "--eps", eps, "--limit", 64, "--out", root / "evaluate-a", "--device", "cpu")
    _cli("evaluate", model_a, "--attacks", "fgsm", "--eps", eps, "--limit", 64, "--no-checks", "--out", root / "evaluate-a-fgsm", "--device", "cpu")
    _cli("evaluate", model_b, "--attacks", "fgsm,pgd:steps=3", "--eps", "0.1", "--limit", 64, "--no-checks", "--out", root / "evaluate-b", "--device", "cpu")
    _cli("attack", model_a, "--attack", "pgd:eps=0.1,steps=3", "--limit", 16, "--out", root / "attack-a", "--device", "cpu")
    return RealRuns(root=root, model_a=model_a, model_b=model_b)


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> RealRuns:
    """The runs folder described above, read-only: made by the first pytest-xdist worker that asks, shared by all."""
    basetemp = tmp_path_factory.getbasetemp()
    # under pytest-xdist each worker's basetemp is a child of the session's; without it, basetemp is the session's
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    made = shared / "real-runs"
    with FileLock(str(shared / "real-runs.lock")):
        if not (made / "done").is_file():
            shutil.rmtree(made, ignore_errors=True)
            (made / "runs").mkdir(parents=True)
            make_real_runs(made / "runs")
            (made / "done").touch()
    return RealRuns(root=made / "runs", model_a=made / "models" / "a.safetensors", model_b=made / "models" / "b.safetensors")


def copy_runs(runs: RealRuns, destination: Path, *names: str) -> RealRuns:
    """A private copy of the runs folder (or of the named runs only) under `destination`, for tests that write."""
    root = destination / "runs"
    root.mkdir(parents=True)
    for folder in sorted(runs.root.iterdir()):
        if folder.is_dir() and (not names or folder.name in names):
            shutil.copytree(folder, root / folder.name)
    return replace(runs, root=root)
