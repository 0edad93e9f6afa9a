"""The paper's experiment as data: train the (lambda1, lambda2) grid, FGSM every model, tabulate against the paper.

An experiment file (`experiments/paper.toml`) names the model, the training protocol, the grid,
the FGSM settings and named profiles that override them (`quick`, `full`). `reproduce` trains
every cell (one (lambda1, lambda2, seed)) in parallel processes, each writing its model and a
"done" record into the run folder (`store.RunFolder`) as it finishes, so a killed run resumes
where it stopped; then it scores every model on clean and FGSM test images at each eps, renders
Figure 1 and the curves, and writes `results.json` and `report.md`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from redblue.attacks.core import check_eps, eval_mode, loss_and_input_gradient
from redblue.config import from_dict, read_toml, to_dict
from redblue.data import get_spec, load_dataset
from redblue.defenses import parse_objective
from redblue.errors import AttackError, ConfigError, RedblueError, require_non_negative
from redblue.metrics import DEFAULT_BATCH, batches, correct_and_confidence
from redblue.models import MLPSpec, build_model, load_model, save_model
from redblue.report.paper_values import PAPER_FIGURE_EPS, PAPER_GRID, PAPER_TABLE3_EPS, PAPER_TABLE_EPS, same
from redblue.store import RunFolder, environment
from redblue.train import TrainConfig, init_model, train

log = logging.getLogger(__name__)

PAPER_TOML = Path(__file__).resolve().parent / "experiments" / "paper.toml"
CURVE_EPS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3)
PER_CELL_KEYS = ("l1", "l2", "seed")  # set per cell, never in [train]


@dataclass(frozen=True)
class GridConfig:
    """The penalty grid: every l1 with every l2."""

    l1: tuple[float, ...] = PAPER_GRID
    l2: tuple[float, ...] = PAPER_GRID

    def __post_init__(self) -> None:
        for name in ("l1", "l2"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"grid.{name} is empty; give at least one lambda, e.g. [0.0]")
            for value in values:
                require_non_negative(f"grid.{name}", value)


@dataclass(frozen=True)
class FGSMSettings:
    """The red team of the paper: FGSM at each eps of the curve; tables and Figure 1 pick from it."""

    clip: bool = True
    curve_eps: tuple[float, ...] = CURVE_EPS
    table_eps: tuple[float, ...] = PAPER_TABLE_EPS
    table3_eps: tuple[float, ...] = PAPER_TABLE3_EPS
    figure_eps: tuple[float, ...] = PAPER_FIGURE_EPS
    figure_digit: int = 7
    # also score the other clip setting at the tables' eps (cheap: the gradient is shared)
    compare_clip: bool = True

    def __post_init__(self) -> None:
        for value in self.all_eps:
            check_eps(value, "linf")
        if isinstance(self.figure_digit, bool) or not 0 <= self.figure_digit <= 9:
            raise ConfigError(f"fgsm.figure_digit must be a digit 0-9, got {self.figure_digit!r}")

    @property
    def all_eps(self) -> tuple[float, ...]:
        """Every eps any table, figure or curve needs, sorted, each once (0 is the clean set)."""
        merged: list[float] = []
        for value in sorted((0.0, *self.curve_eps, *self.table_eps, *self.table3_eps, *self.figure_eps)):
            if not merged or not same(merged[-1], value):
                merged.append(value)
        return tuple(merged)

    @property
    def other_clip_eps(self) -> tuple[float, ...]:
        """The eps at which the other clip setting is scored: the tables' adversarial eps, or none."""
        if not self.compare_clip:
            return ()
        return tuple(e for e in self.all_eps if e > 0 and any(same(e, t) for t in (*self.table_eps, *self.table3_eps)))


@dataclass(frozen=True)
class Notes:
    """Why the protocol, the hyperparameters and the clip setting are what they are (shown in the report)."""

    protocol: str = ""
    hyperparameters: str = ""
    clip: str = ""


