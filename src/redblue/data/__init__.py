"""Image datasets: the catalog (MNIST, Fashion-MNIST, KMNIST, CIFAR-10, CIFAR-100) and user files; find, verify, download, load.

A dataset split is one tensor of images, float32 (N, C, H, W) in [0, 1], and one of int64
labels (`Dataset`, which carries `image_shape` and `n_classes`). The MNIST family is read straight
from the four IDX files the public hosts serve (`train-images-idx3-ubyte.gz`, ...), gzip-compressed
or raw, 1x28x28; CIFAR from the python-format tarball (`cifar-10-python.tar.gz`), 3x32x32, its
pickled batches read in memory by a restricted reader (`cifar`, `pickles`) after the tarball's MD5
matched. A user dataset is an `.npz` or `.safetensors` file or an image folder, named by its path
(`user` says how a name becomes a path, the entries and splits a file holds; `arrays` the layout
rule for NHWC / NCHW and the pixel ranges; `folders` the folder layout). SVHN is not in the
catalog: its .mat files (MATLAB v5) would need scipy or a MAT reader of our own.

Where catalog files are found (`roots`): the `data_dir` argument (`--data-dir`) alone when it is
given; otherwise the environment variable `REDBLUE_DATA_DIR`, then the user cache
(`$XDG_CACHE_HOME/redblue`, by default `~/.cache/redblue`). Each is a root with one folder per
dataset (`mnist/`, `fashion-mnist/`, `kmnist/`, `cifar10/`, `cifar100/`); inside it an IDX file
may be `<name>.gz` or `<name>`, a tarball keeps its published name.

Digests (`catalog`, `idx`, `cifar`): every IDX file is verified before use against the SHA-256 or
MD5 of its decompressed bytes, which holds for the original .gz, a re-compressed .gz and a raw
copy alike, or against the MD5 of the original .gz. A file is good, corrupt, or unverified
(well-formed, but only the original .gz's digest is known and this copy is not that file). A
tarball is verified by its size and MD5, at every load, before any member is read.

Downloads (`fetch`): `fetch_dataset` is `redblue data fetch`; `ensure_dataset` downloads on first
use when the caller has the user's consent.

The modules: `catalog` (the datasets and their digests), `idx` (one IDX file: bounded reading,
structure, digests), `cifar` and `pickles` (tarballs), `user`, `arrays` and `folders` (user
datasets), `roots` (where files are looked for), `fetch` (downloads), `load` (tensors, `describe`,
`verify`).
"""

from redblue.data.arrays import nchw_view, to_labels, to_pixels
from redblue.data.catalog import (
    DATASETS,
    IMAGE_SHAPE,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    SPLITS,
    ArchiveFile,
    ArchiveSpec,
    CatalogSpec,
    DatasetSpec,
    FileSpec,
    get_spec,
)
from redblue.data.cifar import ArchiveSplit, read_archive
from redblue.data.fetch import (
    DOWNLOAD_FLAG,
    DOWNLOAD_TIMEOUT_S,
    ENV_DOWNLOAD,
    FetchedFile,
    ensure_dataset,
    fetch_dataset,
)
from redblue.data.idx import (
    UnverifiedFileError,
    VerifiedFile,
    check_digests,
    gunzip,
    parse_idx,
    read_verified,
)
from redblue.data.folders import IMAGE_SUFFIXES, read_folder_split
from redblue.data.load import (
    VERIFY_STATES,
    Dataset,
    DatasetInfo,
    FileStatus,
    describe_dataset,
    load_dataset,
    read_user_split,
    verify_dataset,
)
from redblue.data.pickles import RefusedPickleError, load_restricted
from redblue.data.roots import (
    DATA_DIR_ORIGIN,
    ENV_DATA_DIR,
    FoundFile,
    cache_root,
    find_file,
    locate,
    missing_message,
    search_roots,
)
from redblue.data.user import FILE_SUFFIXES, USER_PREFIX, UserSplit, is_user_dataset, read_file_split, user_path

__all__ = [
    "DATASETS", "DATA_DIR_ORIGIN", "DOWNLOAD_FLAG", "DOWNLOAD_TIMEOUT_S", "ENV_DATA_DIR", "ENV_DOWNLOAD",
    "FILE_SUFFIXES", "IMAGES_MAGIC", "IMAGE_SHAPE", "IMAGE_SUFFIXES", "LABELS_MAGIC", "SPLITS", "USER_PREFIX",
    "VERIFY_STATES",
    "ArchiveFile", "ArchiveSpec", "ArchiveSplit", "CatalogSpec", "Dataset", "DatasetInfo", "DatasetSpec",
    "FetchedFile", "FileSpec", "FileStatus", "FoundFile", "RefusedPickleError", "UnverifiedFileError", "UserSplit",
    "VerifiedFile",
    "cache_root", "check_digests", "describe_dataset", "ensure_dataset", "fetch_dataset", "find_file", "get_spec",
    "gunzip", "is_user_dataset", "load_dataset", "load_restricted", "locate", "missing_message", "nchw_view",
    "parse_idx", "read_archive", "read_file_split", "read_folder_split", "read_user_split", "read_verified",
    "search_roots", "to_labels", "to_pixels", "user_path", "verify_dataset",
]
