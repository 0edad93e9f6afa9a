"""Fuzzing the IDX reader with Hypothesis: random bytes, truncations, wrong magic, huge declared sizes.

Whatever the bytes, reading ends in a verified array or one DataError: no other exception, no
read past the end, no allocation larger than the file (a header that announces 2**32 items is
refused before anything is allocated from it, a gzip bomb stops one byte past the largest good
file). `gunzip` is checked against Python's own `gzip.decompress` as the reference.

Profiles (registered here, applied per test so other suites keep theirs): "redblue-data-ci",
derandomised with bounded examples, runs by default; "redblue-data-slow" (many more examples)
runs in the `slow`-marked twins (`make test-slow`) and in place of the default one when
HYPOTHESIS_PROFILE=slow.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from data_fixtures import COUNTS, TRAIN_IMAGES, TRAIN_LABELS, idx_images, idx_labels, tiny_files, tiny_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redblue import data
from redblue.data import IMAGES_MAGIC, LABELS_MAGIC, gunzip, parse_idx, read_verified
from redblue.errors import DataError

settings.register_profile(
    "redblue-data-ci", derandomize=True, max_examples=120, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "redblue-data-slow", max_examples=4000, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CI = settings.get_profile("redblue-data-slow" if os.environ.get("HYPOTHESIS_PROFILE") == "slow" else "redblue-data-ci")
SLOW = settings.get_profile("redblue-data-slow")

SPEC = tiny_spec()
IMAGES_SPEC, LABELS_SPEC = SPEC.train  # 3 images of 28x28 (2368 bytes), 3 labels (11 bytes)
GOOD = {IMAGES_SPEC.filename: tiny_files()[TRAIN_IMAGES], LABELS_SPEC.filename: tiny_files()[TRAIN_LABELS]}
SLACK = 256 * 1024  # interpreter and numpy bookkeeping, far below any file-sized allocation here


def peak_allocation(action: Callable[[], object]) -> tuple[int, object]:
    """(peak bytes allocated while `action` runs, its result or the DataError it raised)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        result: object = action()
    except DataError as exc:
        result = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, result


def twins(*strategies: st.SearchStrategy) -> Callable:
    """A property as two tests: the default one (CI profile) and its `slow`-marked twin."""
    def make(prop: Callable) -> tuple[Callable, Callable]:
        return CI(given(*strategies)(prop)), pytest.mark.slow(SLOW(given(*strategies)(prop)))
    return make


# ---------------------------------------------------------------------------------------------
# parse_idx on bytes


def headers() -> st.SearchStrategy[bytes]:
    """IDX headers, mostly almost right: the right or a wrong magic, any count up to 2**32 - 1."""
    magic = st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]) | st.integers(0, 2**32 - 1)
    dim = st.sampled_from([0, 1, 2, 3, 28, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
    return st.builds(lambda m, dims: struct.pack(f">I{len(dims)}I", m, *dims), magic, st.lists(dim, max_size=3))


def idx_bytes() -> st.SearchStrategy[bytes]:
    body = st.binary(max_size=3 * 784 + 8)
    good = st.sampled_from(list(GOOD.values()))
    truncated = st.builds(lambda raw, cut: raw[: cut % (len(raw) + 1)], good, st.integers(0, 10_000))
    return st.binary(max_size=64) | st.builds(bytes.__add__, headers(), body) | truncated


@twins(idx_bytes(), st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]))
def prop_parse_idx_returns_exactly_the_bytes_or_one_data_error(raw: bytes, magic: int):
    peak, result = peak_allocation(lambda: parse_idx(raw, magic=magic, source="fuzz"))
    assert peak < SLACK  # a view of `raw`, never a copy, whatever the header announces
    if isinstance(result, DataError):
        assert "\n" not in str(result) and str(result).startswith("fuzz ")
        return
    header_size = 16 if magic == IMAGES_MAGIC else 8
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8
    assert int.from_bytes(raw[:4], "big") == magic
    assert result.shape == struct.unpack(f">{(header_size - 4) // 4}I", raw[4:header_size])
    assert result.tobytes() == raw[header_size:]  # every byte after the header, nothing past the end
    assert result.size == 0 or np.shares_memory(result, np.frombuffer(raw, dtype=np.uint8))


