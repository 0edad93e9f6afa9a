"""One cell of the paper's grid: train one (lambda1, lambda2, seed) model, score it on FGSM at every eps.

`run_cell(config)` is the cell function the sweep engine runs: a pure function of its
`CellConfig` (the data it loads is named by the config; where the files lie changes no number).
`run_cells(configs)` computes several cells that differ only in l1, l2 and seed at once: their
models are trained as one batched model (`redblue.train.grid.loop`, issue 11), which gives each model
the weights one-by-one training gives it (bit for bit on the CPU, tested), then each is scored as
`run_cell` scores it; `batch_key` tells the sweep engine which cells may share such a batch.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from redblue.attacks.core import check_eps, eval_mode, loss_and_input_gradient
from redblue.data import Dataset, get_spec, is_user_dataset, load_dataset
from redblue.errors import AttackError
from redblue.metrics import DEFAULT_BATCH, batches, correct_and_confidence
from redblue.models import MLPSpec, build_model, check_fits, save_model
from redblue.sweep import Artefact, CellOutput, cell_id, config_json
from redblue.sweep.executors import torch_threads
from redblue.train import TrainConfig, TrainResult, init_model, train
from redblue.train.grid.loop import grid_refusal, train_grid


@dataclass(frozen=True)
class CellConfig:
    """Everything one grid cell's numbers depend on; its sweep id is a hash of this.

    train: the experiment's training config with this cell's l1, l2 and seed. eps: FGSM with
    `clip` at each (0 is the clean test set); other_clip_eps: FGSM with the other clip setting.
    device: "cpu" or "cuda" (a seed gives the same numbers on one device type). threads: torch's
    thread count while the cell computes: on a CPU its numbers depend on it (sums split across
    threads round differently), so it is part of the cell's config, and of its id.
    """

    dataset: str
    model: MLPSpec
    train: TrainConfig
    clip: bool
    eps: tuple[float, ...]
    other_clip_eps: tuple[float, ...]
    device: str = "cpu"
    train_subset: int | None = None  # the first N training images; None: all
    test_subset: int | None = None  # the first N test images; None: all
    threads: int = 1

    @property
    def label(self) -> str:
        """The cell's name for people, e.g. l1-0.0001_l2-0_seed-0."""
        return f"l1-{self.train.l1:g}_l2-{self.train.l2:g}_seed-{self.train.seed}"


# --- data ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def loaded_split(dataset: str, split: str, data_dir: str | None) -> Dataset:
    """One whole split (images float32 in [0, 1] on the CPU, int64 labels, its shape and classes), loaded once per process."""
    return load_dataset(dataset, split, data_dir=data_dir)


def load_split(dataset: str, split: str, subset: int | None, data_dir: str | None) -> tuple[Tensor, Tensor]:
    """One split's first `subset` images (float32 in [0, 1], on the CPU) and int64 labels."""
    loaded = loaded_split(dataset, split, data_dir)
    return loaded.x[:subset], loaded.y[:subset]


# --- scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurvePoint:
    eps: float
    accuracy: float
    confidence: float

    def as_dict(self) -> dict[str, float]:
        return {"eps": self.eps, "accuracy": self.accuracy, "confidence": self.confidence}


@torch.no_grad()
def fgsm_scores(
    model: nn.Module, x: Tensor, y: Tensor, settings: Sequence[tuple[float, bool]], *, batch_size: int = DEFAULT_BATCH
) -> list[CurvePoint]:
    """Accuracy and confidence on FGSM images `x + eps * sign(grad_x CE)` for each (eps, clip) in `settings`.

    The same images as `redblue.attacks.fgsm(model, x, y, eps=eps, clip=clip)`: FGSM's gradient is
    taken at the clean x whatever eps is, so it is computed once per batch and reused for every
    setting. x: (N, C, H, W) in [0, 1]; y: (N,). The model runs in eval mode and is restored.
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


# --- one cell -----------------------------------------------------------------------------------


def train_cell(config: CellConfig, x_train: Tensor, y_train: Tensor) -> tuple[nn.Module, TrainResult]:
    """The cell's model, initialised from its seed and trained on (x_train, y_train) on its device."""
    device = torch.device(config.device)
    model = init_model(lambda: build_model(config.model), seed=config.train.seed).to(device)
    trained = train(model, x_train.to(device), y_train.to(device), config.train, progress=False)
    return model, trained


def score_cell(config: CellConfig, model: nn.Module, x_test: Tensor, y_test: Tensor) -> dict[str, Any]:
    """FGSM accuracy and confidence at each eps of the config: "curve" (its clip setting) and "other_clip_curve"."""
    device = torch.device(config.device)
    main = [(eps, config.clip) for eps in config.eps]
    other = [(eps, not config.clip) for eps in config.other_clip_eps]
    points = fgsm_scores(model, x_test.to(device), y_test.to(device), main + other)
    return {
        "curve": [point.as_dict() for point in points[: len(main)]],
        # the other clip setting at the table eps: shows which one the paper's numbers match
        "other_clip_curve": [point.as_dict() for point in points[len(main) :]],
    }


