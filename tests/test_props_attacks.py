"""Property-based tests (Hypothesis) of the attack contract, for EVERY registered attack, and of the
spec parsers.

Drawn per example: the image shape (channels, height, width), the number of classes, the batch size (0, 1, odd, even),
float32 or float64, pixels pinned at exactly 0 and 1, eps (0, the largest, anything between),
the model's mode and which parameters are frozen, and the generator's seed. Every attack must
return a detached image of x's shape, device and dtype, inside the eps-ball and [0, 1], leave x,
y, the model's mode, its requires_grad flags and its .grad untouched, return x at eps 0, and
repeat itself exactly for the same seed. NaN or infinite pixels, or pixels outside [0, 1], must be
refused with one AttackError line. The contract runs three times per attack: on drawn small
shapes (1 or 3 channels, sides 1..9; MNIST's for the transfer attacks), on CIFAR's 3x32x32 and on
an odd 1x17x23, the last two with surrogates of their own shape. Random text given to the spec parsers may only raise a
RedblueError.

Profiles (tests/hypothesis_profiles.py): derandomised and bounded by default, HYPOTHESIS_PROFILE=slow
for many random examples.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from redblue.attacks import ATTACKS, parse_attack, split_attack_list
from redblue.attacks.core import per_sample_norm
from redblue.config import split_spec
from redblue.errors import AttackError, RedblueError
from redblue.models import MLPSpec, build_model, save_model

NAMES = sorted(ATTACKS)
N_CLASSES = 10  # the transfer surrogates' classes
# small budgets for whichever of these fields an attack has, so every call takes milliseconds
CHEAP = {"steps": 3, "n_iter": 5, "n_queries": 30, "binary_search_steps": 2, "restarts": 2, "n_target_classes": 3}
INNER = {"linf": "pgd/steps=2/restarts=2", "l2": "pgd-l2/steps=2/restarts=2"}
MNIST_SHAPE = (1, 28, 28)  # the transfer attacks' surrogate for drawn shapes is an MNIST model
# which shapes an example may have: drawn small ones, or one fixed larger shape
FAMILIES = {"drawn": None, "3x32x32": (3, 32, 32), "1x17x23": (1, 17, 23)}


@pytest.fixture(scope="module")
def surrogates(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int, int], Path]:
    """A surrogate model file per fixed shape (10 classes), for the transfer attacks."""
    folder = tmp_path_factory.mktemp("surrogate")
    paths = {}
    for shape in (MNIST_SHAPE, FAMILIES["3x32x32"], FAMILIES["1x17x23"]):
        torch.manual_seed(5)
        spec = MLPSpec(hidden=12, dropout_input=0.0, dropout_hidden=0.0, in_features=math.prod(shape))
        paths[shape] = folder / ("surrogate-" + "x".join(map(str, shape)) + ".safetensors")
        save_model(paths[shape], build_model(spec), spec)
    return paths


def tiny_model(shape: tuple[int, int, int], dtype: torch.dtype, seed: int, classes: int = N_CLASSES) -> nn.Module:
    """(C, H, W) -> classes through 12 ReLU units, with dropout (so the mode matters)."""
    gen = torch.Generator().manual_seed(seed)
    n_in = shape[0] * shape[1] * shape[2]
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, 12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, classes))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen) / parameter.shape[-1] ** 0.5 * 2)
    return model.to(dtype)


def params_for(name: str, eps: float, surrogate: Path) -> Any:
    entry = ATTACKS[name]
    fields = {f.name for f in dataclasses.fields(entry.params_type)}
    values: dict[str, Any] = {key: value for key, value in CHEAP.items() if key in fields}
    if "surrogate" in fields:
        values["surrogate"] = str(surrogate)
    if "attack" in fields:
        values["attack"] = INNER[entry.norm]
    return entry.params(eps=eps, **values)


@st.composite
def cases(draw: st.DrawFn, name: str, family: str = "drawn") -> dict[str, Any]:
    """One drawn situation for attack `name`: images, labels, eps, model, mode, seed; the shape is
    drawn for the "drawn" family and fixed for the others."""
    entry = ATTACKS[name]
    fixed = FAMILIES[family]
    if fixed is not None:
        shape = fixed
    elif entry.threat == "transfer":
        shape = MNIST_SHAPE
    else:
        shape = (draw(st.sampled_from([1, 3])), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    # a transfer attack's labels must exist in its surrogate; the others meet 4 to 10 classes
    classes = N_CLASSES if entry.threat == "transfer" else draw(st.sampled_from([10, 7, 4]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(st.sampled_from([0, 1, 2, 3, 5, 7]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=gen, dtype=dtype)
    # adversarial pixel values: whole regions at exactly 0 and 1, where clipping decides the step
    pinned = draw(st.sampled_from(["none", "zeros", "ones", "both", "all-zero", "all-one"]))
    if pinned in ("zeros", "both"):
        x[..., : (shape[1] + 1) // 2, :] = 0.0
    if pinned in ("ones", "both"):
        x[..., shape[1] // 2 :, :] = 1.0
    if pinned == "all-zero":
        x.zero_()
    if pinned == "all-one":
        x.fill_(1.0)
    y = torch.randint(0, classes, (n,), generator=gen)
    top = 1.0 if entry.norm == "linf" else 30.0
    eps = draw(st.one_of(st.just(0.0), st.just(top), st.floats(0.0, top, allow_subnormal=True)))
    return {
        "x": x, "y": y, "eps": eps, "shape": shape, "classes": classes, "dtype": dtype, "seed": seed,
        "training": draw(st.booleans()), "frozen": draw(st.booleans()),
    }  # fmt: skip


def run(name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, surrogate: Path, seed: int) -> Tensor:
    entry = ATTACKS[name]
    return entry(model, x, y, params_for(name, eps, surrogate), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", NAMES)
def test_contract_holds_for_drawn_images_eps_dtypes_and_modes(name: str, family: str, surrogates: dict[Any, Path]):
    norm = ATTACKS[name].norm

    @given(case=cases(name, family))
    def check(case: dict[str, Any]) -> None:
        x, y, eps = case["x"], case["y"], case["eps"]
        surrogate = surrogates.get(case["shape"], surrogates[MNIST_SHAPE])
        model = tiny_model(case["shape"], case["dtype"], case["seed"], case["classes"]).train(case["training"])
        if case["frozen"]:
            model[1].weight.requires_grad_(False)
        flags = [p.requires_grad for p in model.parameters()]
        x_before, y_before = x.clone(), y.clone()

        torch.manual_seed(1)  # a different global RNG state each time: only the generator may matter
        x_adv = run(name, model, x, y, eps, surrogate, case["seed"])
        torch.manual_seed(2)
        again = run(name, model, x, y, eps, surrogate, case["seed"])

        assert torch.equal(x, x_before) and torch.equal(y, y_before), "the input was modified"
        assert all(m.training == case["training"] for m in model.modules()), "the model's mode changed"
        assert [p.requires_grad for p in model.parameters()] == flags, "requires_grad flags changed"
        assert all(p.grad is None for p in model.parameters()), "weight gradients were written"
        assert not x_adv.requires_grad and x_adv.grad_fn is None
        assert (x_adv.shape, x_adv.dtype, x_adv.device) == (x.shape, x.dtype, x.device)
        assert torch.equal(x_adv, again), "not reproducible from its generator"
        assert bool(((x_adv >= 0) & (x_adv <= 1)).all()), "left [0, 1]"
        slack = 1e-6 if case["dtype"] == torch.float32 else 1e-12
        distance = per_sample_norm(x_adv - x, norm)
        assert bool((distance <= eps * (1 + slack) + slack).all()), f"left the {norm} ball: {distance.max()} > {eps}"
        if eps == 0.0:
            assert torch.equal(x_adv, x), "moved pixels at eps 0"

    check()


POISON = [float("nan"), float("inf"), float("-inf"), 1.5, -0.25, 1e30]


@pytest.mark.parametrize("name", NAMES)
def test_bad_pixels_are_refused_with_one_attack_error_line(name: str, surrogates: dict[Any, Path]):
    @given(case=cases(name), poison=st.sampled_from(POISON), where=st.floats(0.0, 1.0, exclude_max=True))
    def check(case: dict[str, Any], poison: float, where: float) -> None:
        x, y = case["x"], case["y"]
        assume(len(x) > 0)
        x.view(-1)[int(where * x.numel())] = poison
        model = tiny_model(case["shape"], case["dtype"], case["seed"], case["classes"]).eval()
        with pytest.raises(AttackError) as caught:
            run(name, model, x, y, case["eps"], surrogates[MNIST_SHAPE], case["seed"])
        message = str(caught.value)
        assert "\n" not in message
        expected = "NaN or infinite pixels" if poison != poison or abs(poison) == float("inf") else "pixels must be in [0, 1]"
        assert expected in message, message

    check()


# --- the spec parsers ------------------------------------------------------------------------------

FIELD_NAMES = sorted({f.name for entry in ATTACKS.values() for f in dataclasses.fields(entry.params_type)})
NASTY_VALUES = ["", " ", "0", "-0", "1", "-1", "0.1", "1e400", "-1e400", "nan", "inf", "-inf", "1_0", "0x10",
                "9" * 400, "-" + "9" * 30, "١٢", "²", "true", "false", "none", "None", "random", "3", "=", ":",
                "pgd", "pgd/steps=2", "transfer/attack=pgd", "pgd/eps=0.1", "fgsm/", "\x00", "é"]  # fmt: skip


@st.composite
def specs(draw: st.DrawFn) -> str:
    """A spec that is nearly right: mostly a real name with a valid eps and one or two of its own
    keys set to nasty values, sometimes garbled names, unknown keys and broken separators."""
    name = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=8)))
    own = [f.name for f in dataclasses.fields(ATTACKS[name].params_type)] if name in ATTACKS else FIELD_NAMES
    key = st.one_of(st.sampled_from(own), st.sampled_from(FIELD_NAMES), st.text(max_size=6))
    value = st.one_of(st.sampled_from(NASTY_VALUES), st.text(max_size=10))
    items = draw(st.lists(st.tuples(key, st.sampled_from(["=", "=", "=", "==", ""]), value), max_size=3))
    if draw(st.booleans()):
        items.insert(0, ("eps", "=", draw(st.sampled_from(["0.1", "0.3", "1"]))))
    return name + draw(st.sampled_from([":", ":", "", "::"])) + ",".join(k + sep + v for k, sep, v in items)


# parsing takes microseconds: many more examples than the attack suites, in either profile
PARSER_SETTINGS = settings(max_examples=15 * settings.default.max_examples)


@PARSER_SETTINGS
@given(text=st.one_of(st.text(), specs()))
def test_split_spec_never_crashes(text: str):
    try:
        name, values = split_spec(text)
    except RedblueError as error:
        assert "\n" not in str(error)
    else:
        assert name and all(isinstance(v, str) for v in values.values())


@PARSER_SETTINGS
@given(text=st.one_of(st.text(), specs()))
def test_parse_attack_never_crashes(text: str):
    try:
        entry, params = parse_attack(text)
    except RedblueError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(params, entry.params_type)


@pytest.mark.parametrize("name", NAMES)
def test_every_field_with_every_nasty_value_parses_or_is_refused_in_one_line(name: str):
    """Exhaustive where random text is too sparse: each field of the attack, a valid eps beside it."""
    for field in dataclasses.fields(ATTACKS[name].params_type):
        for value in NASTY_VALUES:
            text = f"{name}:{field.name}={value}" if field.name == "eps" else f"{name}:eps=0.1,{field.name}={value}"
            try:
                entry, params = parse_attack(text)
            except RedblueError as error:
                assert "\n" not in str(error), text
            else:
                assert isinstance(params, entry.params_type), text


@PARSER_SETTINGS
@given(text=st.one_of(st.text(), st.lists(specs(), max_size=3).map(",".join)))
def test_split_attack_list_never_crashes(text: str):
    try:
        assert all(split_attack_list(text))
    except RedblueError as error:
        assert "\n" not in str(error)
