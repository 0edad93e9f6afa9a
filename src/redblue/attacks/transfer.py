"""The transfer attack (Papernot et al., 2016; Tramer et al., 2018): craft adversarial images with
a white-box attack on a surrogate model, then hand them to the target unchanged.

The target model is never queried: it is only where the images are evaluated. Written as text:

    transfer:surrogate=runs/other/model.safetensors,attack=pgd/steps=40/restarts=2,eps=0.1

`surrogate` is a model file written by `redblue train` (safetensors, loaded without pickle);
`attack` is any registered attack of the same norm, with its own parameters after '/' instead of
',' (the comma already separates transfer's own parameters); eps is transfer's and is passed to
the inner attack. `transfer` is the L-inf form, `transfer-l2` the L2 form.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import check_eps
from redblue.attacks.registry import AttackEntry, get_attack, parse_attack, register, run_attack
from redblue.config import split_spec
from redblue.errors import ConfigError, ModelError
from redblue.models import load_model


def inner_spec(attack: str) -> str:
    """`pgd/steps=40/restarts=2` -> `pgd:steps=40,restarts=2` (the registry's text form)."""
    name, _, rest = attack.partition("/")
    return f"{name}:{rest.replace('/', ',')}" if rest else name


def parse_inner(attack: str, *, eps: float, norm: str) -> tuple[AttackEntry, Any]:
    """The inner attack's entry and parameters (with transfer's eps), validated for a transfer."""
    text = inner_spec(attack)
    name, values = split_spec(text)
    entry = get_attack(name)
    if entry.threat == "transfer":
        raise ConfigError(f"a transfer attack cannot craft with another transfer attack ({entry.name}); pick e.g. attack=pgd")
    if entry.norm != norm:
        suggestion = "transfer-l2" if entry.norm == "l2" else "transfer"
        raise ConfigError(f"attack {entry.name!r} is {entry.norm} but this transfer is {norm}; use {suggestion}")
    if "eps" in values:
        raise ConfigError(f"set eps on the transfer attack itself, not inside attack={attack!r}")
    return parse_attack(text, eps=eps)


@dataclass(frozen=True)
class TransferParams:
    """Transfer in L-inf: craft with `attack` (a registered L-inf attack) on the `surrogate` model file."""

    eps: float
    surrogate: str
    attack: str = "pgd"

    norm: ClassVar[str] = "linf"

    def __post_init__(self) -> None:
        check_eps(self.eps, self.norm)
        if not self.surrogate:
            raise ConfigError("transfer needs surrogate=PATH, a model file written by `redblue train`")
        parse_inner(self.attack, eps=self.eps, norm=self.norm)


@dataclass(frozen=True)
class TransferL2Params(TransferParams):
    """Transfer in L2: craft with `attack` (a registered L2 attack) on the `surrogate` model file."""

    attack: str = "pgd-l2"

    norm: ClassVar[str] = "l2"


@functools.lru_cache(maxsize=4)
def _cached_surrogate(path: str, mtime_ns: int, size: int, device: str, dtype: torch.dtype) -> nn.Module:
    # keyed on the file's mtime and size, so a retrained surrogate is reloaded
    return load_model(path, device=device).model.to(dtype=dtype)


def load_surrogate(path: str | os.PathLike[str], *, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The surrogate model in eval mode on `device` with `dtype`; loaded once per file version."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise ModelError(f"surrogate model {path} does not exist; train one with `redblue train` or check the path")
    stat = resolved.stat()
    return _cached_surrogate(str(resolved), stat.st_mtime_ns, stat.st_size, str(device), dtype)


def run_transfer(
    model: nn.Module, x: Tensor, y: Tensor, params: TransferParams, generator: Generator | None
) -> tuple[Tensor, Tensor]:
    """Transfer's runner (see `registry`): the inner attack's runner on the surrogate; `model` (the
    target) is not used."""
    entry, inner_params = parse_inner(params.attack, eps=params.eps, norm=params.norm)
    surrogate_model = load_surrogate(params.surrogate, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        n_classes = surrogate_model(x[:1]).shape[1]
    if len(y) and int(y.max()) >= n_classes:  # a sync, once per call: a wrong label would crash the inner attack
        raise ModelError(
            f"surrogate {params.surrogate} has {n_classes} classes but a label is {int(y.max())}; "
            "use a surrogate trained on the same dataset"
        )
    return entry.run(surrogate_model, x, y, inner_params, generator)


@register("transfer", TransferParams, run=run_transfer, norm="linf", threat="transfer")
def transfer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    surrogate: str,
    attack: str = TransferParams.attack,
    generator: Generator | None = None,
) -> Tensor:
    """Transfer in L-inf: crafted on the surrogate file by `attack`, e.g. attack=pgd/steps=40/restarts=2.

    x: (N, ...) pixels in [0, 1]; y: (N,) labels. Returns x_adv under the inner attack's contract
    (detached, on x's device, in [0, 1], within eps of x in L-inf). `attack`: an L-inf attack spec
    with '/' between its parameters, e.g. "pgd/steps=40/restarts=2".
    """
    params = TransferParams(eps=eps, surrogate=surrogate, attack=attack)
    return run_attack("transfer", run_transfer, model, x, y, params, generator)


@register("transfer-l2", TransferL2Params, run=run_transfer, norm="l2", threat="transfer")
def transfer_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    surrogate: str,
    attack: str = TransferL2Params.attack,
    generator: Generator | None = None,
) -> Tensor:
    """Transfer in L2: crafted on the surrogate file by an L2 `attack`, e.g. attack=pgd-l2/steps=40.

    Same contract as `transfer`, with eps the L2 radius and `attack` an L2 attack spec.
    """
    params = TransferL2Params(eps=eps, surrogate=surrogate, attack=attack)
    return run_attack("transfer-l2", run_transfer, model, x, y, params, generator)
