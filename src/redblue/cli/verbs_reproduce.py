"""`redblue reproduce`: run the paper's experiment file and write report.md, results.json and the figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from redblue.cli.app import (
    MAX_AUTO_THREADS,
    DataDirOption,
    DeviceOption,
    JsonOption,
    app,
    idle_cores,
    print_json,
    recorded_threads,
    resolve_device,
    resolve_threads,
    set_interrupt_message,
)
from redblue.cli.publish import indexed_if_it_fails, publish_run
from redblue.cli.sweep_progress import ExecutorOption, ResumeOption, WorkersOption, check_sweep_options, sweep_progress
from redblue.cli.verbs_data import DownloadOption, require_dataset
from redblue.errors import ConfigError
from redblue.reproduce import PAPER_TOML, load_experiment, reproduce
from redblue.runs.store import CONFIG_FILE
from redblue.sweep import default_workers

CellThreadsOption = Annotated[
    str,
    typer.Option("--threads", help="Torch threads per cell: 1 (the default: the same numbers under any load), a number, or "
                 "auto (the idle cores shared among the workers, at most 4 each). The numbers depend on it on a CPU: it is "
                 "recorded in the run folder, and a rerun with auto keeps the recorded count."),
]


def describe_cell(record: dict[str, Any]) -> str:
    """One finished cell in a line: clean and FGSM(0.1) accuracy, training time."""
    metrics = record["metrics"]
    curve = {round(point["eps"], 6): point["accuracy"] for point in metrics["curve"]}
    fgsm_10 = curve.get(0.1)
    shown = f", FGSM(0.1) accuracy {fgsm_10:.4f}" if fgsm_10 is not None else ""
    return f"clean accuracy {curve[0.0]:.4f}{shown} ({metrics['train_seconds']:.1f} s)"


def cell_threads(text: str, *, workers: int | None, folder: Path) -> int:
    """--threads as a count: a number as given; auto takes the count the run in `folder` recorded (so a
    rerun or resume under another load computes as the run it continues), else the idle cores shared
    among the workers."""
    if text != "auto":
        return resolve_threads(text)
    recorded = recorded_threads(folder / CONFIG_FILE)
    if recorded is not None:
        return recorded
    return max(1, min(idle_cores() // (workers or default_workers()), MAX_AUTO_THREADS))


def _wall_line(results: dict[str, Any], trained: int, reused: int) -> str:
    line = f"{trained} cells trained, {reused} reused; wall time {results['wall_seconds']:.1f} s"
    original = results.get("compute_wall_seconds")
    if reused and original is not None:
        line += f" (the run's cells took {original:.1f} s of wall time to compute)"
    return line


@app.command("reproduce")
def reproduce_command(
    profile: Annotated[str, typer.Option("--profile", help="quick (minutes; the README's main command) or full (the paper's protocol).")] = "quick",
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Run folder; a rerun into it resumes. Default: runs/reproduce-<profile>.")
    ] = None,
    seeds: Annotated[
        Optional[int], typer.Option("--seeds", help="Train every cell with N seeds and report mean ± std. Default: the file's.")
    ] = None,
    executor: ExecutorOption = "local",
    workers: WorkersOption = None,
    resume: ResumeOption = False,
    config: Annotated[
        Optional[Path], typer.Option("--config", help="Experiment file. Default: the packaged experiments/paper.toml.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Reuse a run folder that holds another config, retraining only the cells that changed.")
    ] = False,
    grid_size: Annotated[
        Optional[int], typer.Option("--grid-size", help="At most N models trained together as one batched model (the same "
                                    "numbers, faster); 1: one by one. Default: each worker's share of the grid.")
    ] = None,
    threads: CellThreadsOption = "1",
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Reproduce the paper: train the lambda grid, FGSM every model, write tables (paper | ours | difference) and figures."""
    from redblue.report.reproduce_files import write_reproduce_report  # matplotlib: only when the verb runs

    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if grid_size is not None and grid_size < 1:
        raise ConfigError(f"--grid-size must be >= 1, got {grid_size}")
    check_sweep_options(executor, workers)
    experiment = load_experiment(config or PAPER_TOML, profile=profile, seeds=seeds)
    require_dataset(experiment.dataset, data_dir=data_dir, download=download)
    run_device = resolve_device(device)
    folder = out if out is not None else Path("runs") / f"reproduce-{profile}"
    n_threads = cell_threads(threads, workers=workers, folder=folder)
    set_interrupt_message(
        f"interrupted; finished cells are kept in {folder}; rerun the same command (or add --resume) to continue"
    )
    progress = sweep_progress(describe_cell, title=f"reproduce ({profile})", enabled=not as_json)
    try:
        with indexed_if_it_fails(folder):
            result = reproduce(
                experiment,
                folder,
                executor=executor,
                workers=workers,
                data_dir=data_dir,
                device=run_device,
                force=force,
                resume=resume,
                grid_size=grid_size,
                threads=n_threads,
                on_progress=progress,
            )
    finally:
        if progress is not None:
            progress.close()
    write_reproduce_report(result.folder, result.results, result.figure)
    reports = publish_run(result.folder, data_dir=data_dir)
    if as_json:
        print_json({**result.results, "files": {**result.files, "html": str(reports["html"])}})
        return
    checks = result.results["checks"]
    passed = sum(1 for c in checks if c["passed"])
    judged = sum(1 for c in checks if c["passed"] is not None)
    typer.echo(f"reproduce ({profile}): {_wall_line(result.results, len(result.trained), len(result.reused))}")
    typer.echo(f"shape checks: {passed} of {judged} pass (the {profile} profile's expectations)")
    files = result.files
    typer.echo(f"wrote {reports['markdown']}, {reports['html']}, {files['results']}, {files['figure1']}, {files['curves']}")
