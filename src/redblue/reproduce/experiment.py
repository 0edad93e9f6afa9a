"""The paper's experiment as data: the model, the training protocol, the grid, FGSM settings, expectations.

An experiment file (`experiments/paper.toml`) names the model, the training protocol, the
(lambda1, lambda2) grid, the FGSM settings, the ranges the report's shape checks hold a run to,
and named profiles that override any of them (`quick`, `full`). `load_experiment` resolves one
profile into a frozen `Experiment`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redblue.attacks.core import check_eps
from redblue.config import from_dict, read_toml, same, to_dict
from redblue.data import get_spec, is_user_dataset
from redblue.defenses import parse_objective
from redblue.errors import ConfigError, require_non_negative
from redblue.models import MLPSpec
from redblue.reproduce.paper import PAPER_FIGURE_EPS, PAPER_GRID, PAPER_TABLE3_EPS, PAPER_TABLE_EPS
from redblue.train import TrainConfig

PAPER_TOML = Path(__file__).resolve().parent.parent / "experiments" / "paper.toml"

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
class Expectations:
    """The ranges the report's shape checks hold a run's means to; they judge numbers and change none.

    Each (low, high) pair is inclusive. no_reg_fgsm: (eps, low, high) rows for the model without
    regularisation. l1_*: the three l1 = 1e-4 models. The defaults are the paper's shape for the
    full protocol; a profile that trains less sets its own (`[profiles.<name>.expect]`), and
    `basis` says where its ranges come from.
    """

    basis: str = ""
    clean_accuracy: tuple[float, ...] = (0.965, 0.987)
    no_reg_fgsm: tuple[tuple[float, ...], ...] = ((0.05, 0.70, 0.85), (0.075, 0.45, 0.62), (0.10, 0.20, 0.42), (0.25, 0.0, 0.03))
    l1_fgsm_10: tuple[float, ...] = (0.45, 0.70)
    l1_gain_10: float = 0.15  # at least this FGSM accuracy gain at eps 0.1 over no regularisation
    l1_clean_confidence: tuple[float, ...] = (0.95, 0.97)
    fgsm_25_below: float = 0.06  # every model's FGSM accuracy at eps 0.25 stays under this

    def __post_init__(self) -> None:
        for name in ("clean_accuracy", "l1_fgsm_10", "l1_clean_confidence"):
            _require_range(f"expect.{name}", getattr(self, name))
        for row in self.no_reg_fgsm:
            if len(row) != 3:
                raise ConfigError(f"expect.no_reg_fgsm rows are [eps, low, high], got {list(row)}")
            check_eps(row[0], "linf")
            _require_range("expect.no_reg_fgsm", row[1:])


def _require_range(name: str, pair: tuple[float, ...]) -> None:
    if len(pair) != 2 or not pair[0] <= pair[1]:
        raise ConfigError(f"{name} must be [low, high] with low <= high, got {list(pair)}")


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
    expect: Expectations = field(default_factory=Expectations)

    def __post_init__(self) -> None:
        if not is_user_dataset(self.dataset):
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
        """The config a run folder checks: everything that changes a number (the notes and expectations do not)."""
        data = to_dict(self)
        data.pop("notes")
        data.pop("expect")
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
