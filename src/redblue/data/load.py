"""Loading a verified split as tensors, and verifying every file of a dataset without loading it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from redblue.data.catalog import SPLITS, ArchiveSpec, get_spec
from redblue.data.cifar import read_archive
from redblue.data.fetch import ensure_dataset
from redblue.data.idx import UnverifiedFileError, VerifiedFile, read_verified
from redblue.data.roots import locate, missing_message
from redblue.errors import DataError, require_choice


@dataclass(frozen=True, eq=False)  # eq=False: == on tensors is elementwise, not a bool
class Dataset:
    """Images `x` float32 (N, C, H, W) in [0, 1] and labels `y` int64 (N,) in 0..n_classes - 1.

    The MNIST family is 1x28x28 (pixels / 255), CIFAR 3x32x32: read `image_shape` and
    `n_classes` rather than assuming them. `classes` names the labels where the source does
    (CIFAR); it is empty otherwise.
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


def load_dataset(
    name: str = "mnist",
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Dataset:
    """Load one split of a catalog dataset, verified, as float images in [0, 1] (N, C, H, W) and int64 labels.

    Files are searched in `data_dir` alone when it is given; else in $REDBLUE_DATA_DIR, then the
    user cache. With `download=True`, missing files are first fetched into `data_dir`, or the cache
    (`ensure_dataset`). A corrupt or unverified file raises one DataError line.
    """
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


VERIFY_STATES = ("good", "unverified", "corrupt", "missing")


@dataclass(frozen=True)
class FileStatus:
    """The state of one dataset file, one of VERIFY_STATES, with the reason when it is not good.

    good: a digest matched (`check` says which); unverified: well-formed, but no known digest
    applies to this copy; corrupt: malformed or a digest mismatch; missing: in none of the roots.
    """

    dataset: str
    filename: str
    status: str
    path: str | None
    origin: str | None
    check: str | None = None
    message: str | None = None


def verify_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> list[FileStatus]:
    """Verify every file of the dataset where it is found; never raises for a bad file.

    IDX files by their digests; a CIFAR tarball by its size and MD5, then every member parsed.
    """
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
