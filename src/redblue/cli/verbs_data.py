"""`redblue data info|verify|fetch`: where the datasets are, whether they verify, and download them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from redblue import data
from redblue.cli.app import DataDirOption, JsonOption, app, print_json
from redblue.errors import DataError

data_app = typer.Typer(help="Datasets: where they are found, verify checksums, download.", no_args_is_help=True)
app.add_typer(data_app, name="data")

NameArgument = Annotated[
    Optional[str], typer.Argument(help=f"Dataset: {', '.join(data.DATASETS)}. Default: every dataset found.")
]


@data_app.command("info")
def info(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Show the roots searched and where each dataset file is found (without reading it)."""
    roots = [
        {"origin": origin, "path": str(root), "exists": root.is_dir()} for origin, root in data.search_roots(data_dir)
    ]
    datasets = []
    for name in data.DATASETS:
        files = [
            {"filename": f.spec.filename, "path": str(f.path) if f.path else None, "origin": f.origin}
            for f in data.locate(name, data_dir=data_dir)
        ]
        datasets.append({"name": name, "complete": all(f["path"] for f in files), "files": files})
    if as_json:
        print_json({"roots": roots, "datasets": datasets})
        return
    for root in roots:
        typer.echo(f"root {root['origin']}: {root['path']}" + ("" if root["exists"] else " (does not exist)"))
    for dataset in datasets:
        n_found = sum(1 for f in dataset["files"] if f["path"])
        typer.echo(f"{dataset['name']}: {n_found}/{len(dataset['files'])} files found")
        for f in dataset["files"]:
            typer.echo(f"  {f['filename']}: " + (f"{f['path']} ({f['origin']})" if f["path"] else "missing"))


@data_app.command("verify")
def verify(name: NameArgument = None, data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Verify the checksum and structure of every file of a dataset (exit 2 if one fails)."""
    if name is None:
        names = [n for n in data.DATASETS if any(f.path for f in data.locate(n, data_dir=data_dir))]
        if not names:
            raise DataError(data.missing_message("mnist", data.DATASETS["mnist"].files, data_dir))
    else:
        names = [data.get_spec(name).name]
    statuses = [status for n in names for status in data.verify_dataset(n, data_dir=data_dir)]
    failed = [s for s in statuses if s.status != "ok"]
    if as_json:
        print_json({"ok": not failed, "files": [dataclasses.asdict(s) for s in statuses]})
    else:
        for s in statuses:
            where = f"{s.path} ({s.origin})" if s.path else "not found"
            typer.echo(f"{s.status:8s} {s.dataset}/{s.filename}: {where}" + (f" [{s.check}]" if s.check else ""))
    if failed:
        first = failed[0]
        reason = first.message or f"{first.dataset}/{first.filename} is missing"
        raise DataError(f"{len(failed)} of {len(statuses)} files failed verification; first: {reason}")


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
