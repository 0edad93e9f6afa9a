"""Downloading dataset files: from a mirror with a fallback, verified, moved into place atomically.

`fetch_dataset` is `redblue data fetch`; `ensure_dataset` is what a verb calls before loading, to
download on first use when the user has said yes (`--download`, `$REDBLUE_DOWNLOAD`, or a prompt
on a terminal: the CLI decides, this module never asks and never prints).
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from redblue.data.catalog import DATASETS, SPLITS, ArchiveFile, ArchiveSpec, CatalogSpec, FileSpec, get_spec
from redblue.data.cifar import read_archive
from redblue.data.idx import read_verified
from redblue.data.roots import ENV_DATA_DIR, FoundFile, cache_root, find_file, locate, missing_message
from redblue.data.user import is_user_dataset
from redblue.errors import ConfigError, DataError, require_choice

ENV_DOWNLOAD = "REDBLUE_DOWNLOAD"  # "1": verbs download missing dataset files without asking
DOWNLOAD_FLAG = "--download"
DOWNLOAD_TIMEOUT_S = 10.0
_MAX_DOWNLOAD_BYTES = 64 * 2**20  # the largest IDX file (train images, gz) is about 30 MB


def _download_to(url: str, destination: Path, *, timeout: float, limit: int) -> None:
    """Stream `url` into `destination` (a fresh temporary file), at most `limit` bytes."""
    request = urllib.request.Request(url, headers={"User-Agent": "redblue"})
    with urllib.request.urlopen(request, timeout=timeout) as response, destination.open("wb") as handle:
        total = 0
        while chunk := response.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise DataError(f"{url} sends more than {limit} bytes; it is not the expected file")
            handle.write(chunk)


def _verify(spec: CatalogSpec, file_spec: FileSpec | ArchiveFile, path: Path, *, downloaded: bool) -> None:
    """Raise DataError unless the file verifies: an IDX file by its digests, a tarball by size, MD5 and content."""
    if isinstance(spec, ArchiveSpec):
        read_archive(spec, path, SPLITS, complete=True)
    else:
        assert isinstance(file_spec, FileSpec)
        read_verified(file_spec, path, gz=True if downloaded else None)


def _fetch_file(
    spec: CatalogSpec, file_spec: FileSpec | ArchiveFile, folder: Path, mirrors: Sequence[str], *, timeout: float
) -> tuple[Path, str]:
    """Download `file_spec.download_name` from the first mirror that serves a verified copy.

    Each attempt goes to a temporary file in `folder`, is verified there (a tarball: its MD5, then
    every member parsed), and only then renamed onto its final name, so the folder never holds a
    partial or unverified file. Returns (final path, url it came from).
    """
    dataset = spec.name
    final = folder / file_spec.download_name
    limit = file_spec.size if isinstance(file_spec, ArchiveFile) else _MAX_DOWNLOAD_BYTES
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + final.name
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _download_to(url, tmp, timeout=timeout, limit=limit)
            _verify(spec, file_spec, tmp, downloaded=True)
            os.replace(tmp, final)
            return final, url
        except DataError as exc:
            failures.append(f"{url}: {str(exc).replace(str(tmp), 'download')}")
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a malformed URL
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {dataset}/{final.name} ({'; '.join(failures)}); to work offline, "
        f"put the files ({', '.join(f.download_name for f in DATASETS[dataset].files)}) "
        f"in {folder}/ or in <dir>/{dataset}/ and pass --data-dir <dir> or set {ENV_DATA_DIR}"
    )


@dataclass(frozen=True)
class FetchedFile:
    dataset: str
    filename: str
    path: str
    action: str  # "present" (already there and verified) or "downloaded"
    url: str | None = None


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, outermost first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing[::-1]


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders a failed fetch created, innermost first, as long as they are empty."""
    for path in reversed(folders):
        try:
            path.rmdir()
        except OSError:  # not empty (a verified file stays), or gone: keep the rest too
            return


