"""`arena`: play an arena config into a run folder, every piece of work a cell on the sweep engine.

Stages, each one sweep (`redblue.sweep.run_sweep`) into the same folder, so a killed run resumes
from every finished cell of every stage:

1. train: the blue defenses given as training specs, and red's surrogates for transfer attacks;
2. score round 0: every defense x attack x eps (`MatrixCell`), clean and certified (`CleanCell`);
3. round r = 1..N: red picks on each model; every defense red breaks is fine-tuned against red's
   pick (a `TrainCell` whose config names its parent's key), then the new models are scored as in 2;
   the game stops early when red breaks no defense;
4. leaderboard: each defense's final model evaluated with the preset (standard) at the budget eps.

Which cells a stage holds depends only on the records of the stages before, so a rerun asks for the
same cells and the engine finds them done. `arena` returns the results dict (results.json) and
writes run.json, config.toml, environment.json and results.json; rendering is `redblue.report`'s.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from redblue.arena.cells import CODE_PREFIX, CleanCell, LeaderboardCell, MatrixCell, TrainCell, run_arena_cell
from redblue.arena.config import ArenaConfig, BlueSpec, attack_eps, file_digest, model_text
from redblue.arena.game import Pick, fine_tune_objective, round_entry, strongest
from redblue.arena.results import build_results
from redblue.config import same
from redblue.defenses import parse_objective
from redblue.errors import ConfigError
from redblue.models import load_model, spec_text
from redblue.models.user import UserModel, load_user_model, save_code_model
from redblue.runs.store import CONFIG_FILE, RunFolder, RunJournal, environment
from redblue.sweep import Cell, ProgressCallback, SweepResult, run_sweep
from redblue.sweep.ray_executor import import_ray, start_ray

StageCallback = Callable[[str, int], None]  # (stage title, cells in it), before each stage's sweep


@dataclass(frozen=True)
class State:
    """One model of a defense: round 0 is the roster's model, round r the one fine-tuned in round r."""

    defense: str
    round: int
    key: str  # a cell id, file-<sha256 prefix> or code-<sha256 prefix>
    spec: str  # the model spec as text, or code:MODULE:FACTORY
    parent: str | None = None


@dataclass(frozen=True)
class ArenaResult:
    results: dict[str, Any]
    folder: Path
    computed: int  # cells computed by this call
    reused: int  # cells found done in the folder
    wall_seconds: float


@dataclass
class _Run:
    """What a running arena knows: the folder, how cells run, every record so far, the models by key."""

    config: ArenaConfig
    folder: RunFolder
    device: str
    executor: str
    workers: int | None
    data_dir: str | None
    journal: RunJournal
    on_progress: ProgressCallback | None
    on_stage: StageCallback | None
    models: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell id -> record
    given_code: dict[str, UserModel] = field(default_factory=dict)  # defense given as code -> its model and record
    computed: int = 0
    reused: int = 0
    executor_used: str = "local"
    workers_used: int = 1

    def sweep(self, title: str, cells: Sequence[Cell]) -> SweepResult:
        if self.on_stage is not None:
            self.on_stage(title, len(cells))
        fn = functools.partial(run_arena_cell, models=dict(self.models), data_dir=self.data_dir)
        result = run_sweep(cells, fn, self.folder, executor=self.executor, workers=self.workers,
                           gpu=self.device == "cuda", on_progress=self.on_progress, journal=self.journal)
        for record in result.records:
            self.records[record["id"]] = record
            if any(path.startswith("models/") for path in record.get("artefacts", [])):
                self.models[record["id"]] = str(self.folder.model_path(record["id"]).resolve())
        self.computed += len(result.computed)
        self.reused += len(result.reused)
        if result.computed:
            self.executor_used, self.workers_used = result.executor, result.workers
        return result


