"""`redblue arena CONFIG.toml`: play a blue roster against a red roster, then write results.json, report.md and report.html."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from redblue.cli.app import (
    DataDirOption,
    DeviceOption,
    JsonOption,
    ThreadsOption,
    app,
    apply_threads,
    print_json,
    resolve_device,
    set_interrupt_message,
)
from redblue.cli.publish import index_cell, index_run, indexed_if_it_fails, publish_run
from redblue.cli.sweep_progress import (
    ExecutorOption,
    PlainProgress,
    ResumeOption,
    WorkersOption,
    check_sweep_options,
    sweep_progress,
)
from redblue.cli.verbs_data import DownloadOption, require_dataset
from redblue.report import arena as _arena_page  # noqa: F401  (registers the arena's report page for `redblue report`)
from redblue.sweep import SweepProgress

DEFAULT_RUNS = Path("runs")


def describe_cell(record: dict[str, Any]) -> str:
    """One finished arena cell in a line."""
    kind, m = record["config"]["kind"], record["metrics"]
    if kind == "train":
        robust = m.get("val_robust_accuracy")
        extra = f", validation robust accuracy {robust:.4f}" if robust is not None else ""
        return f"trained {m['epochs']} epoch(s), train accuracy {m['final_train_accuracy']:.4f}{extra} ({m['train_seconds']:.1f} s)"
    if kind == "matrix":
        return f"robust accuracy {m['robust_accuracy']:.4f}, confidence {m['confidence']:.3f} ({m['attack_seconds']:.1f} s)"
    if kind == "clean":
        certified = ", ".join(f"{p['accuracy']:.3f}@{p['eps']:g}" for p in m["certified"] if p["accuracy"] is not None)
        return f"clean accuracy {m['clean_accuracy']:.4f}" + (f", certified {certified}" if certified else "")
    return f"{m['attacks']} worst case {m['worst_case_accuracy']:.4f} at eps {m['eps']:g} ({m['evaluate_seconds']:.1f} s)"


class _StagedProgress:
    """One progress display per stage (each stage is its own sweep); the run and each finished cell go into the index."""

    def __init__(self, folder: Path, *, enabled: bool) -> None:
        self._folder, self._enabled = folder, enabled
        self._display: Any = None
        self.indexed = False

    def stage(self, title: str, cells: int) -> None:
        self.close()
        self._display = sweep_progress(describe_cell, title=f"arena: {title}", enabled=self._enabled)
        if isinstance(self._display, PlainProgress):
            sys.stderr.write(f"arena: {title} ({cells} cells)\n")
        if not self.indexed:  # run.json and config.toml are written before the first stage
            index_run(self._folder)
            self.indexed = True

    def __call__(self, progress: SweepProgress) -> None:
        if self._display is not None:
            self._display(progress)
        if progress.event == "finished" and progress.record is not None:
            index_cell(self._folder, progress.record)

    def close(self) -> None:
        if self._display is not None:
            self._display.close()
            self._display = None


@app.command("arena")
def arena_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.toml", help="The arena file (see experiments/arena-quick.toml).")],
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Run folder; a rerun into it resumes. Default: RUNS_DIR/arena-<name>.")
    ] = None,
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Where the run folder goes without --out (its index.sqlite indexes it).")
    ] = DEFAULT_RUNS,
    executor: ExecutorOption = "local",
    workers: WorkersOption = None,
    resume: ResumeOption = False,
    force: Annotated[
        bool, typer.Option("--force", help="Reuse a run folder that holds another config, recomputing only the cells that changed.")
    ] = False,
    threads: ThreadsOption = "auto",
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Play an arena: train the blue roster, score it against every red attack and eps, play the rounds, rank the final models."""
    from redblue.arena import arena, load_arena

    check_sweep_options(executor, workers)
    apply_threads(threads)  # this process's own work (the cells run with one thread each)
    config = load_arena(config_path)
    run_device = resolve_device(device)
    require_dataset(config.dataset, data_dir=data_dir, download=download)
    folder = out if out is not None else runs_dir / f"arena-{config.name}"
    set_interrupt_message(
        f"interrupted; finished cells are kept in {folder}; rerun the same command (or add --resume) to continue"
    )
    progress = _StagedProgress(folder, enabled=not as_json)
    try:
        with indexed_if_it_fails(folder):
            result = arena(config, folder, executor=executor, workers=workers, data_dir=data_dir, device=run_device,
                           force=force, resume=resume, on_progress=progress, on_stage=progress.stage)
    finally:
        progress.close()
    paths = publish_run(result.folder, data_dir=data_dir)
    files = {"results": str(result.folder / "results.json"), "report": str(paths["markdown"]), "html": str(paths["html"])}
    if as_json:
        print_json({**result.results, "files": files})
        return
    score = result.results["scoreboard"]
    typer.echo(f"arena {config.name}: {result.computed} cells computed, {result.reused} reused; wall time {result.wall_seconds:.1f} s")
    for line in score["rounds"]:
        typer.echo(f"round {line['round']}: red's success {line['red_success_before']:.1%} -> {line['red_success_after']:.1%} "
                   f"after blue's fine-tuning; {'a draw' if line['winner'] == 'draw' else line['winner'] + ' wins'} "
                   f"({line['red_wins']} defense(s) to red, {line['blue_wins']} to blue)")
    typer.echo(f"winner: {score['winner']} ({score['ended']}); held: {', '.join(score['held']) or 'none'}")
    for row in result.results["leaderboard"]:
        typer.echo(f"#{row['rank']} {row['defense']}: {row['attacks']} worst case {row['worst_case_accuracy']:.2%} at eps "
                   f"{row['eps']:g}, clean {row['clean_accuracy']:.2%}"
                   + (f", certified {row['certified_accuracy']:.2%}" if row["certified_accuracy"] is not None else ""))
    typer.echo(f"wrote {files['report']}, {files['html']}, {files['results']}")
