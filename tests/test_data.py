"""IDX reading, checksum verification, the search order and downloads of redblue.data."""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    TEST_IMAGES,
    TEST_LABELS,
    TEST_PIXELS,
    TEST_Y,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    TRAIN_PIXELS,
    TRAIN_Y,
    closed_port_url,
    http_mirror,
    idx_images,
    idx_labels,
    silent_server,
    tiny_files,
    tiny_spec,
    write_dataset,
)

from redblue import data
from redblue.data import FileSpec, fetch_dataset, load_dataset, parse_idx, verify_dataset
from redblue.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_MNIST = SHARED_DATA / "mnist"
# The MNIST test set's class counts (digits 0..9), as published with the dataset.
T10K_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]



def expected_images(pixels: list[list[int]]) -> torch.Tensor:
    """Images as the reader must return them, computed in float64 from the pattern, then rounded."""
    values = [[p[k % len(p)] / 255.0 for k in range(784)] for p in pixels]
    return torch.tensor(values, dtype=torch.float64).reshape(len(pixels), 1, 28, 28).float()


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path, *, what_to_do: str = "redblue data fetch"):
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    assert what_to_do in message


# --------------------------------------------------------------------------------------------
# Reading IDX bytes


def test_parse_idx_reads_hand_made_images_and_labels():
    images = parse_idx(idx_images([[0, 255], [9]]), magic=data.IMAGES_MAGIC, source="x")
    assert images.shape == (2, 28, 28) and images.dtype == np.uint8
    assert images[0, 0, :4].tolist() == [0, 255, 0, 255] and images[1].min() == images[1].max() == 9
    labels = parse_idx(idx_labels([4, 0, 9]), magic=data.LABELS_MAGIC, source="y")
    assert labels.tolist() == [4, 0, 9]


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_load_tiny_dataset_gz_and_raw(env, gz):
    write_dataset(env / "root", tiny_files(), gz=gz)
    train = load_dataset("tiny", "train", data_dir=env / "root")
    assert (train.name, train.split, len(train)) == ("tiny", "train", 3)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    torch.testing.assert_close(train.x, expected_images(TRAIN_PIXELS), rtol=0, atol=0)
    assert train.y.tolist() == TRAIN_Y
    test = load_dataset("tiny", "test", data_dir=env / "root")
    torch.testing.assert_close(test.x, expected_images(TEST_PIXELS), rtol=0, atol=0)
    assert test.y.tolist() == TEST_Y


def test_loaded_tensors_are_writable_and_independent_of_the_file(env):
    write_dataset(env / "root", tiny_files())
    first = load_dataset("tiny", "train", data_dir=env / "root")
    first.x.zero_()
    first.y.zero_()
    second = load_dataset("tiny", "train", data_dir=env / "root")
    assert second.y.tolist() == TRAIN_Y and float(second.x.max()) == 1.0


def test_unknown_dataset_or_split_is_a_config_error(env):
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'; choose one of: mnist"):
        load_dataset("svhn")
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        load_dataset("tiny", "val")


# --------------------------------------------------------------------------------------------
# Corrupt files: each is one line that names the file and what to do


def test_truncated_gzip(env):
    folder = write_dataset(env / "root", tiny_files())
    path = folder / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="not a valid gzip file") as exc:
        load_dataset("tiny", "train", data_dir=env / "root")
    assert_one_line_naming(exc, path)


def test_wrong_magic_number(env):
    files = tiny_files()
    files[TRAIN_LABELS] = idx_labels(TRAIN_Y, magic=0x00000803)
    path = write_dataset(env / "root", files) / f"{TRAIN_LABELS}.gz"
    with pytest.raises(DataError, match=r"magic number 0x00000803, expected 0x00000801") as exc:
        load_dataset("tiny", "train", data_dir=env / "root")
    assert_one_line_naming(exc, path)


