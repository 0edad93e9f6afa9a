"""IDX datasets (MNIST, Fashion-MNIST, KMNIST): find the files, verify their checksums, download, cache.

A dataset is one tensor of images and one of labels, read straight from the four IDX files the
public hosts serve (`train-images-idx3-ubyte.gz`, ...), gzip-compressed or raw.

Where the files are found, in order: the `data_dir` argument (`--data-dir`), the environment
variable `REDBLUE_DATA_DIR`, then the user cache (`$XDG_CACHE_HOME/redblue`, by default
`~/.cache/redblue`). Each is a root with one folder per dataset (`mnist/`, `fashion-mnist/`,
`kmnist/`); inside it a file may be named `<name>.gz` or plain `<name>`.

Checksums. Every file is verified before use, against whichever public sum exists for it, on one
code path (`_check_sums`):

- MNIST: the SHA-256 of the *decompressed* bytes (from the project's data README). It is
  authoritative and checks a `.gz` copy and a raw copy alike, including re-compressed copies
  whose `.gz` bytes differ from the original hosts' files.
- Fashion-MNIST, KMNIST: their publishers (and torchvision) give only the MD5 of the *compressed*
  `.gz` file as served, so only an untouched `.gz` download can be verified. A raw (gunzipped)
  copy of these has no published sum to check it against and is refused with a line that says
  to keep the original `.gz`; `fetch` always stores the `.gz`.

The decompressed bytes are hashed once, from memory, in the same pass that parses them.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from redblue.errors import DataError, require_choice

ENV_DATA_DIR = "REDBLUE_DATA_DIR"
SPLITS = ("train", "test")
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SHAPE = (28, 28)
DOWNLOAD_TIMEOUT_S = 10.0
_MAX_DOWNLOAD_BYTES = 64 * 2**20  # the largest file (train images, gz) is about 30 MB


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset and the public sums that verify it.

    `filename` is the raw name; the download is `filename + ".gz"`. `sha256` is of the decompressed
    bytes (checks .gz and raw copies); `gz_md5` is of the .gz file exactly as the hosts serve it.
    """

    filename: str
    count: int
    sha256: str | None = None
    gz_md5: str | None = None

    @property
    def magic(self) -> int:
        return IMAGES_MAGIC if "-images-" in self.filename else LABELS_MAGIC


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset in the IDX format: its folder name, classes, mirrors and the files of each split."""

    name: str
    n_classes: int
    mirrors: tuple[str, ...]
    train: tuple[FileSpec, FileSpec]  # (images, labels)
    test: tuple[FileSpec, FileSpec]

    def split_files(self, split: str) -> tuple[FileSpec, FileSpec]:
        return self.train if split == "train" else self.test

    @property
    def files(self) -> tuple[FileSpec, ...]:
        return (*self.train, *self.test)


def _idx_files(
    train_images: tuple[str | None, str | None],
    train_labels: tuple[str | None, str | None],
    test_images: tuple[str | None, str | None],
    test_labels: tuple[str | None, str | None],
) -> dict[str, tuple[FileSpec, FileSpec]]:
    """The four files every MNIST-format dataset has; each argument is (sha256, gz_md5)."""
    return {
        "train": (
            FileSpec("train-images-idx3-ubyte", 60000, *train_images),
            FileSpec("train-labels-idx1-ubyte", 60000, *train_labels),
        ),
        "test": (
            FileSpec("t10k-images-idx3-ubyte", 10000, *test_images),
            FileSpec("t10k-labels-idx1-ubyte", 10000, *test_labels),
        ),
    }


# Sums: MNIST sha256 from the project's data README (decompressed bytes, also listed there with
# sizes and MD5s); Fashion-MNIST and KMNIST .gz MD5s as their authors publish them (the
# zalandoresearch/fashion-mnist README; torchvision/datasets/mnist.py lists both sets).
# Mirrors, primary first: MNIST as torchvision (ossci) and TensorFlow Datasets (CVDF) download it;
# Fashion-MNIST from its S3 site, then the copy in its GitHub repository (data/fashion); KMNIST
# from CODH, then the Google Storage bucket its README named before. A mirror's copy is used only
# if it passes the same sums.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        n_classes=10,
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        **_idx_files(
            ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", None),
            ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", None),
            ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", None),
            ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", None),
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        n_classes=10,
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        **_idx_files(
            (None, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            (None, "25c81989df183df01b3e8a0aad5dffbe"),
            (None, "bef4ecab320f06d8554ea6380940ec79"),
            (None, "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        n_classes=10,
        mirrors=(
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            "https://storage.googleapis.com/kuzushiji-mnist/",
        ),
        **_idx_files(
            (None, "bdb82020997e1d708af4cf47b453dcf7"),
            (None, "e144d726b3acfaa3e44228e80efcd344"),
            (None, "5c965bf0a639b31b8f53240b1b52f4d7"),
            (None, "7320c461ea6c1c855c0b718fb2a4b134"),
        ),
    ),
}


@dataclass(frozen=True, eq=False)  # eq=False: == on tensors is elementwise, not a bool
class Dataset:
    """Images `x` float32 (N, 1, 28, 28) in [0, 1] (pixels / 255) and labels `y` int64 (N,)."""

    name: str
    split: str
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


def get_spec(name: str) -> DatasetSpec:
    require_choice("dataset", name, tuple(DATASETS))
    return DATASETS[name]


# ---------------------------------------------------------------------------------------------
# Where the files are


def cache_root() -> Path:
    """The user cache root: `$XDG_CACHE_HOME/redblue`, or `~/.cache/redblue`."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: relative is ignored
    return base / "redblue"


