"""Where dataset files are looked for: `--data-dir` alone when given; else $REDBLUE_DATA_DIR, then the cache."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from redblue.data.catalog import ArchiveFile, FileSpec, get_spec

ENV_DATA_DIR = "REDBLUE_DATA_DIR"
DATA_DIR_ORIGIN = "--data-dir"


def cache_root() -> Path:
    """The user cache root: `$XDG_CACHE_HOME/redblue`, or `~/.cache/redblue`."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: relative is ignored
    return base / "redblue"


def search_roots(data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """The roots searched, first first, each as (where it came from, path).

    An explicit `data_dir` is the only root: data found elsewhere would be used without a word
    while the user asked for this folder. Without one: $REDBLUE_DATA_DIR (if set), then the cache.
    """
    if data_dir is not None:
        return [(DATA_DIR_ORIGIN, Path(data_dir).expanduser())]
    roots: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_DATA_DIR, "")
    if env:
        roots.append((ENV_DATA_DIR, Path(env).expanduser()))
    roots.append(("cache", cache_root()))
    return roots


@dataclass(frozen=True)
class FoundFile:
    """Where one file of a dataset (an IDX file or a tarball) was found (path None: in none of the roots)."""

    spec: FileSpec | ArchiveFile
    path: Path | None
    origin: str | None  # "--data-dir", "REDBLUE_DATA_DIR" or "cache"


def find_file(dataset: str, spec: FileSpec | ArchiveFile, roots: Sequence[tuple[str, Path]]) -> FoundFile:
    """The first `<root>/<dataset>/<name>` in the roots' order, for each name the file may have (`spec.names`)."""
    for origin, root in roots:
        for filename in spec.names:
            path = root / dataset / filename
            if path.is_file():
                return FoundFile(spec, path, origin)
    return FoundFile(spec, None, None)


def locate(name: str, split: str | None = None, *, data_dir: str | os.PathLike[str] | None = None) -> list[FoundFile]:
    """Where each file of the dataset (of one split, or all) is found, without reading it."""
    spec = get_spec(name)
    files = spec.files if split is None else spec.split_files(split)
    roots = search_roots(data_dir)
    return [find_file(name, f, roots) for f in files]


def _place(dataset: str, origin: str, root: Path) -> str:
    state = "" if root.is_dir() else ", does not exist"
    return f"{root / dataset} ({origin}{state})"


def missing_message(
    dataset: str, missing: Sequence[FileSpec | ArchiveFile], data_dir: str | os.PathLike[str] | None = None
) -> str:
    """The one line that says which files are missing, where they were searched, and what to do."""
    names = ", ".join(f.download_name for f in missing)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return (
            f"{dataset} files not found in {_place(dataset, DATA_DIR_ORIGIN, root)}: {names}; "
            f"an explicit --data-dir is the only place searched; "
            f"run `redblue data fetch {dataset} --data-dir {shlex.quote(str(root))}`, "
            f"or put the files in {root / dataset}/"
        )
    places = ", ".join(_place(dataset, origin, root) for origin, root in search_roots())
    return (
        f"{dataset} files not found ({names}); searched {places}; "
        f"run `redblue data fetch {dataset}`, or put the files in <dir>/{dataset}/ "
        f"and pass --data-dir <dir> or set {ENV_DATA_DIR}"
    )
