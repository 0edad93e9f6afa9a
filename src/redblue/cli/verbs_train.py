"""`redblue train`: train a blue-team model on a dataset's train split and save it as safetensors.

The engine (`redblue.train.train`) reports progress through a callback; the rich bar drawn from
it lives here and only on an interactive terminal. A checkpoint is written beside `--out` after
every epoch, so an interrupted run continues with `--resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional, TextIO

import torch
import typer

import redblue
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
from redblue.cli.verbs_data import DownloadOption, require_dataset
from redblue.data import load_dataset
from redblue.defenses import KINDS, OBJECTIVES, parse_objective
from redblue.errors import ConfigError
from redblue.metrics import score
from redblue.models import MODELS, arch_of, build_model, fit_spec, parse_model, save_model
from redblue.train import TrainConfig, TrainProgress, init_model, train
from redblue.train.checkpoint import STATE_FILE, checkpoint_folder, remove_checkpoint
from redblue.train.optim import parse_schedule
from redblue.train.state import checkpoint_threads

# The paper's network as calibrated for experiments/paper.toml: Newmu's Theano tutorial MLP with
# one hidden layer of 625, no biases, N(0, 0.01^2) weights, dropout 0.2 on the input and 0.5 hidden.
PAPER_MLP = "mlp:hidden=625,bias=false,init=normal-0.01"

# TrainConfig's fields that are options of this verb under another spelling (batch_size: --batch-size)
OPTION_OF_FIELD = {
    name: "--" + name.replace("_", "-")
    for name in (
        "epochs", "batch_size", "lr", "l1", "l2", "penalize_bias", "objective", "seed", "optimizer", "momentum",
        "nesterov", "weight_decay", "schedule", "warmup_epochs", "eps_warmup_epochs", "clean_epochs", "grad_clip", "val_size",
        "keep", "overfit_guard", "weight_average", "augment",
    )
}  # fmt: skip


def in_option_names(message: str) -> str:
    """A TrainConfig error as the CLI says it: field names become option names (`batch_size must be
    ...` -> `--batch-size must be ...`). Names with an underscore are replaced wherever they stand,
    one-word names (epochs, lr) only where they open the message, as the subject of the sentence."""
    for name, option in OPTION_OF_FIELD.items():
        if "_" in name:
            message = re.sub(rf"(?<![\w-]){name}\b", option, message)
        elif re.match(rf"{name}\b", message):
            message = option + message[len(name) :]
    return message


def objectives_help() -> str:
    """The registered objectives by kind, for --objective's help."""
    groups = [
        f"{kind}: {', '.join(name for name, entry in OBJECTIVES.items() if entry.kind == kind)}"
        for kind in KINDS
        if any(entry.kind == kind for entry in OBJECTIVES.values())
    ]
    return "; ".join(groups) + ". With parameters, e.g. pgd:eps=0.3,steps=10 or ibp:eps=0.1."