def test_images_that_are_not_28x28(env):
    files = tiny_files()
    files[TRAIN_IMAGES] = idx_images(TRAIN_PIXELS, rows=14, cols=14)
    write_dataset(env / "root", files)
    with pytest.raises(DataError, match="holds 14x14 images, expected 28x28"):
        load_dataset("tiny", "train", data_dir=env / "root")


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_header_count_disagrees_with_the_bytes(env, gz):
    files = tiny_files()
    files[TRAIN_IMAGES] = idx_images(TRAIN_PIXELS[:2], count=3)  # header says 3 (as the table), data holds 2
    path = write_dataset(env / "root", files, gz=gz) / (TRAIN_IMAGES + (".gz" if gz else ""))
    with pytest.raises(DataError, match=r"has 1568 data bytes but its header announces 3 items \(2352 bytes\)") as exc:
        load_dataset("tiny", "train", data_dir=env / "root")
    assert_one_line_naming(exc, path)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_more_data_than_the_header_announces(env, gz):
    files = tiny_files()
    files[TRAIN_LABELS] = idx_labels(TRAIN_Y) + b"\x00"  # one byte past the 3 labels its header announces
    path = write_dataset(env / "root", files, gz=gz) / (TRAIN_LABELS + (".gz" if gz else ""))
    with pytest.raises(DataError, match=r"holds more data than its header announces \(3 items, 3 bytes\)") as exc:
        load_dataset("tiny", "train", data_dir=env / "root")
    assert_one_line_naming(exc, path, what_to_do=f"redblue data fetch tiny --data-dir {env / 'root'}")


def test_item_count_differs_from_the_dataset_table(env):
    files = tiny_files()
    files[TRAIN_LABELS] = idx_labels(TRAIN_Y + [5])  # a consistent file, but 4 labels where 3 are expected
    path = write_dataset(env / "root", files) / f"{TRAIN_LABELS}.gz"
    with pytest.raises(DataError, match=r"holds 4 items \(by its header\), expected 3") as exc:
        load_dataset("tiny", "train", data_dir=env / "root")
    assert_one_line_naming(exc, path)


def test_images_and_labels_length_mismatch(env, monkeypatch):
    files = tiny_files()
    files[TRAIN_LABELS] = idx_labels(TRAIN_Y[:2])
    spec = tiny_spec(files)
    labels_spec = FileSpec(TRAIN_LABELS, 2, sha256=spec.train[1].sha256)
    monkeypatch.setitem(data.DATASETS, "tiny", data.DatasetSpec("tiny", 10, (), (spec.train[0], labels_spec), spec.test))
    folder = write_dataset(env / "root", files)
    with pytest.raises(DataError, match="has 3 images but .* has 2 labels") as exc:
        load_dataset("tiny", "train", data_dir=env / "root")
    assert "\n" not in str(exc.value) and str(folder / f"{TRAIN_LABELS}.gz") in str(exc.value)


def test_label_out_of_range(env, monkeypatch):
    files = tiny_files()
    files[TRAIN_LABELS] = idx_labels([3, 10, 9])
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(files))
    path = write_dataset(env / "root", files) / f"{TRAIN_LABELS}.gz"
    with pytest.raises(DataError, match=r"has label 10, outside 0\.\.9") as exc:
        load_dataset("tiny", "train", data_dir=env / "root")
    assert_one_line_naming(exc, path)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_checksum_mismatch_of_decompressed_bytes(env, gz):
    files = tiny_files()
    files[TEST_IMAGES] = idx_images([[7], [254, 0, 52]])  # one pixel value off: structure fine, sum not
    name = TEST_IMAGES + (".gz" if gz else "")
    path = write_dataset(env / "root", files, gz=gz) / name
    with pytest.raises(DataError, match="is corrupt: it fails its checksum") as exc:
        load_dataset("tiny", "test", data_dir=env / "root")
    assert not isinstance(exc.value, data.UnverifiedFileError)
    assert_one_line_naming(exc, path, what_to_do=f"redblue data fetch tiny --data-dir {env / 'root'}")


