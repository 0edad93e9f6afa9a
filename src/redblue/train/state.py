"""What a training run holds at an epoch boundary, and its checkpoint: the run's state (history,
best epoch, the guard's doings), its random generators, and how both go to and come back from disk.

A resumed run restores the weights, the optimiser state, every random generator and this state,
so it continues exactly where the checkpoint was taken (`redblue.train.checkpoint` does the files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from redblue.errors import ConfigError
from redblue.runs.store import differing_keys
from redblue.train.checkpoint import STATE_FILE, load_optimizer_state, optimizer_state, read_checkpoint, write_checkpoint


@dataclass
class RunState:
    """Everything that changes from epoch to epoch besides weights, optimiser and generators."""

    epoch: int = 0  # finished epochs
    weights_epoch: int = 0  # the epoch whose weights the model holds (a rollback keeps the one before)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    best_weights: dict[str, Tensor] | None = None  # saved as tensors, not in the JSON
    average_weights: dict[str, Tensor] | None = None  # the weight average (TrainConfig.weight_average); tensors too
    best_robust: float | None = None  # the guard's reference: the best PGD accuracy of a good epoch
    objective: dict[str, Any] = field(default_factory=dict)  # the objective in use (the guard may shrink its step)
    reductions: int = 0  # step-size reductions made by the guard
    events: list[dict[str, Any]] = field(default_factory=list)  # the guard's
    stopped: bool = False
    seconds: float = 0.0  # training wall time so far, over all sessions


class Generators:
    """The run's random streams: the shuffle order (CPU), the objective's random starts and the data
    augmentation's draws (the data's device), and torch's global generator (dropout), seeded here;
    create it inside `torch.random.fork_rng` so the caller's global state is left alone."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.shuffle = torch.Generator().manual_seed(seed)
        self.attack = torch.Generator(device=device).manual_seed(seed + 1)
        self.augment = torch.Generator(device=device).manual_seed(seed + 3)
        torch.manual_seed(seed + 2)

    def state(self) -> dict[str, Tensor]:
        states = {"rng/shuffle": self.shuffle.get_state(), "rng/attack": self.attack.get_state(),
                  "rng/augment": self.augment.get_state(), "rng/global": torch.get_rng_state()}  # fmt: skip
        if self.device.type == "cuda":
            states["rng/global_cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def restore(self, tensors: dict[str, Tensor]) -> None:
        self.shuffle.set_state(tensors["rng/shuffle"])
        self.attack.set_state(tensors["rng/attack"])
        if "rng/augment" in tensors:  # checkpoints from before augmentation existed had no augmented runs
            self.augment.set_state(tensors["rng/augment"])
        torch.set_rng_state(tensors["rng/global"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/global_cuda"], self.device)


def clone_weights(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's state dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def data_digest(x: Tensor, y: Tensor) -> str:
    """SHA-256 of the training images and labels: a resumed run must see the same data."""
    digest = hashlib.sha256()
    for t in (x, y):
        digest.update(str((tuple(t.shape), t.dtype)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def json_roundtrip(data: Any) -> Any:
    """`data` as JSON reads it back (tuples become lists), so stored and fresh records compare equal."""
    return json.loads(json.dumps(data))


def save_state(
    folder: Path, identity: dict[str, Any], run: RunState, model: nn.Module, optimizer: torch.optim.Optimizer, rngs: Generators
) -> None:
    """Checkpoint the run after `run.epoch`: tensors (weights, best weights, optimiser, generators) and JSON."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    if run.best_weights is not None:
        tensors.update({f"best/{k}": v for k, v in run.best_weights.items()})
    if run.average_weights is not None:
        tensors.update({f"average/{k}": v for k, v in run.average_weights.items()})
    optimizer_tensors, optimizer_meta = optimizer_state(optimizer)
    tensors.update(optimizer_tensors)
    tensors.update(rngs.state())
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name not in ("best_weights", "average_weights")}
    write_checkpoint(folder, epoch=run.epoch, tensors=tensors, state={"identity": identity, "optimizer": optimizer_meta, "run": fields})


def restore_state(
    folder: Path, identity: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, rngs: Generators
) -> RunState:
    """Load the checkpoint in `folder` into the model, optimiser and generators; return the run state.
    Refused (one line) when there is none, or when it was made by a run with another identity."""
    found = read_checkpoint(folder)
    if found is None:
        raise ConfigError(f"there is no checkpoint to resume in {folder}; run without resume to start afresh")
    state, tensors = found
    differ = differing_keys(state.get("identity"), identity)
    if differ == ["threads"] and "threads" in state["identity"] and "threads" in identity:
        raise ConfigError(
            f"the checkpoint in {folder} was made with {state['identity']['threads']} torch threads and this run has "
            f"{identity['threads']}; resume with the same thread count, or the result differs from the uninterrupted run's"
        )
    if differ:
        shown = ", ".join(differ[:4]) + (", ..." if len(differ) > 4 else "")
        raise ConfigError(
            f"the checkpoint in {folder} was made by a different run (differs in: {shown}); "
            "resume with the same options, or delete the folder to start over"
        )
    device = next(model.parameters()).device
    model.load_state_dict({k.removeprefix("model/"): v.to(device) for k, v in tensors.items() if k.startswith("model/")})
    load_optimizer_state(optimizer, tensors, state["optimizer"])
    rngs.restore(tensors)
    run = RunState(**state["run"])
    best = {k.removeprefix("best/"): v.to(device) for k, v in tensors.items() if k.startswith("best/")}
    run.best_weights = best or None
    average = {k.removeprefix("average/"): v.to(device) for k, v in tensors.items() if k.startswith("average/")}
    run.average_weights = average or None
    return run


def checkpoint_threads(folder: Path) -> int | None:
    """The torch thread count the checkpointed run in `folder` computed with, or None when there is no
    readable checkpoint or it recorded none (a CUDA run). Reads state.json only; `restore_state`
    verifies the whole checkpoint."""
    try:
        identity = json.loads((folder / STATE_FILE).read_text()).get("identity", {})
    except (OSError, ValueError, AttributeError):
        return None
    threads = identity.get("threads") if isinstance(identity, dict) else None
    return threads if isinstance(threads, int) and threads >= 1 else None
