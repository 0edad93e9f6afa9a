"""Training checkpoints on disk: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint folder holds `epoch-NNNN.safetensors` (weights, optimiser state tensors, random
generator states) and `state.json` (the epoch it ends, the run's identity, history, and the
SHA-256 of that tensor file). The tensor file is written first under its own name, then
`state.json` is renamed into place (the commit point), then older tensor files are removed: a run
killed at any moment leaves a readable checkpoint, the new one or the one before. Nothing is ever
pickled: `torch.save` / `torch.load` are not used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from redblue.config import atomic_write_bytes, default_file_mode
from redblue.errors import ConfigError

STATE_FILE = "state.json"
FORMAT = 1


def checkpoint_folder(out: str | os.PathLike[str]) -> Path:
    """Where the checkpoints of a run that saves its model at `out` live: `<out>.checkpoint/`."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(folder: str | os.PathLike[str], *, epoch: int, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
    """Write one checkpoint: `tensors` (any device; stored on CPU) and the JSON-able `state`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}.safetensors"
    tmp = folder / f".{name}.part"
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.chmod(tmp, default_file_mode())
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    document = {"format": FORMAT, "epoch": epoch, "tensors": name, "sha256": _sha256(folder / name), **state}
    atomic_write_bytes(folder / STATE_FILE, (json.dumps(document, indent=1) + "\n").encode())
    for old in folder.glob("epoch-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def read_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """(state, tensors on CPU) of the checkpoint in `folder`, or None when there is none.

    A damaged checkpoint (unreadable JSON, a missing tensor file or one whose SHA-256 differs) is
    an error, not a silent fresh start.
    """
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    damaged = f"the checkpoint in {folder} is damaged"
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{damaged} ({exc}); delete the folder to start over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("tensors"), str):
        raise ConfigError(f"{damaged} (not a format-{FORMAT} state.json); delete the folder to start over")
    tensor_path = folder / Path(state["tensors"]).name
    if not tensor_path.is_file() or _sha256(tensor_path) != state.get("sha256"):
        raise ConfigError(f"{damaged} ({tensor_path.name} is missing or fails its checksum); delete the folder to start over")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{damaged} ({exc}); delete the folder to start over") from None
    return state, tensors


def remove_checkpoint(folder: str | os.PathLike[str]) -> None:
    """Delete a checkpoint folder (after the finished model is saved); only the files this module writes."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in [folder / STATE_FILE, *folder.glob("epoch-*.safetensors"), *folder.glob(".*.part")]:
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something else lives there: leave it
        pass


# ---- optimiser state as tensors + JSON -----------------------------------------------------------


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (named `prefix/<param>/<key>`) and a JSON-able rest."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}/{index}/{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()} for group in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "plain": plain}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any], prefix: str = "optimizer"
) -> None:
    """Restore what `optimizer_state` split off into `optimizer` (tensors move to the parameters' devices)."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        head, _, rest = name.partition("/")
        if head != prefix:
            continue
        index, _, key = rest.partition("/")
        state.setdefault(int(index), {})[key] = tensor
    for index, entries in meta["plain"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