def test_gz_md5_alone_verifies_the_original_gz_and_leaves_other_copies_unverified(env, monkeypatch):
    files = tiny_files()
    folder = write_dataset(env / "root", files)
    gz_bytes = (folder / f"{TEST_LABELS}.gz").read_bytes()
    gz_md5 = hashlib.md5(gz_bytes).hexdigest()
    spec = tiny_spec(files, kinds={TEST_LABELS: "none"}, gz_md5={TEST_LABELS: gz_md5})
    monkeypatch.setitem(data.DATASETS, "tiny", spec)
    assert load_dataset("tiny", "test", data_dir=env / "root").y.tolist() == TEST_Y
    statuses = {s.filename: s for s in verify_dataset("tiny", data_dir=env / "root")}
    assert (statuses[TEST_LABELS].status, statuses[TEST_LABELS].check) == ("good", "gz-md5")
    assert statuses[TEST_IMAGES].check == "sha256"

    # same decompressed bytes, compressed differently: nothing says it is wrong, nothing says it is right
    recompressed = gzip.compress(files[TEST_LABELS], compresslevel=1, mtime=1)
    (folder / f"{TEST_LABELS}.gz").write_bytes(recompressed)
    with pytest.raises(data.UnverifiedFileError, match=r"is unverified: it is well-formed, but only the md5") as exc:
        load_dataset("tiny", "test", data_dir=env / "root")
    assert f"a re-compressed copy (md5 of its .gz is {hashlib.md5(recompressed).hexdigest()})" in str(exc.value)
    assert_one_line_naming(exc, folder / f"{TEST_LABELS}.gz", what_to_do=f"redblue data fetch tiny --data-dir {env / 'root'}")
    status = {s.filename: s for s in verify_dataset("tiny", data_dir=env / "root")}[TEST_LABELS]
    assert status.status == "unverified" and status.message == str(exc.value)

    # a raw (gunzipped) copy: the same
    (folder / f"{TEST_LABELS}.gz").unlink()
    (folder / TEST_LABELS).write_bytes(files[TEST_LABELS])
    with pytest.raises(data.UnverifiedFileError, match="this is a gunzipped copy") as exc:
        load_dataset("tiny", "test", data_dir=env / "root")
    assert_one_line_naming(exc, folder / TEST_LABELS)

    # but a gunzipped copy whose content is wrong is still corrupt when a decompressed digest is known
    bad = idx_labels([7, 2])
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(files, kinds={TEST_LABELS: "md5"}, gz_md5={TEST_LABELS: gz_md5}))
    (folder / TEST_LABELS).write_bytes(bad)
    with pytest.raises(DataError, match=r"is corrupt: it fails its checksum \(md5 of the decompressed bytes") as exc:
        load_dataset("tiny", "test", data_dir=env / "root")
    assert not isinstance(exc.value, data.UnverifiedFileError)


@pytest.mark.parametrize("kind", ["sha256", "md5"])
def test_a_decompressed_digest_verifies_original_recompressed_and_raw_copies(env, monkeypatch, kind):
    files = tiny_files()
    folder = write_dataset(env / "root", files)
    gz_md5 = hashlib.md5((folder / f"{TRAIN_IMAGES}.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(files, kinds={TRAIN_IMAGES: kind}, gz_md5={TRAIN_IMAGES: gz_md5}))
    path = folder / f"{TRAIN_IMAGES}.gz"
    # the digest of the decompressed bytes is tried first, so even the original .gz reports it
    copies = {
        "original": lambda: path.write_bytes(gzip.compress(files[TRAIN_IMAGES], mtime=0)),
        "recompressed": lambda: path.write_bytes(gzip.compress(files[TRAIN_IMAGES], compresslevel=1, mtime=7)),
        "two gzip members": lambda: path.write_bytes(
            gzip.compress(files[TRAIN_IMAGES][:100]) + gzip.compress(files[TRAIN_IMAGES][100:])
        ),
        "raw": lambda: (path.unlink(), (folder / TRAIN_IMAGES).write_bytes(files[TRAIN_IMAGES])),
    }
    for label, make in copies.items():
        make()
        status = {s.filename: s for s in verify_dataset("tiny", data_dir=env / "root")}[TRAIN_IMAGES]
        assert (status.status, status.check) == ("good", kind), label
    torch.testing.assert_close(
        load_dataset("tiny", "train", data_dir=env / "root").x, expected_images(TRAIN_PIXELS), rtol=0, atol=0
    )


def test_verify_dataset_reports_each_file_without_raising(env):
    files = tiny_files()
    folder = write_dataset(env / "root", files)
    (folder / f"{TRAIN_IMAGES}.gz").write_bytes(b"\x1f\x8b not really gzip")
    (folder / f"{TEST_LABELS}.gz").unlink()
    statuses = {s.filename: s for s in verify_dataset("tiny", data_dir=env / "root")}
    assert statuses[TRAIN_IMAGES].status == "corrupt" and "not a valid gzip" in statuses[TRAIN_IMAGES].message
    assert statuses[TRAIN_LABELS].status == "good" and statuses[TRAIN_LABELS].origin == "--data-dir"
    assert statuses[TEST_LABELS].status == "missing" and statuses[TEST_LABELS].path is None


# --------------------------------------------------------------------------------------------
# Where the files are found


def labelled_copy(first_label: int) -> dict[str, bytes]:
    """The tiny files with the first train label changed, to tell the roots apart."""
    files = tiny_files()
    files[TRAIN_LABELS] = idx_labels([first_label, *TRAIN_Y[1:]])
    return files


def test_search_order_env_then_cache(env, monkeypatch):
    by_root = {"env": labelled_copy(2), "cache": labelled_copy(3)}
    write_dataset(env / "env", by_root["env"])
    write_dataset(env / "xdg-cache" / "redblue", by_root["cache"])
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "env"))
    # the table holds the sums of the copy that must be chosen; the other copy fails them
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(by_root["env"]))
    assert int(load_dataset("tiny", "train").y[0]) == 2
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "empty"))  # set, but without the dataset: on to the cache
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(by_root["cache"]))
    assert int(load_dataset("tiny", "train").y[0]) == 3


