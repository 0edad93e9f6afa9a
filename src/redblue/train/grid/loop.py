"""Train a grid of models that differ only in l1, l2 and seed as one batched model (issue 11, item 3).

The paper's 3x3 (lambda1, lambda2) grid is nine copies of one MLP. `train_grid` trains them as
one stacked model (`redblue.train.grid.model`): each Linear layer of all members is one batched matmul.
Member m is trained exactly as `redblue.train.train` trains it alone:

- initial weights: `init_model(build, seed=seed_m)`;
- data order: a permutation per epoch from a CPU generator seeded with seed_m;
- dropout masks: drawn, layer after layer, from a generator seeded with seed_m + 2, with the
  same calls as `F.dropout` makes on torch's global generator (members that share a seed share
  their data order and masks, as they do when trained one by one, so those are drawn once);
- its own penalty gradient lambda1_m * sign(w) + 2 * lambda2_m * w, added to its own gradient;
- the same optimiser arithmetic (NewmuRMSprop or torch's RMSprop), member by member.

On the CPU every operation is the one the single-model loop runs, so a member's weights and
history equal one-by-one training's (bit for bit on torch 2.13 / MKL; the tests assert a stated
tolerance); on CUDA the dropout masks come from another random stream (the single-model loop's
fused dropout kernel takes no generator), so members agree within seed noise.

What it supports: an `nn.Sequential` of Linear, ReLU, Dropout and Flatten layers, the clean
objective, `rmsprop-newmu` or `rmsprop` at a constant learning rate, no validation split.
`grid_refusal` says why it does not support a grid (None when it does), so a caller can fall
back to training one by one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from redblue.defenses import weight_penalty
from redblue.errors import ConfigError
from redblue.train.data import check_training_data
from redblue.train.grid.model import StackedMLP, layer_plan
from redblue.train.grid.step import GridStep, SeedStreams, by_member, shared_inputs
from redblue.train.loop import TrainConfig, TrainResult, init_model

log = logging.getLogger(__name__)

GRID_KEYS = ("l1", "l2", "seed")  # what may differ between members
OPTIMIZERS = ("rmsprop-newmu", "rmsprop")
PROGRESS_EVERY = 20  # batches between progress reports (they read no tensor)
CPU_BLOCK_ELEMENTS = 1 << 19  # 2 MiB of float32: a whole member of the paper MLP (blocks of 32K-512K measured within 12%, fewer calls won)
# TrainConfig knobs reproduced here, and the values accepted for the loop's other knobs (its
# neutral settings); a knob in neither list (a newer loop's) makes the grid refuse.
HANDLED = {"epochs", "batch_size", "lr", "rho", "rms_eps", "l1", "l2", "penalize_bias", "objective", "seed", "optimizer"}
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "momentum": (None, 0.0),
    "nesterov": (None, False),
    "weight_decay": (None, 0.0),
    "schedule": (None, "constant"),
    "warmup_epochs": (None, 0.0),
    "eps_warmup_epochs": (None, 0.0),
    "clean_epochs": (None, 0.0),
    "grad_clip": (None,),
    "val_size": (None, 0),
    "keep": (None, "last"),
    "overfit_guard": (None, False),
    "weight_average": (None,),
    "augment": (None,),
}


@dataclass(frozen=True)
class GridProgress:
    """A progress report: `batch` of `batches` done in `epoch`; phase "epoch": the epoch is done and
    `rows` holds each member's history entry."""

    phase: Literal["batch", "epoch"]
    epoch: int
    epochs: int
    batch: int
    batches: int
    rows: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class GridResult:
    """One trained model (eval mode, on the data's device) and one TrainResult per member, in the
    order of the configs. Each TrainResult's `seconds` is the whole grid's training wall time."""

    models: list[nn.Module]
    results: list[TrainResult]
    seconds: float


def _neutral(name: str, value: Any) -> bool:
    return getattr(value, "name", value) in NEUTRAL[name]


