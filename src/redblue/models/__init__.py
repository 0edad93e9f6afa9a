"""The blue team's classifiers: the zoo of architectures built from a spec (`zoo`, `cifar`), their
safetensors files (`files`, loaded without pickle), the `Normalize` layer (`layers`), and a user's
own model built from their code and weights (`user`).

Every model maps pixels in [0, 1] of shape (N, C, H, W) to logits (N, classes); any normalisation
is a layer inside the model.
"""

from redblue.models.cifar import NORMALIZATIONS, STATISTICS, CNN7Spec, PreActResNet18Spec, build_cnn7, build_preact_resnet18
from redblue.models.layers import CIFAR10_MEAN, CIFAR10_STD, Normalize
from redblue.models.files import FORMAT_VERSION, LEGACY_ARCH_NAMES, LoadedModel, load_model, save_model, save_tensors
from redblue.models.zoo import (
    MLP_INITS,
    MODELS,
    CNNLargeSpec,
    CNNSmallSpec,
    CNNSpec,
    MLPSpec,
    ModelEntry,
    arch_of,
    build_cnn,
    build_cnn_large,
    build_cnn_small,
    build_mlp,
    build_model,
    check_fits,
    fit_spec,
    input_shape,
    parameter_count,
    parse_model,
    spec_text,
)

__all__ = [
    "NORMALIZATIONS", "STATISTICS", "CNN7Spec", "PreActResNet18Spec", "build_cnn7", "build_preact_resnet18",
    "CIFAR10_MEAN", "CIFAR10_STD", "Normalize",
    "FORMAT_VERSION", "LEGACY_ARCH_NAMES", "MLP_INITS", "MODELS",
    "CNNLargeSpec", "CNNSmallSpec", "CNNSpec", "LoadedModel", "MLPSpec", "ModelEntry",
    "arch_of", "build_cnn", "build_cnn_large", "build_cnn_small", "build_mlp", "build_model", "check_fits", "fit_spec",
    "input_shape", "load_model", "parameter_count", "parse_model", "save_model", "save_tensors", "spec_text",
]
