"""The user-facing errors of redblue, and the validators that raise them at the boundaries.

Every error carries one line that says what is wrong and what to do; the CLI prints that line
and exits with code 2, without a traceback.
"""

from __future__ import annotations

import math


class RedblueError(Exception):
    """An error caused by the user's input or environment; its message is one actionable line."""


class ConfigError(RedblueError, ValueError):
    """A parameter, attack spec, model spec or config file is invalid."""


class DataError(RedblueError):
    """A dataset file is missing, corrupt, or fails its checksum."""


class ModelError(RedblueError):
    """A model or weights file cannot be built, loaded, or does not behave as a classifier."""


class AttackError(RedblueError):
    """An attack met a state it cannot work from, such as a NaN or infinite gradient."""


def require_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float, e.g. from a TOML file
        finite = False
    if not finite:
        shown = value if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
        raise ConfigError(f"{name} must be a finite number, got {shown}")


def require_non_negative(name: str, value: float) -> None:
    require_finite(name, value)
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")


def require_positive(name: str, value: float) -> None:
    require_finite(name, value)
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def require_in_range(name: str, value: float, low: float, high: float) -> None:
    require_finite(name, value)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")


def require_choice(name: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
