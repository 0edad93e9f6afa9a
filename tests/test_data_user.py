"""User dataset files (.npz, .safetensors): naming, the NHWC / NCHW rule, splits, classes, and one error line per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from redblue import data
from redblue.data import describe_dataset, load_dataset, nchw_view, to_pixels, user_path, verify_dataset
from redblue.errors import ConfigError, DataError

PROPERTIES = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def images(n: int, height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, H, W, C) with distinct, hand-checkable values: (seed + 11 i + flat index) mod 256."""
    flat = (seed + 11 * np.arange(n)[:, None] + np.arange(height * width * channels)[None, :]) % 256
    return flat.astype(np.uint8).reshape(n, height, width, channels)


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


# --------------------------------------------------------------------------------------------
# Naming


@pytest.mark.parametrize(("name", "expected"), [
    ("mnist", None),  # a catalog name
    ("cifar10", None),
    ("svhn", None),  # neither catalog nor path: get_spec says it is unknown
    ("file:mnist", Path("mnist")),  # file: always means a path
    ("./faces", Path("faces")),
    ("data/digits.npz", Path("data/digits.npz")),
    ("digits.npz", Path("digits.npz")),
    ("digits.safetensors", Path("digits.safetensors")),
    ("~/d.npz", Path.home() / "d.npz"),
])
def test_how_a_name_becomes_a_path(name, expected):
    assert user_path(name) == expected


def test_an_unknown_name_says_how_to_name_a_file(env):
    with pytest.raises(ConfigError) as exc:
        load_dataset("faces", "train")
    assert str(exc.value).startswith("unknown dataset 'faces'; choose one of: mnist, fashion-mnist, kmnist, cifar10")
    assert "./data.npz" in str(exc.value) and "file:NAME" in str(exc.value)


# --------------------------------------------------------------------------------------------
# The layout rule


@pytest.mark.parametrize(("shape", "expected"), [
    ((5, 28, 28), (1, 28, 28)),
    ((5, 28, 28, 1), (1, 28, 28)),
    ((5, 1, 28, 28), (1, 28, 28)),
    ((5, 32, 32, 3), (3, 32, 32)),
    ((5, 3, 32, 32), (3, 32, 32)),
    ((5, 3, 4, 3), (3, 3, 4)),  # both axes could be channels: the last one is (NHWC)
    ((5, 1, 8, 1), (1, 1, 8)),
    ((5, 3, 7, 1), (1, 3, 7)),
])
def test_the_layout_rule(shape, expected):
    assert nchw_view(np.zeros(shape, np.uint8), source="x").shape[1:] == expected


@pytest.mark.parametrize("shape", [(5,), (5, 784), (5, 4, 4, 4), (5, 2, 8, 8), (5, 8, 8, 2), (5, 1, 3, 8, 8)])
def test_shapes_the_rule_cannot_read_are_refused(shape):
    with pytest.raises(DataError, match=r"images must be \(N, H, W\), \(N, H, W, C\) or \(N, C, H, W\) with C = 1 or 3"):
        nchw_view(np.zeros(shape, np.uint8), source="x")


