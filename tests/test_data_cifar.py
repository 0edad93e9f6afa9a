"""CIFAR tarballs: verified by size and MD5 before any unpickling, read by the restricted pickle reader, loaded exactly.

The tarballs are built in the tests (`cifar_fixtures`) in the real layout, their batches pickled
byte by byte as Python 2 wrote them; each gets a spec with its own MD5, like the tiny IDX dataset.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import os
import pickle
import pickletools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_fixtures import (
    CIFAR10_META,
    CIFAR10_NAMES,
    REAL_BATCHES_META,
    Py2Array,
    batch,
    cifar_spec,
    md5,
    pixels,
    py2_pickle,
    tarball,
    tiny_cifar,
)
from data_fixtures import closed_port_url, http_mirror
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redblue import data
from redblue.data import ArchiveFile, ArchiveSpec, load_dataset, load_restricted, verify_dataset
from redblue.data import pickles as pickles_module
from redblue.errors import DataError

FUZZ = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def install(root: Path, content: bytes, *, name: str = "tiny-cifar", filename: str = "cifar-10-python.tar.gz") -> Path:
    path = root / name / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def tiny(env, monkeypatch):
    """A good tiny CIFAR-10-layout tarball in env/root, registered as `tiny-cifar`."""
    made = tiny_cifar()
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data))
    install(env / "root", made.data)
    return made


# --------------------------------------------------------------------------------------------
# The pickle fixtures are what Python 2 and numpy wrote


def test_the_py2_writer_reproduces_the_real_batches_meta_byte_for_byte():
    assert hashlib.md5(REAL_BATCHES_META).hexdigest() == "5ff9c542aee3614f3951f8cda6e48888"  # torchvision's md5
    assert py2_pickle(CIFAR10_META) == REAL_BATCHES_META


def test_the_restricted_reader_reads_the_real_batches_meta():
    assert load_restricted(REAL_BATCHES_META, source="meta") == CIFAR10_META


def test_a_written_batch_is_what_numpy_itself_unpickles_and_the_restricted_reader_agrees():
    images = pixels(3, seed=5)
    raw = batch(images, [0, 4, 9])
    # the reference: stock pickle + numpy, on bytes this test made (never on a file from elsewhere)
    reference = pickle.loads(raw, encoding="bytes")
    restricted = load_restricted(raw, source="batch")
    assert reference[b"data"].dtype == np.uint8 and reference[b"data"].shape == (3, 3072)
    np.testing.assert_array_equal(restricted[b"data"], reference[b"data"])
    np.testing.assert_array_equal(restricted[b"data"], images.reshape(3, 3072))
    assert restricted[b"labels"] == reference[b"labels"] == [0, 4, 9]
    assert restricted[b"filenames"] == [b"img_0.png", b"img_1.png", b"img_2.png"]


# --------------------------------------------------------------------------------------------
# Loading


def test_load_a_tiny_cifar_tarball_gives_the_pixels_labels_and_classes_written(env, tiny):
    train = load_dataset("tiny-cifar", "train", data_dir=env / "root")
    test = load_dataset("tiny-cifar", "test", data_dir=env / "root")
    assert train.image_shape == (3, 32, 32) and train.x.shape == (10, 3, 32, 32) and train.x.dtype == torch.float32
    assert train.y.tolist() == tiny.train_y and test.y.tolist() == tiny.test_y
    assert train.n_classes == 10 and train.classes == tuple(n.decode() for n in CIFAR10_NAMES)
    # image 3 of data_batch_2 is train image 3: (0 + 7*3 + k) % 256 at flat index k = c*1024 + h*32 + w
    for c, h, w in [(0, 0, 0), (1, 0, 0), (2, 31, 31), (1, 5, 17)]:
        k = c * 1024 + h * 32 + w
        assert train.x[3, c, h, w].item() == np.float32((21 + k) % 256) / np.float32(255)
    np.testing.assert_array_equal(test.x.numpy(), tiny.test_x / np.float32(255))
    assert train.x.numpy().flags.writeable


def test_a_cifar100_layout_reads_the_fine_labels_and_names(env, monkeypatch):
    folder = "cifar-100-python"
    images = pixels(4, seed=1)
    fine, coarse = [99, 0, 42, 7], [19, 0, 3, 1]
    names = [b"class%02d" % i for i in range(100)]
    members = {
        f"{folder}/train": py2_pickle({b"fine_labels": fine[:3], b"coarse_labels": coarse[:3],
                                       b"data": Py2Array(images[:3].reshape(3, -1))}),
        f"{folder}/test": py2_pickle({b"fine_labels": fine[3:], b"coarse_labels": coarse[3:],
                                      b"data": Py2Array(images[3:].reshape(1, -1))}),
        f"{folder}/meta": py2_pickle({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}),
    }
    content = tarball(members)
    real = data.DATASETS["cifar100"]
    spec = ArchiveSpec(**{**real.__dict__, "name": "tiny100", "counts": (3, 1),
                          "archive": ArchiveFile(real.archive.filename, md5(content), len(content))})
    monkeypatch.setitem(data.DATASETS, "tiny100", spec)
    install(env / "root", content, name="tiny100", filename="cifar-100-python.tar.gz")
    train = load_dataset("tiny100", "train", data_dir=env / "root")
    assert train.y.tolist() == [99, 0, 42] and train.n_classes == 100 and train.classes[42] == "class42"
    np.testing.assert_array_equal(load_dataset("tiny100", "test", data_dir=env / "root").x.numpy(),
                                  images[3:] / np.float32(255))


def test_the_catalog_lists_cifar_with_the_published_digests_and_layout():
    cifar10, cifar100 = data.get_spec("cifar10"), data.get_spec("cifar100")
    assert (cifar10.archive.md5, cifar10.archive.size) == ("c58f30108f718f92721af3b95e74349a", 170498071)
    assert (cifar100.archive.md5, cifar100.archive.size) == ("eb9058c3a382ffc7106e4002c42a8d85", 169001437)
    assert cifar10.image_shape == cifar100.image_shape == (3, 32, 32)
    assert (cifar10.n_classes, cifar100.n_classes) == (10, 100)
    assert cifar10.train == ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


def test_verify_reports_a_good_tarball_by_md5(env, tiny):
    [status] = verify_dataset("tiny-cifar", data_dir=env / "root")
    assert (status.status, status.check, status.filename) == ("good", "md5", "cifar-10-python.tar.gz")


# --------------------------------------------------------------------------------------------
# Bad tarballs: one DataError line each, and nothing unpickled before the digest matched


def no_unpickling(monkeypatch):
    def refuse(raw, *, source):
        pytest.fail(f"{source} was unpickled although its digest did not match")

    monkeypatch.setattr(pickles_module, "load_restricted", refuse)
    monkeypatch.setattr(data.cifar, "load_restricted", refuse)


def test_a_wrong_md5_is_refused_before_any_unpickling(env, tiny, monkeypatch):
    path = env / "root" / "tiny-cifar" / "cifar-10-python.tar.gz"
    content = bytearray(tiny.data)
    content[len(content) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(content))
    no_unpickling(monkeypatch)
    with pytest.raises(DataError) as exc:
        load_dataset("tiny-cifar", "train", data_dir=env / "root")
    message = str(exc.value)
    assert "\n" not in message and f"{path} is corrupt: it fails its checksum (md5 {md5(bytes(content))}" in message
    assert f"expected {md5(tiny.data)}" in message and "redblue data fetch tiny-cifar --data-dir" in message
    [status] = verify_dataset("tiny-cifar", data_dir=env / "root")
    assert status.status == "corrupt" and status.message == message


def test_a_truncated_tarball_is_refused_by_its_size(env, tiny, monkeypatch):
    path = env / "root" / "tiny-cifar" / "cifar-10-python.tar.gz"
    path.write_bytes(tiny.data[:-100])
    no_unpickling(monkeypatch)
    with pytest.raises(DataError, match=f"is {len(tiny.data) - 100} bytes, but cifar-10-python.tar.gz is "
                                        f"{len(tiny.data)}; the file is truncated"):
        load_dataset("tiny-cifar", "test", data_dir=env / "root")


@pytest.mark.parametrize("keep", ["half", "all but 100 bytes"])
def test_a_truncated_tarball_whose_digest_is_registered_is_still_one_error_line(env, monkeypatch, keep):
    full = tiny_cifar().data
    cut = full[: len(full) // 2] if keep == "half" else full[:-100]  # the gzip stream ends early
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(cut))
    path = install(env / "root", cut)
    [status] = verify_dataset("tiny-cifar", data_dir=env / "root")  # verify reads to the end
    assert status.status == "corrupt" and status.message.startswith(f"{path} is not a readable .tar.gz (")
    if keep == "half":  # the batches themselves are cut: loading fails too
        with pytest.raises(DataError) as exc:
            load_dataset("tiny-cifar", "train", data_dir=env / "root")
        assert "\n" not in str(exc.value) and str(exc.value).startswith(f"{path} is not a readable .tar.gz (")


@pytest.mark.parametrize(("change", "expected"), [
    ({"drop": ("test_batch",)}, "lacks cifar-10-batches-py/test_batch"),
    ({"drop": ("batches.meta",)}, "lacks cifar-10-batches-py/batches.meta"),
    ({"replace": {"cifar-10-batches-py/data_batch_3": batch(pixels(3, 0), [1, 2, 3])}},
     "holds more than the 10 train images"),
    ({"replace": {"cifar-10-batches-py/data_batch_3": batch(pixels(1, 0), [1])}}, "holds 9 train images, expected 10"),
    ({"replace": {"cifar-10-batches-py/data_batch_1": batch(pixels(2, 0), [1, 10])}}, "labels outside 0..9"),
    ({"replace": {"cifar-10-batches-py/data_batch_1": batch(pixels(2, 0), [-1, 2**70])}}, "labels outside 0..9"),
    ({"replace": {"cifar-10-batches-py/data_batch_1": batch(pixels(2, 0), [1])}}, "has no list of 2 integer 'labels'"),
    ({"replace": {"cifar-10-batches-py/data_batch_1": py2_pickle({b"labels": [1, 2]})}}, "has no b'data' array"),
    ({"replace": {"cifar-10-batches-py/data_batch_1": b"\x80\x02}q\x01(U\x04data"}}, "is not a readable pickle"),
    ({"replace": {"cifar-10-batches-py/batches.meta": py2_pickle({b"label_names": [b"a"]})}},
     "has no list of 10 'label_names'"),
])
def test_a_well_digested_tarball_with_the_wrong_content_is_one_error_line(env, monkeypatch, change, expected):
    made = tiny_cifar(**change)
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data))
    install(env / "root", made.data)
    with pytest.raises(DataError) as exc:
        for split in data.SPLITS:
            load_dataset("tiny-cifar", split, data_dir=env / "root")
    assert "\n" not in str(exc.value) and expected in str(exc.value)


class _Payload:
    """An object whose pickle calls `function(*args)` when unpickled (what an attacker would ship)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker: Path) -> dict[str, bytes]:
    command = f"touch {marker}"
    return {
        "os.system": pickle.dumps({b"data": _Payload(os.system, command)}, protocol=2),
        "builtins.exec": pickle.dumps(_Payload(exec, f"open({str(marker)!r}, 'w').close()"), protocol=4),
        "numpy function": pickle.dumps(_Payload(np.save, str(marker), np.zeros(1)), protocol=2),
        "object dtype": py2_pickle({b"data": Py2Array(np.zeros((2, 3072), np.uint8), dtype=b"O")}),
        "float dtype": py2_pickle({b"data": Py2Array(np.zeros((2, 3072), np.uint8), dtype=b"<f8")}),
        "numpy 2 module": py2_pickle({b"data": Py2Array(np.zeros((2, 3072), np.uint8), module=b"numpy._core.multiarray")}),
        "persistent id": b"\x80\x02U\x04evilq\x01Q.",
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "numpy function", "object dtype", "float dtype",
                                  "numpy 2 module", "persistent id"])
