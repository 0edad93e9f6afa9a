"""Checking a user's image and label arrays and bringing them to redblue's form: float32 (N, C, H, W) in [0, 1], int64 labels.

The layout rule, for 4-D images (3-D images (N, H, W) are one channel):

- the last axis is the channels (N, H, W, C) when it is 1 or 3, as numpy, PIL and TensorFlow write images;
- otherwise the second axis is the channels (N, C, H, W) when it is 1 or 3, as torch writes them;
- otherwise the array is refused.

So (N, 32, 32, 3) and (N, 3, 32, 32) are both 3x32x32 images, and the one ambiguous case, an
(N, C, H, W) array whose width is 1 or 3, is read as (N, H, W, C): transpose such an array to
(N, H, W, C) before saving it.

Pixels are uint8 (0..255, divided by 255 as for MNIST) or floats already in [0, 1]; NaN,
infinities and values outside [0, 1] are refused, as are other integer types (is 255 white, or
out of range?). Labels are a 1-D array of integers from 0 to classes - 1.
"""

from __future__ import annotations

import numpy as np

from redblue.errors import DataError

CHANNELS = (1, 3)


def shape_text(shape: tuple[int, ...]) -> str:
    """(3, 32, 32) -> "3x32x32"."""
    return "x".join(str(n) for n in shape)


def nchw_view(x: np.ndarray, *, source: str) -> np.ndarray:
    """`x` as an (N, C, H, W) view (no copy), by the layout rule in the module docstring."""
    if x.ndim == 3:
        return x[:, np.newaxis]
    if x.ndim == 4 and x.shape[3] in CHANNELS:
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in CHANNELS:
        return x
    raise DataError(
        f"{source} has shape {x.shape}; images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
    )


def to_pixels(x: np.ndarray, *, source: str) -> np.ndarray:
    """float32 (N, C, H, W) in [0, 1], a new writable C-contiguous array, from uint8 or float images in any accepted layout."""
    view = nchw_view(x, source=source)
    if len(view) == 0 or 0 in view.shape[2:]:
        raise DataError(f"{source} holds no images (shape {x.shape}); give at least one image of at least 1x1 pixel")
    if x.dtype == np.uint8:
        pixels = np.empty(view.shape, dtype=np.float32)
        np.divide(view, np.float32(255), out=pixels)
        return pixels
    if x.dtype.kind != "f":
        raise DataError(f"{source} is {x.dtype}; pixels must be uint8 (0..255) or floats in [0, 1]")
    inside = (view >= 0) & (view <= 1)  # False for NaN as well
    if not inside.all():
        n_bad = int(inside.size - np.count_nonzero(inside))
        n_nan = int(np.count_nonzero(np.isnan(view)))
        raise DataError(
            f"{source} has {n_bad} pixel values outside [0, 1] ({n_nan} of them NaN); float pixels must be in [0, 1]"
        )
    return np.array(view, dtype=np.float32, order="C")  # a copy: the source may be a read-only buffer


def to_labels(y: np.ndarray, n_images: int, *, source: str) -> np.ndarray:
    """int64 (N,) labels >= 0, one per image (their upper bound is checked by `check_label_range`)."""
    if y.dtype.kind not in "iu":
        raise DataError(f"{source} is {y.dtype}; labels must be integers (class numbers from 0)")
    if y.ndim != 1 or len(y) != n_images:
        raise DataError(f"{source} has shape {y.shape}; labels must be one integer per image, shape ({n_images},)")
    if len(y) and y.min() < 0:
        raise DataError(f"{source} has label {int(y.min())}; labels must be class numbers from 0")
    if len(y) and y.dtype == np.uint64 and y.max() > np.iinfo(np.int64).max:
        raise DataError(f"{source} has label {int(y.max())}, too large for a class number")
    return y.astype(np.int64)


def check_label_range(labels: np.ndarray, n_classes: int, *, source: str) -> None:
    top = int(labels.max(initial=0))
    if top >= n_classes:
        raise DataError(f"{source} has label {top}, outside 0..{n_classes - 1} ({n_classes} classes)")
