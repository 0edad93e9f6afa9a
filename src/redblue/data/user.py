"""User datasets: how a name points at a file or folder, and reading `.npz` and `.safetensors` files (folders: `folders`).

Naming. A name in the catalog (`mnist`, `cifar10`, ...) is that dataset. Any other name is a path
when it starts with `file:` (always a path: `file:mnist` is a folder called mnist), contains a
`/`, or ends in `.npz` or `.safetensors`: `./faces`, `~/data/digits.npz`, `file:faces`. A path
that is a folder is an image folder (`redblue.data.folders`); a file must end in `.npz` or
`.safetensors`. Relative paths are relative to the working directory; `--data-dir` is not used.

File layout (`.npz` entries, `.safetensors` tensors):

- `x_train`, `y_train`, `x_test`, `y_test`: the two splits (either one may be left out);
- or `x`, `y`: one unnamed split, used for whichever split is asked (train *and* test);
- optional class names: an `.npz` entry `classes` (1-D strings), or a `.safetensors` metadata
  value `classes` (a JSON list of strings). Without them there are max(label) + 1 classes,
  counted over every split of the file, so train and test agree.

`x` is images as `redblue.data.arrays` accepts them (uint8 or float in [0, 1]; (N, H, W),
(N, H, W, C) or (N, C, H, W) by its layout rule); `y` is (N,) integer labels. Any other entry is
refused, so a typo (`X_train`) is one error line, not a silently missing split.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from redblue.data.arrays import check_label_range, to_labels, to_pixels
from redblue.data.catalog import DATASETS, SPLITS
from redblue.errors import DataError

USER_PREFIX = "file:"
FILE_SUFFIXES = (".npz", ".safetensors")
_SPLIT_KEYS = {split: (f"x_{split}", f"y_{split}") for split in SPLITS}
_KNOWN_KEYS = {"x", "y", "classes", *(key for pair in _SPLIT_KEYS.values() for key in pair)}


def user_path(name: str) -> Path | None:
    """The path a dataset name points at, or None for a name that is not a path (a catalog name or unknown)."""
    if name.startswith(USER_PREFIX):
        return Path(name[len(USER_PREFIX):]).expanduser()
    if name in DATASETS:
        return None
    if "/" in name or os.sep in name or name.endswith(FILE_SUFFIXES):
        return Path(name).expanduser()
    return None


def is_user_dataset(name: str) -> bool:
    return user_path(name) is not None


@dataclass(frozen=True)
class UserSplit:
    """One split of a user dataset, checked: pixels float32 (N, C, H, W) in [0, 1], labels int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    n_classes: int
    classes: tuple[str, ...]  # names, when the dataset gives them; else empty


@dataclass(frozen=True)
class _Entries:
    """What a file holds: its keys, a loader per key, and the class names from the file's metadata (if any)."""

    keys: tuple[str, ...]
    load: Callable[[str], np.ndarray]
    metadata_classes: tuple[str, ...] | None


def _open_npz(path: Path, stack: ExitStack) -> _Entries:
    try:
        handle = stack.enter_context(path.open("rb"))  # ours to close, whatever np.load makes of it
        archive = np.load(handle, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}); save it with numpy.savez") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds one array, not named entries; save x_train, y_train, ... with numpy.savez")
    stack.enter_context(archive)

    def load(key: str) -> np.ndarray:
        try:
            return archive[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # ValueError: object arrays, bad headers
            raise DataError(f"{path}: entry {key} cannot be read ({exc}); save plain numeric arrays") from None

    return _Entries(tuple(archive.files), load, None)


def _open_safetensors(path: Path, stack: ExitStack) -> _Entries:
    from safetensors import SafetensorError, safe_open

    try:
        handle = stack.enter_context(safe_open(str(path), framework="numpy"))
        keys = tuple(handle.keys())
        metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a readable .safetensors file ({exc})") from None

    def load(key: str) -> np.ndarray:
        try:
            return handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError, TypeError) as exc:  # TypeError: dtypes numpy lacks (bf16)
            raise DataError(f"{path}: tensor {key} cannot be read as a numpy array ({exc})") from None

    classes = None
    if "classes" in metadata:
        try:
            names = json.loads(metadata["classes"])
        except json.JSONDecodeError:
            names = None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise DataError(f"{path}: metadata 'classes' must be a JSON list of class names, like [\"cat\", \"dog\"]")
        classes = tuple(names)
    return _Entries(keys, load, classes)