def test_a_tarball_whose_pickle_imports_or_builds_anything_else_is_refused_and_nothing_runs(env, monkeypatch, kind):
    marker = env / "marker"
    made = tiny_cifar(replace={"cifar-10-batches-py/data_batch_2": _payloads(marker)[kind]})
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data))  # its digest matches: the second wall
    install(env / "root", made.data)
    with pytest.raises(data.RefusedPickleError) as exc:
        load_dataset("tiny-cifar", "train", data_dir=env / "root")
    assert "\n" not in str(exc.value) and "was refused: its pickle asks for" in str(exc.value)
    assert not marker.exists()


def test_an_extension_code_is_refused_by_both_walls(env):
    marker = env / "marker"
    copyreg.add_extension("posix", "system", 0x7A)
    try:
        raw = pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=2)
        assert b"\x82\x7a" in raw  # EXT1 0x7a: no GLOBAL opcode in the bytes at all
        with pytest.raises(data.RefusedPickleError, match="asks for the opcode EXT1 at byte 2"):
            load_restricted(raw, source="ext")
        # the second wall alone: the unpickler looks an extension code up through find_class, which refuses it
        with pytest.raises(data.RefusedPickleError, match="the global posix.system"):
            pickles_module._RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    finally:
        copyreg.remove_extension("posix", "system", 0x7A)
    assert not marker.exists()


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x80\x05\x96" + (2**60).to_bytes(8, "little") + b"abc", "asks for the opcode BYTEARRAY8 at byte 2"),
    (b"\x80\x02T" + (2**30).to_bytes(4, "little") + b"abc.", "ends inside an opcode or before STOP"),
    (b"\x80\x02U\xffabc.", "ends inside an opcode or before STOP"),
    (b"\x80\x02\x8b" + (2**32 - 1).to_bytes(4, "little") + b".", "negative length at byte 3"),
    (b"\x80\x02}q\x01", "ends inside an opcode or before STOP"),
    (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}.", "asks for the opcode FRAME at byte 2"),
    (b"\x80\x02\xff.", "asks for the opcode b'\\xff' (not a pickle opcode) at byte 2"),
])
def test_opcodes_outside_the_cifar_set_and_lengths_past_the_end_are_refused_before_unpickling(raw, expected):
    with pytest.raises(DataError) as exc:
        load_restricted(raw, source="scan")
    assert expected in str(exc.value)