def check_writable(path: Path) -> None:
    """Fail before training, not after, when `path` cannot be written: a file is created and removed
    in the nearest existing folder above it (os.access says yes to root even on /proc)."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file name such as {path / 'model.safetensors'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".redblue-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot write --out {path}: {parent} is not writable ({reason}); choose another path") from None


def versions() -> dict[str, str]:
    return {"redblue": redblue.__version__, "torch": torch.__version__, "python": platform.python_version()}


def check_subset(n: int | None) -> None:
    if n is not None and n < 1:
        raise ConfigError(f"--train-subset must be >= 1, got {n}")


def show_progress(as_json: bool) -> bool:
    """The bar is drawn only on an interactive terminal: never with --json, and not when stdout or
    stderr is redirected, so logs and machine-readable output never contain it."""
    return not as_json and sys.stdout.isatty() and sys.stderr.isatty()


class ProgressBar:
    """A rich bar over all the batches of a run, fed by the engine's TrainProgress reports."""

    def __init__(self, *, file: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(file=file or sys.stderr, force_terminal=True)
        self._progress = Progress(
            TextColumn("train epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None
        self._last = ""

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, event: TrainProgress) -> None:
        if self._task is None:
            self._task = self._progress.add_task("train", total=event.epochs * event.batches, epoch="", status="")
        status = f"loss {event.loss:.4f} lr {event.lr:.2g}" + (f" eps {event.eps:.3g}" if event.eps else "")
        if event.phase == "validate":
            status += " validating"
        if event.phase == "epoch" and event.row is not None:
            self._last = _val_summary(event.row)
        self._progress.update(
            self._task,
            completed=(event.epoch - 1) * event.batches + event.batch,
            epoch=f"{event.epoch}/{event.epochs}",
            status=" ".join(filter(None, (status, self._last))),
        )


def _val_summary(row: dict[str, Any]) -> str:
    parts = []
    if "val_accuracy" in row:
        parts.append(f"val {row['val_accuracy']:.3f}")
    if "val_robust_accuracy" in row:
        parts.append(f"robust {row['val_robust_accuracy']:.3f}")
    return ", ".join(parts)


def interrupted_message(folder: Path) -> str:
    """What is true after Ctrl-C, read from the checkpoint folder at that moment (not remembered from
    the last progress report, which a signal can overtake)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        done, total = int(state["epoch"]), int(state["identity"]["config"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return "interrupted before the first epoch finished; nothing was saved"
    return (
        f"interrupted; the first {done} of {total} epochs are checkpointed in {folder}; "
        "rerun the same command with --resume to continue"
    )


@app.command("train")
def train_command(
    model: Annotated[
        str,
        typer.Option("--model", help=f"{', '.join(MODELS)} (`redblue models`), with parameters, e.g. mlp:hidden=800,dropout_hidden=0.3. "
                     "Its input (in_features, or in_channels and image_size) and classes follow --dataset unless given."),
    ] = PAPER_MLP,
    objective: Annotated[str, typer.Option("--objective", help=objectives_help())] = "clean",
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training set (>= 1).")] = 20,
    l1: Annotated[float, typer.Option("--l1", help="L1 penalty lambda1 on the weights (sum |w|).")] = 0.0,
    l2: Annotated[float, typer.Option("--l2", help="L2 penalty lambda2 on the weights (sum w^2).")] = 0.0,
    optimizer: Annotated[
        str, typer.Option("--optimizer", help="auto (clean: rmsprop-newmu, the paper's; adversarial: adam), sgd, adam, adamw, rmsprop-newmu, rmsprop.")
    ] = "auto",
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (the peak of the schedule).")] = 1e-3,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help="sgd (default 0.9) and rmsprop (default 0).")] = None,
    nesterov: Annotated[bool, typer.Option("--nesterov", help="Nesterov momentum (sgd).")] = False,
    weight_decay: Annotated[
        Optional[float], typer.Option("--weight-decay", help="sgd, adam, rmsprop (default 0); adamw, decoupled (default 0.01).")
    ] = None,
    schedule: Annotated[
        Optional[str],
        typer.Option("--schedule", help="constant, cosine, one-cycle, piecewise:milestones=10/15,factor=0.1; stepped per batch. "
                     "Default: constant for clean training, one-cycle for adversarial objectives."),
    ] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option("--warmup-epochs", help="Linear lr warm-up over the first epochs.")] = None,
    eps_warmup_epochs: Annotated[
        Optional[float],
        typer.Option("--eps-warmup-epochs", help="Ramp the attack eps up linearly over the first epochs (default: 30% of the run for "
                     "attack objectives, 50% for certified ones)."),
    ] = None,
    clean_epochs: Annotated[
        Optional[float],
        typer.Option("--clean-epochs", help="Train cleanly over the first epochs, then start the eps ramp (default: 10% of the run for "
                     "certified objectives, 0 for attack objectives)."),
    ] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", help="Clip the gradient's global L2 norm.")] = None,
    val_size: Annotated[
        Optional[int], typer.Option("--val-size", help="Images held out for validation (default: 5000 or a tenth of the set for adversarial objectives, 0 for clean).")
    ] = None,
    keep: Annotated[
        Optional[str],
        typer.Option("--keep", help="best (by PGD validation accuracy, certified accuracy for certified objectives; the default with a "
                     "validation split) or last."),
    ] = None,
    overfit_guard: Annotated[
        Optional[bool], typer.Option("--overfit-guard/--no-overfit-guard", help="Catastrophic-overfitting guard (default: on for fgsm and fast-fgsm).")
    ] = None,
    weight_average: Annotated[
        Optional[float],
        typer.Option("--weight-average", help="Keep an exponential moving average of the weights with this decay per batch (e.g. 0.999); "
                     "the average is validated, selected and saved."),
    ] = None,
    augment: Annotated[
        Optional[str],
        typer.Option("--augment", help="Random crops and/or horizontal flips of each training batch: crop-flip (the CIFAR recipes': "
                     "4-pixel shifts, mirrored half the time), crop, flip, or crop-flip:pad=2. Default: none."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Mini-batch size.")] = 128,
    penalize_bias: Annotated[bool, typer.Option("--penalize-bias", help="Apply l1/l2 to the biases too.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the initial weights, split, shuffling, dropout and random starts.")] = 0,
    dataset: Annotated[
        str, typer.Option("--dataset", help="mnist, fashion-mnist, kmnist, cifar10, cifar100, or a user dataset's path (.npz, .safetensors, image folder).")
    ] = "mnist",
    train_subset: Annotated[
        Optional[int], typer.Option("--train-subset", help="Train on the first N training images only (quick runs).")
    ] = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    device: DeviceOption = "auto",
    threads: ThreadsOption = "auto",
    out: Annotated[Path, typer.Option("--out", help="Where to write the model (safetensors).")] = Path("model.safetensors"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run checkpointed in <out>.checkpoint/ (same options).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train a model on the train split, report its clean test accuracy and confidence, save it.

    After every epoch the run is checkpointed in <out>.checkpoint/ (removed once the model is saved);
    an interrupted run continues with the same command plus --resume.
    """
    parse_model(model)  # the text is checked before any data is read; fit_spec below fits it to the data
    config = _config(
        dict(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            l1=l1,
            l2=l2,
            penalize_bias=penalize_bias,
            objective=parse_objective(objective),
            seed=seed,
            optimizer=optimizer,
            momentum=momentum,
            nesterov=True if nesterov else None,
            weight_decay=weight_decay,
            schedule=parse_schedule(schedule) if schedule is not None else None,
            warmup_epochs=warmup_epochs,
            eps_warmup_epochs=eps_warmup_epochs,
            clean_epochs=clean_epochs,
            grad_clip=grad_clip,
            val_size=val_size,
            keep=keep,
            overfit_guard=overfit_guard,
            weight_average=weight_average,
            augment=augment,
        )
    )
    check_subset(train_subset)
    check_writable(out)
    folder = checkpoint_folder(out)
    has_checkpoint = (folder / STATE_FILE).is_file()
    if resume and not has_checkpoint:
        raise ConfigError(f"--resume: there is no checkpoint in {folder}; run without --resume to start")
    if has_checkpoint and not resume:
        raise ConfigError(f"{folder} holds a checkpoint of an unfinished run; add --resume to continue it, or delete it to start over")
    torch_threads = apply_threads(threads, recorded=checkpoint_threads(folder) if resume else None)
    run_device = resolve_device(device)
    require_dataset(dataset, data_dir=data_dir, download=download)
    train_set = load_dataset(dataset, "train", data_dir=data_dir)
    test_set = load_dataset(dataset, "test", data_dir=data_dir)
    spec = fit_spec(model, image_shape=train_set.image_shape, classes=train_set.n_classes, dataset=dataset)
    x, y = train_set.x[:train_subset], train_set.y[:train_subset]  # [:None] is everything
    try:
        config.resolved(len(y))  # the checks that need the training set's size, before any work
    except ConfigError as exc:
        raise ConfigError(in_option_names(str(exc))) from None
    net = init_model(lambda: build_model(spec), seed=seed).to(run_device)
    identity = {"model": {"arch": arch_of(spec), "spec": dataclasses.asdict(spec)}, "dataset": dataset, "train_subset": train_subset}
    started = time.perf_counter()
    try:
        with ProgressBar() if show_progress(as_json) else contextlib.nullcontext() as bar:
            result = train(
                net, x.to(run_device), y.to(run_device), config,
                progress=bar, checkpoint=folder, resume=resume, identity=identity,
            )  # fmt: skip
        test = score(net, test_set.x.to(run_device), test_set.y.to(run_device))
        record: dict[str, Any] = {
            "kind": "train",
            **result.record(),
            "model": identity["model"],
            "seed": seed,
            "dataset": dataset,
            "train_subset": train_subset,
            "n_train": len(y),
            "device": str(run_device),
            "torch_threads": torch_threads,
            "versions": versions(),
            "seconds": time.perf_counter() - started,
            "history": result.history,
            "test": {"accuracy": test.accuracy, "confidence": test.confidence, "n": test.n},
        }
        try:
            save_model(out, net, spec, record=record)
        except OSError as exc:
            raise ConfigError(f"cannot write --out {out} ({exc.strerror or exc}); choose another path") from None
    except KeyboardInterrupt:
        set_interrupt_message(interrupted_message(folder))
        raise
    set_interrupt_message(f"interrupted; the model is saved in {out}")
    remove_checkpoint(folder)
    if as_json:
        print_json({"out": str(out), **record})
        return
    _print_summary(result, record, out, run_device)


def _config(values: dict[str, Any]) -> TrainConfig:
    """TrainConfig(**values), its errors in the CLI's option names."""
    try:
        return TrainConfig(**values)
    except ConfigError as exc:
        raise ConfigError(in_option_names(str(exc))) from None


def _print_summary(result: Any, record: dict[str, Any], out: Path, device: torch.device) -> None:
    cfg = result.config
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from is not None else ""
    typer.echo(
        f"trained {record['model']['arch']} for {len(result.history)} epochs on {record['n_train'] - (cfg.val_size or 0)} "
        f"{record['dataset']} images in {result.seconds:.1f} s ({device}, {record['torch_threads']} threads{resumed})"
    )
    typer.echo(f"objective {cfg.objective.name}, optimizer {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule.name})")
    if cfg.val_size:
        row = result.history[result.kept_epoch - 1] if result.kept_epoch else {}
        typer.echo(f"kept epoch {result.kept_epoch} ({cfg.keep}): validation {_val_summary(row) or 'n/a'} on {cfg.val_size} held-out images")
    for event in result.guard.events if result.guard is not None else []:
        typer.echo(f"overfitting guard, epoch {event['epoch']}: {event['reason']}; rolled back, {event['action']}")
    test = record["test"]
    typer.echo(f"test accuracy {test['accuracy']:.4f}, confidence {test['confidence']:.4f}")
    typer.echo(f"saved {out}")
