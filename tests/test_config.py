"""Spec parsing and atomic writes: the pieces every verb's input and output go through."""

from __future__ import annotations

import os
import stat

import pytest

from redblue.config import atomic_write_bytes, parse_number, split_spec
from redblue.errors import ConfigError
from redblue.models import MLPSpec, build_model, save_model


@pytest.mark.parametrize(("text", "value"), [("0.1", 0.1), ("8/255", 8 / 255), ("2/255", 2 / 255), ("-1/4", -0.25), ("1e-3", 1e-3)])
def test_numbers_and_fractions_read_as_floats(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["8/0", "0/0", "a/2", "8/255/2", "", "inf/inf"])
def test_bad_fractions_are_value_errors(text):
    with pytest.raises(ValueError):
        parse_number(text)


def test_a_fraction_sets_a_float_parameter_and_a_bad_one_is_one_message():
    from redblue.attacks import parse_attack

    assert parse_attack("pgd:eps=8/255,steps=10")[1].eps == 8 / 255
    with pytest.raises(ConfigError, match=r"eps must be of type float, got '8/0'"):
        parse_attack("pgd:eps=8/0")


def test_split_spec_reads_name_and_values():
    assert split_spec(" pgd : eps=0.3, steps=40 ,") == ("pgd", {"eps": "0.3", "steps": "40"})
    assert split_spec("fgsm") == ("fgsm", {})


@pytest.mark.parametrize("text", ["fgsm:eps=0.1,eps=0.3", ":eps=0.1", "pgd:steps"])
def test_split_spec_refuses_ambiguous_or_malformed_text(text):
    with pytest.raises(ConfigError) as info:
        split_spec(text)
    assert "\n" not in str(info.value)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_get_the_permissions_of_a_plain_open_and_leave_no_temporary(tmp_path, umask_022):
    target = tmp_path / "sub" / "result.json"
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    model_file = tmp_path / "model.safetensors"
    save_model(model_file, build_model(MLPSpec(hidden=4)), MLPSpec(hidden=4))
    assert stat.S_IMODE(model_file.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model.safetensors", "result.json", "sub"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.json"
    target.write_bytes(b"old")

    class Unwritable:
        def __len__(self):
            raise OSError("disk full")

    with pytest.raises((OSError, TypeError)):
        atomic_write_bytes(target, Unwritable())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