@dataclass(frozen=True)
class Experiment:
    """One resolved experiment: the base file with one profile applied (see experiments/paper.toml)."""

    train: TrainConfig
    name: str = "paper"
    profile: str = "full"
    dataset: str = "mnist"
    seed: int = 0
    seeds: int = 1
    train_subset: int | None = None  # the first N training images; None: all
    test_subset: int | None = None  # the first N test images; None: all
    chosen_l1: float = 1e-4
    chosen_l2: float = 1e-4
    model: MLPSpec = field(default_factory=MLPSpec)
    grid: GridConfig = field(default_factory=GridConfig)
    fgsm: FGSMSettings = field(default_factory=FGSMSettings)
    notes: Notes = field(default_factory=Notes)

    def __post_init__(self) -> None:
        get_spec(self.dataset)  # unknown dataset: one line naming the valid ones
        _require_int("seed", self.seed, minimum=0)
        _require_int("seeds", self.seeds, minimum=1)
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name), minimum=1)
        require_non_negative("chosen_l1", self.chosen_l1)
        require_non_negative("chosen_l2", self.chosen_l2)

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.seeds))

    @property
    def chosen(self) -> tuple[float, float]:
        return (self.chosen_l1, self.chosen_l2)

    def record(self) -> dict[str, Any]:
        """The config a run folder checks: everything that changes a number (the notes do not)."""
        data = to_dict(self)
        data.pop("notes")
        for key in PER_CELL_KEYS:  # set per cell from the grid and the seeds
            data["train"].pop(key)
        return data


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_experiment(
    path: str | os.PathLike[str] | None = None, *, profile: str = "quick", seeds: int | None = None
) -> Experiment:
    """Read an experiment file and apply one of its `[profiles.<name>]` tables (and `seeds`, if given).

    `[train] objective` may be a spec string such as "fgsm:eps=0.1,alpha=0.5".
    """
    path = Path(path) if path is not None else PAPER_TOML
    data = read_toml(path)
    profiles = data.pop("profiles", {})
    if profile not in profiles:
        names = ", ".join(profiles) or "none defined"
        raise ConfigError(f"{path} has no profile {profile!r}; choose one of: {names}")
    data = _merge(data, profiles[profile])
    data["profile"] = profile
    if seeds is not None:
        data["seeds"] = seeds
    train_table = data.get("train")
    if not isinstance(train_table, dict):
        raise ConfigError(f"{path} has no [train] table; it needs at least `epochs`")
    given_per_cell = [key for key in PER_CELL_KEYS if key in train_table]
    if given_per_cell:
        raise ConfigError(
            f"{path}: [train] sets {', '.join(given_per_cell)}; lambdas belong in [grid], seeds in seed/seeds"
        )
    if isinstance(train_table.get("objective"), str):
        data["train"] = {**train_table, "objective": to_dict(parse_objective(train_table["objective"]))}
    return from_dict(Experiment, data, what=f"{path.name} (profile {profile})")


# --- cells ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One trained model of the grid."""

    l1: float
    l2: float
    seed: int

    @property
    def name(self) -> str:
        return f"l1-{self.l1:g}_l2-{self.l2:g}_seed-{self.seed}"


def grid_cells(experiment: Experiment) -> list[Cell]:
    """Every (l1, l2, seed) of the experiment, in grid order."""
    return [
        Cell(l1, l2, seed)
        for l1 in experiment.grid.l1
        for l2 in experiment.grid.l2
        for seed in experiment.seed_list
    ]


def cell_train_config(experiment: Experiment, cell: Cell) -> TrainConfig:
    return dataclasses.replace(experiment.train, l1=cell.l1, l2=cell.l2, seed=cell.seed)


def cell_config(experiment: Experiment, cell: Cell, device: torch.device) -> dict[str, Any]:
    """What one cell's numbers depend on, as JSON reads it back: a stored cell is reused only if this matches."""
    config = {
        "dataset": experiment.dataset,
        "train_subset": experiment.train_subset,
        "test_subset": experiment.test_subset,
        "model": dataclasses.asdict(experiment.model),
        "train": to_dict(cell_train_config(experiment, cell)),
        "fgsm": {
            "clip": experiment.fgsm.clip,
            "eps": list(experiment.fgsm.all_eps),
            "other_clip_eps": list(experiment.fgsm.other_clip_eps),
        },
        "device": device.type,
    }
    return json.loads(json.dumps(config))


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurvePoint:
    eps: float
    accuracy: float
    confidence: float


