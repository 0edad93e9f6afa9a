"""The blue team's classifiers (the paper's MLP and three CNNs), built from a spec, saved as safetensors.

Every model maps pixels in [0, 1] of shape (N, C, H, W) (MNIST, Fashion-MNIST, KMNIST: 1 x 28 x 28)
to logits (N, classes); any normalisation is a layer inside the model. Each is a plain
`nn.Sequential`, so certified bounds can walk it layer by layer. Weights never touch pickle.

The zoo (parameter counts at the default 1 x 28 x 28 input and 10 classes, checked in the tests
against the papers' counts):

| name        | layers                                                              | parameters |
|-------------|---------------------------------------------------------------------|-----------:|
| `mlp`       | the paper's 784 -> 625 (ReLU) -> 10, dropout 0.2 / 0.5              |    496,885 |
| `cnn-small` | conv 16 4x4 s2 -> conv 32 4x4 s2 -> 100 -> 10 (Wong & Kolter, 2018) |    166,406 |
| `cnn`       | conv 32 5x5 + pool -> conv 64 5x5 + pool -> 1024 -> 10 (Madry, 2018) |  3,274,634 |
| `cnn-large` | conv 32 3x3, 32 4x4 s2, 64 3x3, 64 4x4 s2 -> 512 -> 512 -> 10       |  1,974,762 |

File format 2 names the architectures as above. Format 1 (before the zoo) had `mlp` and `cnn`,
where `cnn` was the small CNN: `load_model` reads a format-1 `cnn` as `cnn-small`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from redblue.config import default_file_mode, from_dict, from_text_values, split_spec
from redblue.errors import ConfigError, ModelError, require_choice, require_in_range, require_positive

FORMAT_VERSION = "2"
# Format 1 named the small CNN `cnn`; from format 2 on, `cnn` is Madry et al.'s network.
LEGACY_ARCH_NAMES = {"1": {"mlp": "mlp", "cnn": "cnn-small"}}

MLP_INITS = ("torch", "normal-0.01")


@dataclass(frozen=True)
class MLPSpec:
    """784 -> hidden (ReLU) -> classes, with dropout on the input and on the hidden layer.

    Defaults follow the Theano tutorial the paper builds on (Newmu's modern_net): 625 hidden
    units, dropout 0.2 on the input and 0.5 on the hidden layer. The input is flattened, so any
    image with in_features values fits (1 x 28 x 28 = 784).
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


def _require_image(spec: Any, smallest: int) -> None:
    for name in ("in_channels", "image_size", "classes"):
        require_positive(name, getattr(spec, name))
    if spec.image_size < smallest:
        raise ConfigError(f"image_size must be >= {smallest} for this network, got {spec.image_size}")


@dataclass(frozen=True)
class CNNSmallSpec:
    """Conv(channels1, 4x4, stride 2, pad 1) -> ReLU -> Conv(channels2, 4x4, stride 2, pad 1) -> ReLU
    -> Linear(hidden) -> ReLU -> Linear(classes).

    The small model of the certified-training literature (Wong & Kolter, 2018; Wong et al., 2018,
    "Conv-Small": 166,406 parameters on MNIST): strides instead of pooling. Trains in minutes on a CPU.
    """

    channels1: int = 16
    channels2: int = 32
    hidden: int = 100
    classes: int = 10
    in_channels: int = 1
    image_size: int = 28

    def __post_init__(self) -> None:
        for name in ("channels1", "channels2", "hidden"):
            require_positive(name, getattr(self, name))
        _require_image(self, 4)


@dataclass(frozen=True)
class CNNSpec:
    """Madry et al.'s MNIST network (2018, `mnist_challenge/model.py`): Conv(channels1, 5x5, 'same')
    -> ReLU -> MaxPool 2x2 -> Conv(channels2, 5x5, 'same') -> ReLU -> MaxPool 2x2 -> Linear(hidden)
    -> ReLU -> Linear(classes); 3,274,634 parameters on MNIST, as theirs.

    'same' padding is 2 for a 5x5 kernel; the pools round up (TensorFlow's 'SAME' pooling), which on
    28 x 28 is the same as rounding down (28 -> 14 -> 7). PyTorch's default init, not their
    truncated normal. Max-pooling is outside what `redblue.certify` bounds, so this network gets
    empirical (attack) numbers only; `cnn-small` and `cnn-large` are the certifiable ones.
    """

    channels1: int = 32
    channels2: int = 64
    hidden: int = 1024
    classes: int = 10
    in_channels: int = 1
    image_size: int = 28

    def __post_init__(self) -> None:
        for name in ("channels1", "channels2", "hidden"):
            require_positive(name, getattr(self, name))
        _require_image(self, 1)


@dataclass(frozen=True)
class CNNLargeSpec:
    """Conv(channels1, 3x3) -> Conv(channels1, 4x4, stride 2) -> Conv(channels2, 3x3) -> Conv(channels2,
    4x4, stride 2) -> Linear(hidden) -> Linear(hidden) -> Linear(classes), ReLU between, padding 1.

    The large model of certified training: Wong et al. (2018, "Scaling provable adversarial
    defenses"), "Conv-Large", 1,974,762 parameters on MNIST; the CROWN-IBP code builds it as
    `model_cnn_4layer(width=8, linear_size=512)` (Zhang et al., 2020). (CROWN-IBP's "DM-large" is a
    different, wider network: five 3x3 convolutions of 64-128 channels and one dense layer of 512.)
    """

    channels1: int = 32
    channels2: int = 64
    hidden: int = 512
    classes: int = 10
    in_channels: int = 1
    image_size: int = 28

    def __post_init__(self) -> None:
        for name in ("channels1", "channels2", "hidden"):
            require_positive(name, getattr(self, name))
        _require_image(self, 4)


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


def _halved(size: int) -> int:
    """The output size of a 4x4, stride 2, padding 1 convolution (28 -> 14 -> 7)."""
    return (size - 2) // 2 + 1


def build_cnn_small(spec: CNNSmallSpec) -> nn.Sequential:
    side = _halved(_halved(spec.image_size))
    return nn.Sequential(
        nn.Conv2d(spec.in_channels, spec.channels1, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(spec.channels1, spec.channels2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(spec.channels2 * side * side, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.classes),
    )


def build_cnn(spec: CNNSpec) -> nn.Sequential:
    side = math.ceil(math.ceil(spec.image_size / 2) / 2)
    return nn.Sequential(
        nn.Conv2d(spec.in_channels, spec.channels1, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(spec.channels1, spec.channels2, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(spec.channels2 * side * side, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.classes),
    )


def build_cnn_large(spec: CNNLargeSpec) -> nn.Sequential:
    side = _halved(_halved(spec.image_size))
    return nn.Sequential(
        nn.Conv2d(spec.in_channels, spec.channels1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(spec.channels1, spec.channels1, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(spec.channels1, spec.channels2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(spec.channels2, spec.channels2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(spec.channels2 * side * side, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.classes),
    )


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its spec class, its builder and one line on what it is."""

    name: str
    spec_type: type
    build: Callable[[Any], nn.Module]
    summary: str


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("mlp", MLPSpec, build_mlp, "the paper's one-hidden-layer ReLU MLP with dropout"),
        ModelEntry("cnn-small", CNNSmallSpec, build_cnn_small, "small strided CNN of certified training (Wong & Kolter 2018)"),
        ModelEntry("cnn", CNNSpec, build_cnn, "Madry et al.'s MNIST CNN (2018), max-pooling"),
        ModelEntry("cnn-large", CNNLargeSpec, build_cnn_large, "large strided CNN of certified training (Wong et al. 2018)"),
    )
}


def arch_of(spec: Any) -> str:
    for entry in MODELS.values():
        if type(spec) is entry.spec_type:
            return entry.name
    raise ModelError(f"{type(spec).__name__} is not a model spec; use one of: {', '.join(MODELS)}")


def parse_model(text: str) -> Any:
    """`mlp:hidden=800,dropout_hidden=0.3` -> MLPSpec(hidden=800, dropout_hidden=0.3)."""
    name, values = split_spec(text)
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return from_text_values(MODELS[name].spec_type, values, what=f"model {name!r}")


def spec_text(spec: Any) -> str:
    """The spec as `parse_model` reads it, naming only the fields that differ from the defaults."""
    changed = [
        f"{f.name}={getattr(spec, f.name)}"
        for f in dataclasses.fields(spec)
        if getattr(spec, f.name) != f.default
    ]
    return arch_of(spec) + (":" + ",".join(changed) if changed else "")


def build_model(spec: Any) -> nn.Module:
    return MODELS[arch_of(spec)].build(spec)


def parameter_count(model: nn.Module) -> int:
    """The number of trainable scalars (weights and biases)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def input_shape(spec: Any) -> tuple[int, ...]:
    """The shape of one input the model reads: (C, H, W) for a CNN; (in_features,) for the MLP,
    which flattens whatever image it gets."""
    if isinstance(spec, MLPSpec):
        return (spec.in_features,)
    return (spec.in_channels, spec.image_size, spec.image_size)


def check_fits(spec: Any, *, image_shape: tuple[int, ...], classes: int, dataset: str = "the data") -> None:
    """Raise ModelError (one line) when images of `image_shape` (C, H, W) and `classes` labels do not fit the model."""
    expected = input_shape(spec)
    fits = math.prod(image_shape) == expected[0] if len(expected) == 1 else tuple(image_shape) == expected
    if not fits:
        wanted = f"{expected[0]} pixels" if len(expected) == 1 else "x".join(map(str, expected))
        raise ModelError(
            f"{dataset} has images of shape {'x'.join(map(str, image_shape))} but the model ({spec_text(spec)}) "
            f"reads {wanted}; use a dataset that matches the model"
        )
    if classes != spec.classes:
        raise ModelError(
            f"{dataset} has {classes} classes but the model ({spec_text(spec)}) has {spec.classes}; "
            "use a dataset that matches the model"
        )


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
