"""`redblue train`: train a blue-team model on a dataset's train split and save it as safetensors."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

import redblue
from redblue.cli.app import DataDirOption, DeviceOption, JsonOption, app, print_json, resolve_device
from redblue.config import to_dict
from redblue.data import load_dataset
from redblue.defenses import objective_record, parse_objective
from redblue.errors import ConfigError
from redblue.metrics import score
from redblue.models import arch_of, build_model, parse_model, save_model
from redblue.train import TrainConfig, init_model, train


# The paper's network as calibrated for experiments/paper.toml: Newmu's Theano tutorial MLP with
# one hidden layer of 625, no biases, N(0, 0.01^2) weights, dropout 0.2 on the input and 0.5 hidden.
PAPER_MLP = "mlp:hidden=625,bias=false,init=normal-0.01"


def check_writable(path: Path) -> None:
    """Fail before training, not after, when `path` cannot be written."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file name such as {path / 'model.safetensors'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write --out {path}: {parent} is not a writable folder; choose another path")


def versions() -> dict[str, str]:
    return {"redblue": redblue.__version__, "torch": torch.__version__, "python": platform.python_version()}


def check_subset(n: int | None) -> None:
    if n is not None and n < 1:
        raise ConfigError(f"--train-subset must be >= 1, got {n}")


@app.command("train")
def train_command(
    model: Annotated[str, typer.Option("--model", help="Model spec, e.g. mlp:hidden=800,dropout_hidden=0.3 or cnn.")] = PAPER_MLP,
    l1: Annotated[float, typer.Option("--l1", help="L1 penalty lambda1 on the weights (sum |w|).")] = 0.0,
    l2: Annotated[float, typer.Option("--l2", help="L2 penalty lambda2 on the weights (sum w^2).")] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training set.")] = 20,
    objective: Annotated[
        str, typer.Option("--objective", help="clean, fgsm:eps=0.1,alpha=0.5, fast-fgsm:eps=0.1, pgd:eps=0.1,steps=7, trades:eps=0.1,beta=6.")
    ] = "clean",
    lr: Annotated[float, typer.Option("--lr", help="RMSProp learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Mini-batch size.")] = 128,
    optimizer: Annotated[str, typer.Option("--optimizer", help="rmsprop-newmu (eps inside sqrt) or rmsprop (torch).")] = "rmsprop-newmu",
    penalize_bias: Annotated[bool, typer.Option("--penalize-bias", help="Apply l1/l2 to the biases too.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the initial weights, shuffling, dropout and random starts.")] = 0,
    dataset: Annotated[str, typer.Option("--dataset", help="mnist, fashion-mnist or kmnist.")] = "mnist",
    train_subset: Annotated[
        Optional[int], typer.Option("--train-subset", help="Train on the first N training images only (quick runs).")
    ] = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    out: Annotated[Path, typer.Option("--out", help="Where to write the model (safetensors).")] = Path("model.safetensors"),
    as_json: JsonOption = False,
) -> None:
    """Train a model on the train split, report its clean test accuracy and confidence, save it."""
    spec = parse_model(model)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        l1=l1,
        l2=l2,
        penalize_bias=penalize_bias,
        objective=parse_objective(objective),
        seed=seed,
        optimizer=optimizer,  # type: ignore[arg-type]  # validated by TrainConfig
    )
    check_subset(train_subset)
    check_writable(out)
    run_device = resolve_device(device)
    train_set = load_dataset(dataset, "train", data_dir=data_dir)
    test_set = load_dataset(dataset, "test", data_dir=data_dir)
    x, y = train_set.x[:train_subset], train_set.y[:train_subset]  # [:None] is everything
    net = init_model(lambda: build_model(spec), seed=seed).to(run_device)
    started = time.perf_counter()
    result = train(net, x.to(run_device), y.to(run_device), config)
    test = score(net, test_set.x.to(run_device), test_set.y.to(run_device))
    record: dict[str, Any] = {
        "kind": "train",
        "train_config": {**to_dict(config), "objective": objective_record(config.objective)},  # the values used
        "model": {"arch": arch_of(spec), "spec": dataclasses.asdict(spec)},
        "seed": seed,
        "dataset": dataset,
        "train_subset": train_subset,
        "n_train": len(y),
        "device": str(run_device),
        "versions": versions(),
        "seconds": time.perf_counter() - started,
        "train_seconds": result.seconds,
        "history": result.history,
        "test": {"accuracy": test.accuracy, "confidence": test.confidence, "n": test.n},
    }
    try:
        save_model(out, net, spec, record=record)
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out} ({exc.strerror or exc}); choose another path") from None
    if as_json:
        print_json({"out": str(out), **record})
        return
    typer.echo(
        f"trained {arch_of(spec)} for {epochs} epochs on {len(y)} {dataset} images in {result.seconds:.1f} s ({run_device})"
    )
    typer.echo(f"test accuracy {test.accuracy:.4f}, confidence {test.confidence:.4f}")
    typer.echo(f"saved {out}")
