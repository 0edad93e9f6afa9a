"""An arena config as frozen dataclasses: the blue roster, the red roster, the budget, the eps list, the rounds.

An arena file (see `experiments/arena-quick.toml`) reads::

    name = "arena-quick"
    dataset = "mnist"
    seed = 0
    train_subset = 12000          # the first N training images (blue trains and fine-tunes on them)
    test_subset = 500             # the first N test images (every score is on them)
    eps = [0.05, 0.1]             # every eps the matrix scores; each <= budget.max_eps
    rounds = 3                    # 0: the matrix and the leaderboard only
    fine_tune_epochs = 1
    threshold = 0.5               # red wins a defense while it pushes robust accuracy below this
    leaderboard = "standard"      # the evaluate preset (or attack list) that ranks the final models

    [budget]
    norm = "linf"
    max_eps = 0.1
    knowledge = "white-box"       # white-box | black-box | transfer
    queries = 5000                # most queries a black-box attack may spend (restarts included)
    steps = 100                   # most iterations per restart (compute)
    restarts = 2                  # most runs per sample: restarts (APGD-T: x its target classes)

    [train]                       # training knobs shared by the blue roster (redblue.train.TrainConfig)
    batch_size = 128

    [[blue]]                      # a defense trained as a cell ...
    name = "mlp-pgd"
    model = "mlp:hidden=256"
    objective = "pgd:eps=0.1"
    l1 = 0.0
    epochs = 3

    [[blue]]                      # ... or an existing model file
    name = "mine"
    file = "models/mine.safetensors"

    [[blue]]                      # ... or your own model: code from the current folder (this runs it) + weights
    name = "resnet"
    code = "my_nets:resnet18"     # MODULE:FACTORY[:key=value,...], as `redblue evaluate --model-code`
    weights = "resnet18.safetensors"

    [[red]]
    name = "pgd"
    attack = "pgd:steps=40"       # an eps here runs the attack at that eps only

    [[red]]                       # transfer: crafted on a surrogate red trains itself (a cell)
    name = "transfer"
    attack = "transfer:attack=pgd/steps=40"
    surrogate = { model = "mlp:hidden=256", objective = "clean", epochs = 2 }

`load_arena` validates everything (unknown keys, attacks above the budget, a knowledge level that
forbids an attack, eps above max_eps) with one line per mistake (ConfigError).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redblue.attacks.core import check_eps
from redblue.attacks.registry import AttackEntry, get_attack, parse_attack
from redblue.attacks.transfer import parse_inner
from redblue.config import from_dict, read_toml, split_spec, to_dict
from redblue.data import get_spec, is_user_dataset
from redblue.defenses import ObjectiveParams, PGDObjective, parse_objective
from redblue.errors import ConfigError, require_in_range, require_non_negative
from redblue.evaluate.plan import PRESETS, attack_label
from redblue.models import parse_model, spec_text
from redblue.models.user import parse_model_code
from redblue.train.config import TrainConfig

ARENA_QUICK = Path(__file__).resolve().parent.parent / "experiments" / "arena-quick.toml"
KNOWLEDGE = ("white-box", "black-box", "transfer")
# the threats each knowledge level may use: white-box sees everything; black-box only queries
# (and may transfer); transfer only hands over images crafted on its own surrogate
ALLOWED_THREATS = {"white-box": ("white-box", "black-box", "transfer"), "black-box": ("black-box", "transfer"), "transfer": ("transfer",)}
STEP_FIELDS = ("steps", "n_iter", "max_iter", "iterations")
QUERY_FIELDS = ("n_queries",)
PER_DEFENSE_KEYS = ("model", "objective", "l1", "l2", "epochs", "seed")  # set per defense, not in [train]


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _require_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"{what} name {name!r} must be non-empty letters, digits, - _ . (it names files and rows)")


@dataclass(frozen=True)
class Budget:
    """What red may spend: the norm and largest eps, what it knows, and its compute (None: no limit)."""

    norm: str = "linf"
    max_eps: float = 0.1
    knowledge: str = "white-box"
    queries: int | None = None
    steps: int | None = None
    restarts: int | None = None

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"budget.norm must be linf or l2, got {self.norm!r}")
        check_eps(self.max_eps, self.norm)
        if self.max_eps <= 0:
            raise ConfigError(f"budget.max_eps must be > 0, got {self.max_eps}")
        if self.knowledge not in KNOWLEDGE:
            raise ConfigError(f"budget.knowledge must be one of {', '.join(KNOWLEDGE)}, got {self.knowledge!r}")
        for name in ("queries", "steps", "restarts"):
            if getattr(self, name) is not None:
                _require_int(f"budget.{name}", getattr(self, name), minimum=1)


@dataclass(frozen=True)
class SurrogateSpec:
    """The model red trains for a transfer attack (clean training unless told otherwise)."""

    model: str = "mlp"
    objective: str = "clean"
    epochs: int = 2
    l1: float = 0.0
    l2: float = 0.0


@dataclass(frozen=True)
class BlueSpec:
    """One defense: trained as a cell (model, objective, penalties, epochs), an existing model `file`, or the
    user's `code` (MODULE:FACTORY) with optional `weights` (a safetensors state_dict)."""

    name: str
    model: str = "mlp"
    objective: str = "clean"
    l1: float = 0.0
    l2: float = 0.0
    epochs: int = 2
    file: str | None = None
    code: str | None = None
    weights: str | None = None

    @property
    def given(self) -> bool:
        """Whether the defense is given (a file, or code), not trained by the arena."""
        return self.file is not None or self.code is not None

    def __post_init__(self) -> None:
        _require_name("blue", self.name)
        if self.file is not None and self.code is not None:
            raise ConfigError(f"blue {self.name}: give a model file or code, not both")
        if self.weights is not None and self.code is None:
            raise ConfigError(f"blue {self.name}: weights go with code = \"MODULE:FACTORY\"; a model file holds its own")
        if self.code is not None:
            parse_model_code(self.code)
        if not self.given:
            parse_model(self.model)
            parse_objective(self.objective)
            require_non_negative(f"blue {self.name}: l1", self.l1)
            require_non_negative(f"blue {self.name}: l2", self.l2)
            _require_int(f"blue {self.name}: epochs", self.epochs, minimum=1)


