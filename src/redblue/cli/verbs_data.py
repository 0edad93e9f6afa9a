"""`redblue data info|verify|fetch`, and `require_dataset`: download on first use, for the verbs that load data."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from redblue import data
from redblue.cli.app import DataDirOption, JsonOption, app, print_json
from redblue.errors import DataError

data_app = typer.Typer(help="Datasets: where they are found, verify checksums, download.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_USER_HELP = (
    "or a user dataset by its path: an .npz or .safetensors file with x_train, y_train, x_test, y_test "
    "(or x, y for one split used as both), or an image folder with one subfolder per class (optionally "
    "inside train/ and test/); a name is a path when it contains a /, ends in .npz or .safetensors, or starts with file:"
)
NameArgument = Annotated[
    Optional[str],
    typer.Argument(help=f"Dataset: {', '.join(data.DATASETS)}, {_USER_HELP}. Default: the catalog (verify: what is found)."),
]

# For verbs that load a dataset: `download: DownloadOption = False`, then `require_dataset(...)`.
DownloadOption = Annotated[
    bool,
    typer.Option(
        data.DOWNLOAD_FLAG,
        help=f"Download missing dataset files (checksum-verified) without asking; also ${data.ENV_DOWNLOAD}=1. "
        "Without it, a terminal asks first; elsewhere a missing file is an error.",
    ),
]


def _env_consents() -> bool:
    return os.environ.get(data.ENV_DOWNLOAD, "").strip().lower() in ("1", "yes", "true")


def _may_ask() -> bool:
    """A person at a terminal who can answer: stdin and stderr are TTYs, and this is not CI."""
    return sys.stdin.isatty() and sys.stderr.isatty() and not os.environ.get("CI")


def require_dataset(
    name: str, *, data_dir: Path | None, download: bool = False, splits: tuple[str, ...] = data.SPLITS
) -> None:
    """Make sure the dataset's files are there before a verb loads them; download on first use.

    Consent to download: `--download`, or $REDBLUE_DOWNLOAD=1, or a yes to a question asked on a
    terminal (stdin and stderr TTYs, not CI). Without it a missing file is one error line that says
    how to fetch it. Files found are verified later, when they are loaded. A user dataset (a path)
    is never downloaded: loading it says what is wrong with it.
    """
    if data.is_user_dataset(name):
        return
    found = [f for split in splits for f in data.locate(name, split, data_dir=data_dir)]
    n_missing = sum(1 for f in found if f.path is None)
    if n_missing == 0:
        return
    allow = download or _env_consents()
    if not allow and _may_ask():
        target = Path(data_dir).expanduser() if data_dir is not None else data.cache_root()
        spec = data.get_spec(name)
        allow = typer.confirm(
            f"{name}: {n_missing} file(s) missing; download them (about {spec.download_mb} MB in all, "
            f"checksum-verified) into {target / name}?",
            default=False,
            err=True,
        )
    data.ensure_dataset(name, data_dir=data_dir, allow_download=allow, splits=splits)


def _how_to_point(data_dir: Path | None) -> str:
    cache = data.cache_root()
    if data_dir is not None:
        root = shlex.quote(str(Path(data_dir).expanduser()))
        return (
            f"with --data-dir only that root is searched; `redblue data fetch NAME --data-dir {root}` "
            f"downloads there; without --data-dir, ${data.ENV_DATA_DIR} and then {cache} are searched"
        )
    return (
        f"to use data from elsewhere, pass --data-dir DIR (with DIR/mnist/*.gz; then only DIR is searched) "
        f"or set {data.ENV_DATA_DIR}=DIR; `redblue data fetch NAME` downloads into {cache}"
    )


def _splits_text(info: data.DatasetInfo) -> str:
    if info.shared_split:
        return f"{info.splits['train']} images in one split, used as train and as test"
    return " / ".join(f"{count} {split}" for split, count in info.splits.items())


def _info_json(info: data.DatasetInfo) -> dict[str, object]:
    result: dict[str, object] = {
        "name": info.name, "kind": info.kind, "shape": list(info.image_shape), "n_classes": info.n_classes,
        "splits": info.splits,
    }
    if info.path is not None:
        result.update(path=info.path, classes=list(info.classes), shared_split=info.shared_split)
    else:
        files = [{"filename": f.spec.filename, "path": str(f.path) if f.path else None, "origin": f.origin}
                 for f in info.found]
        result.update(complete=all(f["path"] for f in files), files=files)
    return result


def _echo_info(info: data.DatasetInfo) -> None:
    classes = f"{info.n_classes} classes" + (f" ({', '.join(info.classes)})" if 0 < len(info.classes) <= 10 else "")
    summary = f"  {info.shape_text} images, {classes}, {_splits_text(info)}"
    if info.path is not None:
        typer.echo(f"{info.name}: {info.kind} dataset at {info.path}")
        typer.echo(summary)
        return
    n_found = sum(1 for f in info.found if f.path)
    typer.echo(f"{info.name}: {n_found}/{len(info.found)} files found")
    typer.echo(summary)
    for f in info.found:
        typer.echo(f"  {f.spec.filename}: " + (f"{f.path} ({f.origin})" if f.path else "missing"))


@data_app.command("info")
def info(name: NameArgument = None, data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Show each dataset's image shape (CxHxW), classes, splits and where its files are found (not read; a user dataset is read and checked)."""
    if name is not None and data.is_user_dataset(name):
        described = data.describe_dataset(name)
        if as_json:
            print_json({"datasets": [_info_json(described)]})
        else:
            _echo_info(described)
        return
    names = list(data.DATASETS) if name is None else [data.get_spec(name).name]
    roots = [
        {"origin": origin, "path": str(root), "exists": root.is_dir()} for origin, root in data.search_roots(data_dir)
    ]
    env_value = os.environ.get(data.ENV_DATA_DIR) or None
    described_all = [data.describe_dataset(n, data_dir=data_dir) for n in names]
    hint = _how_to_point(data_dir)
    if as_json:
        datasets = [_info_json(d) for d in described_all]
        print_json({"roots": roots, "env": {data.ENV_DATA_DIR: env_value}, "datasets": datasets, "hint": hint})
        return
    typer.echo("searched, in this order:")
    for root in roots:
        typer.echo(f"  {root['origin']}: {root['path']}" + ("" if root["exists"] else " (does not exist)"))
    if data_dir is None and env_value is None:
        typer.echo(f"  ({data.ENV_DATA_DIR} is not set)")
    for described in described_all:
        _echo_info(described)
    typer.echo(hint)