def config_refusal(configs: Sequence[TrainConfig], *, n_samples: int) -> str | None:
    """Why these training configs cannot train as one grid (one line), or None."""
    if not configs:
        return "a grid needs at least one member"
    first = configs[0]
    for config in configs[1:]:
        differing = [
            f.name for f in dataclasses.fields(first) if f.name not in GRID_KEYS and getattr(first, f.name) != getattr(config, f.name)
        ]
        if differing:
            return f"the members differ in {', '.join(differing)}; a grid's members may differ only in l1, l2 and seed"
    if first.objective.name != "clean":
        return f"grid training supports the clean objective, not {first.objective.name!r}"
    resolved = first.resolved(n_samples)
    optimizer = resolved.optimizer_name
    if optimizer not in OPTIMIZERS:
        return f"grid training supports the optimizers {', '.join(OPTIMIZERS)}, not {optimizer!r}"
    for f in dataclasses.fields(resolved):
        if f.name in HANDLED:
            continue
        value = getattr(resolved, f.name)
        if f.name not in NEUTRAL:
            return f"grid training does not know the training knob {f.name!r}"
        if not _neutral(f.name, value):
            return f"grid training does not support {f.name}={getattr(value, 'name', value)!r}"
    return None


def grid_refusal(build: Callable[[], nn.Module], configs: Sequence[TrainConfig], *, n_samples: int = 60000) -> str | None:
    """Why `train_grid(build, configs, ...)` would refuse (one line), or None when it trains them as one grid.

    n_samples: the training-set size (some loops resolve defaults against it).
    """
    reason = config_refusal(configs, n_samples=n_samples)
    if reason is not None:
        return reason
    plan = layer_plan(init_model(build, seed=configs[0].seed))
    return plan if isinstance(plan, str) else None


def supports(build: Callable[[], nn.Module], configs: Sequence[TrainConfig], *, n_samples: int = 60000) -> bool:
    """Whether `train_grid` trains these members as one grid (else train them one by one)."""
    return grid_refusal(build, configs, n_samples=n_samples) is None


