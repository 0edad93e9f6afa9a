"""A tiny arena (two small MLPs, three attacks, one round) that plays in seconds, shared by the arena tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_TOML = """
name = "tiny"
seed = 0
train_subset = 1000
test_subset = 100
eps = [0.05, 0.1]
rounds = 1
fine_tune_epochs = 1
threshold = 0.5
leaderboard = "fast"

[budget]
norm = "linf"
max_eps = 0.1
knowledge = "white-box"
steps = 40
restarts = 1

[train]
batch_size = 64

[[blue]]
name = "clean"
model = "mlp:hidden=32"
epochs = 1

[[blue]]
name = "fgsm-at"
model = "mlp:hidden=32"
objective = "fgsm:eps=0.1"
epochs = 1

[[red]]
name = "fgsm"
attack = "fgsm"

[[red]]
name = "pgd"
attack = "pgd:steps=5"

[[red]]
name = "transfer"
attack = "transfer:attack=pgd/steps=5"
surrogate = { model = "mlp:hidden=32", epochs = 1 }
"""

# keys whose values are wall times, hosts or this invocation's counts: they differ between two runs of one config
TIMING_KEYS = ("attack_seconds", "train_seconds", "certify_seconds", "evaluate_seconds", "seconds", "invocation",
               "environment")


def write_tiny(folder: Path, text: str = TINY_TOML) -> Path:
    path = folder / "tiny.toml"
    path.write_text(text)
    return path


def without_timing(value: Any) -> Any:
    """`value` with every timing key (see TIMING_KEYS) removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value