@data_app.command("verify")
def verify(name: NameArgument = None, data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Verify every file of a dataset: good, unverified, corrupt or missing (exit 2 unless all are good); a user dataset: every split loads."""
    if name is None:
        names = [n for n in data.DATASETS if any(f.path for f in data.locate(n, data_dir=data_dir))]
        if not names:
            raise DataError(data.missing_message("mnist", data.DATASETS["mnist"].files, data_dir))
    elif data.is_user_dataset(name):
        names = [name]
    else:
        names = [data.get_spec(name).name]
    statuses = [status for n in names for status in data.verify_dataset(n, data_dir=data_dir)]
    failed = [s for s in statuses if s.status != "good"]
    if as_json:
        print_json({"ok": not failed, "files": [dataclasses.asdict(s) for s in statuses]})
    else:
        for s in statuses:
            where = f"{s.path} ({s.origin})" if s.path else "not found"
            typer.echo(f"{s.status:10s} {s.dataset}/{s.filename}: {where}" + (f" [{s.check}]" if s.check else ""))
    if failed:
        counts = Counter(s.status for s in failed)
        summary = ", ".join(f"{counts[state]} {state}" for state in data.VERIFY_STATES if counts[state])
        first = failed[0]
        reason = first.message
        if reason is None:  # missing: say where it was looked for and how to fetch it
            spec = next(f for f in data.get_spec(first.dataset).files if f.filename == first.filename)
            reason = data.missing_message(first.dataset, [spec], data_dir)
        raise DataError(f"{len(failed)} of {len(statuses)} files are not good ({summary}); first: {reason}")


@data_app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help=f"Dataset: {', '.join(data.DATASETS)}.")] = "mnist",
    data_dir: Annotated[
        Optional[Path],
        typer.Option("--data-dir", help="Root to download into (files go to <root>/<name>/). Default: the user cache."),
    ] = None,
    mirror: Annotated[
        Optional[list[str]],
        typer.Option("--mirror", help="Base URL to download from instead of the public mirrors; repeat to add more."),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait on a mirror before the next.")] = (
        data.DOWNLOAD_TIMEOUT_S
    ),
    as_json: JsonOption = False,
) -> None:
    """Download a dataset's files from its public mirrors, verify them, and store them atomically."""
    target = data_dir if data_dir is not None else data.cache_root()
    fetched = data.fetch_dataset(name, target=target, mirrors=mirror or None, timeout=timeout)
    if as_json:
        print_json({"dataset": name, "target": str(Path(target) / name), "files": [dataclasses.asdict(f) for f in fetched]})
        return
    for f in fetched:
        typer.echo(f"{f.action:10s} {f.path}" + (f" from {f.url}" if f.url else ""))
