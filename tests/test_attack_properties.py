"""The attack contract (DESIGN.md), checked for EVERY registered attack: a new entry in
redblue.attacks.ATTACKS inherits this suite without being named here.

A tiny fixed-weight MLP and 8 images keep the file to a few seconds; iteration budgets are cut
to a few steps through whichever of the common budget fields an attack's parameters have. Every
clause runs on three input shapes: MNIST's 1x28x28 with 10 classes, CIFAR's 3x32x32 with 10, and
an odd 1x17x23 (not square, odd sides) with 7 classes, so no attack may assume 28x28, one channel
or ten classes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from redblue.attacks import ATTACKS
from redblue.attacks.core import per_sample_norm
from redblue.models import MLPSpec, build_model, save_model

NAMES = sorted(ATTACKS)
EPS = {"linf": 0.1, "l2": 1.0}
BIG_EPS = {"linf": 0.3, "l2": 3.0}
# small budgets for whichever of these fields an attack has, so every attack runs in milliseconds
CHEAP = {"steps": 3, "n_iter": 5, "n_queries": 40, "binary_search_steps": 2, "restarts": 2}
# a transfer attack's inner attack, per norm (cheap, with restarts so that path runs too)
INNER = {"linf": "pgd/steps=3/restarts=2", "l2": "pgd-l2/steps=3/restarts=2"}


# (C, H, W), classes: MNIST's, CIFAR-10's, and an odd one
SHAPES = {"1x28x28": ((1, 28, 28), 10), "3x32x32": ((3, 32, 32), 10), "1x17x23": ((1, 17, 23), 7)}


@dataclasses.dataclass(frozen=True)
class Case:
    """One input shape of the suite: the image shape, the number of classes, and a surrogate model
    file of that shape for the transfer attacks."""

    shape: tuple[int, int, int]
    classes: int
    surrogate: Path


def tiny_model(case: Case, dtype: torch.dtype = torch.float32) -> nn.Module:
    """(C*H*W)-16-classes ReLU MLP with seeded weights and a dropout layer (which makes train mode
    visible); weights ~ N(0, 0.3^2 * 784 / (C*H*W)), so the L2 size of the input gradient, and with it
    what an L2 eps buys, is about the same at every shape (0.3 at MNIST's, as the suite always had)."""
    gen = torch.Generator().manual_seed(123)
    n_in = math.prod(case.shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, case.classes))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * (784 / n_in) ** 0.5 * torch.randn(parameter.shape, generator=gen))
    return model.to(dtype).eval()