@torch.no_grad()
def fgsm_scores(
    model: nn.Module, x: Tensor, y: Tensor, settings: Sequence[tuple[float, bool]], *, batch_size: int = DEFAULT_BATCH
) -> list[CurvePoint]:
    """Accuracy and confidence on FGSM images `x + eps * sign(grad_x CE)` for each (eps, clip) in `settings`.

    The same images as `redblue.attacks.fgsm(model, x, y, eps=eps, clip=clip)`: FGSM's gradient is
    taken at the clean x whatever eps is, so it is computed once per batch and reused for every
    setting. x: (N, 1, 28, 28) in [0, 1]; y: (N,). The model runs in eval mode and is restored.
    """
    for eps, _ in settings:
        check_eps(eps, "linf")
    n_correct = torch.zeros(len(settings), dtype=torch.long, device=x.device)
    confidence_sum = torch.zeros(len(settings), dtype=torch.float64, device=x.device)
    grad_finite = torch.ones((), dtype=torch.bool, device=x.device)
    with eval_mode(model):
        for xb, yb in batches(x, y, size=batch_size):
            _, _, grad = loss_and_input_gradient(model, xb, yb, check_finite=False)
            grad_finite &= torch.isfinite(grad).all()
            direction = grad.sign()
            for i, (eps, clip) in enumerate(settings):
                x_adv = xb + eps * direction
                is_correct, top_prob = correct_and_confidence(model(x_adv.clamp(0.0, 1.0) if clip else x_adv), yb)
                n_correct[i] += is_correct.sum()
                confidence_sum[i] += top_prob.double().sum()
    if not bool(grad_finite):
        raise AttackError("the model's input gradient is NaN or infinite; check the model before attacking it")
    n = len(y)
    accuracy, confidence = (n_correct.double() / n).tolist(), (confidence_sum / n).tolist()
    return [CurvePoint(eps, acc, conf) for (eps, _), acc, conf in zip(settings, accuracy, confidence)]


def fgsm_curve(
    model: nn.Module, x: Tensor, y: Tensor, eps_values: Sequence[float], *, clip: bool, batch_size: int = DEFAULT_BATCH
) -> list[CurvePoint]:
    """`fgsm_scores` at each eps with one clip setting (eps 0: the clean test set)."""
    return fgsm_scores(model, x, y, [(eps, clip) for eps in eps_values], batch_size=batch_size)


# --- training cells (in this process or in worker processes) ----------------------------------


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs to train and score one cell (picklable)."""

    experiment: Experiment
    cell: Cell
    root: str
    device: str


@dataclass
class Data:
    """The experiment's images (float32 in [0, 1]) and int64 labels; the train split only when needed."""

    x_test: Tensor
    y_test: Tensor
    x_train: Tensor | None = None
    y_train: Tensor | None = None


def load_data(
    experiment: Experiment, *, data_dir: str | os.PathLike[str] | None, with_train: bool = True
) -> Data:
    """The experiment's test (and training) images, subset as it asks, on the CPU."""
    test_set = load_dataset(experiment.dataset, "test", data_dir=data_dir)
    data = Data(x_test=test_set.x[: experiment.test_subset], y_test=test_set.y[: experiment.test_subset])
    if with_train:
        train_set = load_dataset(experiment.dataset, "train", data_dir=data_dir)
        data.x_train, data.y_train = train_set.x[: experiment.train_subset], train_set.y[: experiment.train_subset]
    return data


def _pack(data: Data) -> dict[str, np.ndarray]:
    """Data as numpy arrays for a spawned worker: pixels back to their uint8 values (4x smaller to send).

    numpy, not tensors: multiprocessing would move tensors through shared memory, which a small
    /dev/shm (containers) cannot hold.
    """
    packed = {}
    for name in ("x_train", "x_test"):
        packed[name] = (getattr(data, name) * 255).round().to(torch.uint8).numpy()
    for name in ("y_train", "y_test"):
        packed[name] = getattr(data, name).numpy()
    return packed


def _unpack(packed: dict[str, np.ndarray]) -> Data:
    """The inverse of `_pack`, with the same float conversion as `redblue.data`, so the pixels are bit-identical."""
    images = {k: torch.from_numpy(np.divide(packed[k], np.float32(255), dtype=np.float32)) for k in ("x_train", "x_test")}
    return Data(
        x_train=images["x_train"], y_train=torch.from_numpy(packed["y_train"]),
        x_test=images["x_test"], y_test=torch.from_numpy(packed["y_test"]),
    )


