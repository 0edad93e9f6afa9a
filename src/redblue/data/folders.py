"""Image-folder datasets: one subfolder per class, images read with Pillow, all of one size, grey or RGB for the whole set.

Layout. Either `ROOT/<class>/<image>` (one unnamed split, used for whichever split is asked), or
`ROOT/train/<class>/<image>` and `ROOT/test/<class>/<image>` (either may be left out; when both
are there they must have the same class folders, an empty one is fine). A folder with a `train/`
or `test/` subfolder is the second layout, so a class cannot be called train or test. Files
directly in ROOT (a README) are ignored, and so are hidden entries (`.DS_Store`) everywhere.

Classes are the class folders' names, sorted as Python sorts strings ("B" before "a"); label i
is the i-th name. Samples are ordered by class, then by file name.

Images: files ending in one of IMAGE_SUFFIXES, any other file in a class folder is refused (move
it out). All images must have the same width and height. If every image is greyscale (Pillow
modes 1, L, LA) the dataset has one channel (converted to L); otherwise three (every image
converted to RGB, greyscale ones repeated on each channel). Alpha is dropped, not composited.
16-bit and float images (modes I, I;16, F) are refused: convert them to 8 bits first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from redblue.data.arrays import shape_text
from redblue.data.catalog import SPLITS
from redblue.data.user import UserSplit
from redblue.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
GREY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"cannot list {folder} ({exc.strerror or exc}); check its permissions") from None


def folder_splits(root: Path) -> dict[str | None, Path]:
    """{split: its folder}; the split None is the one unnamed split (ROOT/<class>/...)."""
    folders = [p for p in _visible(root) if p.is_dir()]
    split_folders = {p.name: p for p in folders if p.name in SPLITS}
    if not split_folders:
        if not folders:
            raise DataError(f"{root} has no class folders; put the images in {root}/<class>/ (one folder per class)")
        return {None: root}
    others = sorted(p.name for p in folders if p.name not in SPLITS)
    if others:
        raise DataError(
            f"{root} mixes split folders ({', '.join(sorted(split_folders))}) with other folders ({', '.join(others)}); "
            f"with train/ or test/, every class folder goes inside them"
        )
    return {split: split_folders[split] for split in SPLITS if split in split_folders}


def _class_folders(split_root: Path) -> list[Path]:
    return [p for p in _visible(split_root) if p.is_dir()]


@dataclass(frozen=True)
class _Header:
    path: Path
    label: int
    size: tuple[int, int]  # (width, height), as Pillow gives it
    mode: str


def _open_error(path: Path, exc: BaseException) -> DataError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(f"{path} cannot be read as an image ({reason}); replace it or move it out of the dataset")


def _headers(class_folders: list[Path]) -> list[_Header]:
    """Every image's size and mode, read from its header only (nothing decoded yet)."""
    from PIL import Image

    headers = []
    for label, folder in enumerate(class_folders):
        for path in _visible(folder):
            if path.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
                kind = "a folder" if path.is_dir() else "not an image"
                raise DataError(
                    f"{path} is {kind}; a class folder holds only images ({', '.join(IMAGE_SUFFIXES)}), move it out"
                )
            try:
                with Image.open(path) as image:
                    headers.append(_Header(path, label, image.size, image.mode))
            except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as exc:
                raise _open_error(path, exc) from None
    return headers


def _channels(headers: list[_Header]) -> int:
    for header in headers:
        if header.mode not in GREY_MODES + COLOUR_MODES:
            raise DataError(
                f"{header.path} has the Pillow mode {header.mode} (16-bit or float); convert it to 8-bit grey or RGB"
            )
    return 1 if all(h.mode in GREY_MODES for h in headers) else 3


def read_folder_split(root: Path, split: str) -> UserSplit:
    """One split of an image-folder dataset, checked (see the module docstring for the layout and rules)."""
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"{root} does not exist or is not a folder; give an image folder, a .npz or a .safetensors file")
    splits = folder_splits(root)
    if split not in splits and None not in splits:
        raise DataError(f"{root} has no {split}/ folder; it holds: {', '.join(s for s in splits if s is not None)}")
    class_lists = {s: _class_folders(folder) for s, folder in splits.items()}
    names = {s: [p.name for p in folders] for s, folders in class_lists.items()}
    if len(names) == 2 and names["train"] != names["test"]:
        raise DataError(
            f"{root}/train has the classes {', '.join(names['train'])} but {root}/test has {', '.join(names['test'])}; "
            f"give both splits the same class folders (an empty one is fine)"
        )
    own = split if split in splits else None
    class_folders = class_lists[own]
    if not class_folders:
        raise DataError(f"{splits[own]} has no class folders; put the images in {splits[own]}/<class>/")
    headers = _headers(class_folders)
    if not headers:
        raise DataError(f"{splits[own]} has class folders but no images in them")
    sizes = {h.size for h in headers}
    if len(sizes) > 1:
        first = headers[0]
        other = next(h for h in headers if h.size != first.size)
        raise DataError(
            f"{other.path} is {other.size[0]}x{other.size[1]} but {first.path} is {first.size[0]}x{first.size[1]} "
            f"(width x height); every image of a dataset must have the same size, resize them first"
        )
    channels = _channels(headers)
    width, height = headers[0].size
    images = np.empty((len(headers), channels, height, width), dtype=np.uint8)
    target = "L" if channels == 1 else "RGB"
    for i, header in enumerate(headers):
        try:
            with Image.open(header.path) as image:
                converted = np.asarray(image.convert(target))  # (H, W) or (H, W, 3)
        except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as exc:
            raise _open_error(header.path, exc) from None
        if converted.shape[:2] != (height, width):  # a file that changed between the two passes
            raise DataError(f"{header.path} changed while it was read ({shape_text(converted.shape)}); read it again")
        images[i] = converted[np.newaxis] if channels == 1 else converted.transpose(2, 0, 1)
    x = np.empty(images.shape, dtype=np.float32)
    np.divide(images, np.float32(255), out=x)
    y = np.array([h.label for h in headers], dtype=np.int64)
    return UserSplit(x, y, len(class_folders), tuple(p.name for p in class_folders))
