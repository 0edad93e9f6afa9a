"""Frozen-dataclass configuration: parse `name:key=value,...` specs and read/write TOML.

The same dataclasses are the CLI's options, the TOML schema of experiment files, and the record
each run writes beside its results, so there is exactly one description of every parameter.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

import tomli_w

from redblue.errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _shown(key: str) -> str:
    """A user-given key as it appears in a one-line message: as typed, or quoted with escapes
    when it holds a newline or another unprintable character."""
    return key if key.isprintable() else repr(key)


def split_spec(text: str) -> tuple[str, dict[str, str]]:
    """Split `pgd:eps=0.3,steps=40` into ("pgd", {"eps": "0.3", "steps": "40"})."""
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"empty name in spec {text!r}; write it as name:key=value,...")
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"cannot read {item!r} in {text!r}; write parameters as key=value")
        key = key.strip()
        if key in values:
            raise ConfigError(f"{_shown(key)} is given twice in {text!r}; give each parameter once")
        values[key] = value.strip()
    return name, values


def _field_types(cls: type) -> dict[str, Any]:
    """The fields a caller may set (init=False fields, such as an objective's fixed name, are not)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _valid(names: Any) -> str:
    names = list(names)
    return f"valid: {', '.join(names)}" if names else "it takes no parameters"


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def parse_number(text: str) -> float:
    """A float from text, or a fraction of two (`8/255`, as CIFAR budgets are written); ValueError otherwise."""
    numerator, slash, denominator = text.partition("/")
    if not slash:
        return float(text)
    value = float(numerator) / float(denominator) if float(denominator) != 0 else math.nan
    if math.isnan(value):
        raise ValueError(text)
    return value


def convert_text(name: str, text: str, tp: Any) -> Any:
    """Convert one text value to the field type `tp` (int, float, bool, str, Optional, tuple)."""
    inner, optional = _unwrap_optional(tp)
    if optional and text.lower() in {"none", "null", ""}:
        return None
    origin = typing.get_origin(inner)
    if origin is tuple:
        (item_type, *_) = typing.get_args(inner)
        return tuple(convert_text(name, part, item_type) for part in text.split("/") if part)
    if origin is typing.Literal:
        allowed = typing.get_args(inner)
        if text not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {text!r}")
        return text
    try:
        if inner is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if inner is int:
            value = int(text)
            if not -(2**63) <= value < 2**63:  # no count or size is larger, and none overflows a float check
                raise ConfigError(f"{name} must fit in 64 bits, got {text!r}")
            return value
        if inner is float:
            return parse_number(text)
        if inner is str:
            return text
    except ValueError:
        raise ConfigError(f"{name} must be of type {inner.__name__}, got {text!r}") from None
    raise ConfigError(f"{name} has a type ({inner}) that cannot be set from text")


def from_text_values(cls: type[T], values: dict[str, str], *, what: str, **fixed: Any) -> T:
    """Build the frozen dataclass `cls` from text values; unknown keys fail with the valid ones."""
    types_by_name = _field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        raise ConfigError(
            f"{what} has no parameter {', '.join(map(_shown, unknown))}; {_valid(types_by_name)}"
        )
    kwargs = {key: convert_text(f"{what} {key}", text, types_by_name[key]) for key, text in values.items()}
    kwargs.update(fixed)
    return construct(cls, kwargs, what=what)


def construct(cls: type[T], kwargs: dict[str, Any], *, what: str) -> T:
    """Call `cls(**kwargs)`, turning a missing or unexpected argument into a one-line ConfigError."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ConfigError(f"{what} has no parameter {', '.join(map(_shown, unknown))}; {_valid(names)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{what} needs {', '.join(missing)} (for example {missing[0]}=...)")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a TOML-ready dict: tuples become lists, None values are left out."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(dataclasses.asdict(obj))


def from_dict(cls: type[T], data: dict[str, Any], *, what: str | None = None) -> T:
    """Build a (possibly nested) frozen dataclass from a dict read from TOML or JSON."""
    what = what or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a table, got {type(data).__name__}")
    types_by_name = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in types_by_name:
            raise ConfigError(f"{what} has no field {key!r}; {_valid(types_by_name)}")
        kwargs[key] = _from_value(f"{what}.{key}", value, types_by_name[key])
    return construct(cls, kwargs, what=what)


def _from_value(name: str, value: Any, tp: Any) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None and optional:
        return None
    if isinstance(inner, type) and hasattr(inner, "from_record"):  # a polymorphic record, e.g. an objective
        return inner.from_record(value, what=name)
    if dataclasses.is_dataclass(inner):
        return from_dict(inner, value, what=name)
    origin = typing.get_origin(inner)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        args = typing.get_args(inner)
        item_type = args[0]
        return tuple(_from_value(f"{name}[]", v, item_type) for v in value)
    if origin is typing.Literal:
        if value not in typing.get_args(inner):
            allowed = ", ".join(map(str, typing.get_args(inner)))
            raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        return value
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner in (int, float, str, bool) and not (
        isinstance(value, inner) and not (inner is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{name} must be of type {inner.__name__}, got {value!r}")
    return value


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix it and retry") from None


def default_file_mode() -> int:
    """The mode a plain open() gives a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename it in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.chmod(fd, default_file_mode())  # mkstemp creates 0600; use what a plain open() would
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_toml(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    atomic_write_bytes(path, tomli_w.dumps(data).encode())


def same(a: float | None, b: float | None) -> bool:
    """Equal as configuration values (lambdas, eps): both None, or equal up to float rounding."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
