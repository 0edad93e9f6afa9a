"""Test helpers for CIFAR tarballs: batches pickled as Python 2's cPickle writes them (protocol 2), built byte by byte.

The CIFAR batches were written by Python 2, whose strings Python 3's pickle cannot produce
(SHORT_BINSTRING, BINSTRING), so `py2_pickle` assembles the opcodes itself, independently of the
reader under test: dicts, lists, str (given as bytes), ints, and a 2-D uint8 numpy array as numpy
1.x reduces it. Its output for the real `batches.meta` equals that file byte for byte (tested).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
from dataclasses import dataclass

import numpy as np

from redblue.data import ArchiveFile, ArchiveSpec

# The real cifar-10-batches-py/batches.meta (158 bytes, md5 5ff9c542aee3614f3951f8cda6e48888 as
# torchvision lists it), from a copy committed to 1012598167/CNN_RNN_GAN_Keras.
REAL_BATCHES_META = bytes.fromhex(
    "80027d71012855136e756d5f63617365735f7065725f626174636871024d1027550b6c6162656c5f6e616d657371035d71042855"
    "08616972706c616e657105550a6175746f6d6f62696c65710655046269726471075503636174710855046465657271095503646f"
    "67710a550466726f67710b5505686f727365710c550473686970710d5505747275636b710e6555076e756d5f766973710f4d000c"
    "752e"
)
CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
CIFAR10_META = {b"num_cases_per_batch": 10000, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}


@dataclass(frozen=True)
class Py2Array:
    """A numpy array as Python 2 numpy pickles it; `dtype` and `module` can be changed to make bad ones."""

    array: np.ndarray
    dtype: bytes = b"u1"
    module: bytes = b"numpy.core.multiarray"


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.memo = 0

    def put(self) -> None:
        self.memo += 1
        self.out += b"q" + bytes([self.memo]) if self.memo < 256 else b"r" + struct.pack("<I", self.memo)

    def batched(self, items: list, mark_end: bytes, one_end: bytes, emit) -> None:
        for start in range(0, len(items), 1000):  # cPickle writes at most 1000 items per MARK
            chunk = items[start : start + 1000]
            if len(chunk) == 1:
                emit(chunk[0])
                self.out += one_end
            else:
                self.out += b"("
                for item in chunk:
                    emit(item)
                self.out += mark_end

    def save(self, value: object) -> None:
        out = self.out
        if value is None:
            out += b"N"
        elif value is True or value is False:
            out += b"\x88" if value else b"\x89"
        elif isinstance(value, int):
            if 0 <= value < 256:
                out += b"K" + bytes([value])
            elif 0 <= value < 65536:
                out += b"M" + struct.pack("<H", value)
            elif -(2**31) <= value < 2**31:
                out += b"J" + struct.pack("<i", value)
            else:  # a Python 2 long
                size = (value.bit_length() + 8) // 8
                out += b"\x8a" + bytes([size]) + value.to_bytes(size, "little", signed=True)
        elif isinstance(value, bytes):  # a Python 2 str
            out += (b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<I", len(value))) + value
            self.put()
        elif isinstance(value, tuple):
            codes = {1: b"\x85", 2: b"\x86", 3: b"\x87"}
            if len(value) in codes:
                for item in value:
                    self.save(item)
                out += codes[len(value)]
            else:
                out += b"("
                for item in value:
                    self.save(item)
                out += b"t"
            self.put()
        elif isinstance(value, list):
            out += b"]"
            self.put()
            self.batched(value, b"e", b"a", self.save)
        elif isinstance(value, dict):
            out += b"}"
            self.put()
            self.batched(list(value.items()), b"u", b"s", lambda kv: (self.save(kv[0]), self.save(kv[1])))
        elif isinstance(value, Py2Array):
            self.save_array(value)
        else:
            raise TypeError(f"py2_pickle does not write {type(value).__name__}")

    def save_global(self, module: bytes, name: bytes) -> None:
        self.out += b"c" + module + b"\n" + name + b"\n"
        self.put()

    def save_array(self, value: Py2Array) -> None:
        # _reconstruct(ndarray, (0,), 'b'), then BUILD with (1, shape, dtype, False, data)
        self.save_global(value.module, b"_reconstruct")
        self.save_global(b"numpy", b"ndarray")
        self.save((0,))
        self.save(b"b")
        self.out += b"\x87"
        self.put()
        self.out += b"R"
        self.put()
        self.out += b"(K\x01"
        self.save(tuple(value.array.shape))
        self.save_global(b"numpy", b"dtype")
        self.save((value.dtype, 0, 1))
        self.out += b"R"
        self.put()
        self.save((3, b"|", None, None, None, -1, -1, 0))
        self.out += b"b\x89"
        self.save(np.ascontiguousarray(value.array).tobytes())
        self.out += b"t"
        self.put()
        self.out += b"b"


def py2_pickle(value: object) -> bytes:
    writer = _Writer()
    writer.save(value)
    return bytes(writer.out + b".")


def batch(images: np.ndarray, labels: list[int], *, label_key: bytes = b"labels", name: bytes = b"batch") -> bytes:
    """One CIFAR batch: images uint8 (n, 3, 32, 32) stored as (n, 3072) rows (R plane, G, B)."""
    rows = Py2Array(images.reshape(len(images), -1))
    return py2_pickle({b"batch_label": name, label_key: labels, b"data": rows,
                       b"filenames": [b"img_%d.png" % i for i in range(len(labels))]})


def tarball(members: dict[str, bytes]) -> bytes:
    """A .tar.gz of the members (names as given, e.g. "cifar-10-batches-py/data_batch_1"), deterministic."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)