@pytest.mark.parametrize("state", ["absent", "empty", "other-dataset"])
def test_an_explicit_data_dir_is_the_only_place_searched(env, monkeypatch, state):
    # the environment variable and the cache both hold a good copy; --data-dir must not fall through to them
    write_dataset(env / "env", tiny_files())
    write_dataset(env / "xdg-cache" / "redblue", tiny_files())
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "env"))
    given = env / "given"
    if state != "absent":
        given.mkdir()
    if state == "other-dataset":
        write_dataset(given, tiny_files(), name="mnist")
    with pytest.raises(DataError) as exc:
        load_dataset("tiny", "train", data_dir=given)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"tiny files not found in {given / 'tiny'} (--data-dir")
    assert ("does not exist" in message) == (state == "absent")
    assert f"run `redblue data fetch tiny --data-dir {given}`" in message
    assert str(env / "env") not in message and "xdg-cache" not in message
    assert [f.path for f in data.locate("tiny", data_dir=given)] == [None] * 4
    assert {s.status for s in verify_dataset("tiny", data_dir=given)} == {"missing"}
    # without --data-dir the same call finds the environment's copy
    assert load_dataset("tiny", "train").y.tolist() == TRAIN_Y


def test_search_roots_order_and_cache_location(env, monkeypatch):
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "env"))
    assert data.search_roots(env / "arg") == [("--data-dir", env / "arg")]
    assert data.search_roots() == [("REDBLUE_DATA_DIR", env / "env"), ("cache", env / "xdg-cache" / "redblue")]
    monkeypatch.delenv("REDBLUE_DATA_DIR")
    assert data.search_roots() == [("cache", env / "xdg-cache" / "redblue")]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(env / "home"))
    assert data.cache_root() == env / "home" / ".cache" / "redblue"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec says to ignore relative paths
    assert data.cache_root() == env / "home" / ".cache" / "redblue"


def test_gz_name_is_preferred_and_raw_name_is_accepted(env):
    folder = write_dataset(env / "root", tiny_files(), gz=False)
    found = data.locate("tiny", "train", data_dir=env / "root")
    assert [f.path for f in found] == [folder / TRAIN_IMAGES, folder / TRAIN_LABELS]
    write_dataset(env / "root", tiny_files(), gz=True)
    found = data.locate("tiny", "train", data_dir=env / "root")
    assert [f.path for f in found] == [folder / f"{TRAIN_IMAGES}.gz", folder / f"{TRAIN_LABELS}.gz"]


def test_missing_files_name_the_places_searched(env, monkeypatch):
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(env / "env"))
    (env / "env").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("tiny", "test")
    message = str(exc.value)
    assert "\n" not in message
    assert f"{TEST_IMAGES}.gz" in message and f"{TEST_LABELS}.gz" in message
    assert f"{env / 'env' / 'tiny'} (REDBLUE_DATA_DIR)" in message
    assert f"{env / 'xdg-cache' / 'redblue' / 'tiny'} (cache, does not exist)" in message
    assert "redblue data fetch tiny" in message and "--data-dir" in message and "REDBLUE_DATA_DIR" in message


# --------------------------------------------------------------------------------------------
# Download from a local HTTP server


def served_folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    return write_dataset(tmp_path / "served", files, name="files")


def assert_no_partial_files(folder: Path):
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part"]


def test_fetch_from_fallback_when_primary_fails(env):
    with http_mirror(served_folder(env, tiny_files())) as mirror:
        fetched = fetch_dataset("tiny", target=env / "dl", mirrors=[closed_port_url(), mirror.url], timeout=5)
    assert [f.action for f in fetched] == ["downloaded"] * 4
    assert all(f.url.startswith(mirror.url) for f in fetched)
    assert sorted(mirror.requests) == sorted(f"/{name}.gz" for name in tiny_files())
    assert_no_partial_files(env / "dl" / "tiny")
    assert load_dataset("tiny", "test", data_dir=env / "dl").y.tolist() == TEST_Y