def test_every_opcode_of_a_real_style_batch_is_in_the_accepted_set():
    raw = batch(pixels(3, seed=0), [1, 2, 2**40])  # a Python 2 long too
    used = {op.name for op, _, _ in pickletools.genops(raw)}
    assert used <= {pickletools.code2op[code.decode("latin-1")].name for code in pickles_module._ARGUMENTS}
    pickles_module.scan_opcodes(raw, source="batch")
    pickles_module.scan_opcodes(REAL_BATCHES_META, source="meta")


@FUZZ
@given(st.data())
def test_fuzzed_batches_end_in_a_value_or_one_data_error(draws):
    """Byte flips, cuts and insertions in a good batch: the reader returns something or raises DataError, nothing else."""
    raw = bytearray(batch(pixels(2, seed=3), [1, 2]))
    for _ in range(draws.draw(st.integers(1, 4))):
        action = draws.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draws.draw(st.integers(0, len(raw) - 1))
        if action == "flip":
            raw[at] = draws.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at : at + draws.draw(st.integers(1, 64))]
        else:
            raw[at:at] = draws.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            raw = bytearray(b".")
    try:
        value = load_restricted(bytes(raw), source="fuzz")
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert not isinstance(value, (pickles_module._ArrayRecord, pickles_module._Uint8Dtype))


