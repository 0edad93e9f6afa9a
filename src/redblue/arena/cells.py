"""The arena's cells: each a frozen config (its id is a hash of it) and a pure function of it, run by the sweep engine.

* `TrainCell`: train a defense, red's surrogate, or fine-tune a model; its model is the cell's
  artefact (`models/<cell-id>.safetensors`). A fine-tune's config holds its parent's model key
  (a cell id), so ids chain from round to round.
* `MatrixCell`: one attack at one eps on one model state: robust accuracy, mean confidence and the
  per-sample fooled set (indices of test images the model got right and a verified adversarial
  image fooled), so a defense's worst case over attacks is the union of the sets.
* `CleanCell`: clean accuracy, the clean mistakes (indices) and certified accuracy at every eps.
* `LeaderboardCell`: `redblue.evaluate.evaluate` with a preset (standard) at the budget eps.

A model is named by its key: a cell id, `file-<sha256 prefix>` for a defense given as a file, or
`code-<sha256 prefix>` for one given as the user's code and weights (a copy of the weights that
names its code, `redblue.models.user.save_code_model`; its fine-tunes are saved the same way).
The cell functions get `models` (key -> path) and `data_dir` through `functools.partial`: where
files lie changes no number, so neither is part of a config.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from redblue.arena.config import RedSpec, red_attack
from redblue.attacks.core import eval_mode
from redblue.certify import certified_accuracy, choose_method
from redblue.data import Dataset, load_dataset
from redblue.errors import ConfigError
from redblue.evaluate import evaluate
from redblue.evaluate.verify import run_attack
from redblue.metrics import predict_logits
from redblue.models import build_model, fit_spec, load_model, save_model
from redblue.models.user import code_of, load_user_model, save_code_model
from redblue.sweep import Artefact, CellOutput
from redblue.train import TrainConfig, init_model, train


CODE_PREFIX = "code:"  # a TrainCell model that is the user's code, not a zoo spec


@dataclass(frozen=True)
class TrainCell:
    """role: "blue" (a defense), "surrogate" (red's model for a transfer attack) or "fine-tune"
    (blue's adversarial fine-tuning of `parent`, a model key, in round `round`)."""

    role: str
    name: str
    model: str  # the model spec as text (for a fine-tune: its parent's)
    train: TrainConfig
    dataset: str
    train_subset: int | None
    parent: str | None = None
    round: int = 0
    device: str = "cpu"
    kind: str = field(default="train", init=False)


@dataclass(frozen=True)
class MatrixCell:
    """One attack (`red`, its spec `attack`) at one eps on the model `model_key` of defense `defense` in round `round`."""

    defense: str
    model_key: str
    round: int
    red: str
    attack: str
    eps: float
    seed: int
    dataset: str
    test_subset: int | None
    surrogate: str | None = None  # the surrogate cell's id, for a transfer attack
    device: str = "cpu"
    kind: str = field(default="matrix", init=False)


@dataclass(frozen=True)
class CleanCell:
    """Clean scores and certified accuracy (at each eps, L-inf only) of one model state."""

    defense: str
    model_key: str
    round: int
    eps: tuple[float, ...]
    norm: str
    dataset: str
    test_subset: int | None
    device: str = "cpu"
    kind: str = field(default="clean", init=False)


@dataclass(frozen=True)
class LeaderboardCell:
    """The final model of a defense evaluated with `attacks` (a preset such as standard) at `eps`."""

    defense: str
    model_key: str
    round: int
    attacks: str
    eps: float
    norm: str
    seed: int
    dataset: str
    test_subset: int | None
    device: str = "cpu"
    kind: str = field(default="leaderboard", init=False)


ArenaCell = TrainCell | MatrixCell | CleanCell | LeaderboardCell


# --- data and models ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def loaded_split(dataset: str, split: str, data_dir: str | None) -> Dataset:
    """One whole split (float32 in [0, 1] on the CPU, int64 labels, its shape and classes), loaded once per process."""
    return load_dataset(dataset, split, data_dir=data_dir)


def load_split(dataset: str, split: str, subset: int | None, data_dir: str | None) -> tuple[Tensor, Tensor]:
    """One split's first `subset` images (float32 in [0, 1], CPU) and int64 labels."""
    loaded = loaded_split(dataset, split, data_dir)
    return loaded.x[:subset], loaded.y[:subset]


def model_file(models: dict[str, str], key: str) -> str:
    if key not in models:
        raise ConfigError(f"no model file for {key!r}; the run folder lost a model its cells need (rerun with a fresh --out)")
    return models[key]


def load_state(models: dict[str, str], key: str, device: str) -> nn.Module:
    path = model_file(models, key)
    code = code_of(path)
    if code is not None:  # the user's code (imported from the current folder) with these weights
        return load_user_model(code, path, device=device).model
    return load_model(path, device=device).model


def model_bytes(model: nn.Module, spec: Any, record: dict[str, Any]) -> bytes:
    """The model as `save_model` writes it (safetensors with its spec and record), or, when `spec` is the
    user's code (`code:MODULE:FACTORY`), as `save_code_model` does; as bytes for an artefact."""
    with tempfile.TemporaryDirectory(prefix="redblue-arena-") as folder:
        path = Path(folder) / "model.safetensors"
        if isinstance(spec, str) and spec.startswith(CODE_PREFIX):
            save_code_model(path, model, spec.removeprefix(CODE_PREFIX), record=record)
        else:
            save_model(path, model, spec, record=record)
        return path.read_bytes()


def indices(mask: Tensor) -> list[int]:
    """The positions where a bool mask (N,) is True, as a sorted list (JSON for a cell record)."""
    return mask.nonzero().flatten().tolist()


# --- the cell functions -------------------------------------------------------------------------


def run_train_cell(config: TrainCell, *, models: dict[str, str], data_dir: str | None) -> CellOutput:
    """Train (or fine-tune from `parent`) on the first `train_subset` training images; the model is the artefact."""
    x, y = load_split(config.dataset, "train", config.train_subset, data_dir)
    if config.model.startswith(CODE_PREFIX):  # the user's code: its shapes are its own
        spec: Any = config.model
    else:  # the roster names architectures (mlp:hidden=256); their input and classes follow the dataset
        train_set = loaded_split(config.dataset, "train", data_dir)
        spec = fit_spec(config.model, image_shape=train_set.image_shape, classes=train_set.n_classes, dataset=config.dataset)
    if config.parent is None:
        if isinstance(spec, str):
            raise ConfigError(f"train cell {config.name}: the user's code {config.model} is fine-tuned, never trained from scratch")
        model = init_model(lambda: build_model(spec), seed=config.train.seed).to(config.device)
    else:
        model = load_state(models, config.parent, config.device)
    trained = train(model, x.to(config.device), y.to(config.device), config.train, progress=False)
    last = trained.history[-1]
    kept = trained.history[(trained.kept_epoch or len(trained.history)) - 1]
    metrics = {
        "role": config.role,
        "name": config.name,
        "round": config.round,
        "parent": config.parent,
        "epochs": len(trained.history),
        "kept_epoch": trained.kept_epoch,
        "final_loss": last["loss"],
        "final_train_accuracy": last["accuracy"],
        "val_robust_accuracy": kept.get("val_robust_accuracy"),
        "train_seconds": trained.seconds,
        "history": trained.history,
    }
    record = {"arena_cell": config.name, "role": config.role, "round": config.round, **trained.record()}
    return CellOutput(metrics, (Artefact("models", ".safetensors", model_bytes(model, spec, record)),))


def run_matrix_cell(config: MatrixCell, *, models: dict[str, str], data_dir: str | None) -> CellOutput:
    """Attack every test image once; robust accuracy = correct on the clean image and on the verified adversarial one."""
    x, y = load_split(config.dataset, "test", config.test_subset, data_dir)
    x, y = x.to(config.device), y.to(config.device)
    model = load_state(models, config.model_key, config.device)
    entry, params = red_attack(RedSpec(config.red, config.attack), config.eps)
    if entry.threat == "transfer":
        if config.surrogate is None:
            raise ConfigError(f"matrix cell {config.red}: a transfer attack needs its surrogate cell")
        params = replace(params, surrogate=model_file(models, config.surrogate))
    started = time.perf_counter()
    with eval_mode(model):
        clean_correct = predict_logits(model, x).argmax(dim=1) == y
        run = run_attack(model, entry, params, x, y, generator=torch.Generator(x.device).manual_seed(config.seed))
    fooled = clean_correct & run.fooled
    n = len(y)
    n_robust, n_adv_correct, n_invalid = torch.stack(
        [(clean_correct & ~run.fooled).sum(), (run.predicted == y).sum(), (~run.valid).sum()]
    ).tolist()
    metrics = {
        "defense": config.defense,
        "round": config.round,
        "red": config.red,
        "eps": config.eps,
        "n": n,
        "robust_accuracy": n_robust / n,
        "adversarial_accuracy": n_adv_correct / n,
        "confidence": run.top_prob.double().mean().item(),
        "fooled": indices(fooled),
        "n_invalid": n_invalid,
        "attack_seconds": time.perf_counter() - started,
    }
    return CellOutput(metrics)


def run_clean_cell(config: CleanCell, *, models: dict[str, str], data_dir: str | None) -> CellOutput:
    """Clean accuracy and confidence, the clean mistakes, and certified accuracy at each eps (L-inf)."""
    x, y = load_split(config.dataset, "test", config.test_subset, data_dir)
    x, y = x.to(config.device), y.to(config.device)
    model = load_state(models, config.model_key, config.device)
    started = time.perf_counter()
    with eval_mode(model):
        top_prob, predicted = predict_logits(model, x).softmax(dim=1).max(dim=1)
    method = choose_method(model) if config.norm == "linf" else None
    certified = [
        {"eps": eps, "accuracy": certified_accuracy(model, x, y, eps=eps, method=method) if method else None}  # type: ignore[arg-type]
        for eps in config.eps
    ]
    metrics = {
        "defense": config.defense,
        "round": config.round,
        "n": len(y),
        "clean_accuracy": (predicted == y).double().mean().item(),
        "clean_confidence": top_prob.double().mean().item(),
        "clean_wrong": indices(predicted != y),
        "certified_method": method,
        "certified": certified,
        "certify_seconds": time.perf_counter() - started,
    }
    return CellOutput(metrics)


def run_leaderboard_cell(config: LeaderboardCell, *, models: dict[str, str], data_dir: str | None) -> CellOutput:
    """`evaluate` with the preset at the budget eps (worst case over its attacks, certified beside it)."""
    x, y = load_split(config.dataset, "test", config.test_subset, data_dir)
    x, y = x.to(config.device), y.to(config.device)
    model = load_state(models, config.model_key, config.device)
    result = evaluate(model, x, y, config.attacks, [config.eps], generator=torch.Generator(x.device).manual_seed(config.seed),
                      certify_method="auto" if config.norm == "linf" else None, checks=False)
    row = result.result(config.eps, config.norm)
    metrics = {
        "defense": config.defense,
        "round": config.round,
        "n": result.n,
        "eps": config.eps,
        "attacks": config.attacks,
        "clean_accuracy": result.clean_accuracy,
        "worst_case_accuracy": row.worst_case_accuracy,
        "worst_case_confidence": row.worst_case_confidence,
        "certified_accuracy": row.certified_accuracy,
        "certified_method": result.certify_method if row.certified_accuracy is not None else None,
        "per_attack": [{"label": a.label, "accuracy": a.accuracy} for a in row.attacks],
        "evaluate_seconds": result.seconds_attacks + result.seconds_certify,
    }
    return CellOutput(metrics)


def run_arena_cell(config: ArenaCell, *, models: dict[str, str], data_dir: str | None = None) -> CellOutput:
    """The sweep engine's cell function: dispatch on the config's kind."""
    if isinstance(config, TrainCell):
        return run_train_cell(config, models=models, data_dir=data_dir)
    if isinstance(config, MatrixCell):
        return run_matrix_cell(config, models=models, data_dir=data_dir)
    if isinstance(config, CleanCell):
        return run_clean_cell(config, models=models, data_dir=data_dir)
    if isinstance(config, LeaderboardCell):
        return run_leaderboard_cell(config, models=models, data_dir=data_dir)
    raise TypeError(f"not an arena cell: {type(config).__name__}")
