"""Reading one IDX file (gzip-compressed or raw), checking its structure, and verifying its digests.

Memory is bounded by what a good copy needs: a raw file is never read past the size its spec
allows, and a .gz is never decompressed past it (a "gzip bomb" stops at `spec.nbytes + 1` bytes).
A header's item count is checked against the bytes present before anything is allocated from it.

A file ends in one of three states (`verify_dataset` reports them):

- good: a digest matched: the SHA-256 or MD5 of the decompressed bytes, or the MD5 of the .gz
  exactly as the hosts serve it;
- corrupt (`DataError`): not valid gzip, not a well-formed IDX file of the expected count, or its
  decompressed bytes fail a known digest of them;
- unverified (`UnverifiedFileError`): well-formed, but only the original .gz's digest is known and
  this copy is not that file (gunzipped, or re-compressed); nothing says it is wrong, nothing
  says it is right.
"""

from __future__ import annotations

import hashlib
import math
import os
import shlex
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from redblue.data.catalog import DATASETS, IMAGE_SHAPE, IMAGES_MAGIC, FileSpec
from redblue.errors import DataError

# A .gz of incompressible data is larger than its content by 5 bytes per 64 KiB block plus a
# header; a .gz past twice the content's size (plus slack for a long header) is not an IDX copy.
_GZ_SLACK_BYTES = 64 * 1024


class UnverifiedFileError(DataError):
    """A well-formed file that no known digest can vouch for (a gunzipped or re-compressed copy)."""


def fetch_hint(path: Path) -> str:
    """`redblue data fetch NAME --data-dir ROOT` for a file at ROOT/NAME/<file>, or the bare verb."""
    dataset, root = path.parent.name, path.parent.parent
    if dataset not in DATASETS:
        return "`redblue data fetch`"
    return f"`redblue data fetch {dataset} --data-dir {shlex.quote(str(root))}`"


def _replace_hint(path: Path) -> str:
    return f"delete it and run {fetch_hint(path)}, or replace it with a good copy"


# ---------------------------------------------------------------------------------------------
# Bytes in, bounded


def gunzip(compressed: bytes, *, limit: int, source: str | os.PathLike[str]) -> bytes:
    """The decompressed bytes of every gzip member, at most `limit + 1` of them.

    Returns `limit + 1` bytes when the content is longer than `limit` (the caller reports it);
    never allocates more. Accepts what `gzip.decompress` accepts (several members, zero padding),
    except an empty input, and checks each member's CRC and length.
    """
    pieces: list[bytes] = []
    produced = 0
    rest = compressed
    try:
        while True:
            member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            piece = member.decompress(rest, limit + 1 - produced)
            pieces.append(piece)
            produced += len(piece)
            if produced > limit:
                break
            if not member.eof:
                raise EOFError("the compressed stream ends early")
            rest = member.unused_data.lstrip(b"\0")  # zero padding between or after members, as gzip allows
            if not rest:
                break
    except (zlib.error, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{source} is not a valid gzip file ({reason}: truncated or corrupt); {_replace_hint(Path(source))}"
        ) from None
    return b"".join(pieces)


def read_file_bytes(path: Path, spec: FileSpec, *, gz: bool) -> tuple[bytes | None, bytes]:
    """(the .gz bytes or None for a raw file, at most `spec.nbytes + 1` decompressed bytes)."""
    limit = spec.nbytes
    try:
        size = path.stat().st_size
        if gz and size > 2 * limit + _GZ_SLACK_BYTES:
            raise DataError(
                f"{path} is {size} bytes, more than any gzip copy of {spec.filename} can be "
                f"({limit} bytes decompressed); {_replace_hint(path)}"
            )
        with path.open("rb") as handle:
            data = handle.read() if gz else handle.read(limit + 1)
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    if not gz:
        return None, data
    return data, gunzip(data, limit=limit, source=path)


# ---------------------------------------------------------------------------------------------
# Structure


def parse_idx_header(raw: bytes, *, magic: int, source: str | os.PathLike[str]) -> tuple[int, tuple[int, ...]]:
    """(header size, dims) of an IDX file of the given magic, after checking magic, length and shape."""
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else f"{len(raw)} bytes"
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise DataError(
            f"{source} is not an IDX {kind} file (magic number {found}, expected 0x{magic:08x}); "
            f"check that the file is the right one, or delete it and run `redblue data fetch`"
        )
    n_dims = magic & 0xFF
    header_size = 4 + 4 * n_dims
    if len(raw) < header_size:
        raise DataError(f"{source} is truncated inside its IDX header; delete it and run `redblue data fetch`")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    if magic == IMAGES_MAGIC and dims[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{source} holds {dims[1]}x{dims[2]} images, expected 28x28; use an MNIST-format dataset file"
        )
    return header_size, dims