@dataclass(frozen=True)
class RedSpec:
    """One attack: a registry spec (`pgd:steps=40`); `surrogate` for a transfer attack."""

    name: str
    attack: str
    surrogate: SurrogateSpec | None = None

    def __post_init__(self) -> None:
        _require_name("red", self.name)


@dataclass(frozen=True)
class ArenaConfig:
    """One arena, validated: see the module docstring for the file it is read from."""

    name: str
    blue: tuple[BlueSpec, ...]
    red: tuple[RedSpec, ...]
    budget: Budget = field(default_factory=Budget)
    eps: tuple[float, ...] = (0.1,)
    dataset: str = "mnist"
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = 1000
    rounds: int = 0
    fine_tune_epochs: int = 1
    threshold: float = 0.5
    leaderboard: str = "standard"
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig knobs shared by the blue roster

    def __post_init__(self) -> None:
        _require_name("arena", self.name)
        if not is_user_dataset(self.dataset):  # a user dataset's path is read, and judged, when a cell loads it
            get_spec(self.dataset)
        _require_int("seed", self.seed, minimum=0)
        for key in ("train_subset", "test_subset"):
            if getattr(self, key) is not None:
                _require_int(key, getattr(self, key), minimum=1)
        _require_int("rounds", self.rounds, minimum=0)
        _require_int("fine_tune_epochs", self.fine_tune_epochs, minimum=1)
        require_in_range("threshold", self.threshold, 0.0, 1.0)
        if not self.blue:
            raise ConfigError("the arena has no [[blue]] defense; add at least one")
        if not self.red:
            raise ConfigError("the arena has no [[red]] attack; add at least one")
        for what, names in (("blue", [b.name for b in self.blue]), ("red", [r.name for r in self.red])):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(f"{what} name {twice[0]!r} is used twice; give every {what} entry its own name")
        if not self.eps:
            raise ConfigError("eps is empty; list at least the budget's max_eps")
        for eps in self.eps:
            check_eps(eps, self.budget.norm)
            if eps > self.budget.max_eps:
                raise ConfigError(f"eps {eps:g} is above the budget's max_eps {self.budget.max_eps:g}; "
                                  "remove it or raise budget.max_eps")
        for red in self.red:
            check_red(red, self.budget)
        for key in self.train:
            if key in PER_DEFENSE_KEYS:
                raise ConfigError(f"[train] sets {key!r}; set it per defense in [[blue]] (seed: the arena's seed)")
        if self.rounds and self.budget.norm != "linf":
            raise ConfigError("rounds need an linf budget: blue's adversarial fine-tuning objectives are L-inf; set rounds = 0")
        # every training this arena will run, built now: an unknown or bad knob is one line before any work
        for blue in self.blue:
            if not blue.given:
                self.train_config(epochs=blue.epochs, objective=parse_objective(blue.objective), l1=blue.l1, l2=blue.l2)
        for red in self.red:
            if red.surrogate is not None:
                self.train_config(epochs=red.surrogate.epochs, objective=parse_objective(red.surrogate.objective),
                                  l1=red.surrogate.l1, l2=red.surrogate.l2)
        if self.rounds:
            self.train_config(epochs=self.fine_tune_epochs, objective=PGDObjective(eps=self.budget.max_eps), eps_warmup_epochs=0.0)
        if self.leaderboard not in PRESETS:
            from redblue.evaluate.plan import parse_attack_list

            parse_attack_list(self.leaderboard, eps=self.budget.max_eps)

    @property
    def all_eps(self) -> tuple[float, ...]:
        """The eps list, sorted, with the budget's max_eps (the leaderboard's and the rounds' eps) in it."""
        return tuple(sorted({*self.eps, self.budget.max_eps}))

    def train_config(self, *, epochs: int, objective: ObjectiveParams, l1: float = 0.0, l2: float = 0.0,
                     seed: int | None = None, **overrides: Any) -> TrainConfig:
        """The shared [train] knobs with one defense's (or fine-tune's) own epochs, objective, penalties and seed."""
        data = {**self.train, **overrides, "epochs": epochs, "l1": l1, "l2": l2,
                "seed": self.seed if seed is None else seed}
        data["objective"] = to_dict(objective)
        return from_dict(TrainConfig, data, what="[train]")

    def red_spec(self, name: str) -> RedSpec:
        for red in self.red:
            if red.name == name:
                return red
        raise KeyError(name)

    def record(self) -> dict[str, Any]:
        """The config the run folder keeps (config.toml), given files named by their contents too."""
        data = to_dict(self)
        for blue, entry in zip(self.blue, data["blue"]):
            if blue.file is not None:
                entry["file_sha256"] = file_digest(blue.file)
            if blue.weights is not None:
                entry["weights_sha256"] = file_digest(blue.weights)
        return data


