"""The blue team's classifiers (the paper's MLP and three CNNs): their specs, builders and registry.

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

and two CIFAR-scale networks (`redblue.models.cifar`, defaults 3 x 32 x 32 and 10 classes):
`preact-resnet18` (11,172,170 parameters) and `cnn-7` (17,192,650). Every spec's input fields
(in_features; in_channels, image_size) and classes can be fitted to a dataset with `fit_spec`.

Saving and loading (safetensors, never pickle) is `redblue.models.files`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from redblue.config import from_text_values, split_spec
from redblue.errors import ConfigError, ModelError, require_choice, require_in_range, require_positive
from redblue.models.cifar import CNN7Spec, PreActResNet18Spec, build_cnn7, build_preact_resnet18

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
        ModelEntry("preact-resnet18", PreActResNet18Spec, build_preact_resnet18,
                   "pre-activation ResNet-18 (He et al. 2016) as in Wong et al. 2020; CIFAR defaults, attacks only"),
        ModelEntry("cnn-7", CNN7Spec, build_cnn7,
                   "CNN-7 of certified training (Shi et al. 2021), BatchNorm; CIFAR defaults"),
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


# the spec fields that describe the input and the output, which `fit_spec` fills from a dataset
DATA_FIELDS = ("in_features", "in_channels", "image_size", "classes")


def fit_spec(text: str, *, image_shape: tuple[int, int, int], classes: int, dataset: str = "the data") -> Any:
    """The model spec `text` names, made to fit a dataset: each of its input fields (in_features for
    the MLP; in_channels and image_size for a CNN) and `classes` that the text does not set is taken
    from the dataset's `image_shape` (C, H, W) and `classes`. A field the text sets is kept, and a
    mismatch is one ModelError line (`check_fits`). The CNNs read square images only: a dataset of
    H != W images is refused in one line for them (the MLP flattens any shape)."""
    spec = parse_model(text)
    _, given = split_spec(text)
    channels, height, width = image_shape
    fill: dict[str, Any] = {}
    for field in (f.name for f in dataclasses.fields(spec) if f.name in DATA_FIELDS and f.name not in given):
        if field == "image_size" and height != width:
            raise ModelError(
                f"{arch_of(spec)} reads square images (image_size) but {dataset} has {height}x{width} images; "
                "use mlp, which reads any shape"
            )
        fill[field] = {"in_features": channels * height * width, "in_channels": channels, "image_size": height,
                       "classes": classes}[field]  # fmt: skip
    spec = dataclasses.replace(spec, **fill)  # __post_init__ checks the new values (e.g. too small an image)
    check_fits(spec, image_shape=image_shape, classes=classes, dataset=dataset)
    return spec


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
