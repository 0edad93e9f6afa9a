"""The typer application every CLI verb registers on, and the small helpers verbs share."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from redblue.config import parse_number, read_toml
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
        help="Root with one folder per dataset (mnist/, ...); when given, the only root searched. Default: $REDBLUE_DATA_DIR, "
        "then ~/.cache/redblue.",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON result on stdout.")]
ThreadsOption = Annotated[
    str,
    typer.Option(
        "--threads",
        help="CPU threads for torch: auto (one per idle core this process may use, at most 4; 1 on a busy "
        "machine; a resumed or rerun run keeps the count it recorded) or a number. The numbers depend on it.",
    ),
]

MAX_AUTO_THREADS = 4  # past 4, the small MNIST models gain nothing from more threads (see README)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def idle_cores() -> int:
    """The available cores less the machine's 1-minute load (others' runnable processes), at least 1."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        load = 0.0
    return max(1, available_cores() - int(load))


def resolve_threads(text: str, *, recorded: int | None = None) -> int:
    """`auto` -> one thread per idle core, at most MAX_AUTO_THREADS; else a positive integer.

    `recorded`: the count the run being resumed or rerun computed with. `auto` takes it, since the
    numbers depend on the thread count (sums split across threads round differently) and the
    continued run must end as the uninterrupted one would; an explicit count is taken as given.

    Why idle cores: torch's worker threads spin while they wait for each other, so on a machine
    whose cores are busy with other work a second thread costs far more than it gives (measured on
    2 shared cores at load 9.5: one clean epoch of the paper's MLP took 2.0 s with 1 thread and 31 s
    with 2); on 2 quiet cores 2 threads are about 1.4x faster than 1 for the MNIST models.
    """
    if text == "auto":
        return recorded if recorded is not None else max(1, min(idle_cores(), MAX_AUTO_THREADS))
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(f"--threads must be auto or an integer >= 1, got {text!r}")
    return threads


def recorded_threads(config_file: Path) -> int | None:
    """The torch thread count a run folder's config file (config.toml) recorded, or None when there is
    no readable record; the folder's own checks say what is wrong with an unreadable one."""
    if not config_file.is_file():
        return None
    try:
        threads = read_toml(config_file).get("threads")
    except (ConfigError, OSError):
        return None
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1 else None


def apply_threads(text: str, *, recorded: int | None = None) -> int:
    """Set torch's intra-op thread count from a --threads value (see `resolve_threads`); returns the count set."""
    threads = resolve_threads(text, recorded=recorded)
    torch.set_num_threads(threads)
    return threads


# What is true after Ctrl-C depends on the verb and its options; a verb says it when it starts.
DEFAULT_INTERRUPT_MESSAGE = "interrupted; nothing was saved"
_interrupt_message = DEFAULT_INTERRUPT_MESSAGE


def set_interrupt_message(text: str) -> None:
    """The line `redblue` prints when the running verb is interrupted (Ctrl-C): what is kept, how to go on."""
    global _interrupt_message
    _interrupt_message = text


def interrupt_message() -> str:
    return _interrupt_message


def _print_version(value: bool) -> None:
    if value:
        from redblue import __version__

        sys.stdout.write(f"redblue {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Adversarial ML as red team (attacks) against blue team (defenses)."""


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


_json_printed = False


def print_json(result: Any) -> None:
    """The one machine-readable line a verb prints with --json."""
    global _json_printed
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    _json_printed = True


def reset_run_state() -> None:
    """Forget what an earlier in-process run set (tests call `main` many times)."""
    global _json_printed, _interrupt_message
    _json_printed = False
    _interrupt_message = DEFAULT_INTERRUPT_MESSAGE


def json_printed() -> bool:
    """Whether the running verb has printed its JSON document (then an error adds no second one)."""
    return _json_printed


def parse_floats(name: str, text: str) -> list[float]:
    """`0.05,0.1` -> [0.05, 0.1] (fractions allowed: `2/255,8/255`), with a one-line error naming the option."""
    try:
        return [parse_number(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
