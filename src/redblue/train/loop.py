"""The training loop: any optimiser and schedule, one objective plus weight penalties, validation,
best-epoch selection, a catastrophic-overfitting guard and exact resume from per-epoch checkpoints.

The loop does not know which objective it runs (DESIGN.md): it shuffles with a seeded permutation
per epoch, slices batches out of one tensor (no DataLoader), and keeps the running loss and
accuracy as device tensors (`RunningTotals`), synchronising once per epoch (and every
PROGRESS_EVERY batches when a progress callback listens). It reports progress through that callback
and never prints.

A batch launches what a plain PyTorch loop launches (the objective, zero_grad, backward, the
optimiser's step) and nothing more: the running totals are folded every PROGRESS_EVERY batches (9
ops), and the lr is written into the optimiser only when the schedule changes it.
`benchmarks/train_epoch.py` counts the ops per batch against a plain loop; a test pins the 9/20.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from redblue.config import to_dict
from redblue.defenses import TrainStep, make_objective, objective_from_record, objective_record, weight_penalty
from redblue.defenses.penalties import add_penalty_gradient_, penalized_parameters
from redblue.errors import ConfigError
from redblue.train.augment import augment_batch, parse_augmentation
from redblue.train.checkpoint import STATE_FILE
from redblue.train.config import TrainConfig
from redblue.train.data import check_model_fits, check_training_data
from redblue.train.optim import NewmuRMSprop, WeightAverage, build_optimizer, eps_ramp, lr_factor
from redblue.train.state import (
    Generators,
    RunState,
    clone_weights,
    data_digest,
    json_roundtrip,
    restore_state,
    save_state,
)
from redblue.train.totals import RunningTotals
from redblue.train.validation import (
    ValidationSettings,
    after_collapse,
    collapse_reason,
    guard_rule,
    selection_score,
    validate,
    validation_settings,
    validation_split,
)

__all__ = ["GuardReport", "NewmuRMSprop", "TrainConfig", "TrainProgress", "TrainResult", "init_model", "make_optimizer", "train"]

log = logging.getLogger(__name__)

PROGRESS_EVERY = 20  # batches between progress reports (each reads the running loss: one sync)


@dataclass(frozen=True)
class TrainProgress:
    """One progress report. phase "batch": `batch` of `batches` done in `epoch`, `loss` the epoch's
    mean training loss so far; "validate": the epoch's batches are done, validation starts;
    "epoch": the epoch is finished (and checkpointed), `row` is its history entry."""

    phase: Literal["batch", "validate", "epoch"]
    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float | None
    lr: float
    eps: float
    row: dict[str, Any] | None = None


ProgressCallback = Callable[[TrainProgress], None]


@dataclass(frozen=True)
class TrainResult:
    """What a run did.

    history: one dict per epoch: epoch, loss (the objective without the penalty, mean over the
      training samples), penalty (at the end of the epoch), accuracy (on the batches as trained:
      dropout on, adversarial inputs for the attack-only objectives), lr and eps (those of the
      epoch's last batch) and the objective's own schedule values there (`ObjectiveParams.schedule`:
      IBP's train_eps and kappa, CROWN-IBP's beta), seconds; with a validation split val_accuracy,
      val_robust_accuracy (PGD at the objective's eps), val_fgsm_accuracy (with the guard),
      val_certified_accuracy (certified objectives), val_seconds; `collapsed` where the guard
      fired; plus whatever `on_epoch` returned.
    seconds: the run's training wall time (summed over resumed sessions).
    config: the resolved config (every default filled in). kept_epoch: the epoch whose weights the
    model holds. validation: the split and attack settings. guard: the guard's rule and events.
    resumed_from: the checkpoint's epoch when the run was resumed.
    """

    history: list[dict[str, Any]]
    seconds: float
    config: TrainConfig | None = None
    kept_epoch: int | None = None
    validation: ValidationSettings | None = None
    guard: GuardReport | None = None
    resumed_from: int | None = None

    def record(self) -> dict[str, Any]:
        """The JSON-able record of the run (without the history's per-epoch rows)."""
        assert self.config is not None
        return {
            "train_config": config_record(self.config),
            "kept_epoch": self.kept_epoch,
            "validation": dataclasses.asdict(self.validation) if self.validation is not None else None,
            "guard": dataclasses.asdict(self.guard) if self.guard is not None else None,
            "resumed_from": self.resumed_from,
            "train_seconds": self.seconds,
        }


@dataclass(frozen=True)
class GuardReport:
    """The catastrophic-overfitting guard of a run: its rule (thresholds), what it did (one dict per
    collapse: epoch, reason, rolled_back_to, action) and the objective in use at the end."""

    rule: dict[str, Any]
    events: list[dict[str, Any]]
    objective_at_end: dict[str, Any]


def config_record(config: TrainConfig) -> dict[str, Any]:
    """A config as a plain dict, the objective with the values it uses (resolved step sizes)."""
    return {**to_dict(config), "objective": objective_record(config.objective)}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `config` over the model's trainable parameters."""
    return build_optimizer([p for p in model.parameters() if p.requires_grad], config.optimizer_settings())


def init_model(build: Callable[[], nn.Module], *, seed: int) -> nn.Module:
    """Call `build()` (e.g. `lambda: build_model(spec)`) with torch's CPU generator seeded by `seed`,
    without disturbing the caller's random state, so a seed fixes the initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def run_identity(config: TrainConfig, x: Tensor, y: Tensor, extra: dict[str, Any] | None) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the resolved config, the data, the device type
    and, on a CPU, torch's thread count (sums split across threads round differently, so a run
    resumed with another count would not end where the uninterrupted run ends)."""
    identity = {"config": config_record(config), "data": {"n": len(y), "sha256": data_digest(x, y)}, "device": x.device.type}
    if x.device.type == "cpu":
        identity["threads"] = torch.get_num_threads()
    if extra:
        identity["extra"] = extra
    return json_roundtrip(identity)


@dataclass(frozen=True)
class _Plan:
    """The run's shape in batches: the schedule, the lr warm-up and the eps ramp are functions of the
    global batch index."""

    config: TrainConfig
    n_train: int
    n_batches: int

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.n_batches

    @property
    def ramp_steps(self) -> int:
        return round((self.config.eps_warmup_epochs or 0.0) * self.n_batches)

    def lr(self, step: int) -> float:
        warmup_steps = round((self.config.warmup_epochs or 0.0) * self.n_batches)
        schedule = self.config.schedule
        assert schedule is not None, "a resolved config has a schedule"
        return self.config.lr * lr_factor(schedule, step, total_steps=self.total_steps, steps_per_epoch=self.n_batches, warmup_steps=warmup_steps)

    @property
    def clean_steps(self) -> int:
        return round((self.config.clean_epochs or 0.0) * self.n_batches)

    def ramp(self, step: int) -> float:
        """0 over the clean stretch (`TrainConfig.clean_epochs`), then the eps ramp."""
        if step < self.clean_steps:
            return 0.0
        return eps_ramp(step - self.clean_steps, ramp_steps=self.ramp_steps)


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    progress: ProgressCallback | Literal[False] | None = None,
    on_epoch: Callable[[int, nn.Module], dict[str, Any] | None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    identity: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` in place on (x, y) with `config`; returns the per-epoch history and what was kept.

    model: any nn.Module mapping x to logits (N, classes); x: (N, ...) pixels in [0, 1] on the
    model's device; y: (N,) int64 labels. A validation split of `config.val_size` images (by
    default 5000 for adversarial objectives, none for clean training) is held out of (x, y) with a
    seeded permutation. Each epoch visits the remaining samples in a permutation drawn from a
    generator seeded with `config.seed`; dropout and the objective's random starts are seeded from
    it too, so the same seed, initial weights and device give the same weights (torch's global
    random state is saved and restored). The model ends in eval mode, holding the kept epoch's
    weights (`config.keep`). With `config.weight_average`, an exponential moving average of the
    weights follows training (`redblue.train.optim.WeightAverage`); after each epoch the average is what is
    validated, selected, passed to on_epoch and kept, while training goes on from the trained
    weights (a guard rollback rolls both back; on_epoch then sees the rolled-back trained weights).

    progress: called with a `TrainProgress` every PROGRESS_EVERY batches and after each epoch
      (False or None: no reports). on_epoch(epoch, model): called after each epoch's validation
      (model in eval mode); a returned dict is merged into that epoch's history entry.
    checkpoint: a folder; after every epoch the whole state (weights, optimizer, schedule position,
      every random generator, history, best weights) is written there atomically. resume: continue
      from the checkpoint there instead of starting afresh (a checkpoint made by a different run,
      see `identity`, is refused; without resume an existing checkpoint is refused too).
    identity: extra JSON-able facts a resumed run must share (e.g. the model spec).

    Example, with a module of your own (any nn.Module that maps pixels in [0, 1] to logits):

        from torch import nn
        from redblue.data import load_dataset
        from redblue.defenses import parse_objective
        from redblue.train import TrainConfig, init_model, train

        mnist = load_dataset("mnist", "train")
        net = init_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)), seed=0)
        result = train(net, mnist.x, mnist.y, TrainConfig(epochs=10, objective=parse_objective("pgd:eps=0.1")))
        best = result.history[result.kept_epoch - 1]
        print(result.kept_epoch, best["val_accuracy"], best["val_robust_accuracy"])
    """
    check_training_data(x, y)
    check_model_fits(model, x, y)
    if progress is not None and progress is not False and not callable(progress):
        raise ConfigError("progress must be a callback taking a TrainProgress (or None); the CLI draws the bar")
    report = progress or None
    cfg = config.resolved(len(x))
    warning = cfg.certified_ramp_warning()
    if warning is not None:
        log.warning(warning)
    device = x.device
    optimizer = make_optimizer(model, cfg)
    train_index, val_index = validation_split(len(x), cfg.val_size or 0, seed=cfg.seed)
    x_val, y_val = x[val_index.to(device)], y[val_index.to(device)]
    plan = _Plan(cfg, n_train=len(train_index), n_batches=-(-len(train_index) // cfg.batch_size))
    settings = (
        validation_settings(cfg.objective, val_index, seed=cfg.seed, guard=bool(cfg.overfit_guard), model=model) if len(val_index) else None
    )
    folder = Path(checkpoint) if checkpoint is not None else None
    identity = run_identity(cfg, x, y, identity) if folder is not None else {}
    if folder is not None and not resume and (folder / STATE_FILE).exists():
        raise ConfigError(f"{folder} holds a checkpoint of an unfinished run; resume it, or delete the folder to start over")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        rngs = Generators(cfg.seed, device)
        if folder is not None and resume:
            run = restore_state(folder, identity, model, optimizer, rngs)
            resumed_from: int | None = run.epoch
        else:
            run, resumed_from = RunState(objective=objective_record(cfg.objective)), None
        average = WeightAverage(model, cfg.weight_average, run.average_weights) if cfg.weight_average else None
        run.average_weights = average.weights if average is not None else None
        while run.epoch < cfg.epochs and not run.stopped:
            epoch = run.epoch + 1
            started = time.perf_counter()
            last_good = (clone_weights(model), copy.deepcopy(optimizer.state_dict())) if cfg.overfit_guard else None
            last_average = {k: v.clone() for k, v in average.weights.items()} if average is not None and cfg.overfit_guard else None
            # all samples when there is no split: the same permutation as before splits existed
            shuffled = torch.randperm(plan.n_train, generator=rngs.shuffle).to(device)
            order = train_index.to(device)[shuffled] if settings is not None else shuffled
            row = _train_epoch(model, x, y, order, epoch, plan, run, optimizer, rngs, report, average)
            trained = None
            if average is not None:  # the average is what is validated, selected, shown to on_epoch and kept
                trained = clone_weights(model)
                model.load_state_dict(average.weights)
            if settings is not None:
                if report is not None:
                    report(TrainProgress("validate", epoch, cfg.epochs, plan.n_batches, plan.n_batches, row["loss"], row["lr"], row["eps"]))
                validation_started = time.perf_counter()
                row.update(validate(model, x_val, y_val, settings, seed=cfg.seed))
                row["val_seconds"] = time.perf_counter() - validation_started
                judged = last_good is not None and (epoch - 1) * plan.n_batches >= plan.clean_steps + plan.ramp_steps
                _judge(row, run, model, optimizer, last_good if judged else None, keep_best=cfg.keep == "best", select_by=settings.select_by)
            if on_epoch is not None:
                row.update(on_epoch(epoch, model) or {})
            if average is not None and trained is not None:
                if "collapsed" in row:  # rolled back: the model holds the last good weights; so must the average
                    average.load_(last_average)  # type: ignore[arg-type]
                else:
                    model.load_state_dict(trained)  # training goes on from the trained weights
            run.history.append(row)
            run.epoch = epoch
            if "collapsed" not in row:
                run.weights_epoch = epoch
            run.seconds += time.perf_counter() - started
            log.info("epoch %d/%d: loss %.4f, train accuracy %.4f, %.1f s", epoch, cfg.epochs, row["loss"], row["accuracy"], row["seconds"])
            if folder is not None:
                save_state(folder, identity, run, model, optimizer, rngs)
            if report is not None:
                report(TrainProgress("epoch", epoch, cfg.epochs, plan.n_batches, plan.n_batches, row["loss"], row["lr"], row["eps"], row))
    kept_epoch = run.weights_epoch
    if cfg.keep == "best" and run.best_weights is not None:
        model.load_state_dict(run.best_weights)
        kept_epoch = run.best_epoch  # type: ignore[assignment]
    elif average is not None:
        model.load_state_dict(average.weights)
    model.eval()
    return TrainResult(
        history=run.history,
        seconds=run.seconds,
        config=cfg,
        kept_epoch=kept_epoch,
        validation=settings,
        guard=GuardReport(guard_rule(), run.events, run.objective) if cfg.overfit_guard else None,
        resumed_from=resumed_from,
    )


def _train_epoch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    order: Tensor,
    epoch: int,
    plan: _Plan,
    run: RunState,
    optimizer: torch.optim.Optimizer,
    rngs: Generators,
    report: ProgressCallback | None,
    average: WeightAverage | None = None,
) -> dict[str, Any]:
    """One pass over `order` (indices into x); returns the epoch's history row before validation.

    The running loss and correct count stay on the device: one sync per epoch, plus one per
    progress report when a callback listens.
    """
    cfg, started, device = plan.config, time.perf_counter(), x.device
    objective_params = objective_from_record(run.objective)
    objective = make_objective(objective_params)
    augmentation = parse_augmentation(cfg.augment) if cfg.augment else None
    penalize = cfg.l1 > 0 or cfg.l2 > 0
    penalized = [p for p in penalized_parameters(model, include_bias=cfg.penalize_bias) if p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    totals = RunningTotals(device, batch_size=cfg.batch_size)
    lr = ramp = progress = 0.0
    lr_set = None  # the lr last written into the optimiser's groups
    for batch in range(plan.n_batches):
        step = (epoch - 1) * plan.n_batches + batch
        lr, ramp = plan.lr(step), plan.ramp(step)
        if lr != lr_set:
            for group in optimizer.param_groups:
                group["lr"] = lr
            lr_set = lr
        index = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]
        xb, yb = x[index], y[index]
        if augmentation is not None:
            xb = augment_batch(xb, augmentation, rngs.augment)
        progress = step / plan.total_steps
        loss, logits = objective(model, xb, yb, TrainStep(generator=rngs.attack, ramp=ramp, progress=progress))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if penalize:  # d(penalty)/dw added directly: the same step as autograd, far cheaper
            add_penalty_gradient_(penalized, l1=cfg.l1, l2=cfg.l2)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip, foreach=True)
        optimizer.step()
        if average is not None:
            average.update(step)
        totals.add(loss, logits, yb)
        if (batch + 1) % PROGRESS_EVERY == 0 or batch + 1 == plan.n_batches:
            totals.fold()  # at most PROGRESS_EVERY batches of logits are held
            if report is not None:
                seen = min((batch + 1) * cfg.batch_size, plan.n_train)
                eps = objective_params.eps * ramp
                report(TrainProgress("batch", epoch, cfg.epochs, batch + 1, plan.n_batches, totals.loss_sum.item() / seen, lr, eps))
    model.eval()
    with torch.no_grad():
        penalty = weight_penalty(model, l1=cfg.l1, l2=cfg.l2, include_bias=cfg.penalize_bias)
        # the epoch's one device sync: loss, correct count and penalty read together
        loss_total, correct_total, penalty_value = torch.stack(
            [totals.loss_sum, totals.n_correct.to(torch.float64), penalty.to(device=device, dtype=torch.float64)]
        ).tolist()
    row: dict[str, Any] = {
        "epoch": epoch,
        "loss": loss_total / plan.n_train,
        "penalty": penalty_value,
        "accuracy": correct_total / plan.n_train,
        "lr": lr,
        "eps": objective_params.eps * ramp,
        # the objective's own schedules at the epoch's last batch (IBP: train_eps, kappa; CROWN-IBP: beta)
        **objective_params.schedule(TrainStep(ramp=ramp, progress=progress)),
        "seconds": time.perf_counter() - started,
    }
    if not all(map(_finite, (row["loss"], row["penalty"]))):
        raise ConfigError(f"the training loss became {row['loss']} in epoch {epoch}; lower lr or the penalties and retry")
    return row


def _judge(
    row: dict[str, Any],
    run: RunState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    last_good: tuple[dict[str, Tensor], dict[str, Any]] | None,
    *,
    keep_best: bool,
    select_by: str,
) -> None:
    """After validation: roll back a collapsed epoch (`last_good`: the guard judges this epoch), else
    update the best epoch. Writes `row["collapsed"]` and the run's events, best and objective."""
    if last_good is not None:
        good = (r["val_robust_accuracy"] for r in reversed(run.history) if "collapsed" not in r and "val_robust_accuracy" in r)
        reason = collapse_reason(row, run.best_robust, next(good, None))
        if reason is not None:
            action = after_collapse(run)
            model.load_state_dict(last_good[0])
            optimizer.load_state_dict(last_good[1])
            row["collapsed"] = reason
            run.events.append({"epoch": row["epoch"], "reason": reason, "rolled_back_to": row["epoch"] - 1, "action": action})
            log.warning("epoch %d: %s; rolled back to epoch %d, %s", row["epoch"], reason, row["epoch"] - 1, action)
            return
    if "val_robust_accuracy" in row:
        run.best_robust = max(run.best_robust or 0.0, row["val_robust_accuracy"])
    score = selection_score(row, select_by)
    if run.best_score is None or score > run.best_score:
        run.best_epoch, run.best_score = row["epoch"], score
        if keep_best:
            run.best_weights = clone_weights(model)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")