def images(model: nn.Module, case: Case, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """8 images with some rows exactly 0 and 1 (so clipping matters); labels are the model's
    predictions except two, which the model gets wrong (already adversarial)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(8, *case.shape, generator=gen, dtype=dtype)
    x[:, :, :5] = 0.0
    x[:, :, -5:] = 1.0
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[:2] = (y[:2] + 1) % case.classes
    return x, y


@pytest.fixture(scope="module", params=sorted(SHAPES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    shape, classes = SHAPES[request.param]
    torch.manual_seed(5)
    spec = MLPSpec(hidden=12, dropout_input=0.0, dropout_hidden=0.0, in_features=math.prod(shape), classes=classes)
    path = tmp_path_factory.mktemp("surrogate") / f"surrogate-{request.param}.safetensors"
    save_model(path, build_model(spec), spec)
    return Case(shape, classes, path)


def params_for(name: str, eps: float, surrogate: Path, budget: dict[str, int] | None = None) -> Any:
    entry = ATTACKS[name]
    fields = {f.name for f in dataclasses.fields(entry.params_type)}
    values: dict[str, Any] = {key: value for key, value in (budget or CHEAP).items() if key in fields}
    if "surrogate" in fields:
        values["surrogate"] = str(surrogate)
    if "attack" in fields:
        values["attack"] = INNER[entry.norm]
    return entry.params(eps=eps, **values)


def run(name: str, model: nn.Module, x: Tensor, y: Tensor, surrogate: Path, *, eps: float | None = None,
        seed: int = 0, budget: dict[str, int] | None = None) -> Tensor:
    entry = ATTACKS[name]
    params = params_for(name, EPS[entry.norm] if eps is None else eps, surrogate, budget)
    return entry(model, x, y, params, generator=torch.Generator(device=x.device).manual_seed(seed))


def test_the_registry_holds_the_whole_arsenal():
    expected = {"fgsm", "pgd", "pgd-l2", "pgd-t", "pgd-cw", "bim", "mim", "mim-l2", "cw-l2", "deepfool",
                "deepfool-l2", "transfer", "transfer-l2"}
    assert expected <= set(ATTACKS), f"not registered: {sorted(expected - set(ATTACKS))}"


@pytest.mark.parametrize("name", NAMES)
def test_output_inside_eps_ball_and_pixel_box(name: str, case: Case):
    model = tiny_model(case)
    x, y = images(model, case)
    norm = ATTACKS[name].norm
    for eps in (EPS[norm], BIG_EPS[norm]):
        x_adv = run(name, model, x, y, case.surrogate, eps=eps)
        distance = per_sample_norm(x_adv - x, norm)
        assert bool((distance <= eps * (1 + 1e-6) + 1e-6).all()), f"{name} left the {norm} ball: {distance.max()} > {eps}"
        assert bool((x_adv >= 0).all()) and bool((x_adv <= 1).all()), f"{name} left [0, 1]"


@pytest.mark.parametrize("name", NAMES)
def test_input_not_mutated(name: str, case: Case):
    model = tiny_model(case)
    x, y = images(model, case)
    x_before, y_before = x.clone(), y.clone()
    run(name, model, x, y, case.surrogate)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


@pytest.mark.parametrize("name", NAMES)
def test_model_mode_flags_and_grads_restored(name: str, case: Case):
    model = tiny_model(case).train()
    model[1].weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    flags_before = [p.requires_grad for p in model.parameters()]
    x, y = images(tiny_model(case), case)
    run(name, model, x, y, case.surrogate)
    assert all(module.training for module in model.modules()), f"{name} left the model in eval mode"
    assert [p.requires_grad for p in model.parameters()] == flags_before
    assert all(p.grad is None for p in model.parameters()), f"{name} wrote weight gradients"


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_model_stays_in_eval_mode(name: str, case: Case):
    model = tiny_model(case)
    x, y = images(model, case)
    run(name, model, x, y, case.surrogate)
    assert not any(module.training for module in model.modules())


@pytest.mark.parametrize("name", NAMES)
def test_eps_zero_returns_the_input(name: str, case: Case):
    model = tiny_model(case)
    x, y = images(model, case)
    x_adv = run(name, model, x, y, case.surrogate, eps=0.0)
    assert torch.equal(x_adv, x), f"{name} at eps=0 moved pixels by up to {(x_adv - x).abs().max()}"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seeded_generator(name: str, case: Case):
    model = tiny_model(case)
    x, y = images(model, case)
    torch.manual_seed(1)  # different global RNG states: only the explicit generator may matter
    first = run(name, model, x, y, case.surrogate, seed=11)
    torch.manual_seed(2)
    second = run(name, model, x, y, case.surrogate, seed=11)
    assert torch.equal(first, second), f"{name} is not reproducible from its generator"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_output_detached_on_device_and_dtype_of_x(name: str, dtype: torch.dtype, case: Case):
    model = tiny_model(case, dtype)
    x, y = images(model, case, dtype)
    x_adv = run(name, model, x, y, case.surrogate)
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.device == x.device and x_adv.dtype == dtype and x_adv.shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_single_sample_batches(name: str, case: Case):
    """An evaluation that attacks only the samples still robust can hand an attack 0 or 1 of them."""
    model = tiny_model(case)
    x, y = images(model, case)
    assert run(name, model, x[:0], y[:0], case.surrogate).shape == (0, *x.shape[1:])
    one = run(name, model, x[2:3], y[2:3], case.surrogate)
    assert one.shape == x[2:3].shape
    assert float(per_sample_norm(one - x[2:3], ATTACKS[name].norm)[0]) <= EPS[ATTACKS[name].norm] * (1 + 1e-6) + 1e-6


@pytest.mark.parametrize("name", [n for n in NAMES if ATTACKS[n].threat == "white-box"])
def test_white_box_attacks_fool_the_tiny_model_at_a_large_eps(name: str, case: Case):
    """Not a contract clause but a guard against an attack that returns x unchanged."""
    model = tiny_model(case)
    x, y = images(model, case)
    x_adv = run(name, model, x, y, case.surrogate, eps=BIG_EPS[ATTACKS[name].norm], budget={**CHEAP, "steps": 20})
    with torch.no_grad():
        robust = model(x_adv).argmax(dim=1) == y
    assert int(robust.sum()) <= 3, f"{name} left {int(robust.sum())} of 6 correct samples robust at a large eps"