def run_cell(config: CellConfig, *, data_dir: str | None = None) -> CellOutput:
    """Train and score one cell; its metrics and its model (safetensors) for the run folder.

    data_dir: where the dataset lies (as `--data-dir`; None: $REDBLUE_DATA_DIR, then the cache).
    The metrics: cell, l1, l2, seed, n_train, n_test, train_seconds, eval_seconds, torch_threads,
    grid_members (1 here), history (one entry per epoch), curve and other_clip_curve (eps,
    accuracy, confidence).
    """
    train_set = loaded_split(config.dataset, "train", data_dir)
    check_fits(config.model, image_shape=train_set.image_shape, classes=train_set.n_classes, dataset=config.dataset)
    x_train, y_train = load_split(config.dataset, "train", config.train_subset, data_dir)
    x_test, y_test = load_split(config.dataset, "test", config.test_subset, data_dir)
    with torch_threads(config.threads):
        model, trained = train_cell(config, x_train, y_train)
        return _cell_output(config, model, trained.history, trained.seconds, len(y_train), x_test, y_test, members=1)


def batch_key(config: CellConfig) -> str | None:
    """The cells that may train as one batched model share this key (their config but for l1, l2 and
    seed); None when the grid trainer does not support the cell's training (it then runs alone)."""
    # a user dataset's size is known once it is read (it is then cached for the cells)
    if is_user_dataset(config.dataset):
        n_train = len(loaded_split(config.dataset, "train", None).y)
    else:
        n_train = get_spec(config.dataset).train[0].count
    n_samples = min(n_train, config.train_subset) if config.train_subset else n_train
    if grid_refusal(lambda: build_model(config.model), [config.train], n_samples=n_samples) is not None:
        return None
    neutral = dataclasses.replace(config, train=dataclasses.replace(config.train, l1=0.0, l2=0.0, seed=0))
    return cell_id(neutral)


def run_cells(configs: tuple[CellConfig, ...], *, data_dir: str | None = None) -> tuple[CellOutput, ...]:
    """Train the cells' models as one batched model, then score each as `run_cell` does; one output per config.

    configs: cells with one `batch_key` (else ConfigError, from the grid trainer). Each model is
    the one `run_cell` trains (same initial weights, data order, dropout masks and penalty; on the
    CPU the same bits), so its record is the one `run_cell` writes, but for the timings:
    train_seconds is its share of the batch's training wall time (the batch's divided by its
    members, so the sum over cells is the time spent) and grid_members the batch's size.
    """
    first = configs[0]
    x_train, y_train = load_split(first.dataset, "train", first.train_subset, data_dir)
    x_test, y_test = load_split(first.dataset, "test", first.test_subset, data_dir)
    device = torch.device(first.device)
    with torch_threads(first.threads):  # one batch_key: one thread count
        grid = train_grid(lambda: build_model(first.model), [c.train for c in configs], x_train.to(device), y_train.to(device))
        share = grid.seconds / len(configs)
        return tuple(
            _cell_output(config, model, result.history, share, len(y_train), x_test, y_test, members=len(configs))
            for config, model, result in zip(configs, grid.models, grid.results)
        )


def _cell_output(
    config: CellConfig,
    model: nn.Module,
    history: list[dict[str, Any]],
    train_seconds: float,
    n_train: int,
    x_test: Tensor,
    y_test: Tensor,
    *,
    members: int,
) -> CellOutput:
    """Score a trained model and package its metrics and its model file."""
    evaluation_started = time.perf_counter()
    scores = score_cell(config, model, x_test, y_test)
    metrics: dict[str, Any] = {
        "cell": config.label,
        "l1": config.train.l1,
        "l2": config.train.l2,
        "seed": config.train.seed,
        "n_train": n_train,
        "n_test": len(y_test),
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - evaluation_started,
        "torch_threads": torch.get_num_threads(),
        "grid_members": members,
        "history": history,
        **scores,
    }
    record = {"cell": config.label, "id": cell_id(config), "config": config_json(config), "history": history}
    return CellOutput(metrics=metrics, artefacts=(Artefact("models", ".safetensors", _model_bytes(model, config, record)),))


def _model_bytes(model: nn.Module, config: CellConfig, record: dict[str, Any]) -> bytes:
    """The model as `save_model` writes it (safetensors, with its spec and record), as bytes for the run folder."""
    with tempfile.TemporaryDirectory(prefix="redblue-cell-") as folder:
        path = Path(folder) / "model.safetensors"
        save_model(path, model, config.model, record=record)
        return path.read_bytes()
