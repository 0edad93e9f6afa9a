"""Test helpers for redblue.data: tiny hand-made IDX files and a local HTTP mirror on 127.0.0.1.

The IDX bytes are built here with struct, independently of the reader under test.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from redblue.data import DatasetSpec, FileSpec

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def idx_images(pixels: list[list[int]], *, count: int | None = None, rows: int = 28, cols: int = 28,
               magic: int = 0x00000803) -> bytes:
    """An IDX3 image file: header (magic, count, rows, cols; big-endian) + one row-major image per entry.

    `pixels[i]` is a short list of values that is repeated to fill image i; `count` overrides the
    header's item count (to make a file whose header lies).
    """
    header = struct.pack(">IIII", magic, len(pixels) if count is None else count, rows, cols)
    body = b"".join(bytes((p[k % len(p)] for k in range(rows * cols))) for p in pixels)
    return header + body


def idx_labels(labels: list[int], *, count: int | None = None, magic: int = 0x00000801) -> bytes:
    return struct.pack(">II", magic, len(labels) if count is None else count) + bytes(labels)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Three train images and two test images, with labels; pixel patterns are easy to check by hand.
TRAIN_PIXELS = [[0, 255], [1, 2, 3], [128]]
TRAIN_Y = [3, 0, 9]
TEST_PIXELS = [[7], [254, 0, 51]]
TEST_Y = [7, 1]


def tiny_files() -> dict[str, bytes]:
    """The decompressed bytes of the four files of the tiny dataset."""
    return {
        TRAIN_IMAGES: idx_images(TRAIN_PIXELS),
        TRAIN_LABELS: idx_labels(TRAIN_Y),
        TEST_IMAGES: idx_images(TEST_PIXELS),
        TEST_LABELS: idx_labels(TEST_Y),
    }


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


COUNTS = {TRAIN_IMAGES: 3, TRAIN_LABELS: 3, TEST_IMAGES: 2, TEST_LABELS: 2}


def tiny_spec(files: dict[str, bytes] | None = None, *, name: str = "tiny", mirrors: tuple[str, ...] = (),
              kinds: dict[str, str] | None = None, gz_md5: dict[str, str] | None = None) -> DatasetSpec:
    """A DatasetSpec whose digests are those of `files`.

    `kinds` (filename -> "sha256", "md5" or "none"; default "sha256") picks the digest of the
    decompressed bytes each file gets; `gz_md5` (filename -> md5 of its .gz) adds that digest.
    """
    files = tiny_files() if files is None else files
    kinds = kinds or {}
    gz_md5 = gz_md5 or {}

    def file_spec(filename: str) -> FileSpec:
        kind = kinds.get(filename, "sha256")
        raw = files[filename]
        return FileSpec(
            filename,
            COUNTS[filename],
            sha256=sha256(raw) if kind == "sha256" else None,
            md5=md5(raw) if kind == "md5" else None,
            gz_md5=gz_md5.get(filename),
        )

    return DatasetSpec(
        name=name,
        n_classes=10,
        mirrors=mirrors,
        train=(file_spec(TRAIN_IMAGES), file_spec(TRAIN_LABELS)),
        test=(file_spec(TEST_IMAGES), file_spec(TEST_LABELS)),
    )


def write_dataset(root: Path, files: dict[str, bytes], *, name: str = "tiny", gz: bool = True) -> Path:
    """Write the files under `<root>/<name>/`, gzip-compressed (`<file>.gz`) or raw."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for filename, raw in files.items():
        if gz:
            (folder / f"{filename}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (folder / filename).write_bytes(raw)
    return folder


@dataclass
class Mirror:
    """A local HTTP server: `url` serves the files in `folder`; `requests` logs the paths asked for."""

    url: str
    folder: Path
    requests: list[str] = field(default_factory=list)


@contextmanager
def http_mirror(folder: Path, *, max_seconds: float = 30.0) -> Iterator[Mirror]:
    """Serve `folder` on 127.0.0.1 from a thread; stops on exit, or by itself after `max_seconds`."""
    mirror = Mirror(url="", folder=folder)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):
            mirror.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    watchdog = threading.Timer(max_seconds, server.shutdown)
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    try:
        yield mirror
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@contextmanager
def silent_server() -> Iterator[str]:
    """A URL whose server accepts the connection but never answers (to test the timeout)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
