"""Image-folder datasets: class order, grey or RGB for the whole set, the split layout, and one error line per bad folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from redblue.data import describe_dataset, load_dataset, verify_dataset
from redblue.errors import DataError


def write(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """Save uint8 pixels ((H, W) grey or (H, W, C)) as a PNG (lossless, so the values read back exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def colour(height: int, width: int, seed: int) -> np.ndarray:
    return ((seed + np.arange(height * width * 3)) % 256).astype(np.uint8).reshape(height, width, 3)


def grey(height: int, width: int, seed: int) -> np.ndarray:
    return ((seed + 3 * np.arange(height * width)) % 256).astype(np.uint8).reshape(height, width)


def test_classes_are_the_sorted_folder_names_and_samples_follow_class_then_file(tmp_path):
    root = tmp_path / "pets"
    write(root / "dog" / "b.png", colour(4, 5, 1))
    write(root / "dog" / "a.png", colour(4, 5, 2))
    write(root / "Cat" / "z.png", colour(4, 5, 3))  # "Cat" sorts before "dog" (upper case first)
    (root / "README.md").write_text("ignored: files directly in the root")
    (root / "dog" / ".DS_Store").write_bytes(b"ignored: hidden")
    train = load_dataset(f"{root}/", "train")
    assert train.classes == ("Cat", "dog") and train.n_classes == 2 and train.image_shape == (3, 4, 5)
    assert train.y.tolist() == [0, 1, 1]
    for i, seed in enumerate([3, 2, 1]):  # Cat/z, dog/a, dog/b
        np.testing.assert_array_equal(train.x[i].numpy(), colour(4, 5, seed).transpose(2, 0, 1) / np.float32(255))
    assert load_dataset(f"file:{root}", "test").y.tolist() == [0, 1, 1]  # one split: used for test too


def test_all_grey_images_give_one_channel(tmp_path):
    root = tmp_path / "digits"
    write(root / "0" / "a.png", grey(6, 6, 0))
    write(root / "1" / "a.png", (grey(6, 6, 1) > 100).astype(np.uint8) * 255, mode=None)
    Image.fromarray(grey(6, 6, 2) > 100).save(root / "1" / "b.png")  # mode "1": black and white
    train = load_dataset(f"{root}/", "train")
    assert train.image_shape == (1, 6, 6)
    np.testing.assert_array_equal(train.x[0, 0].numpy(), grey(6, 6, 0) / np.float32(255))
    np.testing.assert_array_equal(train.x[2, 0].numpy(), np.where(grey(6, 6, 2) > 100, 1.0, 0.0).astype(np.float32))


def test_one_colour_image_makes_every_image_rgb_and_alpha_is_dropped(tmp_path):
    root = tmp_path / "mixed"
    write(root / "a" / "grey.png", grey(3, 4, 7))
    rgba = np.dstack([colour(3, 4, 9), np.full((3, 4), 17, np.uint8)])
    write(root / "b" / "rgba.png", rgba)
    train = load_dataset(f"{root}/", "train")
    assert train.image_shape == (3, 3, 4)
    for channel in range(3):  # a grey image is repeated on each channel
        np.testing.assert_array_equal(train.x[0, channel].numpy(), grey(3, 4, 7) / np.float32(255))
    np.testing.assert_array_equal(train.x[1].numpy(), colour(3, 4, 9).transpose(2, 0, 1) / np.float32(255))


def test_train_and_test_folders_are_the_two_splits(tmp_path):
    root = tmp_path / "split"
    write(root / "train" / "a" / "1.png", colour(2, 2, 0))
    write(root / "train" / "b" / "1.png", colour(2, 2, 1))
    write(root / "train" / "b" / "2.png", colour(2, 2, 2))
    write(root / "test" / "b" / "1.png", colour(2, 2, 3))
    (root / "test" / "a").mkdir()  # an empty class folder keeps the classes the same
    assert load_dataset(f"{root}/", "train").y.tolist() == [0, 1, 1]
    test = load_dataset(f"{root}/", "test")
    assert test.y.tolist() == [1] and test.classes == ("a", "b")
    info = describe_dataset(f"{root}/")
    assert (info.kind, info.splits, info.shared_split, info.shape_text) == ("folder", {"train": 3, "test": 1}, False,
                                                                            "3x2x2")
    [status] = verify_dataset(f"{root}/")
    assert status.status == "good"


def test_a_split_layout_without_test_says_so(tmp_path):
    root = tmp_path / "only-train"
    write(root / "train" / "a" / "1.png", colour(2, 2, 0))
    with pytest.raises(DataError, match=r"has no test/ folder; it holds: train"):
        load_dataset(f"{root}/", "test")


def bad_folder(root: Path, case: str) -> None:
    if case == "mixed sizes":
        write(root / "a" / "1.png", colour(4, 4, 0))
        write(root / "b" / "2.png", colour(4, 5, 0))
    elif case == "not an image":
        write(root / "a" / "1.png", colour(4, 4, 0))
        (root / "a" / "notes.txt").write_text("hello")
    elif case == "nested folder":
        write(root / "a" / "deeper" / "1.png", colour(4, 4, 0))
    elif case == "corrupt image":
        write(root / "a" / "1.png", colour(4, 4, 0))
        (root / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    elif case == "truncated image":
        good = write(root / "a" / "1.png", colour(16, 16, 0))
        (root / "a" / "2.png").write_bytes(good.read_bytes()[:60])
    elif case == "16-bit image":
        write(root / "a" / "1.png", colour(4, 4, 0))
        Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(root / "a" / "2.png")
    elif case == "no class folders":
        root.mkdir(parents=True)
        write(root.parent / "elsewhere.png", colour(2, 2, 0))
    elif case == "no images":
        (root / "a").mkdir(parents=True)
    elif case == "split and class folders":
        write(root / "train" / "a" / "1.png", colour(2, 2, 0))
        write(root / "cat" / "1.png", colour(2, 2, 0))
    elif case == "different classes per split":
        write(root / "train" / "a" / "1.png", colour(2, 2, 0))
        write(root / "test" / "b" / "1.png", colour(2, 2, 0))


BAD_FOLDERS = {
    "mixed sizes": "2.png is 5x4 but {root}/a/1.png is 4x4 (width x height); every image of a dataset must have the same size",
    "not an image": "notes.txt is not an image; a class folder holds only images",
    "nested folder": "deeper is a folder; a class folder holds only images",
    "corrupt image": "2.png cannot be read as an image",
    "truncated image": "2.png cannot be read as an image",
    "16-bit image": "2.png has the Pillow mode I;16 (16-bit or float); convert it to 8-bit grey or RGB",
    "no class folders": "has no class folders; put the images in",
    "no images": "has class folders but no images in them",
    "split and class folders": "mixes split folders (train) with other folders (cat)",
    "different classes per split": "/train has the classes a but {root}/test has b; give both splits the same class folders",
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_each_bad_folder_is_one_error_line(tmp_path, case):
    root = tmp_path / "bad"
    bad_folder(root, case)
    with pytest.raises(DataError) as exc:
        load_dataset(f"{root}/", "train")
    message = str(exc.value)
    assert "\n" not in message and BAD_FOLDERS[case].format(root=root) in message and str(root) in message
