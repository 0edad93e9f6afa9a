"""Model files: weights as safetensors with the spec and the run record in the metadata; never pickle.

File format 2 names the architectures as `redblue.models.MODELS` does. Format 1 (before the zoo)
had `mlp` and `cnn`, where `cnn` was the small CNN: `load_model` reads a format-1 `cnn` as `cnn-small`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from redblue.config import default_file_mode, from_dict
from redblue.errors import ModelError
from redblue.models.zoo import MODELS, arch_of, build_model, spec_text

FORMAT_VERSION = "2"
# Format 1 named the small CNN `cnn`; from format 2 on, `cnn` is Madry et al.'s network.
LEGACY_ARCH_NAMES = {"1": {"mlp": "mlp", "cnn": "cnn-small"}}


def save_model(path: str | os.PathLike[str], model: nn.Module, spec: Any, *, record: dict[str, Any] | None = None) -> None:
    """Write weights as safetensors with the spec and a run record (config, seed, versions, device).

    Written to a temporary file and renamed, so a killed run never leaves a half-written model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "redblue.format": FORMAT_VERSION,
        "redblue.arch": arch_of(spec),
        "redblue.spec": json.dumps(dataclasses.asdict(spec)),
        "redblue.record": json.dumps(record or {}, default=str),
    }
    save_tensors(path, model.state_dict(), metadata)


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write safetensors through a temporary file renamed into place: a killed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    spec: Any
    record: dict[str, Any]


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model saved by `save_model`, in eval mode, on `device`. Never uses pickle.

    Reads format 1 (a `cnn` there is today's `cnn-small`) and 2. Every failure is a ModelError of
    one line: a folder, a file that is not safetensors, no redblue spec, a tensor missing, extra
    or of the wrong shape (named, with both shapes).
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        raise ModelError(f"{path} is a folder, not a model file; pass the .safetensors file itself{hint}")
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; train one with `redblue train` or check the path")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(
            f"{path} is not a readable safetensors file ({exc}); redblue loads only safetensors written by `redblue train`"
        ) from None
    arch = _arch_in_current_names(path, metadata)
    try:
        spec = from_dict(MODELS[arch].spec_type, json.loads(metadata["redblue.spec"]), what=f"{path} spec")
        record = json.loads(metadata.get("redblue.record", "{}"))
    except json.JSONDecodeError:
        raise ModelError(f"{path} has corrupt metadata; re-save the model") from None
    model = build_model(spec)
    _check_tensors(path, spec, model.state_dict(), tensors)
    model.load_state_dict(tensors, strict=True)
    return LoadedModel(model=model.to(device).eval(), spec=spec, record=record)


def _arch_in_current_names(path: Path, metadata: dict[str, str]) -> str:
    """The file's architecture under today's names (format 1's `cnn` is `cnn-small`)."""
    version = metadata.get("redblue.format", "1")
    arch = metadata.get("redblue.arch")
    if version != FORMAT_VERSION and version not in LEGACY_ARCH_NAMES:
        raise ModelError(
            f"{path} is model format {version}, which this redblue does not know (it reads "
            f"{', '.join([*LEGACY_ARCH_NAMES, FORMAT_VERSION])}); upgrade redblue"
        )
    if version in LEGACY_ARCH_NAMES:
        arch = LEGACY_ARCH_NAMES[version].get(arch or "")
    if arch not in MODELS or "redblue.spec" not in metadata:
        raise ModelError(f"{path} has no redblue model spec in its metadata; save it with redblue.models.save_model")
    return arch


def _shape(shape: torch.Size) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _check_tensors(path: Path, spec: Any, expected: dict[str, Tensor], tensors: dict[str, Tensor]) -> None:
    """One line naming the first tensor that the spec's model lacks, needs, or shapes differently."""
    spec_name = spec_text(spec)
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelError(
            f"{path} lacks tensor {missing[0]!r}{more}, which its spec {spec_name} needs; re-save the model"
        )
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ModelError(
            f"{path} has tensor {unexpected[0]!r}{more}, which its spec {spec_name} does not; re-save the model"
        )
    for name, wanted in expected.items():
        if tensors[name].shape != wanted.shape:
            raise ModelError(
                f"{path}: tensor {name!r} has shape {_shape(tensors[name].shape)} but its spec {spec_name} "
                f"needs {_shape(wanted.shape)}; the weights and the spec disagree, re-save the model"
            )