def test_fetch_keeps_verified_files_and_replaces_corrupt_ones(env):
    folder = write_dataset(env / "dl", tiny_files())
    (folder / f"{TRAIN_IMAGES}.gz").write_bytes(b"garbage")
    with http_mirror(served_folder(env, tiny_files())) as mirror:
        fetched = fetch_dataset("tiny", target=env / "dl", mirrors=[mirror.url], timeout=5)
    assert {f.filename: f.action for f in fetched} == {
        TRAIN_IMAGES: "downloaded", TRAIN_LABELS: "present", TEST_IMAGES: "present", TEST_LABELS: "present"
    }
    assert mirror.requests == [f"/{TRAIN_IMAGES}.gz"]
    assert len(load_dataset("tiny", "train", data_dir=env / "dl")) == 3


def test_fetch_checksum_mismatch_leaves_nothing_in_the_cache(env):
    files = tiny_files()
    served = dict(files)
    served[TRAIN_IMAGES] = idx_images([[0, 255], [1, 2, 3], [129]])  # well-formed, wrong sum
    with http_mirror(served_folder(env, served)) as mirror:
        with pytest.raises(DataError, match=r"could not download tiny/train-images-idx3-ubyte\.gz") as exc:
            fetch_dataset("tiny", mirrors=[mirror.url, mirror.url], timeout=5)  # default target: the cache
    message = str(exc.value)
    assert "\n" not in message and message.count("fails its checksum") == 2  # both mirrors tried
    assert "to work offline, put the files" in message
    assert not (env / "xdg-cache").exists()  # every folder it created is removed again, nothing half-written


def test_fetch_stops_at_first_file_no_mirror_serves(env):
    files = tiny_files()
    served = {name: raw for name, raw in files.items() if name != TRAIN_LABELS}
    with http_mirror(served_folder(env, served)) as mirror:
        with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: HTTP 404") as exc:
            fetch_dataset("tiny", target=env / "dl", mirrors=[mirror.url], timeout=5)
    assert str(env / "dl" / "tiny") in str(exc.value)
    # the verified first file stays; nothing after the failing one was asked for
    assert sorted(p.name for p in (env / "dl" / "tiny").iterdir()) == [f"{TRAIN_IMAGES}.gz"]
    assert mirror.requests == [f"/{TRAIN_IMAGES}.gz", f"/{TRAIN_LABELS}.gz"]


def test_fetch_times_out_fast_on_a_silent_server(env):
    with silent_server() as url:
        start = time.perf_counter()
        with pytest.raises(DataError, match="timed out"):
            fetch_dataset("tiny", target=env / "dl", mirrors=[url], timeout=0.3)
        assert time.perf_counter() - start < 5


def test_load_with_download_fetches_missing_files_then_loads(env, monkeypatch):
    with http_mirror(served_folder(env, tiny_files())) as mirror:
        monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(mirrors=(closed_port_url(), mirror.url)))
        test = load_dataset("tiny", "test", download=True)
        assert sorted(mirror.requests) == [f"/{TEST_IMAGES}.gz", f"/{TEST_LABELS}.gz"]
        load_dataset("tiny", "test", download=True)  # found in the cache now: no new request
        assert len(mirror.requests) == 2
    assert test.y.tolist() == TEST_Y
    assert (env / "xdg-cache" / "redblue" / "tiny" / f"{TEST_IMAGES}.gz").is_file()


# --------------------------------------------------------------------------------------------
# The real MNIST copy


def readme_sha256s() -> dict[str, str]:
    text = (SHARED_DATA / "README.md").read_text()
    return dict(re.findall(r"\|\s*([a-z0-9-]+-ubyte)\s*\|\s*([0-9a-f]{64})\s*\|", text))


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_mnist_table_matches_the_data_readme():
    table = {f.filename: f.sha256 for f in data.DATASETS["mnist"].files}
    assert table == readme_sha256s() and len(table) == 4


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_real_mnist_test_split_loads_verified():
    ds = load_dataset("mnist", "test", data_dir=SHARED_DATA)
    assert ds.name == "mnist" and ds.split == "test" and len(ds) == 10000
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.shape == (10000,) and ds.y.dtype == torch.int64
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert int(ds.y[0]) == 7
    assert torch.bincount(ds.y, minlength=10).tolist() == T10K_CLASS_COUNTS
    raw_labels = gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.sha256(raw_labels).hexdigest() == readme_sha256s()["t10k-labels-idx1-ubyte"]
    assert ds.y.tolist() == list(raw_labels[8:])
    # pixels are the raw bytes / 255, exactly as float32 division rounds them
    raw_images = gzip.decompress((SHARED_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.sha256(raw_images).hexdigest() == readme_sha256s()["t10k-images-idx3-ubyte"]
    pixels = torch.frombuffer(bytearray(raw_images[16:]), dtype=torch.uint8).reshape(10000, 1, 28, 28)
    torch.testing.assert_close(ds.x, (pixels.double() / 255).float(), rtol=0, atol=0)