def parse_idx(raw: bytes, *, magic: int, source: str | os.PathLike[str]) -> np.ndarray:
    """The uint8 array an IDX file holds, after checking its magic number and its length.

    `magic` is IMAGES_MAGIC (0x00000803: images, must be 28x28) or LABELS_MAGIC (0x00000801).
    Returns a read-only view of `raw` (no copy), shape (count, 28, 28) or (count,). The size the
    header declares is compared with the bytes present before the view is made, so a header that
    announces 2**40 items costs nothing.
    """
    header_size, dims = parse_idx_header(raw, magic=magic, source=source)
    declared = math.prod(dims)  # Python ints: no overflow, whatever the header says
    if len(raw) - header_size != declared:
        raise DataError(
            f"{source} has {len(raw) - header_size} data bytes but its header announces {dims[0]} items "
            f"({declared} bytes); the file is truncated or corrupt, delete it and run `redblue data fetch`"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


# ---------------------------------------------------------------------------------------------
# Digests


def check_digests(spec: FileSpec, path: Path, compressed: bytes | None, raw: bytes) -> str:
    """The digest that verifies the file ("sha256", "md5" or "gz-md5"); raises if none does.

    Decompressed digests first: they hold for any copy. A mismatch of one is corruption
    (`DataError`), unless the original .gz's md5 matches, which is authoritative for that file.
    Without a decompressed digest, a copy that is not the original .gz cannot be judged:
    `UnverifiedFileError`, with what to do.
    """
    if spec.sha256 is not None and hashlib.sha256(raw).hexdigest() == spec.sha256:
        return "sha256"
    if spec.md5 is not None and hashlib.md5(raw, usedforsecurity=False).hexdigest() == spec.md5:
        return "md5"
    gz_digest = hashlib.md5(compressed, usedforsecurity=False).hexdigest() if compressed is not None else None
    if spec.gz_md5 is not None and gz_digest == spec.gz_md5:
        return "gz-md5"
    if spec.sha256 is not None or spec.md5 is not None:
        kind, expected = ("sha256", spec.sha256) if spec.sha256 is not None else ("md5", spec.md5)
        assert expected is not None
        digest = hashlib.new(kind, raw, usedforsecurity=False).hexdigest()
        raise DataError(
            f"{path} is corrupt: it fails its checksum ({kind} of the decompressed bytes is {digest[:16]}..., "
            f"expected {expected[:16]}...); {_replace_hint(path)}"
        )
    if spec.gz_md5 is not None:
        copy = "a gunzipped copy" if compressed is None else f"a re-compressed copy (md5 of its .gz is {gz_digest})"
        raise UnverifiedFileError(
            f"{path} is unverified: it is well-formed, but only the md5 of the original {spec.filename}.gz "
            f"({spec.gz_md5}) is published and this is {copy}; put the original .gz in its place "
            f"({fetch_hint(path)} downloads and verifies it)"
        )
    raise UnverifiedFileError(
        f"{path} is unverified: no digest of {spec.filename} is known; add one to redblue.data.DATASETS"
    )


@dataclass(frozen=True)
class VerifiedFile:
    path: Path
    check: str  # the digest that verified it: "sha256", "md5" (both of the decompressed bytes) or "gz-md5"
    array: np.ndarray  # uint8, (N, 28, 28) or (N,)


def read_verified(spec: FileSpec, path: Path, *, gz: bool | None = None) -> VerifiedFile:
    """Read one IDX file, check its structure and count, and verify it against its digests.

    `gz`: whether the file is gzip-compressed; by default, whether its name ends in .gz.
    Raises DataError (corrupt) or its subclass UnverifiedFileError (well-formed, unverifiable).
    """
    compressed, raw = read_file_bytes(path, spec, gz=path.suffix == ".gz" if gz is None else gz)
    # structure first: "truncated" or "wrong magic" says more than a checksum mismatch would
    header_size, dims = parse_idx_header(raw, magic=spec.magic, source=path)
    if dims[0] != spec.count:
        raise DataError(
            f"{path} holds {dims[0]} items (by its header), expected {spec.count} for {spec.filename}; "
            f"{_replace_hint(path)}"
        )
    if len(raw) > spec.nbytes:  # read_file_bytes stopped one byte past the size a good copy has
        raise DataError(
            f"{path} holds more data than its header announces ({spec.count} items, "
            f"{spec.nbytes - header_size} bytes); the file is corrupt, {_replace_hint(path)}"
        )
    array = parse_idx(raw, magic=spec.magic, source=path)
    check = check_digests(spec, path, compressed, raw)
    return VerifiedFile(path, check, array)