def red_attack(red: RedSpec, eps: float) -> tuple[AttackEntry, Any]:
    """The attack's entry and params at `eps` (a transfer attack gets a placeholder surrogate path)."""
    name, _ = split_spec(red.attack)
    entry = get_attack(name)
    fixed: dict[str, Any] = {"eps": eps}
    if entry.threat == "transfer":
        fixed["surrogate"] = "surrogate.safetensors"  # the cell fills in the trained surrogate's file
    return parse_attack(red.attack, **fixed)


def attack_eps(red: RedSpec, eps_list: tuple[float, ...]) -> tuple[float, ...]:
    """The eps the attack runs at: its own eps when its spec sets one, else every eps of the list."""
    _, values = split_spec(red.attack)
    if "eps" in values:
        return (float(values["eps"]),)
    return eps_list


def check_red(red: RedSpec, budget: Budget) -> None:
    """One line for an attack the budget forbids: norm, eps, knowledge, queries, steps, restarts."""
    name, values = split_spec(red.attack)
    entry = get_attack(name)
    if entry.norm != budget.norm:
        raise ConfigError(f"red {red.name}: attack {name!r} is {entry.norm} but the budget's norm is {budget.norm}")
    if "eps" in values:
        try:
            eps = float(values["eps"])
        except ValueError:
            raise ConfigError(f"red {red.name}: eps must be a number, got {values['eps']!r}") from None
        check_eps(eps, budget.norm)
        if eps > budget.max_eps:
            raise ConfigError(f"red {red.name}: attack {red.attack!r} is above the budget: eps {eps:g} > max_eps "
                              f"{budget.max_eps:g}; lower its eps or raise budget.max_eps")
    if "surrogate" in values:
        raise ConfigError(f"red {red.name}: red trains its own surrogate; give [red.surrogate] instead of surrogate=")
    if entry.threat not in ALLOWED_THREATS[budget.knowledge]:
        raise ConfigError(f"red {red.name}: {name} is a {entry.threat} attack, which {budget.knowledge} knowledge "
                          f"does not allow (allowed: {', '.join(ALLOWED_THREATS[budget.knowledge])})")
    if entry.threat == "transfer" and red.surrogate is None:
        raise ConfigError(f"red {red.name}: a transfer attack needs [red.surrogate] (model, objective, epochs) to train")
    if entry.threat != "transfer" and red.surrogate is not None:
        raise ConfigError(f"red {red.name}: only a transfer attack takes a surrogate; remove [red.surrogate]")
    if red.surrogate is not None:
        parse_model(red.surrogate.model)
        parse_objective(red.surrogate.objective)
        _require_int(f"red {red.name}: surrogate.epochs", red.surrogate.epochs, minimum=1)
    entry, params = red_attack(red, budget.max_eps)
    crafting = params
    if entry.threat == "transfer":
        _, crafting = parse_inner(params.attack, eps=params.eps, norm=entry.norm)
    _check_compute(red, crafting, budget)


