"""IDX datasets (MNIST, Fashion-MNIST, KMNIST): find the files, verify their digests, download, cache.

A dataset is one tensor of images and one of labels, read straight from the four IDX files the
public hosts serve (`train-images-idx3-ubyte.gz`, ...), gzip-compressed or raw.

Where the files are found (`roots`): the `data_dir` argument (`--data-dir`) alone when it is
given; otherwise the environment variable `REDBLUE_DATA_DIR`, then the user cache
(`$XDG_CACHE_HOME/redblue`, by default `~/.cache/redblue`). Each is a root with one folder per
dataset (`mnist/`, `fashion-mnist/`, `kmnist/`); inside it a file may be `<name>.gz` or `<name>`.

Digests (`catalog`, `idx`): every file is verified before use against the SHA-256 or MD5 of its
decompressed bytes, which holds for the original .gz, a re-compressed .gz and a raw copy alike,
or against the MD5 of the original .gz. A file is good, corrupt, or unverified (well-formed, but
only the original .gz's digest is known and this copy is not that file).

Downloads (`fetch`): `fetch_dataset` is `redblue data fetch`; `ensure_dataset` downloads on first
use when the caller has the user's consent.

The modules: `catalog` (the datasets and their digests), `idx` (one file: bounded reading,
structure, digests), `roots` (where files are looked for), `fetch` (downloads), `load` (tensors).
"""

from redblue.data.catalog import (
    DATASETS,
    IMAGE_SHAPE,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    SPLITS,
    DatasetSpec,
    FileSpec,
    get_spec,
)
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
from redblue.data.load import VERIFY_STATES, Dataset, FileStatus, load_dataset, verify_dataset
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

__all__ = [
    "DATASETS", "DATA_DIR_ORIGIN", "DOWNLOAD_FLAG", "DOWNLOAD_TIMEOUT_S", "ENV_DATA_DIR", "ENV_DOWNLOAD",
    "IMAGES_MAGIC", "IMAGE_SHAPE", "LABELS_MAGIC", "SPLITS", "VERIFY_STATES",
    "Dataset", "DatasetSpec", "FetchedFile", "FileSpec", "FileStatus", "FoundFile", "UnverifiedFileError",
    "VerifiedFile",
    "cache_root", "check_digests", "ensure_dataset", "fetch_dataset", "find_file", "get_spec", "gunzip",
    "load_dataset", "locate", "missing_message", "parse_idx", "read_verified", "search_roots", "verify_dataset",
]
