"""Shared test set-up: point redblue at the repository's MNIST copy and keep torch deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if "REDBLUE_DATA_DIR" not in os.environ and (SHARED_DATA / "mnist").is_dir():
    os.environ["REDBLUE_DATA_DIR"] = str(SHARED_DATA)

# One thread: the tests use small tensors, where a second thread mostly spins in synchronisation
# (10-30x the CPU time on a shared 2-core machine); pytest-xdist gives the parallelism instead.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread_after_each_test():
    """Verbs run in-process set torch's thread count (`--threads`, default auto); put it back."""
    yield
    torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No REDBLUE_DATA_DIR, the user cache under tmp_path, and the tiny dataset registered."""
    from data_fixtures import tiny_spec
    from redblue import data

    monkeypatch.delenv("REDBLUE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec())
    return tmp_path


@pytest.fixture
def cifar_root(env, monkeypatch):
    """A data root holding a tiny CIFAR-10-format tarball, registered as the dataset `tiny-cifar`."""
    from cifar_fixtures import cifar_spec, tiny_cifar
    from redblue import data

    made = tiny_cifar()
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data))
    path = env / "root" / "tiny-cifar" / "cifar-10-python.tar.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(made.data)
    return env / "root"
