"""The blue team's classifiers: the paper's MLP and a small CNN, built from a spec, saved as safetensors.

Every model maps pixels in [0, 1] of shape (N, 1, 28, 28) to logits (N, classes); any
normalisation is a layer inside the model. Weights never touch pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from redblue.config import default_file_mode, from_dict, from_text_values, split_spec
from redblue.errors import ModelError, require_choice, require_in_range, require_positive

FORMAT_VERSION = "1"

MLP_INITS = ("torch", "normal-0.01")


@dataclass(frozen=True)
class MLPSpec:
    """784 -> hidden (ReLU) -> classes, with dropout on the input and on the hidden layer.

    Defaults follow the Theano tutorial the paper builds on (Newmu's modern_net): 625 hidden
    units, dropout 0.2 on the input and 0.5 on the hidden layer.
    """

    hidden: int = 625
    dropout_input: float = 0.2
    dropout_hidden: float = 0.5
    bias: bool = True
    in_features: int = 784
    classes: int = 10
    # "torch": PyTorch's default Linear init; "normal-0.01": weights ~ N(0, 0.01^2), biases zero,
    # as in Newmu's Theano tutorial (`init_weights`: randn * 0.01).
    init: Literal["torch", "normal-0.01"] = "torch"

    def __post_init__(self) -> None:
        require_choice("init", self.init, MLP_INITS)
        require_positive("hidden", self.hidden)
        require_positive("classes", self.classes)
        require_positive("in_features", self.in_features)
        require_in_range("dropout_input", self.dropout_input, 0.0, 0.99)
        require_in_range("dropout_hidden", self.dropout_hidden, 0.0, 0.99)


@dataclass(frozen=True)
class CNNSpec:
    """Conv(16, 4x4, stride 2) -> ReLU -> Conv(32, 4x4, stride 2) -> ReLU -> Linear(hidden) -> ReLU -> Linear.

    The small convolutional model of Wong & Kolter (2018): strides instead of pooling, so it is a
    plain Sequential of Conv2d / ReLU / Flatten / Linear that certified bounds can traverse.
    """

    channels1: int = 16
    channels2: int = 32
    hidden: int = 100
    classes: int = 10

    def __post_init__(self) -> None:
        for name in ("channels1", "channels2", "hidden", "classes"):
            require_positive(name, getattr(self, name))


def build_mlp(spec: MLPSpec) -> nn.Sequential:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(spec.dropout_input),
        nn.Linear(spec.in_features, spec.hidden, bias=spec.bias),
        nn.ReLU(),
        nn.Dropout(spec.dropout_hidden),
        nn.Linear(spec.hidden, spec.classes, bias=spec.bias),
    )
    if spec.init == "normal-0.01":
        with torch.no_grad():
            for layer in (model[2], model[5]):
                layer.weight.normal_(0.0, 0.01)
                if layer.bias is not None:
                    layer.bias.zero_()
    return model


def build_cnn(spec: CNNSpec) -> nn.Sequential:
    # 28 -> 14 -> 7 with kernel 4, stride 2, padding 1
    return nn.Sequential(
        nn.Conv2d(1, spec.channels1, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(spec.channels1, spec.channels2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(spec.channels2 * 7 * 7, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.classes),
    )


MODELS: dict[str, tuple[type, Callable[[Any], nn.Module]]] = {
    "mlp": (MLPSpec, build_mlp),
    "cnn": (CNNSpec, build_cnn),
}


def arch_of(spec: Any) -> str:
    for name, (spec_type, _) in MODELS.items():
        if isinstance(spec, spec_type):
            return name
    raise ModelError(f"{type(spec).__name__} is not a model spec; use one of: {', '.join(MODELS)}")


def parse_model(text: str) -> Any:
    """`mlp:hidden=800,dropout_hidden=0.3` -> MLPSpec(hidden=800, dropout_hidden=0.3)."""
    name, values = split_spec(text)
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return from_text_values(MODELS[name][0], values, what=f"model {name!r}")


def build_model(spec: Any) -> nn.Module:
    return MODELS[arch_of(spec)][1](spec)


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
    """Load a model saved by `save_model`, in eval mode, on `device`. Never uses pickle."""
    path = Path(path)
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
    arch = metadata.get("redblue.arch")
    if arch not in MODELS or "redblue.spec" not in metadata:
        raise ModelError(f"{path} has no redblue model spec in its metadata; save it with redblue.models.save_model")
    try:
        spec = from_dict(MODELS[arch][0], json.loads(metadata["redblue.spec"]), what=f"{path} spec")
        record = json.loads(metadata.get("redblue.record", "{}"))
    except json.JSONDecodeError:
        raise ModelError(f"{path} has corrupt metadata; re-save the model") from None
    model = build_model(spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path} does not match its {arch} spec ({first}); re-save the model") from None
    return LoadedModel(model=model.to(device).eval(), spec=spec, record=record)