def train_grid(
    build: Callable[[], nn.Module],
    configs: Sequence[TrainConfig],
    x: Tensor,
    y: Tensor,
    *,
    progress: Callable[[GridProgress], None] | None = None,
    block_elements: int | None | Literal["auto"] = "auto",
) -> GridResult:
    """Train one model per config, all at once; member m gets the model `train(init_model(build,
    seed=configs[m].seed), x, y, configs[m])` would give (see the module docstring).

    build: makes the (untrained) architecture, e.g. `lambda: build_model(spec)`; configs: one
    TrainConfig per member, equal but for l1, l2 and seed (else ConfigError with the reason, see
    `grid_refusal`). x: (N, C, H, W) pixels in [0, 1]; y: (N,) int64 labels; the models are
    trained on x's device. progress: called every PROGRESS_EVERY batches and after each epoch;
    it reads no tensor, so it costs no device sync. block_elements: the weight gradient and its
    update run member by member, in blocks of rows of about this many elements; None: the whole
    stack at once (fewest kernel launches, the per-member lambdas as tensors); "auto": CPU_BLOCK_ELEMENTS on a CPU, None on CUDA.
    """
    check_training_data(x, y)
    reason = config_refusal(configs, n_samples=len(x))
    if reason is not None:
        raise ConfigError(f"{reason}; train these models one by one (redblue.train.train)")
    configs = [c.resolved(len(x)) for c in configs]
    device = x.device
    models = [init_model(build, seed=c.seed).to(device) for c in configs]
    plan = layer_plan(models[0])
    if isinstance(plan, str):
        raise ConfigError(f"{plan}; train these models one by one (redblue.train.train)")
    stack = StackedMLP.from_models(models, device=device)
    prefix = stack.plan[: stack.first_linear()]
    flattened = any(layer.kind == "flatten" for layer in prefix)
    features = x[0].numel() if flattened else x.shape[-1]
    if (x.dim() != 2 and not flattened) or features != stack.in_features():
        raise ConfigError(
            f"the model's first Linear layer takes {stack.in_features()} features but x has shape {tuple(x.shape)}; "
            "pass matching data (or a model that flattens it)"
        )
    if block_elements == "auto":
        block_elements = CPU_BLOCK_ELEMENTS if device.type == "cpu" else None
    step = GridStep(stack, configs, newmu=configs[0].optimizer_name == "rmsprop-newmu", block_elements=block_elements)
    seeds = sorted({c.seed for c in configs})
    streams = [SeedStreams(seed, device) for seed in seeds]
    member_group = torch.tensor([seeds.index(c.seed) for c in configs], device=device)
    first = configs[0]
    n, members = len(x), len(configs)
    n_batches = -(-n // first.batch_size)
    histories: list[list[dict[str, Any]]] = [[] for _ in configs]
    started = time.perf_counter()
    for epoch in range(1, first.epochs + 1):
        epoch_started = time.perf_counter()
        orders = [torch.randperm(n, generator=s.shuffle).to(device) for s in streams]
        loss_sum = torch.zeros(members, dtype=torch.float64, device=device)
        n_correct = torch.zeros(members, dtype=torch.long, device=device)
        for batch in range(n_batches):
            window = slice(batch * first.batch_size, (batch + 1) * first.batch_size)
            indices = [order[window] for order in orders]
            inputs = by_member(
                [shared_inputs(x, index, prefix, s) for index, s in zip(indices, streams)], member_group, len(streams)
            )
            labels = by_member([y[index] for index in indices], member_group, len(streams))
            loss, logits = step(inputs, labels, streams, member_group)
            loss_sum += loss * labels.shape[1]
            n_correct += (logits.argmax(dim=2) == labels).sum(dim=1)
            if progress is not None and (batch + 1) % PROGRESS_EVERY == 0:
                progress(GridProgress("batch", epoch, first.epochs, batch + 1, n_batches))
        rows = _epoch_rows(stack, models, configs, epoch, loss_sum, n_correct, n, time.perf_counter() - epoch_started)
        for history, row in zip(histories, rows):
            history.append(row)
        log.info("grid epoch %d/%d: loss %s", epoch, first.epochs, ", ".join(f"{r['loss']:.4f}" for r in rows))
        if progress is not None:
            progress(GridProgress("epoch", epoch, first.epochs, n_batches, n_batches, tuple(rows)))
    seconds = time.perf_counter() - started
    stack.write_to(models)
    for model in models:
        model.eval()
    results = [TrainResult(history=h, seconds=seconds, config=c, kept_epoch=first.epochs) for h, c in zip(histories, configs)]
    return GridResult(models=models, results=results, seconds=seconds)


def _epoch_rows(
    stack: StackedMLP,
    models: list[nn.Module],
    configs: Sequence[TrainConfig],
    epoch: int,
    loss_sum: Tensor,
    n_correct: Tensor,
    n: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """Each member's history entry, as the single-model loop writes it; the epoch's one device sync."""
    stack.write_to(models)
    with torch.no_grad():
        penalties = torch.stack(
            [
                weight_penalty(model, l1=c.l1, l2=c.l2, include_bias=c.penalize_bias).to(loss_sum.device, torch.float64)
                for model, c in zip(models, configs)
            ]
        )
        losses, corrects, penalty_values = torch.stack([loss_sum, n_correct.to(torch.float64), penalties]).tolist()
    rows = []
    for m, config in enumerate(configs):
        row = {
            "epoch": epoch,
            "loss": losses[m] / n,
            "penalty": penalty_values[m],
            "accuracy": corrects[m] / n,
            "lr": config.lr,
            "eps": 0.0,
            "seconds": seconds,
        }
        if not all(map(_finite, (row["loss"], row["penalty"]))):
            raise ConfigError(
                f"the training loss of member l1={config.l1:g}, l2={config.l2:g}, seed={config.seed} became {row['loss']} "
                f"in epoch {epoch}; lower lr or the penalties and retry"
            )
        rows.append(row)
    return rows


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