@PROPERTIES
@given(st.integers(1, 3), st.integers(1, 6), st.integers(4, 6), st.sampled_from([1, 3]), st.booleans())
def test_nhwc_and_nchw_copies_of_the_same_images_load_to_the_same_tensor(n, height, width, channels, channels_last):
    nhwc = images(n, height, width, channels)
    given_array = nhwc if channels_last else np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    pixels = to_pixels(given_array, source="x")
    assert pixels.shape == (n, channels, height, width) and pixels.flags.c_contiguous and pixels.dtype == np.float32
    for i, c, h, w in [(0, 0, 0, 0), (n - 1, channels - 1, height - 1, width - 1), (n // 2, channels // 2, 0, width - 1)]:
        assert pixels[i, c, h, w] == np.float32(nhwc[i, h, w, c]) / np.float32(255)


# --------------------------------------------------------------------------------------------
# Loading files


def test_an_npz_with_both_splits_loads_each_with_its_own_pixels(tmp_path):
    train_x, test_x = images(4, 5, 6, 3), images(2, 5, 6, 3, seed=100)
    name = save_npz(tmp_path / "d.npz", x_train=train_x, y_train=np.array([0, 1, 2, 1]),
                    x_test=test_x, y_test=np.array([2, 0], dtype=np.uint8))
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.image_shape == (3, 5, 6) and train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.n_classes == test.n_classes == 3 and train.classes == ()
    assert train.y.tolist() == [0, 1, 2, 1] and test.y.tolist() == [2, 0]
    assert train.x[3, 2, 4, 5].item() == np.float32((11 * 3 + (4 * 6 + 5) * 3 + 2) % 256) / np.float32(255)
    np.testing.assert_array_equal(test.x.numpy(), test_x.transpose(0, 3, 1, 2) / np.float32(255))
    assert train.name == name and train.split == "train"


def test_classes_are_counted_over_every_split_so_train_and_test_agree(tmp_path):
    name = save_npz(tmp_path / "d.npz", x_train=images(2, 4, 4, 1), y_train=np.array([0, 2]),
                    x_test=images(2, 4, 4, 1), y_test=np.array([4, 1]))
    assert load_dataset(name, "train").n_classes == load_dataset(name, "test").n_classes == 5


def test_one_unnamed_split_serves_train_and_test(tmp_path):
    x = np.linspace(0, 1, 3 * 8 * 8, dtype=np.float64).reshape(3, 8, 8)  # float pixels, grey (N, H, W)
    name = save_npz(tmp_path / "one.npz", x=x, y=np.array([1, 0, 1]))
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.image_shape == (1, 8, 8) and torch.equal(train.x, test.x)
    np.testing.assert_array_equal(train.x.numpy()[:, 0], x.astype(np.float32))
    info = describe_dataset(name)
    assert info.shared_split and info.splits == {"train": 3, "test": 3} and info.kind == "npz"


def test_named_classes_fix_their_number_and_order(tmp_path):
    name = save_npz(tmp_path / "d.npz", x_train=images(2, 4, 4, 3), y_train=np.array([0, 1]),
                    classes=np.array(["cat", "dog", "emu"]))
    train = load_dataset(name, "train")
    assert train.n_classes == 3 and train.classes == ("cat", "dog", "emu")
    with pytest.raises(DataError, match=r"has no test split \(x_test, y_test\); it holds: train"):
        load_dataset(name, "test")


def test_a_safetensors_file_loads_like_an_npz_with_classes_in_its_metadata(tmp_path):
    x = images(3, 4, 5, 3).transpose(0, 3, 1, 2).copy()  # NCHW
    path = tmp_path / "d.safetensors"
    safetensors.numpy.save_file({"x_train": x, "y_train": np.array([2, 0, 1], dtype=np.int64)}, str(path),
                                metadata={"classes": json.dumps(["a", "b", "c", "d"])})
    train = load_dataset(str(path), "train")
    assert train.image_shape == (3, 4, 5) and train.n_classes == 4 and train.classes == ("a", "b", "c", "d")
    np.testing.assert_array_equal(train.x.numpy(), x / np.float32(255))
    [status] = verify_dataset(str(path))
    assert (status.status, status.check, status.origin) == ("good", "well-formed", "file")


def test_describe_reads_every_split_and_refuses_splits_of_different_shapes(tmp_path):
    name = save_npz(tmp_path / "d.npz", x_train=images(2, 4, 4, 3), y_train=np.array([0, 1]),
                    x_test=images(2, 5, 4, 3), y_test=np.array([0, 1]))
    load_dataset(name, "train")  # one split alone is fine
    with pytest.raises(DataError, match="the train images are 3x4x4 but the test images 3x5x4"):
        describe_dataset(name)
    [status] = verify_dataset(name)
    assert status.status == "corrupt" and "3x5x4" in status.message


# --------------------------------------------------------------------------------------------
# Bad files: one DataError line each


def bad(tmp_path: Path, case: str) -> str:
    x, y = images(3, 4, 4, 3), np.array([0, 1, 2])
    path = tmp_path / "bad.npz"
    arrays = {
        "y of two dims": dict(x_train=x, y_train=y[:, None]),
        "y too short": dict(x_train=x, y_train=y[:2]),
        "float labels": dict(x_train=x, y_train=y.astype(np.float32)),
        "bool labels": dict(x_train=x, y_train=np.array([True, False, True])),
        "negative label": dict(x_train=x, y_train=np.array([0, -1, 2])),
        "label past the classes": dict(x_train=x, y_train=np.array([0, 1, 3]), classes=np.array(["a", "b", "c"])),
        "NaN pixel": dict(x_train=np.where(x > 40, np.nan, x / 255.0), y_train=y),
        "pixel above 1": dict(x_train=x / 50.0, y_train=y),
        "pixel below 0": dict(x_train=x / 255.0 - 0.5, y_train=y),
        "int16 pixels": dict(x_train=x.astype(np.int16), y_train=y),
        "wrong image shape": dict(x_train=np.zeros((3, 4, 4, 4), np.uint8), y_train=y),
        "flat images": dict(x_train=x.reshape(3, -1), y_train=y),
        "no images": dict(x_train=np.zeros((0, 4, 4, 3), np.uint8), y_train=np.zeros(0, np.int64)),
        "unknown entry": dict(x_train=x, y_train=y, X_test=x),
        "x and x_train": dict(x=x, y=y, x_train=x, y_train=y),
        "images without labels": dict(x_train=x),
        "nothing": dict(z=y)  # refused as an unknown entry
    }
    if case == "not a zip":
        path.write_bytes(b"PK\x03\x04 not really")
    elif case == "object array":
        np.savez(path, x_train=np.array([x, "a"], dtype=object), y_train=y)
    elif case == "a .npy file":
        with path.open("wb") as handle:  # one .npy array under an .npz name
            np.save(handle, x)
    elif case == "missing file":
        path = tmp_path / "nowhere.npz"
    elif case == "other suffix":
        path = tmp_path / "data.pt"
        path.write_bytes(b"")
        return f"file:{path}"
    elif case == "garbage safetensors":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    else:
        np.savez(path, **arrays[case])
    return str(path)


BAD_CASES = {
    "y of two dims": "labels must be one integer per image, shape (3,)",
    "y too short": "labels must be one integer per image, shape (3,)",
    "float labels": "is float32; labels must be integers",
    "bool labels": "is bool; labels must be integers",
    "negative label": "has label -1; labels must be class numbers from 0",
    "label past the classes": "has label 3, outside 0..2 (3 classes)",
    "NaN pixel": "pixel values outside [0, 1] (",
    "pixel above 1": "pixel values outside [0, 1] (0 of them NaN)",
    "pixel below 0": "pixel values outside [0, 1] (0 of them NaN)",
    "int16 pixels": "is int16; pixels must be uint8 (0..255) or floats in [0, 1]",
    "wrong image shape": "has shape (3, 4, 4, 4); images must be",
    "flat images": "has shape (3, 48); images must be",
    "no images": "holds no images",
    "unknown entry": "has unexpected entries X_test",
    "x and x_train": "must hold x and y (one split) or x_train/y_train, x_test/y_test, not a mix",
    "images without labels": "has x_train but no y_train",
    "nothing": "has unexpected entries z",
    "not a zip": "is not a readable .npz file",
    "object array": "entry x_train cannot be read",
    "a .npy file": "holds one array, not named entries",
    "missing file": "does not exist; a file dataset is an .npz or .safetensors file, or an image folder",
    "other suffix": "is neither .npz nor .safetensors, nor a folder",
    "garbage safetensors": "is not a readable .safetensors file",
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_bad_file_is_one_error_line(tmp_path, case):
    name = bad(tmp_path, case)
    with pytest.raises(DataError) as exc:
        load_dataset(name, "train")
    message = str(exc.value)
    assert "\n" not in message and BAD_CASES[case] in message
    assert str(user_path(name)) in message


@PROPERTIES
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=3).map(
    lambda s: (s[0], s[1], s[2], 3)), elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_float_pixels_load_exactly_when_all_are_in_0_1(x):
    inside = bool(np.all((x >= 0) & (x <= 1)))
    if inside:
        np.testing.assert_array_equal(to_pixels(x, source="x"), x.transpose(0, 3, 1, 2).astype(np.float32))
    else:
        with pytest.raises(DataError, match=r"outside \[0, 1\]"):
            to_pixels(x, source="x")


def test_a_user_dataset_is_never_fetched(tmp_path):
    with pytest.raises(ConfigError, match="is a user dataset"):
        data.fetch_dataset(str(tmp_path / "d.npz"))
    assert data.ensure_dataset(str(tmp_path / "d.npz"), allow_download=False) == []