def arena(
    config: ArenaConfig,
    out: str | os.PathLike[str],
    *,
    executor: str = "local",
    workers: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    on_stage: StageCallback | None = None,
) -> ArenaResult:
    """Play `config` into the folder `out`; returns the results (also written to results.json).

    executor / workers: how cells run (`redblue.sweep`). A folder holding another config is refused
    unless `force`; resume: refuse a folder that holds no run. on_progress gets every sweep's
    progress; on_stage(title, cells) is called before each stage.
    """
    started = time.perf_counter()
    device = torch.device(device)
    # the user's code runs first: a module that fails to build is one line, with nothing written
    given_code = {blue.name: load_user_model(blue.code, blue.weights) for blue in config.blue if blue.code is not None}
    folder = RunFolder(out)
    if resume and not (folder.root / CONFIG_FILE).is_file():
        raise ConfigError(f"{folder.root} holds no run to resume; run the same command without --resume to start it")
    folder.prepare({**config.record(), "device": device.type}, force=force)
    journal = RunJournal(folder, kind="arena", name=config.name, device=str(device), executor=executor)
    run = _Run(config, folder, device.type, executor, workers,
               None if data_dir is None else str(Path(data_dir).resolve()), journal, on_progress, on_stage,
               given_code=given_code)
    owns_ray = False
    try:
        # Ray, when asked for, is started once for every stage (each stage is a sweep; each would start its own)
        owns_ray = executor == "ray" and start_ray(workers=workers)
        results = _play(run)
        for entry in results["blue"]:  # the code, the module file and the weights judged, with their SHA-256
            if entry["name"] in run.given_code:
                entry["model_code"] = run.given_code[entry["name"]].record
        env = environment(device=str(device), seeds=[config.seed], executor=run.executor_used, workers=run.workers_used)
        folder.write_json("environment.json", env)
        wall = time.perf_counter() - started
        results["environment"] = env
        results["invocation"] = {"computed": run.computed, "reused": run.reused, "wall_seconds": wall,
                                 "executor": run.executor_used, "workers": run.workers_used}
        folder.write_json("results.json", results)
    except BaseException as exc:
        journal.finish("failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        if owns_ray:
            import_ray().shutdown()
    journal.finish("done")
    return ArenaResult(results, folder.root, run.computed, run.reused, wall)


# --- the stages ---------------------------------------------------------------------------------


def _initial_states(run: _Run) -> dict[str, State]:
    """Stage 1: train the defenses given as specs and red's surrogates; the given files are read as they are."""
    config = run.config
    cells: list[Cell] = []
    states: dict[str, State] = {}
    for blue in config.blue:
        if blue.file is not None:
            key = f"file-{file_digest(blue.file)[:16]}"
            run.models[key] = str(Path(blue.file).resolve())
            states[blue.name] = State(blue.name, 0, key, spec_text(load_model(blue.file).spec))
            continue
        if blue.code is not None:
            states[blue.name] = _code_state(run, blue)
            continue
        train = config.train_config(epochs=blue.epochs, objective=parse_objective(blue.objective), l1=blue.l1, l2=blue.l2)
        cell = TrainCell("blue", blue.name, model_text(blue.model), train, config.dataset, config.train_subset, device=run.device)
        cells.append(Cell(cell, f"train {blue.name}"))
        states[blue.name] = State(blue.name, 0, cells[-1].id, cell.model)
    for red in config.red:
        if red.surrogate is not None:
            surrogate = red.surrogate
            train = config.train_config(epochs=surrogate.epochs, objective=parse_objective(surrogate.objective),
                                        l1=surrogate.l1, l2=surrogate.l2, seed=config.seed + 1)
            cell = TrainCell("surrogate", red.name, model_text(surrogate.model), train, config.dataset,
                             config.train_subset, device=run.device)
            cells.append(Cell(cell, f"surrogate for {red.name}"))
    if cells:
        run.sweep("train the blue roster and red's surrogates", cells)
    return states


def _code_state(run: _Run, blue: BlueSpec) -> State:
    """A defense given as the user's code and weights (built before the folder was touched), copied into
    models/ with its code named: the file every cell loads; keyed by the code, the module and the state."""
    user = run.given_code[blue.name]
    judged = user.record
    key = "code-" + hashlib.sha256(f"{judged['code']}|{judged['module_sha256']}|{judged['state_sha256']}".encode()).hexdigest()[:16]
    path = run.folder.model_path(key)
    if not path.is_file():
        save_code_model(path, user.model, judged["code"], record={"arena_defense": blue.name, "model_code": judged})
    run.models[key] = str(path.resolve())
    return State(blue.name, 0, key, CODE_PREFIX + judged["code"])


def _surrogates(run: _Run) -> dict[str, str]:
    """Red roster name -> its surrogate cell's id."""
    found = {}
    for record in run.records.values():
        if record["metrics"].get("role") == "surrogate":
            found[record["metrics"]["name"]] = record["id"]
    return found


def _score(run: _Run, title: str, states: Sequence[State]) -> None:
    """Every attack at every eps on each state, and its clean and certified scores (one sweep)."""
    config = run.config
    surrogates = _surrogates(run)
    cells: list[Cell] = []
    for state in states:
        cells.append(Cell(CleanCell(state.defense, state.key, state.round, config.all_eps, config.budget.norm,
                                    config.dataset, config.test_subset, run.device), f"clean {state.defense} r{state.round}"))
        for red in config.red:
            for eps in attack_eps(red, config.all_eps):
                matrix = MatrixCell(state.defense, state.key, state.round, red.name, red.attack, eps, config.seed,
                                    config.dataset, config.test_subset, surrogates.get(red.name), run.device)
                cells.append(Cell(matrix, f"{red.name} eps {eps:g} on {state.defense} r{state.round}"))
    run.sweep(title, cells)


def _picks(run: _Run, state: State) -> Pick:
    """Red's pick on a scored state, at the budget eps."""
    budget_eps = run.config.budget.max_eps
    accuracies = {
        r["metrics"]["red"]: r["metrics"]["robust_accuracy"]
        for r in run.records.values()
        if r["config"]["kind"] == "matrix" and r["config"]["model_key"] == state.key and same(r["metrics"]["eps"], budget_eps)
    }
    return strongest(accuracies, [red.name for red in run.config.red])


def _play(run: _Run) -> dict[str, Any]:
    config = run.config
    current = _initial_states(run)
    every_state = list(current.values())
    _score(run, "score round 0: every defense x attack x eps", every_state)
    initial = {name: _picks(run, state) for name, state in current.items()}
    rounds: list[list[dict[str, Any]]] = []
    eps = config.budget.max_eps
    for number in range(1, config.rounds + 1):
        picks = {name: _picks(run, state) for name, state in current.items()}
        broken = [name for name, pick in picks.items() if pick.accuracy < config.threshold]
        if not broken:
            break
        tune_cells: dict[str, Cell] = {}
        plans: dict[str, tuple[str, str]] = {}
        for name in broken:
            state = current[name]
            objective, why = fine_tune_objective(config.red_spec(picks[name].red).attack, eps)
            train = config.train_config(epochs=config.fine_tune_epochs, objective=objective, seed=config.seed + number,
                                        eps_warmup_epochs=0.0)
            cell = TrainCell("fine-tune", name, state.spec, train, config.dataset, config.train_subset,
                             parent=state.key, round=number, device=run.device)
            tune_cells[name] = Cell(cell, f"fine-tune {name} r{number}")
            plans[name] = (f"{objective.name}:eps={eps:g}", why)
        run.sweep(f"round {number}: blue fine-tunes {len(broken)} defense(s) against red's picks", list(tune_cells.values()))
        tuned = [State(name, number, tune_cells[name].id, current[name].spec, parent=current[name].key) for name in broken]
        _score(run, f"round {number}: score the fine-tuned models", tuned)
        every_state += tuned
        entries = []
        for name, pick in picks.items():
            if name in tune_cells:
                current[name] = next(s for s in tuned if s.defense == name)
                entries.append(round_entry(name, pick, _picks(run, current[name]), fine_tuned=True, threshold=config.threshold,
                                           objective=plans[name][0], why=plans[name][1], cell=tune_cells[name].id))
            else:
                entries.append(round_entry(name, pick, pick, fine_tuned=False, threshold=config.threshold))
        rounds.append(entries)
    final = {name: _picks(run, state) for name, state in current.items()}
    cells = [
        Cell(LeaderboardCell(state.defense, state.key, state.round, config.leaderboard, eps, config.budget.norm, config.seed,
                             config.dataset, config.test_subset, run.device), f"leaderboard {state.defense}")
        for state in current.values()
    ]
    run.sweep(f"leaderboard: {config.leaderboard} at eps {eps:g} on the final models", cells)
    return build_results(config, run.records, every_state, current, initial, final, rounds)
