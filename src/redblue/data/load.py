"""Loading a verified split as tensors (catalog datasets and user files alike), describing a dataset, and verifying its files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from redblue.data.arrays import shape_text
from redblue.data.catalog import SPLITS, ArchiveSpec, get_spec
from redblue.data.cifar import read_archive
from redblue.data.fetch import ensure_dataset
from redblue.data.folders import folder_splits, read_folder_split
from redblue.data.idx import UnverifiedFileError, VerifiedFile, read_verified
from redblue.data.roots import FoundFile, locate, missing_message
from redblue.data.user import UserSplit, file_splits, read_file_split, user_path
from redblue.errors import DataError, require_choice


@dataclass(frozen=True, eq=False)  # eq=False: == on tensors is elementwise, not a bool
class Dataset:
    """Images `x` float32 (N, C, H, W) in [0, 1] and labels `y` int64 (N,) in 0..n_classes - 1.

    The MNIST family is 1x28x28 (pixels / 255), CIFAR 3x32x32, a user dataset its own shape:
    read `image_shape` and `n_classes` rather than assuming them. `classes` names the labels where
    the source does (CIFAR, image folders, a file's `classes`); it is empty otherwise.
    """

    name: str
    split: str
    x: Tensor
    y: Tensor
    n_classes: int
    classes: tuple[str, ...] = ()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        channels, height, width = self.x.shape[1:]
        return (channels, height, width)

    def __len__(self) -> int:
        return len(self.y)


def _from_idx(name: str, split: str, images: VerifiedFile, labels: VerifiedFile, n_classes: int) -> Dataset:
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
    return Dataset(name, split, torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y), n_classes)


def read_user_split(path: Path, split: str) -> UserSplit:
    """One split of a user dataset: an image folder, or an .npz or .safetensors file."""
    if path.is_dir():
        return read_folder_split(path, split)
    if not path.exists():
        raise DataError(f"{path} does not exist; a file dataset is an .npz or .safetensors file, or an image folder")
    return read_file_split(path, split)


def load_dataset(
    name: str = "mnist",
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Dataset:
    """Load one split, verified, as float images in [0, 1] (N, C, H, W) and int64 labels.

    `name`: a catalog dataset, or a user dataset's path (see `redblue.data.user` for how a name
    becomes a path; `data_dir` and `download` do not apply to those). Catalog files are searched in
    `data_dir` alone when it is given; else in $REDBLUE_DATA_DIR, then the user cache. With
    `download=True`, missing files are first fetched into `data_dir`, or the cache
    (`ensure_dataset`). Anything wrong with a file raises one DataError line.
    """
    path = user_path(name)
    if path is not None:
        require_choice("split", split, SPLITS)
        part = read_user_split(path, split)
        return Dataset(name, split, torch.from_numpy(part.x), torch.from_numpy(part.y), part.n_classes, part.classes)
    spec = get_spec(name)
    require_choice("split", split, SPLITS)
    if download:
        ensure_dataset(name, data_dir=data_dir, allow_download=True, splits=(split,))
    found = locate(name, split, data_dir=data_dir)
    missing = [f.spec for f in found if f.path is None]
    if missing:
        raise DataError(missing_message(name, missing, data_dir))
    if isinstance(spec, ArchiveSpec):
        assert found[0].path is not None
        archive = read_archive(spec, found[0].path, (split,))[split]
        x = np.divide(archive.images, np.float32(255), dtype=np.float32)
        return Dataset(name, split, torch.from_numpy(x), torch.from_numpy(archive.labels), spec.n_classes,
                       archive.classes)
    images_file, labels_file = found
    assert images_file.path is not None and labels_file.path is not None
    images = read_verified(images_file.spec, images_file.path)
    labels = read_verified(labels_file.spec, labels_file.path)
    return _from_idx(name, split, images, labels, spec.n_classes)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, without its tensors: shape, classes, images per split, and where it is.

    `splits`: images per split. A user dataset with one unnamed split lists it under both train
    and test, with `shared_split` True. `found`: the catalog files (path None: missing); empty for a
    user dataset, whose `path` says where it is.
    """

    name: str
    kind: str  # "idx", "cifar", "npz", "safetensors" or "folder"
    image_shape: tuple[int, int, int]
    n_classes: int
    splits: dict[str, int]
    classes: tuple[str, ...] = ()
    shared_split: bool = False
    found: tuple[FoundFile, ...] = ()
    path: str | None = None

    @property
    def shape_text(self) -> str:
        return shape_text(self.image_shape)