TINY_TARBALL = tiny_cifar().data


@settings(FUZZ, max_examples=40)
@given(st.lists(st.tuples(st.integers(0, len(TINY_TARBALL) - 1), st.integers(0, 255)), min_size=1, max_size=3))
def test_fuzzed_tarballs_registered_with_their_own_digest_end_in_splits_or_one_data_error(tmp_path, changes):
    """Past the digest gate (each mutant gets its own spec), gzip, tar and pickle damage is still one DataError."""
    content = bytearray(TINY_TARBALL)
    for at, value in changes:
        content[at] = value
    path = install(tmp_path, bytes(content))
    try:
        splits = data.read_archive(cifar_spec(bytes(content)), path, data.SPLITS, complete=True)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert {split: len(part.labels) for split, part in splits.items()} == {"train": 10, "test": 2}


# --------------------------------------------------------------------------------------------
# Downloading: consent, verification before the rename, nothing left behind on failure


def test_fetch_downloads_verifies_and_moves_the_tarball_into_place(env, monkeypatch):
    made = tiny_cifar()
    served = install(env / "served", made.data, name="files").parent
    with http_mirror(served) as mirror:
        monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(made.data, mirrors=(closed_port_url(), mirror.url)))
        fetched = data.fetch_dataset("tiny-cifar", target=env / "dl", timeout=5)
        assert [(f.action, f.filename) for f in fetched] == [("downloaded", "cifar-10-python.tar.gz")]
        again = data.fetch_dataset("tiny-cifar", target=env / "dl", timeout=5)
        assert [f.action for f in again] == ["present"] and mirror.requests == ["/cifar-10-python.tar.gz"]
    assert sorted(p.name for p in (env / "dl" / "tiny-cifar").iterdir()) == ["cifar-10-python.tar.gz"]
    assert load_dataset("tiny-cifar", "test", data_dir=env / "dl").y.tolist() == made.test_y