def pixels(n: int, seed: int) -> np.ndarray:
    """n images uint8 (n, 3, 32, 32); image i holds (seed + 7 i + flat index) mod 256."""
    flat = (seed + 7 * np.arange(n)[:, None] + np.arange(3072)[None, :]) % 256
    return flat.astype(np.uint8).reshape(n, 3, 32, 32)


@dataclass(frozen=True)
class TinyCifar:
    """A CIFAR-10-layout tarball of 5 train batches of 2 images and a test batch of 2, with its expected contents."""

    data: bytes
    train_x: np.ndarray  # uint8 (10, 3, 32, 32)
    train_y: list[int]
    test_x: np.ndarray
    test_y: list[int]


def tiny_cifar(*, folder: str = "cifar-10-batches-py", replace: dict[str, bytes] | None = None,
               drop: tuple[str, ...] = ()) -> TinyCifar:
    train_x, test_x = pixels(10, seed=0), pixels(2, seed=100)
    train_y, test_y = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3], [3, 8]
    members = {f"{folder}/data_batch_{i + 1}": batch(train_x[2 * i : 2 * i + 2], train_y[2 * i : 2 * i + 2])
               for i in range(5)}
    members[f"{folder}/test_batch"] = batch(test_x, test_y)
    members[f"{folder}/batches.meta"] = py2_pickle(CIFAR10_META)
    members[f"{folder}/readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=http://www.cs.toronto.edu/~kriz/cifar.html'>"
    members.update(replace or {})
    for name in drop:
        del members[f"{folder}/{name}"]
    return TinyCifar(tarball(members), train_x, train_y, test_x, test_y)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def cifar_spec(data: bytes, *, name: str = "tiny-cifar", mirrors: tuple[str, ...] = (),
               counts: tuple[int, int] = (10, 2)) -> ArchiveSpec:
    """A CIFAR-10-layout spec whose tarball digest and size are those of `data`."""
    return ArchiveSpec(
        name=name, n_classes=10, mirrors=mirrors,
        archive=ArchiveFile("cifar-10-python.tar.gz", md5=md5(data), size=len(data)),
        folder="cifar-10-batches-py", train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",),
        meta="batches.meta", label_key="labels", names_key="label_names", counts=counts,
    )