def describe_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """A catalog dataset from its spec and where its files are (nothing read); a user dataset by reading it whole.

    A user dataset is checked as `load_dataset` checks it, and its splits must agree on the image
    shape and the classes: DataError otherwise.
    """
    path = user_path(name)
    if path is None:
        spec = get_spec(name)
        kind = "cifar" if isinstance(spec, ArchiveSpec) else "idx"
        return DatasetInfo(name, kind, spec.image_shape, spec.n_classes, {s: spec.split_count(s) for s in SPLITS},
                           found=tuple(locate(name, data_dir=data_dir)))
    if path.is_dir():
        kind, held = "folder", tuple(folder_splits(path))
    elif not path.exists():
        raise DataError(f"{path} does not exist; a file dataset is an .npz or .safetensors file, or an image folder")
    else:
        kind, held = path.suffix.lstrip("."), file_splits(path)
    parts = {split: read_user_split(path, split or "train") for split in held}
    shapes = {split: tuple(part.x.shape[1:]) for split, part in parts.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{path}: the train images are {shape_text(shapes['train'])} but the test images "
                        f"{shape_text(shapes['test'])}; both splits must have one image shape")
    first = next(iter(parts.values()))
    if any(part.n_classes != first.n_classes or part.classes != first.classes for part in parts.values()):
        raise DataError(f"{path}: the train and test splits name different classes; give both the same ones")
    if None in parts:  # one unnamed split, used for both
        counts = dict.fromkeys(SPLITS, len(parts[None].y))
    else:
        counts = {split: len(part.y) for split, part in parts.items() if split is not None}
    channels, height, width = first.x.shape[1:]
    return DatasetInfo(name, kind, (channels, height, width), first.n_classes, counts, first.classes,
                       shared_split=None in parts, path=str(path))


VERIFY_STATES = ("good", "unverified", "corrupt", "missing")


@dataclass(frozen=True)
class FileStatus:
    """The state of one dataset file, one of VERIFY_STATES, with the reason when it is not good.

    good: a digest matched (`check` says which); unverified: well-formed, but no known digest
    applies to this copy; corrupt: malformed or a digest mismatch; missing: in none of the roots.
    A user dataset has no digest: good (check "well-formed") means it loads, every split checked.
    """

    dataset: str
    filename: str
    status: str
    path: str | None
    origin: str | None
    check: str | None = None
    message: str | None = None


def _verify_user(name: str, path: Path) -> FileStatus:
    try:
        describe_dataset(name)
    except DataError as exc:
        return FileStatus(name, path.name, "corrupt", str(path), "file", message=str(exc))
    return FileStatus(name, path.name, "good", str(path), "file", "well-formed")


def verify_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> list[FileStatus]:
    """Verify every file of the dataset where it is found; never raises for a bad file.

    IDX files by their digests; a CIFAR tarball by its size and MD5, then every member parsed; a
    user dataset (one status, for its path) by loading every split it holds.
    """
    path = user_path(name)
    if path is not None:
        return [_verify_user(name, path)]
    spec = get_spec(name)
    statuses = []
    for found in locate(name, data_dir=data_dir):
        if found.path is None:
            statuses.append(FileStatus(name, found.spec.filename, "missing", None, None))
            continue
        where = (name, found.spec.filename)
        try:
            if isinstance(spec, ArchiveSpec):
                read_archive(spec, found.path, SPLITS, complete=True)
                check = "md5"
            else:
                check = read_verified(found.spec, found.path).check
        except UnverifiedFileError as exc:
            statuses.append(FileStatus(*where, "unverified", str(found.path), found.origin, message=str(exc)))
        except DataError as exc:
            statuses.append(FileStatus(*where, "corrupt", str(found.path), found.origin, message=str(exc)))
        else:
            statuses.append(FileStatus(*where, "good", str(found.path), found.origin, check))
    return statuses