test_parse_idx_fuzz, test_parse_idx_fuzz_slow = prop_parse_idx_returns_exactly_the_bytes_or_one_data_error


# ---------------------------------------------------------------------------------------------
# gunzip against gzip.decompress


def gzip_streams() -> st.SearchStrategy[bytes]:
    """Valid gzip data as compressors write it: one or more members, levels, names, zero padding."""
    member = st.builds(
        lambda raw, level, name: gzip_member(raw, level, name),
        st.binary(max_size=3000), st.integers(0, 9), st.sampled_from([None, "x", "train-images-idx3-ubyte"]),
    )
    padding = st.sampled_from([b"", b"\0", b"\0" * 7])
    return st.builds(lambda members, pad: b"".join(m + pad for m in members), st.lists(member, min_size=1, max_size=3), padding)


def gzip_member(raw: bytes, level: int, name: str | None) -> bytes:
    if name is None:
        return gzip.compress(raw, compresslevel=level, mtime=0)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, compresslevel=level, mtime=0) as handle:
        handle.write(raw)
    return buffer.getvalue()


def damaged(streams: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Truncated, bit-flipped or extended copies of valid streams, and plain random bytes."""
    def cut(data: bytes, at: int) -> bytes:
        return data[: at % (len(data) + 1)]

    def flip(data: bytes, at: int, bit: int) -> bytes:
        if not data:
            return data
        i = at % len(data)
        return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]

    return (
        st.builds(cut, streams, st.integers(0, 10_000))
        | st.builds(flip, streams, st.integers(0, 10_000), st.integers(0, 7))
        | st.builds(bytes.__add__, streams, st.binary(min_size=1, max_size=16))
        | st.builds(lambda tail: b"\x1f\x8b\x08" + tail, st.binary(max_size=200))
        | st.binary(max_size=200)
    )


def reference(data: bytes) -> bytes | None:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return None


@twins(gzip_streams(), st.integers(0, 10_000))
def prop_gunzip_matches_gzip_on_valid_streams(stream: bytes, limit: int):
    expected = gzip.decompress(stream)
    result = gunzip(stream, limit=limit, source="fuzz.gz")
    if len(expected) <= limit:
        assert result == expected
    else:  # stops one byte past the limit, whatever the rest holds
        assert result == expected[: limit + 1]


@twins(damaged(gzip_streams()), st.integers(0, 10_000))
def prop_gunzip_never_accepts_what_gzip_rejects(stream: bytes, limit: int):
    try:
        result = gunzip(stream, limit=limit, source="fuzz.gz")
    except DataError as exc:
        assert str(exc).startswith("fuzz.gz is not a valid gzip file (") and "\n" not in str(exc)
        return
    assert len(result) <= limit + 1
    if len(result) <= limit:  # accepted as a whole: gzip must agree, byte for byte
        assert reference(stream) == result
    else:  # over the limit: the caller refuses it; what was produced is a prefix of the true content
        assert stream[:2] == b"\x1f\x8b"


test_gunzip_valid, test_gunzip_valid_slow = prop_gunzip_matches_gzip_on_valid_streams
test_gunzip_damaged, test_gunzip_damaged_slow = prop_gunzip_never_accepts_what_gzip_rejects


# ---------------------------------------------------------------------------------------------
# read_verified on files: bounded memory, only DataError


def file_contents() -> st.SearchStrategy[tuple[bytes, bool]]:
    """(bytes on disk, written as .gz?): IDX-ish bytes raw or gzipped, and damaged gzip streams."""
    plain = idx_bytes()
    gzipped = st.builds(lambda raw, level: gzip.compress(raw, compresslevel=level, mtime=0), plain, st.integers(1, 9))
    return st.tuples(plain, st.just(False)) | st.tuples(gzipped | damaged(gzipped), st.just(True))


@twins(file_contents(), st.sampled_from([IMAGES_SPEC, LABELS_SPEC]))
def prop_read_verified_is_an_array_or_one_data_error(tmp_path_factory, content: tuple[bytes, bool], spec):
    on_disk, gz = content
    path = tmp_path_factory.mktemp("fuzz") / (spec.filename + (".gz" if gz else ""))
    path.write_bytes(on_disk)
    peak, result = peak_allocation(lambda: read_verified(spec, path))
    # the .gz is read whole (it is the file), the content never past one byte over the good size
    assert peak < (len(on_disk) if gz else 0) + 2 * (spec.nbytes + 1) + SLACK
    if isinstance(result, DataError):
        assert "\n" not in str(result) and str(path) in str(result)
        return
    # only the one good content passes its digest
    assert result.array.tobytes() == GOOD[spec.filename][spec.header_bytes :]
    assert result.check == "sha256"


test_read_verified_fuzz, test_read_verified_fuzz_slow = prop_read_verified_is_an_array_or_one_data_error


# ---------------------------------------------------------------------------------------------
# The worst cases, made by hand


def test_a_header_announcing_2_to_the_32_images_is_refused_before_any_allocation(env):
    raw = idx_images([[1]], count=2**32 - 1)  # 3.4 TB announced, 784 bytes present
    peak, result = peak_allocation(lambda: parse_idx(raw, magic=IMAGES_MAGIC, source="huge"))
    assert isinstance(result, DataError) and peak < SLACK
    assert "has 784 data bytes but its header announces 4294967295 items (3367254359280 bytes)" in str(result)

    folder = env / "root" / "tiny"
    folder.mkdir(parents=True)
    (folder / TRAIN_IMAGES).write_bytes(raw)
    (folder / TRAIN_LABELS).write_bytes(GOOD[TRAIN_LABELS])
    peak, result = peak_allocation(lambda: data.load_dataset("tiny", "train", data_dir=env / "root"))
    assert isinstance(result, DataError) and peak < SLACK
    assert "holds 4294967295 items (by its header), expected 3" in str(result)


@pytest.mark.parametrize("header_count", [3, 2**32 - 1])
def test_a_gzip_bomb_stops_one_byte_past_the_largest_good_file(env, header_count):
    bomb = gzip.compress(idx_labels([1, 2, 3], count=header_count) + bytes(64 * 2**20), mtime=0)  # 64 MiB of zeros
    assert len(bomb) < 100_000
    folder = env / "root" / "tiny"
    folder.mkdir(parents=True)
    (folder / f"{TRAIN_LABELS}.gz").write_bytes(bomb)
    peak, result = peak_allocation(lambda: read_verified(LABELS_SPEC, folder / f"{TRAIN_LABELS}.gz"))
    assert isinstance(result, DataError)
    assert peak < 2 * len(bomb) + SLACK  # the file, never its 64 MiB content
    expected = "holds more data than its header announces" if header_count == 3 else "holds 4294967295 items"
    assert expected in str(result)


def test_a_huge_raw_file_is_not_read_past_the_size_a_good_copy_has(env):
    folder = env / "root" / "tiny"
    folder.mkdir(parents=True)
    path = folder / TRAIN_LABELS
    with path.open("wb") as handle:
        handle.write(idx_labels([1, 2, 3]))
        handle.truncate(512 * 2**20)  # 512 MiB, sparse: costs no disk
    peak, result = peak_allocation(lambda: read_verified(LABELS_SPEC, path))
    assert isinstance(result, DataError) and "holds more data than its header announces" in str(result)
    assert peak < SLACK


def test_a_gz_far_larger_than_any_copy_is_refused_unread(env):
    folder = env / "root" / "tiny"
    folder.mkdir(parents=True)
    path = folder / f"{TRAIN_LABELS}.gz"
    with path.open("wb") as handle:
        handle.write(gzip.compress(idx_labels([1, 2, 3])))
        handle.truncate(512 * 2**20)
    peak, result = peak_allocation(lambda: read_verified(LABELS_SPEC, path))
    assert isinstance(result, DataError) and f"is {512 * 2**20} bytes, more than any gzip copy" in str(result)
    assert peak < SLACK


def test_the_fuzz_fixtures_are_what_they_claim(tmp_path):
    # the one content that passes: the tiny table's digest of the good bytes
    path = tmp_path / TRAIN_LABELS
    path.write_bytes(GOOD[TRAIN_LABELS])
    assert read_verified(LABELS_SPEC, path).array.tolist() == [3, 0, 9]
    assert (IMAGES_SPEC.nbytes, LABELS_SPEC.nbytes) == (16 + 3 * 784, 8 + 3) and COUNTS[TRAIN_IMAGES] == 3