def run_cell(job: CellJob, data: Data) -> dict[str, Any]:
    """Train one cell, save its model, score it on the FGSM curve, write its done record; return the record."""
    experiment, cell, device = job.experiment, job.cell, torch.device(job.device)
    folder = RunFolder(job.root)
    config = cell_train_config(experiment, cell)
    model = init_model(lambda: build_model(experiment.model), seed=cell.seed).to(device)
    assert data.x_train is not None and data.y_train is not None, "run_cell needs the training split"
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    trained = train(model, x_train, y_train, config, progress=False)
    evaluation_started = time.perf_counter()
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    settings = experiment.fgsm
    main = [(eps, settings.clip) for eps in settings.all_eps]
    other = [(eps, not settings.clip) for eps in settings.other_clip_eps]
    scores = fgsm_scores(model, x_test, y_test, main + other)
    record: dict[str, Any] = {
        "cell": cell.name,
        "l1": cell.l1,
        "l2": cell.l2,
        "seed": cell.seed,
        "config": cell_config(experiment, cell, device),
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "train_seconds": trained.seconds,
        "eval_seconds": time.perf_counter() - evaluation_started,
        "torch_threads": torch.get_num_threads(),
        "history": trained.history,
        "curve": [dataclasses.asdict(point) for point in scores[: len(main)]],
        # the other clip setting at the table eps: shows which one the paper's numbers match
        "other_clip_curve": [dataclasses.asdict(point) for point in scores[len(main) :]],
    }
    save_model(folder.model_path(cell.name), model, experiment.model, record={k: record[k] for k in ("cell", "config", "history")})
    folder.write_cell(cell.name, record)  # after the model: the JSON marks the cell done
    return record


_worker_data: Data | None = None


def _init_worker(packed: dict[str, np.ndarray]) -> None:
    """Worker start-up: one torch thread (the workers share the cores), SIGINT ends it quietly, data once."""
    global _worker_data
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    torch.set_num_threads(1)
    _worker_data = _unpack(packed)


