"""Reading a CIFAR python-format tarball: size and MD5 first, then its batch members, in memory, with the restricted pickle reader.

Nothing is extracted to disk. The tarball is read once into memory, its MD5 (the only digest the
publisher gives) is checked on those very bytes, and only then are the needed members read from
them and unpickled by `redblue.data.pickles`. So the digest vouches for every byte parsed at every
load, a half-extracted folder can never exist, and a member's path inside the tar (`../x`,
symlinks) is never used as a path on disk.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from redblue.data.catalog import ArchiveSpec
from redblue.data.idx import fetch_hint
from redblue.data.pickles import load_restricted
from redblue.errors import DataError


def _replace_hint(path: Path) -> str:
    return f"delete it and run {fetch_hint(path)}, or replace it with the original {path.name}"


def read_archive_bytes(spec: ArchiveSpec, path: Path) -> bytes:
    """The tarball's bytes, after its size and MD5 matched the spec's; DataError otherwise (nothing parsed)."""
    expected = spec.archive
    try:
        size = path.stat().st_size
        if size != expected.size:
            raise DataError(
                f"{path} is {size} bytes, but {expected.filename} is {expected.size}; "
                f"the file is truncated or not the original, {_replace_hint(path)}"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if digest != expected.md5:
        raise DataError(
            f"{path} is corrupt: it fails its checksum (md5 {digest}, expected {expected.md5}); {_replace_hint(path)}"
        )
    return raw


def _read_members(raw: bytes, names: Sequence[str], *, path: Path, complete: bool) -> dict[str, bytes]:
    """The bytes of the regular-file members `names` of a verified .tar.gz, read in one pass.

    `complete`: read the archive to its end (every header, the gzip trailer), so that a cut or
    damaged tail is found even when the members needed come before it; else stop at the last one.
    """
    wanted = set(names)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=BytesIO(raw), mode="r:gz") as tar:
            for member in tar:
                if member.name not in wanted:
                    continue
                if not member.isreg() or member.name in found:
                    raise DataError(f"{path} holds {member.name} twice or not as a plain file; {_replace_hint(path)}")
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file always has one
                found[member.name] = handle.read()
                if len(found) == len(wanted) and not complete:
                    break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is not a readable .tar.gz ({reason}); {_replace_hint(path)}") from None
    missing = [name for name in names if name not in found]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it is not {path.name} as published, {_replace_hint(path)}")
    return found


def _batch(spec: ArchiveSpec, raw: bytes, *, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, C, H, W), labels int64 (n,)) of one pickled batch."""
    batch = load_restricted(raw, source=source)
    channels, height, width = spec.image_shape
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(spec.label_key.encode()) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != channels * height * width:
        raise DataError(f"{source} has no {b'data'!r} array of {channels * height * width} bytes per image; "
                        f"the file is corrupt")
    if not isinstance(labels, list) or len(labels) != len(data) or any(type(v) is not int for v in labels):
        raise DataError(f"{source} has no list of {len(data)} integer {spec.label_key!r}; the file is corrupt")
    if not all(0 <= v < spec.n_classes for v in labels):  # before numpy sees them: any int fits a Python int
        raise DataError(f"{source} has labels outside 0..{spec.n_classes - 1}; the file is corrupt")
    label_array = np.array(labels, dtype=np.int64)
    # each row is the red plane, then green, then blue, each row-major: already C, H, W
    return data.reshape(len(data), channels, height, width), label_array


def _class_names(spec: ArchiveSpec, raw: bytes, *, source: str) -> tuple[str, ...]:
    meta = load_restricted(raw, source=source)
    names = meta.get(spec.names_key.encode()) if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == spec.n_classes and all(isinstance(n, bytes) for n in names)):
        raise DataError(f"{source} has no list of {spec.n_classes} {spec.names_key!r}; the file is corrupt")
    return tuple(n.decode("utf-8", errors="replace") for n in names)


@dataclass(frozen=True)
class ArchiveSplit:
    images: np.ndarray  # uint8 (N, C, H, W), one array of its own
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]


def read_archive(spec: ArchiveSpec, path: Path, splits: Sequence[str], *, complete: bool = False
                 ) -> dict[str, ArchiveSplit]:
    """The splits of a CIFAR tarball, verified (size, MD5), then parsed (restricted pickles), counts checked.

    `complete`: also read the rest of the archive to its end (what `verify` and `fetch` ask for).
    """
    raw = read_archive_bytes(spec, path)
    member_of = {name: f"{spec.folder}/{name}" for split in splits for name in spec.split_members(split)}
    meta_name = f"{spec.folder}/{spec.meta}"
    members = _read_members(raw, [*member_of.values(), meta_name], path=path, complete=complete)
    del raw  # the members are copies; let the compressed bytes go before the batches are parsed
    classes = _class_names(spec, members.pop(meta_name), source=f"{path}:{meta_name}")
    result = {}
    for split in splits:
        count = spec.split_count(split)
        images = np.empty((count, *spec.image_shape), dtype=np.uint8)
        labels = np.empty(count, dtype=np.int64)
        filled = 0
        for name in spec.split_members(split):
            member = member_of[name]
            batch_images, batch_labels = _batch(spec, members.pop(member), source=f"{path}:{member}")
            if filled + len(batch_images) > count:
                raise DataError(f"{path} holds more than the {count} {split} images {spec.name} has; "
                                f"{_replace_hint(path)}")
            images[filled : filled + len(batch_images)] = batch_images
            labels[filled : filled + len(batch_labels)] = batch_labels
            filled += len(batch_images)
        if filled != count:
            raise DataError(f"{path} holds {filled} {split} images, expected {count}; {_replace_hint(path)}")
        result[split] = ArchiveSplit(images, labels, classes)
    return result
