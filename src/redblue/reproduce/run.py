"""`reproduce`: the paper's experiment as cells on the sweep engine, then its numbers as one results dict.

Every (lambda1, lambda2, seed) of the grid is one sweep cell (`reproduce.cell.run_cell`); the
engine finds the cells a run folder already holds and computes the rest on the chosen executor,
writing each as it finishes, so a killed run resumes where it stopped. The pending cells of one
architecture are trained as one batched model per worker (`reproduce.cell.run_cells`: the same
models, about twice as fast on a CPU), each then written as its own cell. Then this module scores
Figure 1's digit, aggregates the cells over seeds and writes `results.json`, `environment.json`
and `run.json`. It returns values; `redblue.report` renders report.md and the PNGs from them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from redblue.config import same
from redblue.errors import ConfigError
from redblue.models import load_model
from redblue.reproduce.cell import CellConfig, batch_key, load_split, run_cell, run_cells
from redblue.reproduce.experiment import Experiment
from redblue.reproduce.results import FigureOne, build_results, figure_one
from redblue.runs.store import CONFIG_FILE, RunFolder, RunJournal, environment
from redblue.sweep import Batching, Cell, ProgressCallback, run_sweep
from redblue.sweep.executors import torch_threads

FILES = {
    "report": "report.md",
    "results": "results.json",
    "figure1": "figure1.png",
    "curves": "curves.png",
    "config": "config.toml",
    "environment": "environment.json",
    "run": "run.json",
}


@dataclass(frozen=True)
class ReproduceResult:
    """The run's results (what results.json holds), Figure 1's images, and what this call did."""

    results: dict[str, Any]
    figure: FigureOne
    folder: Path
    trained: tuple[str, ...]  # labels of the cells computed by this call
    reused: tuple[str, ...]  # labels of the cells found done in the run folder
    wall_seconds: float  # this call

    @property
    def files(self) -> dict[str, str]:
        return {key: str(self.folder / name) for key, name in FILES.items()}


def grid_cells(experiment: Experiment, device: torch.device, *, threads: int = 1) -> list[CellConfig]:
    """One CellConfig per (l1, l2, seed) of the experiment, in grid order, each computed with `threads` torch threads."""
    return [
        CellConfig(
            dataset=experiment.dataset,
            model=experiment.model,
            train=dataclasses.replace(experiment.train, l1=l1, l2=l2, seed=seed),
            clip=experiment.fgsm.clip,
            eps=experiment.fgsm.all_eps,
            other_clip_eps=experiment.fgsm.other_clip_eps,
            device=device.type,
            train_subset=experiment.train_subset,
            test_subset=experiment.test_subset,
            threads=threads,
        )
        for l1 in experiment.grid.l1
        for l2 in experiment.grid.l2
        for seed in experiment.seed_list
    ]


def reproduce(
    experiment: Experiment,
    out: str | os.PathLike[str],
    *,
    executor: str = "local",
    workers: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
    resume: bool = False,
    grid_size: int | None = None,
    threads: int = 1,
    on_progress: ProgressCallback | None = None,
) -> ReproduceResult:
    """Run `experiment` into the folder `out`: compute the missing cells, then write results.json.

    executor / workers: how the cells run (`redblue.sweep`). grid_size: at most this many models
    trained together as one batched model (1: one by one; None: a worker's share of the pending
    cells, all of them on one worker); it changes no number, only the speed and how much work a
    kill can lose (a batch is written when all its models are done). A folder that holds another
    experiment's config is refused (ConfigError) unless `force`, which then recomputes only the
    cells whose own config changed. resume: refuse a folder that holds no run to resume.
    threads: torch threads per cell, and for Figure 1 here (1 by default, whatever the load: on a CPU
    the numbers depend on it, so it is recorded in the folder's config and every cell's id).
    on_progress gets the sweep's progress (cells reused, started, finished).
    """
    started = time.perf_counter()
    device = torch.device(device)
    folder = RunFolder(out)
    if grid_size is not None and (isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1):
        raise ConfigError(f"grid_size must be an integer >= 1, got {grid_size!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    if resume and not (folder.root / CONFIG_FILE).is_file():
        raise ConfigError(f"{folder.root} holds no run to resume; run the same command without --resume to start it")
    folder.prepare({**experiment.record(), "device": device.type, "threads": threads}, force=force)
    journal = RunJournal(folder, kind="reproduce", name=f"{experiment.name}-{experiment.profile}", device=str(device),
                         executor=executor)
    try:
        result = _reproduce(experiment, folder, journal, started, executor=executor, workers=workers,
                            data_dir=data_dir, device=device, grid_size=grid_size, threads=threads, on_progress=on_progress)
    except BaseException as exc:
        journal.finish("failed", error=str(exc) or type(exc).__name__)
        raise
    journal.finish("done")
    return result


def _reproduce(
    experiment: Experiment,
    folder: RunFolder,
    journal: RunJournal,
    started: float,
    *,
    executor: str,
    workers: int | None,
    data_dir: str | os.PathLike[str] | None,
    device: torch.device,
    grid_size: int | None,
    threads: int,
    on_progress: ProgressCallback | None,
) -> ReproduceResult:
    configs = grid_cells(experiment, device, threads=threads)
    cells = [Cell(config, config.label) for config in configs]
    # absolute, since Ray workers do not run in this folder
    data_path = None if data_dir is None else str(Path(data_dir).resolve())
    # the test split first, here: a missing dataset fails before any worker starts, and Figure 1 needs it
    x_test, y_test = load_split(experiment.dataset, "test", experiment.test_subset, data_path)
    sweep = run_sweep(
        cells,
        functools.partial(run_cell, data_dir=data_path),
        folder,
        executor=executor,
        workers=workers,
        gpu=device.type == "cuda",
        on_progress=on_progress,
        journal=journal,
        batching=None if grid_size == 1 else Batching(
            key=batch_key, fn=functools.partial(run_cells, data_dir=data_path), max_size=grid_size
        ),
    )
    labels = {cell.id: cell.label for cell in cells}
    records = [{"id": record["id"], **record["metrics"]} for record in sweep.records]
    figure_cell = _figure_cell(experiment, cells)
    loaded = load_model(folder.model_path(figure_cell.id), device=device)
    with torch_threads(threads):
        figure = figure_one(
            loaded.model,
            x_test.to(device),
            y_test.to(device),
            digit=experiment.fgsm.figure_digit,
            eps_values=experiment.fgsm.figure_eps,
            clip=experiment.fgsm.clip,
            cell=figure_cell.label,
        )
    env = environment(device=str(device), seeds=list(experiment.seed_list), executor=sweep.executor, workers=sweep.workers)
    folder.write_json(FILES["environment"], env)
    wall_seconds = time.perf_counter() - started
    results = build_results(
        experiment,
        records,
        figure,
        trained=[labels[i] for i in sweep.computed],
        reused=[labels[i] for i in sweep.reused],
        executor=sweep.executor,
        workers=sweep.workers,
        device=device,
        threads=threads,
        files=dict(FILES),
        timing=_timing(journal, wall_seconds, computed=bool(sweep.computed)),
        environment=env,
    )
    folder.write_json(FILES["results"], results)
    return ReproduceResult(
        results=results,
        figure=figure,
        folder=folder.root,
        trained=tuple(results["cells_trained"]),
        reused=tuple(results["cells_reused"]),
        wall_seconds=wall_seconds,
    )


def _timing(journal: RunJournal, wall_seconds: float, *, computed: bool) -> dict[str, Any]:
    """This call's wall time, and the wall time of the calls that computed the cells (the run's own time).

    compute_wall_seconds: summed over every invocation of this folder that computed a cell (a
    killed one counts up to its last finished cell); None when the folder's cells were computed
    before run.json recorded invocations.
    """
    earlier = [entry for entry in journal.earlier_invocations if entry.get("computed")]
    spans = [float(entry.get("wall_seconds") or 0.0) for entry in earlier] + ([wall_seconds] if computed else [])
    return {
        "wall_seconds": wall_seconds,
        "compute_wall_seconds": sum(spans) if spans else None,
        "compute_invocations": len(spans),
        "invocations": len(journal.run["invocations"]),
    }


def _figure_cell(experiment: Experiment, cells: Sequence[Cell]) -> Cell:
    """Figure 1 shows the chosen ("with regularization") model, first seed; else the first cell run."""
    for cell in cells:
        train = cell.config.train
        if same(train.l1, experiment.chosen_l1) and same(train.l2, experiment.chosen_l2):
            return cell
    return cells[0]