def _run_cell_in_worker(job: CellJob) -> dict[str, Any]:
    assert _worker_data is not None, "the worker initializer did not run"
    return run_cell(job, _worker_data)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def train_cells(
    jobs: Sequence[CellJob],
    data: Data,
    *,
    workers: int,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run `jobs`, `workers` at a time in spawned processes (one torch thread each), or here when workers is 1.

    Every cell trains with one torch thread either way, so its numbers do not depend on `workers`.
    A CUDA device runs the cells one after another in this process.
    """
    records: list[dict[str, Any]] = []
    if not jobs:
        return records
    if workers <= 1 or len(jobs) == 1 or torch.device(jobs[0].device).type != "cpu":
        with _torch_threads(1):
            for job in jobs:
                records.append(run_cell(job, data))
                if on_cell is not None:
                    on_cell(records[-1])
        return records
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(_pack(data),),
    ) as pool:
        futures = [pool.submit(_run_cell_in_worker, job) for job in jobs]
        try:
            for future in as_completed(futures):
                records.append(future.result())
                if on_cell is not None:
                    on_cell(records[-1])
        except BrokenProcessPool:
            raise RedblueError(
                "a worker process ended abruptly (interrupted, or killed for memory); finished cells are kept, "
                "rerun the same command to resume (--workers 1 uses less memory)"
            ) from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return records


# --- aggregation ------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def _aggregate_curve(curves: list[list[dict[str, Any]]], eps_values: Sequence[float]) -> list[dict[str, Any]]:
    aggregated = []
    for i, eps in enumerate(eps_values):
        points = [curve[i] for curve in curves]
        assert all(same(p["eps"], eps) for p in points), "cell curves disagree on eps"
        aggregated.append(
            {
                "eps": eps,
                "accuracy": _stats([p["accuracy"] for p in points]),
                "confidence": _stats([p["confidence"] for p in points]),
            }
        )
    return aggregated


def aggregate(experiment: Experiment, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (l1, l2): accuracy and confidence at each eps as mean / std / values over seeds."""
    models = []
    for l1 in experiment.grid.l1:
        for l2 in experiment.grid.l2:
            mine = sorted((r for r in records if same(r["l1"], l1) and same(r["l2"], l2)), key=lambda r: r["seed"])
            models.append(
                {
                    "l1": l1,
                    "l2": l2,
                    "seeds": [r["seed"] for r in mine],
                    "train_seconds": _stats([r["train_seconds"] for r in mine]),
                    "curve": _aggregate_curve([r["curve"] for r in mine], experiment.fgsm.all_eps),
                    "other_clip": {
                        "clip": not experiment.fgsm.clip,
                        "curve": _aggregate_curve([r["other_clip_curve"] for r in mine], experiment.fgsm.other_clip_eps),
                    },
                }
            )
    return models


def model_value(models: Sequence[dict[str, Any]], l1: float, l2: float, metric: str, eps: float) -> dict[str, Any] | None:
    """The aggregated {mean, std, values} of one model's metric at eps, or None where not run."""
    for entry in models:
        if same(entry["l1"], l1) and same(entry["l2"], l2):
            for point in entry["curve"]:
                if same(point["eps"], eps):
                    return point[metric]
    return None


def select_by_fgsm_accuracy(models: Sequence[dict[str, Any]], eps: float) -> dict[str, Any] | None:
    """The paper's rule ("higher adversarial accuracy for eps = 0.10") applied to our numbers."""
    best = None
    for entry in models:
        value = model_value([entry], entry["l1"], entry["l2"], "accuracy", eps)
        if value is not None and (best is None or value["mean"] > best["accuracy"]):
            best = {"l1": entry["l1"], "l2": entry["l2"], "eps": eps, "accuracy": value["mean"]}
    return best


# --- Figure 1 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureOne:
    """The first test-set image of one digit under FGSM at each eps, with the model's prediction."""

    test_index: int
    label: int
    cell: str
    eps: tuple[float, ...]
    images: Tensor  # (len(eps), 28, 28) in [0, 1] (unclipped FGSM may leave it)
    predicted: tuple[int, ...]
    confidence: tuple[float, ...]


def figure_one(model: nn.Module, x_test: Tensor, y_test: Tensor, *, digit: int, eps_values: Sequence[float], clip: bool, cell: str) -> FigureOne:
    """FGSM images of the first test image labelled `digit` at each eps, with predicted label and confidence."""
    from redblue.attacks import fgsm

    matches = (y_test == digit).nonzero()
    if len(matches) == 0:
        raise ConfigError(f"the test set has no image of digit {digit}; set fgsm.figure_digit to another digit")
    index = int(matches[0, 0])
    x, y = x_test[index : index + 1], y_test[index : index + 1]
    images = torch.cat([fgsm(model, x, y, eps=eps, clip=clip) for eps in eps_values])
    with torch.no_grad(), eval_mode(model):
        top_prob, predicted = model(images).softmax(dim=1).max(dim=1)
    return FigureOne(
        test_index=index,
        label=digit,
        cell=cell,
        eps=tuple(eps_values),
        images=images[:, 0].cpu(),
        predicted=tuple(predicted.tolist()),
        confidence=tuple(top_prob.tolist()),
    )


# --- the whole experiment ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReproduceResult:
    results: dict[str, Any]
    files: dict[str, str]
    trained: tuple[str, ...]  # cells trained by this call
    reused: tuple[str, ...]  # cells found done in the run folder
    wall_seconds: float


def reproduce(
    experiment: Experiment,
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
    on_cell: Callable[[dict[str, Any], int, int], None] | None = None,
) -> ReproduceResult:
    """Run `experiment` into the folder `out`: train the missing cells, then write results.json, report.md, figures.

    A folder that holds another experiment's config is refused (ConfigError) unless `force`, which
    then retrains only the cells whose own config changed. on_cell(record, done, total) is called
    as each cell finishes (for progress lines).
    """
    from redblue.report.figures import save_curves_png, save_figure_one_png
    from redblue.report.markdown import render_markdown

    started = time.perf_counter()
    device = torch.device(device)
    folder = RunFolder(out)
    config = {**experiment.record(), "device": device.type}
    folder.prepare(config, force=force)
    cells = grid_cells(experiment)
    reused: dict[str, dict[str, Any]] = {}
    for cell in cells:
        record = folder.read_cell(cell.name)
        if record is not None and record.get("config") == cell_config(experiment, cell, device):
            reused[cell.name] = record
    jobs = [CellJob(experiment, cell, str(folder.root), str(device)) for cell in cells if cell.name not in reused]
    n_workers = max(1, min(workers or default_workers(), len(jobs) or 1))
    log.info("%s: %d of %d cells done before, %d to train with %d worker(s)", folder.root, len(reused), len(cells), len(jobs), n_workers)
    done = len(reused)

    def finished(record: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        if on_cell is not None:
            on_cell(record, done, len(cells))

    data = load_data(experiment, data_dir=data_dir, with_train=bool(jobs))
    trained_records = train_cells(jobs, data, workers=n_workers, on_cell=finished)
    by_name = {**reused, **{r["cell"]: r for r in trained_records}}
    records = [by_name[cell.name] for cell in cells]

    models = aggregate(experiment, records)
    figure_cell = _figure_cell(experiment, cells)
    loaded = load_model(folder.model_path(figure_cell.name), device=device)
    figure = figure_one(
        loaded.model,
        data.x_test.to(device),
        data.y_test.to(device),
        digit=experiment.fgsm.figure_digit,
        eps_values=experiment.fgsm.figure_eps,
        clip=experiment.fgsm.clip,
        cell=figure_cell.name,
    )
    files = {
        "report": "report.md",
        "results": "results.json",
        "figure1": "figure1.png",
        "curves": "curves.png",
        "config": "config.toml",
        "environment": "environment.json",
    }
    results = build_results(
        experiment,
        records,
        models,
        figure,
        trained=[r["cell"] for r in trained_records],
        reused=list(reused),
        workers=n_workers,
        device=device,
        files=files,
        wall_seconds=time.perf_counter() - started,
    )
    folder.write_json(files["environment"], environment(device=str(device), seeds=list(experiment.seed_list), workers=n_workers))
    save_figure_one_png(folder.root / files["figure1"], figure)
    save_curves_png(folder.root / files["curves"], results)
    results["wall_seconds"] = time.perf_counter() - started  # everything but writing the two text files
    folder.write_json(files["results"], results)
    folder.write_text(files["report"], render_markdown(results))
    return ReproduceResult(
        results=results,
        files={key: str(folder.root / name) for key, name in files.items()},
        trained=tuple(r["cell"] for r in trained_records),
        reused=tuple(reused),
        wall_seconds=results["wall_seconds"],
    )


def _figure_cell(experiment: Experiment, cells: Sequence[Cell]) -> Cell:
    """Figure 1 shows the chosen ("with regularization") model, first seed; else the first cell run."""
    for cell in cells:
        if same(cell.l1, experiment.chosen_l1) and same(cell.l2, experiment.chosen_l2):
            return cell
    return cells[0]


def build_results(
    experiment: Experiment,
    records: Sequence[dict[str, Any]],
    models: list[dict[str, Any]],
    figure: FigureOne,
    *,
    trained: list[str],
    reused: list[str],
    workers: int,
    device: torch.device,
    files: dict[str, str],
    wall_seconds: float,
) -> dict[str, Any]:
    """Every number of the run, as results.json holds it; the report and the plots read only this."""
    from redblue.report.tables import clip_comparison, comparison_tables, shape_checks

    table_eps = experiment.fgsm.table_eps[0] if experiment.fgsm.table_eps else 0.1
    results: dict[str, Any] = {
        "experiment": {**experiment.record(), "notes": to_dict(experiment.notes)},
        "profile": experiment.profile,
        "device": str(device),
        "workers": workers,
        "torch_threads_per_cell": 1,
        "wall_seconds": wall_seconds,
        "cells_trained": trained,
        "cells_reused": reused,
        "train_seconds_total": sum(r["train_seconds"] for r in records),
        "cells": [{k: v for k, v in r.items() if k != "config"} for r in records],
        "models": models,
        "selection": {
            "paper": {"l1": experiment.chosen_l1, "l2": experiment.chosen_l2},
            "ours": select_by_fgsm_accuracy(models, table_eps),
            "rule": f"highest FGSM accuracy at eps {table_eps:g} (the paper's rule)",
        },
        "figure1": {
            "cell": figure.cell,
            "test_index": figure.test_index,
            "label": figure.label,
            "panels": [
                {"eps": e, "predicted": p, "confidence": c}
                for e, p, c in zip(figure.eps, figure.predicted, figure.confidence)
            ],
        },
        "files": files,
        "environment": environment(device=str(device), seeds=list(experiment.seed_list), workers=workers),
    }
    results["tables"] = comparison_tables(results)
    results["checks"] = shape_checks(results)
    results["clip_comparison"] = clip_comparison(results)
    return results

