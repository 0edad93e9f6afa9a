"""`redblue reproduce`: run the paper's experiment file and write report.md, results.json and the figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from redblue.cli.app import DataDirOption, DeviceOption, JsonOption, app, print_json, resolve_device, set_interrupt_message
from redblue.errors import ConfigError
from redblue.reproduce import PAPER_TOML, load_experiment, reproduce


def _progress_line(record: dict[str, Any], done: int, total: int) -> None:
    curve = {round(point["eps"], 6): point["accuracy"] for point in record["curve"]}
    fgsm_10 = curve.get(0.1)
    shown = f", FGSM(0.1) accuracy {fgsm_10:.4f}" if fgsm_10 is not None else ""
    sys.stderr.write(
        f"[{done}/{total}] {record['cell']}: clean accuracy {curve[0.0]:.4f}{shown} ({record['train_seconds']:.1f} s)\n"
    )
    sys.stderr.flush()


@app.command("reproduce")
def reproduce_command(
    profile: Annotated[str, typer.Option("--profile", help="quick (minutes; the README's main command) or full (the paper's protocol).")] = "quick",
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Run folder; a rerun into it resumes. Default: runs/reproduce-<profile>.")
    ] = None,
    seeds: Annotated[
        Optional[int], typer.Option("--seeds", help="Train every cell with N seeds and report mean ± std. Default: the file's.")
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option("--workers", help="Cells trained in parallel processes (one torch thread each). Default: the cores.")
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", help="Experiment file. Default: the packaged experiments/paper.toml.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Reuse a run folder that holds another config, retraining only the cells that changed.")
    ] = False,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Reproduce the paper: train the lambda grid, FGSM every model, write tables (paper | ours | difference) and figures."""
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    experiment = load_experiment(config or PAPER_TOML, profile=profile, seeds=seeds)
    run_device = resolve_device(device)
    folder = out if out is not None else Path("runs") / f"reproduce-{profile}"
    set_interrupt_message(f"interrupted; finished cells are kept in {folder} and the same command resumes from them")
    result = reproduce(
        experiment,
        folder,
        workers=workers,
        data_dir=data_dir,
        device=run_device,
        force=force,
        on_cell=None if as_json else _progress_line,
    )
    if as_json:
        print_json({**result.results, "files": result.files})
        return
    checks = result.results["checks"]
    passed = sum(1 for c in checks if c["passed"])
    judged = sum(1 for c in checks if c["passed"] is not None)
    typer.echo(
        f"reproduce ({profile}): {len(result.trained)} cells trained, {len(result.reused)} reused; "
        f"wall time {result.wall_seconds:.1f} s"
    )
    typer.echo(f"shape checks: {passed} of {judged} pass")
    typer.echo(f"wrote {result.files['report']}, {result.files['results']}, {result.files['figure1']}, {result.files['curves']}")
