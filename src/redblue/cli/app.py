"""The typer application every CLI verb registers on, and the small helpers verbs share."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from redblue.errors import ConfigError

app = typer.Typer(
    name="redblue",
    help="Adversarial ML as red team (attacks) against blue team (defenses).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DataDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        help="Root with one folder per dataset (mnist/, ...). Default: $REDBLUE_DATA_DIR, then ~/.cache/redblue.",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON result on stdout.")]


def resolve_device(text: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else must name an available device."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {text!r} asked for but CUDA is not available; use --device cpu or auto")
    return device


def print_json(result: Any) -> None:
    """The one machine-readable line a verb prints with --json."""
    sys.stdout.write(json.dumps(result, default=str) + "\n")


def parse_floats(name: str, text: str) -> list[float]:
    """`0.05,0.1` -> [0.05, 0.1], with a one-line error naming the option."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
