"""A gunzipped or re-compressed copy of a dataset's files verifies as good wherever a digest of the
decompressed bytes is known, and is "unverified" (never "corrupt") where only the .gz digest is.

MNIST is checked on the real files (../shared/data/mnist); Fashion-MNIST and KMNIST on small
synthetic files whose spec carries the same kinds of digests as the real catalog entry.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from pathlib import Path

import pytest
from data_fixtures import COUNTS, tiny_files, write_dataset

from redblue import data
from redblue.data import DatasetSpec, FileSpec, verify_dataset

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def recompress(raw: bytes) -> bytes:
    """The same bytes as another tool would compress them: another level, an mtime and a file name."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="copy", mode="wb", fileobj=buffer, compresslevel=1, mtime=1_234_567) as handle:
        handle.write(raw)
    return buffer.getvalue()


def write_copies(root: Path, name: str, raw_files: dict[str, bytes]) -> dict[str, Path]:
    """Under root/<copy>/<name>/: the gunzipped files ("raw") and re-compressed ones ("regz")."""
    roots = {"raw": root / "raw", "regz": root / "regz"}
    for filename, raw in raw_files.items():
        for copy, copy_root in roots.items():
            folder = copy_root / name
            folder.mkdir(parents=True, exist_ok=True)
            if copy == "raw":
                (folder / filename).write_bytes(raw)
            else:
                (folder / f"{filename}.gz").write_bytes(recompress(raw))
    return roots


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_gunzipped_and_recompressed_mnist_verify_as_good(env):
    raw_files = {f.filename: gzip.decompress((SHARED_MNIST / f"{f.filename}.gz").read_bytes())
                 for f in data.DATASETS["mnist"].files}
    # the copies hold the very bytes the data README's sums describe (test_data pins the table to it)
    table = {f.filename: f.sha256 for f in data.DATASETS["mnist"].files}
    assert {name: hashlib.sha256(raw).hexdigest() for name, raw in raw_files.items()} == table
    roots = write_copies(env, "mnist", raw_files)
    for copy, root in roots.items():
        statuses = verify_dataset("mnist", data_dir=root)
        assert [(s.status, s.check) for s in statuses] == [("good", "sha256")] * 4, copy
        assert all(Path(s.path).parent == root / "mnist" for s in statuses)
    assert len(data.load_dataset("mnist", "test", data_dir=roots["raw"])) == 10000


# The kinds of digest each file of the real catalog carries (see redblue/data/catalog.py for where
# each comes from): these are the facts the synthetic copies below are checked under.
CATALOG_KINDS = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": ("md5", True),  # (digest of the decompressed bytes, .gz md5 known)
        "train-labels-idx1-ubyte": ("sha256", True),
        "t10k-images-idx3-ubyte": ("md5", True),
        "t10k-labels-idx1-ubyte": ("sha256", True),
    },
    "kmnist": {
        "train-images-idx3-ubyte": (None, True),  # the two sources of a decompressed digest disagree
        "train-labels-idx1-ubyte": ("sha256", True),
        "t10k-images-idx3-ubyte": (None, True),
        "t10k-labels-idx1-ubyte": ("md5", True),
    },
}


def kinds_of(spec: FileSpec) -> tuple[str | None, bool]:
    decompressed = "sha256" if spec.sha256 else "md5" if spec.md5 else None
    return decompressed, spec.gz_md5 is not None


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_the_catalog_carries_the_digests_we_established(name):
    assert {f.filename: kinds_of(f) for f in data.DATASETS[name].files} == CATALOG_KINDS[name]


def test_every_digest_in_the_catalog_is_well_formed():
    lengths = {"sha256": 64, "md5": 32, "gz_md5": 32}  # a tarball (ArchiveFile) has only md5
    for spec in data.DATASETS.values():
        for f in spec.files:
            assert any(getattr(f, field, None) for field in lengths), f.filename
            for field, length in lengths.items():
                value = getattr(f, field, None)
                assert value is None or re.fullmatch(f"[0-9a-f]{{{length}}}", value), (spec.name, f.filename, field)


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_gunzipped_and_recompressed_copies_are_good_or_unverified_never_corrupt(env, monkeypatch, name):
    raw_files = tiny_files()
    original = write_dataset(env / "original", raw_files, name=name)

    def synthetic(real: FileSpec) -> FileSpec:
        raw = raw_files[real.filename]
        gz = (original / f"{real.filename}.gz").read_bytes()
        return FileSpec(
            real.filename,
            COUNTS[real.filename],
            sha256=hashlib.sha256(raw).hexdigest() if real.sha256 else None,
            md5=hashlib.md5(raw).hexdigest() if real.md5 else None,
            gz_md5=hashlib.md5(gz).hexdigest() if real.gz_md5 else None,
        )

    real = data.DATASETS[name]
    monkeypatch.setitem(data.DATASETS, name, DatasetSpec(
        name, 10, (), (synthetic(real.train[0]), synthetic(real.train[1])),
        (synthetic(real.test[0]), synthetic(real.test[1])),
    ))
    # the original .gz files: every one verifies, by its decompressed digest where known
    expected_original = [("good", kind or "gz-md5") for kind, _ in CATALOG_KINDS[name].values()]
    assert [(s.status, s.check) for s in verify_dataset(name, data_dir=env / "original")] == expected_original
    for copy, root in write_copies(env, name, raw_files).items():
        statuses = verify_dataset(name, data_dir=root)
        expected = ["good" if kind else "unverified" for kind, _ in CATALOG_KINDS[name].values()]
        assert [s.status for s in statuses] == expected, copy
        for s in statuses:
            if s.status == "unverified":
                assert f"redblue data fetch {name} --data-dir {root}" in s.message