def fetch_dataset(
    name: str,
    *,
    target: str | os.PathLike[str] | None = None,
    splits: Sequence[str] = SPLITS,
    mirrors: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> list[FetchedFile]:
    """Make sure `<target>/<name>/` holds verified files of the splits, downloading what is missing.

    `target` (a root; files go to `<target>/<name>/`) defaults to the user cache; `mirrors`
    (base URLs, tried in order) default to the dataset's public mirrors. A file already there is
    kept if it verifies; a corrupt or unverified one is replaced. Stops at the first file no mirror
    serves; the files verified before it stay, and every folder it created and left empty is
    removed, so a failed fetch leaves nothing new but verified files.
    """
    if is_user_dataset(name):
        raise ConfigError(f"{name} is a user dataset (a path); only catalog datasets are downloaded: {', '.join(DATASETS)}")
    spec = get_spec(name)
    for split in splits:
        require_choice("split", split, SPLITS)
    root = Path(target).expanduser() if target is not None else cache_root()
    folder = root / name
    created = _missing_folders(folder)
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"cannot create {folder} ({exc.strerror or exc}); choose another place with --data-dir"
            ) from None
        if not os.access(folder, os.W_OK):
            raise DataError(f"cannot write to {folder}; choose another place with --data-dir")
        return _fetch_into(name, spec, root, splits, mirrors or spec.mirrors, timeout=timeout)
    except BaseException:  # Ctrl-C too: the temporary files are already gone, now the folders
        _remove_empty(created)
        raise


def _fetch_into(
    name: str, spec: CatalogSpec, root: Path, splits: Sequence[str], mirrors: Sequence[str], *, timeout: float
) -> list[FetchedFile]:
    folder = root / name
    results = []
    file_specs = [f for split in splits for f in spec.split_files(split)]
    for file_spec in dict.fromkeys(file_specs):  # a tarball holds both splits: fetch it once
        present = find_file(name, file_spec, [("target", root)])
        if present.path is not None:
            try:
                _verify(spec, file_spec, present.path, downloaded=False)
                results.append(FetchedFile(name, file_spec.filename, str(present.path), "present"))
                continue
            except DataError:
                pass  # a corrupt or unverified copy is replaced by a verified download
        path, url = _fetch_file(spec, file_spec, folder, mirrors, timeout=timeout)
        results.append(FetchedFile(name, file_spec.filename, str(path), "downloaded", url))
    return results


def ensure_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    allow_download: bool,
    splits: Sequence[str] = SPLITS,
    mirrors: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> list[FoundFile]:
    """Make sure every file of the splits is where `load_dataset` looks; download on first use.

    Files already found are not read here (`load_dataset` verifies what it loads). Missing files
    are downloaded, verified, into `data_dir`, or the user cache when no `data_dir` is given, if
    `allow_download`; otherwise one DataError line says where they were looked for and how to get
    them. The caller decides consent: True only on an explicit flag or variable, or a yes on a
    terminal; never by default in CI or tests. Returns where each file is found; nothing for a user
    dataset, which is a path and never downloaded.
    """
    if is_user_dataset(name):
        return []
    get_spec(name)
    for split in splits:
        require_choice("split", split, SPLITS)
    found = [f for split in splits for f in locate(name, split, data_dir=data_dir)]
    missing = [f.spec for f in found if f.path is None]
    if not missing:
        return found
    if not allow_download:
        raise DataError(
            f"{missing_message(name, missing, data_dir)}; or let this command download them "
            f"with {DOWNLOAD_FLAG} (or {ENV_DOWNLOAD}=1)"
        )
    missing_splits = [s for s in splits if any(f in missing for f in get_spec(name).split_files(s))]
    fetch_dataset(name, target=data_dir, splits=missing_splits, mirrors=mirrors, timeout=timeout)
    return [f for split in splits for f in locate(name, split, data_dir=data_dir)]