@pytest.mark.parametrize("served_content", ["other bytes", "right digest, bad pickle"])
def test_a_failed_fetch_leaves_nothing_behind(env, monkeypatch, served_content):
    good = tiny_cifar()
    if served_content == "other bytes":
        changed = bytearray(good.data)
        changed[len(changed) // 2] ^= 0xFF
        content, spec = bytes(changed), cifar_spec(good.data)
    else:  # registered with its own digest, so only the parse after the download can refuse it
        content = tiny_cifar(replace={"cifar-10-batches-py/test_batch": b"\x80\x02cos\nsystem\n."}).data
        spec = cifar_spec(content)
    served = install(env / "served", content, name="files").parent
    with http_mirror(served) as mirror:
        monkeypatch.setitem(data.DATASETS, "tiny-cifar", ArchiveSpec(**{**spec.__dict__, "mirrors": (mirror.url,)}))
        with pytest.raises(DataError) as exc:
            data.fetch_dataset("tiny-cifar", target=env / "dl" / "nested", timeout=5)
    assert "\n" not in str(exc.value) and "could not download tiny-cifar/cifar-10-python.tar.gz" in str(exc.value)
    assert not (env / "dl").exists()  # no tarball, no .part file, no folder


def test_without_consent_a_missing_tarball_is_one_line_naming_the_flag(env, tiny):
    with pytest.raises(DataError) as exc:
        data.ensure_dataset("tiny-cifar", data_dir=env / "elsewhere", allow_download=False)
    message = str(exc.value)
    assert "\n" not in message and "cifar-10-python.tar.gz" in message and "--download (or REDBLUE_DOWNLOAD=1)" in message
    assert not (env / "elsewhere").exists()


def test_the_tarball_reader_never_writes_to_disk(env, tiny):
    before = {p: p.stat().st_mtime_ns for p in (env / "root").rglob("*")}
    load_dataset("tiny-cifar", "train", data_dir=env / "root")
    verify_dataset("tiny-cifar", data_dir=env / "root")
    assert {p: p.stat().st_mtime_ns for p in (env / "root").rglob("*")} == before


def test_members_are_found_by_name_only_and_a_link_is_not_a_batch(env, monkeypatch):
    made = tiny_cifar(drop=("test_batch",))
    buffer = io.BytesIO()
    import gzip

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(made.data))) as source, \
            tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in source:
            tar.addfile(member, source.extractfile(member))
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    content = gzip.compress(buffer.getvalue(), mtime=0)
    monkeypatch.setitem(data.DATASETS, "tiny-cifar", cifar_spec(content))
    install(env / "root", content)
    with pytest.raises(DataError, match="holds cifar-10-batches-py/test_batch twice or not as a plain file"):
        load_dataset("tiny-cifar", "test", data_dir=env / "root")