def _check_compute(red: RedSpec, params: Any, budget: Budget) -> None:
    """Compute: iterations per run <= budget.steps; runs per sample (restarts, times APGD-T's target classes,
    each a full run) <= budget.restarts; queries (n_queries x restarts) <= budget.queries."""
    values = dataclasses.asdict(params)
    for key in STEP_FIELDS:
        if budget.steps is not None and key in values and values[key] > budget.steps:
            raise ConfigError(f"red {red.name}: {key}={values[key]} is above the budget's steps ({budget.steps}); "
                              "lower it or raise budget.steps")
    runs = values.get("restarts", 1) * values.get("n_target_classes", 1)
    if budget.restarts is not None and runs > budget.restarts:
        shown = f"restarts={values.get('restarts', 1)}" + (
            f" x n_target_classes={values['n_target_classes']}" if "n_target_classes" in values else "")
        raise ConfigError(f"red {red.name}: {shown} is above the budget's restarts ({budget.restarts}); "
                          "lower it or raise budget.restarts")
    if budget.queries is not None and any(key in values for key in QUERY_FIELDS):
        queries = next(values[key] for key in QUERY_FIELDS if key in values) * values.get("restarts", 1)
        if queries > budget.queries:
            raise ConfigError(f"red {red.name}: {queries} queries (n_queries x restarts) are above the budget's "
                              f"queries ({budget.queries}); lower n_queries or raise budget.queries")


def red_label(red: RedSpec) -> str:
    """The attack as people read it: `pgd:steps=40`; a transfer attack without its (run-time) surrogate path."""
    entry, params = red_attack(red, 0.0)
    name, _, values = attack_label(entry, params).partition(":")
    kept = [part for part in values.split(",") if part and not part.startswith("surrogate=")]
    return name + (":" + ",".join(kept) if kept else "")


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a model file, so a defense given as a file is named by its contents."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ConfigError(f"blue model file {path} does not exist; train one with `redblue train` or fix the path")
    return hashlib.sha256(resolved.read_bytes()).hexdigest()


def load_arena(path: str | os.PathLike[str]) -> ArenaConfig:
    """Read and validate an arena file; relative model `file` and `weights` paths are relative to the file's folder
    (a blue `code` module is imported from the current folder, as `redblue evaluate --model-code` does)."""
    path = Path(path)
    data = read_toml(path)
    if "name" not in data:
        data["name"] = path.stem
    blue = data.get("blue")
    if isinstance(blue, list):
        for entry in blue:
            for key in ("file", "weights"):
                if isinstance(entry, dict) and isinstance(entry.get(key), str):
                    file = Path(entry[key]).expanduser()
                    entry[key] = str(file if file.is_absolute() else (path.parent / file).resolve())
    if "train" in data and not isinstance(data["train"], dict):
        raise ConfigError(f"{path.name}: [train] must be a table of training knobs")
    return from_dict(ArenaConfig, data, what=path.name)


def model_text(spec_text_or_model: str) -> str:
    """A model spec in its canonical text (defaults left out), so equal models give equal cell ids."""
    return spec_text(parse_model(spec_text_or_model))
