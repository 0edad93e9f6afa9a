"""IDX reading, checksum verification, the search order and downloads of redblue.data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from redblue.data import load_dataset

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
# From the MNIST README (decompressed bytes); independent of the table in redblue.data.
T10K_LABELS_SHA256 = "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
# The MNIST test set's published class counts (digits 0..9).
T10K_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_real_mnist_test_split_loads_verified():
    import gzip

    ds = load_dataset("mnist", "test", data_dir=SHARED_MNIST.parent)
    assert ds.name == "mnist" and ds.split == "test" and len(ds) == 10000
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.shape == (10000,) and ds.y.dtype == torch.int64
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert int(ds.y[0]) == 7
    assert torch.bincount(ds.y, minlength=10).tolist() == T10K_CLASS_COUNTS
    raw_labels = gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.sha256(raw_labels).hexdigest() == T10K_LABELS_SHA256
    assert ds.y.tolist() == list(raw_labels[8:])
    # pixels are the raw bytes / 255, exactly as float32 division rounds them
    raw_images = gzip.decompress((SHARED_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = torch.tensor(list(raw_images[16 : 16 + 784]), dtype=torch.float32).reshape(1, 28, 28) / 255
    torch.testing.assert_close(ds.x[0], first, rtol=0, atol=0)