def search_roots(data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """The roots searched, first first, each as (where it came from, path)."""
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        roots.append(("--data-dir", Path(data_dir).expanduser()))
    env = os.environ.get(ENV_DATA_DIR, "")
    if env:
        roots.append((ENV_DATA_DIR, Path(env).expanduser()))
    roots.append(("cache", cache_root()))
    return roots


@dataclass(frozen=True)
class FoundFile:
    """Where one IDX file of a dataset was found (path None: in none of the roots)."""

    spec: FileSpec
    path: Path | None
    origin: str | None  # "--data-dir", "REDBLUE_DATA_DIR" or "cache"


def find_file(dataset: str, spec: FileSpec, roots: Sequence[tuple[str, Path]]) -> FoundFile:
    """The first `<root>/<dataset>/<name>.gz` or `<root>/<dataset>/<name>` in the roots' order."""
    for origin, root in roots:
        for filename in (spec.filename + ".gz", spec.filename):
            path = root / dataset / filename
            if path.is_file():
                return FoundFile(spec, path, origin)
    return FoundFile(spec, None, None)


def missing_message(
    dataset: str, missing: Sequence[FileSpec], data_dir: str | os.PathLike[str] | None = None
) -> str:
    """The one line that says which files are missing, where they were searched, and what to do."""
    roots = search_roots(data_dir)
    names = ", ".join(f"{f.filename}.gz" for f in missing)
    places = ", ".join(f"{root / dataset} ({origin})" for origin, root in roots)
    return (
        f"{dataset} files not found ({names}); searched {places}; "
        f"run `redblue data fetch {dataset}`, or put the files in <dir>/{dataset}/ "
        f"and pass --data-dir <dir> or set {ENV_DATA_DIR}"
    )


# ---------------------------------------------------------------------------------------------
# Reading and verifying one file


def _read_bytes(path: Path, *, gz: bool) -> tuple[bytes | None, bytes]:
    """(compressed bytes or None for a raw file, decompressed bytes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    if not gz:
        return None, data
    try:
        return data, gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path} is not a valid gzip file ({reason}: truncated or corrupt); "
            f"delete it and run `redblue data fetch`, or replace it with a good copy"
        ) from None


def _check_sums(spec: FileSpec, path: Path, compressed: bytes | None, raw: bytes) -> str:
    """Verify `path` against its public sums; returns the check that passed ("sha256" or "gz-md5")."""
    fix = "delete it and run `redblue data fetch`, or replace it with a good copy"
    if spec.sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != spec.sha256:
            raise DataError(
                f"{path} fails its checksum (sha256 of the decompressed bytes is {digest[:16]}..., "
                f"expected {spec.sha256[:16]}...); {fix}"
            )
        return "sha256"
    if spec.gz_md5 is not None and compressed is not None:
        digest = hashlib.md5(compressed, usedforsecurity=False).hexdigest()
        if digest != spec.gz_md5:
            raise DataError(f"{path} fails its checksum (md5 of the .gz is {digest}, expected {spec.gz_md5}); {fix}")
        return "gz-md5"
    if spec.gz_md5 is not None:
        raise DataError(
            f"{path} cannot be verified: only the md5 of the original {spec.filename}.gz is published; "
            f"put that .gz file in its place (`redblue data fetch` does)"
        )
    raise DataError(f"{path} has no published checksum to verify it against; add one to redblue.data.DATASETS")


def parse_idx(raw: bytes, *, magic: int, source: str | os.PathLike[str]) -> np.ndarray:
    """The uint8 array an IDX file holds, after checking its magic number and its length.

    `magic` is IMAGES_MAGIC (0x00000803: images, must be 28x28) or LABELS_MAGIC (0x00000801).
    Returns a read-only view of `raw`, shape (count, 28, 28) or (count,).
    """
    n_dims = magic & 0xFF
    header_size = 4 + 4 * n_dims
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else f"{len(raw)} bytes"
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise DataError(
            f"{source} is not an IDX {kind} file (magic number {found}, expected 0x{magic:08x}); "
            f"check that the file is the right one, or delete it and run `redblue data fetch`"
        )
    if len(raw) < header_size:
        raise DataError(f"{source} is truncated inside its IDX header; delete it and run `redblue data fetch`")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    if magic == IMAGES_MAGIC and dims[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{source} holds {dims[1]}x{dims[2]} images, expected 28x28; use an MNIST-format dataset file"
        )
    expected_size = header_size + int(np.prod(dims))
    if len(raw) != expected_size:
        raise DataError(
            f"{source} has {len(raw) - header_size} data bytes but its header announces {dims[0]} items "
            f"({expected_size - header_size} bytes); the file is truncated or corrupt, "
            f"delete it and run `redblue data fetch`"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


@dataclass(frozen=True)
class VerifiedFile:
    path: Path
    check: str  # the sum that verified it: "sha256" or "gz-md5"
    array: np.ndarray  # uint8, (N, 28, 28) or (N,)


def read_verified(spec: FileSpec, path: Path, *, gz: bool | None = None) -> VerifiedFile:
    """Read one IDX file, verify it against its public sums and check its structure and count.

    `gz`: whether the file is gzip-compressed; by default, whether its name ends in .gz.
    """
    compressed, raw = _read_bytes(path, gz=path.suffix == ".gz" if gz is None else gz)
    # structure first: "truncated" or "wrong magic" says more than a checksum mismatch would
    array = parse_idx(raw, magic=spec.magic, source=path)
    if len(array) != spec.count:
        raise DataError(
            f"{path} holds {len(array)} items, expected {spec.count} for {spec.filename}; "
            f"delete it and run `redblue data fetch`"
        )
    check = _check_sums(spec, path, compressed, raw)
    return VerifiedFile(path, check, array)


def _to_dataset(name: str, split: str, images: VerifiedFile, labels: VerifiedFile, n_classes: int) -> Dataset:
    if len(images.array) != len(labels.array):
        raise DataError(
            f"{images.path} has {len(images.array)} images but {labels.path} has {len(labels.array)} labels; "
            f"use the images and labels files of the same split"
        )
    top = int(labels.array.max(initial=0))
    if top >= n_classes:
        raise DataError(
            f"{labels.path} has label {top}, outside 0..{n_classes - 1}; "
            f"the file is corrupt, delete it and run `redblue data fetch`"
        )
    x = np.divide(images.array, np.float32(255), dtype=np.float32)  # one new writable array
    y = labels.array.astype(np.int64)
    return Dataset(name=name, split=split, x=torch.from_numpy(x).unsqueeze(1), y=torch.from_numpy(y))


# ---------------------------------------------------------------------------------------------
# The public entry points


def locate(name: str, split: str | None = None, *, data_dir: str | os.PathLike[str] | None = None) -> list[FoundFile]:
    """Where each file of the dataset (of one split, or all) is found, without reading it."""
    spec = get_spec(name)
    files = spec.files if split is None else spec.split_files(split)
    roots = search_roots(data_dir)
    return [find_file(name, f, roots) for f in files]


def load_dataset(
    name: str = "mnist",
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Dataset:
    """Load one split of an IDX dataset, verified, as float images in [0, 1] and int64 labels.

    Files are searched in `data_dir`, then $REDBLUE_DATA_DIR, then the user cache; with
    `download=True` missing files are first fetched into `data_dir`, or the user cache.
    """
    spec = get_spec(name)
    require_choice("split", split, SPLITS)
    found = locate(name, split, data_dir=data_dir)
    if any(f.path is None for f in found) and download:
        fetch_dataset(name, target=data_dir, splits=(split,))
        found = locate(name, split, data_dir=data_dir)
    missing = [f.spec for f in found if f.path is None]
    if missing:
        raise DataError(missing_message(name, missing, data_dir))
    images_file, labels_file = found
    assert images_file.path is not None and labels_file.path is not None
    images = read_verified(images_file.spec, images_file.path)
    labels = read_verified(labels_file.spec, labels_file.path)
    return _to_dataset(name, split, images, labels, spec.n_classes)


@dataclass(frozen=True)
class FileStatus:
    """The state of one dataset file: "ok" (verified), "missing" or "corrupt" (with the reason)."""

    dataset: str
    filename: str
    status: str
    path: str | None
    origin: str | None
    check: str | None = None
    message: str | None = None


def verify_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> list[FileStatus]:
    """Verify every file of the dataset where it is found; never raises for a bad file."""
    statuses = []
    for found in locate(name, data_dir=data_dir):
        if found.path is None:
            statuses.append(FileStatus(name, found.spec.filename, "missing", None, None))
            continue
        try:
            verified = read_verified(found.spec, found.path)
        except DataError as exc:
            statuses.append(
                FileStatus(name, found.spec.filename, "corrupt", str(found.path), found.origin, message=str(exc))
            )
            continue
        statuses.append(FileStatus(name, found.spec.filename, "ok", str(found.path), found.origin, verified.check))
    return statuses


# ---------------------------------------------------------------------------------------------
# Download


def _download_to(url: str, destination: Path, *, timeout: float) -> None:
    """Stream `url` into `destination` (a fresh temporary file), bounded in size."""
    request = urllib.request.Request(url, headers={"User-Agent": "redblue"})
    with urllib.request.urlopen(request, timeout=timeout) as response, destination.open("wb") as handle:
        total = 0
        while chunk := response.read(1 << 20):
            total += len(chunk)
            if total > _MAX_DOWNLOAD_BYTES:
                raise DataError(f"{url} sends more than {_MAX_DOWNLOAD_BYTES} bytes; it is not the expected file")
            handle.write(chunk)


def _fetch_file(
    dataset: str, spec: FileSpec, folder: Path, mirrors: Sequence[str], *, timeout: float
) -> tuple[Path, str]:
    """Download `<spec.filename>.gz` from the first mirror that serves a verified copy.

    Each attempt goes to a temporary file in `folder`, is verified there, and only then renamed
    onto its final name, so the folder never holds a partial or unverified file.
    Returns (final path, url it came from).
    """
    final = folder / f"{spec.filename}.gz"
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + final.name
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _download_to(url, tmp, timeout=timeout)
            read_verified(spec, tmp, gz=True)
            os.replace(tmp, final)
            return final, url
        except DataError as exc:
            failures.append(f"{url}: {str(exc).replace(str(tmp), 'download')}")
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a malformed URL
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {dataset}/{final.name} ({'; '.join(failures)}); to work offline, "
        f"put the files ({', '.join(f.filename + '.gz' for f in DATASETS[dataset].files)}) "
        f"in {folder}/ or in <dir>/{dataset}/ and pass --data-dir <dir> or set {ENV_DATA_DIR}"
    )


@dataclass(frozen=True)
class FetchedFile:
    dataset: str
    filename: str
    path: str
    action: str  # "present" (already there and verified) or "downloaded"
    url: str | None = None


def fetch_dataset(
    name: str,
    *,
    target: str | os.PathLike[str] | None = None,
    splits: Sequence[str] = SPLITS,
    mirrors: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> list[FetchedFile]:
    """Make sure `<target>/<name>/` holds verified files of the splits, downloading what is missing.

    `target` (a root; files go to `<target>/<name>/`) defaults to the user cache; `mirrors`
    (base URLs, tried in order) default to the dataset's public mirrors. A file already there is
    kept if it verifies; a corrupt one is replaced. Stops at the first file no mirror serves.
    """
    spec = get_spec(name)
    for split in splits:
        require_choice("split", split, SPLITS)
    root = Path(target).expanduser() if target is not None else cache_root()
    folder = root / name
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder} ({exc.strerror or exc}); choose another place with --data-dir") from None
    if not os.access(folder, os.W_OK):
        raise DataError(f"cannot write to {folder}; choose another place with --data-dir")
    try:
        return _fetch_into(name, spec, root, splits, mirrors or spec.mirrors, timeout=timeout)
    except DataError:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # leave no trace of a fetch that got nothing
        raise


def _fetch_into(
    name: str, spec: DatasetSpec, root: Path, splits: Sequence[str], mirrors: Sequence[str], *, timeout: float
) -> list[FetchedFile]:
    folder = root / name
    results = []
    for split in splits:
        for file_spec in spec.split_files(split):
            present = find_file(name, file_spec, [("target", root)])
            if present.path is not None:
                try:
                    read_verified(file_spec, present.path)
                    results.append(FetchedFile(name, file_spec.filename, str(present.path), "present"))
                    continue
                except DataError:
                    pass  # a corrupt copy is replaced by a verified download
            path, url = _fetch_file(name, file_spec, folder, mirrors, timeout=timeout)
            results.append(FetchedFile(name, file_spec.filename, str(path), "downloaded", url))
    return results