@contextmanager
def _opened(path: Path) -> Iterator[_Entries]:
    """The entries of a dataset file, open for lazy reading until the block ends."""
    with ExitStack() as stack:
        if path.suffix == ".npz":
            entries = _open_npz(path, stack)
        elif path.suffix == ".safetensors":
            entries = _open_safetensors(path, stack)
        else:
            raise DataError(f"{path} is neither .npz nor .safetensors, nor a folder; see `redblue data info --help`")
        unknown = sorted(set(entries.keys) - _KNOWN_KEYS)
        if unknown:
            raise DataError(
                f"{path} has unexpected entries {', '.join(unknown)}; a dataset file holds x_train, y_train, x_test, "
                f"y_test (or x, y for one split) and optionally classes"
            )
        yield entries


def _split_keys(path: Path, keys: tuple[str, ...]) -> dict[str | None, tuple[str, str]]:
    """{split: (images key, labels key)}; the split None is the one unnamed split (x, y)."""
    present = set(keys)
    if present & {"x", "y"}:
        if not {"x", "y"} <= present or present & {k for pair in _SPLIT_KEYS.values() for k in pair}:
            raise DataError(f"{path} must hold x and y (one split) or x_train/y_train, x_test/y_test, not a mix")
        return {None: ("x", "y")}
    pairs: dict[str | None, tuple[str, str]] = {}
    for split, (x_key, y_key) in _SPLIT_KEYS.items():
        if (x_key in present) != (y_key in present):
            have, lack = (x_key, y_key) if x_key in present else (y_key, x_key)
            raise DataError(f"{path} has {have} but no {lack}; give both images and labels of a split")
        if x_key in present:
            pairs[split] = (x_key, y_key)
    if not pairs:
        raise DataError(f"{path} holds no dataset: give x_train and y_train (and x_test, y_test), or x and y")
    return pairs


def file_splits(path: Path) -> tuple[str | None, ...]:
    """The splits a file holds: ("train", "test"), one of them, or (None,) for one unnamed split."""
    with _opened(path) as entries:
        return tuple(_split_keys(path, entries.keys))


def _classes(path: Path, entries: _Entries) -> tuple[str, ...] | None:
    if entries.metadata_classes is not None:
        return entries.metadata_classes
    if "classes" not in entries.keys:
        return None
    names = entries.load("classes")
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
        raise DataError(f"{path}: classes must be a 1-D array of class names, like numpy.array(['cat', 'dog'])")
    return tuple(n.decode("utf-8", errors="replace") if isinstance(n, bytes) else str(n) for n in names.tolist())


def _top_label(path: Path, entries: _Entries, key: str) -> int:
    """The largest label of another split (its full check comes when that split is loaded)."""
    labels = entries.load(key)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataError(f"{path}: {key} must be a 1-D array of integer labels, got {labels.dtype} of shape {labels.shape}")
    return int(labels.max(initial=0))


def read_file_split(path: Path, split: str) -> UserSplit:
    """One split of an `.npz` or `.safetensors` dataset, checked (see the module docstring for the layout)."""
    with _opened(path) as entries:
        return _read_split(path, entries, split)


def _read_split(path: Path, entries: _Entries, split: str) -> UserSplit:
    pairs = _split_keys(path, entries.keys)
    if split not in pairs and None not in pairs:
        held = ", ".join(s for s in pairs if s is not None)
        x_key, y_key = _SPLIT_KEYS[split]
        raise DataError(f"{path} has no {split} split ({x_key}, {y_key}); it holds: {held}")
    x_key, y_key = pairs[split if split in pairs else None]
    images = entries.load(x_key)
    x = to_pixels(images, source=f"{path}: {x_key}")
    y = to_labels(entries.load(y_key), len(x), source=f"{path}: {y_key}")
    classes = _classes(path, entries)
    if classes is not None:
        n_classes = len(classes)
    else:  # every split's labels count, so that train and test agree on the number of classes
        others = [_top_label(path, entries, key) for _, key in pairs.values() if key != y_key]
        n_classes = 1 + max([int(y.max(initial=0)), *others])
    check_label_range(y, n_classes, source=f"{path}: {y_key}")
    return UserSplit(x, y, n_classes, classes or ())
