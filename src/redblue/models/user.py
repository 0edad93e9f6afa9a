"""A user's own model: an `nn.Module` built by the user's factory (`MODULE:FACTORY`), its weights a
safetensors state_dict; and the refusal of pickle and TorchScript files.

Importing the user's module runs its code: that is the user's choice, made by naming it. Nothing
else executes code from a file: weights are read with safetensors, and a file that is a pickle, a
`torch.save` archive or a TorchScript archive (`torch.jit.save`) is refused before torch sees it.
TorchScript is refused because `torch.jit.load` runs the archive's own compiled code while loading
(its `__setstate__` methods), and that code can read any file and overwrite the bytes of any file
the user may write (`torch.from_file(path, shared=True)`); see the README, "Bring your own model".
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from redblue.config import split_spec
from redblue.errors import ConfigError, ModelError
from redblue.models.files import save_tensors

CODE_METADATA = "redblue.code"  # a weights file that names the code that builds its model (the arena's copies)
PICKLE_PROTOCOL = b"\x80"  # the PROTO opcode that opens a pickle of protocol 2 or later


@dataclass(frozen=True)
class ModelCode:
    """`MODULE:FACTORY[:key=value,...]`: the factory is called as FACTORY(**kwargs)."""

    module: str
    factory: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """The spec as the user would write it, keyword arguments in their order."""
        args = ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in self.kwargs)
        return f"{self.module}:{self.factory}" + (f":{args}" if args else "")

    @property
    def call(self) -> str:
        """The call the factory gets, for messages: `pkg.nets.resnet18(num_classes=10)`."""
        return f"{self.module}.{self.factory}(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs) + ")"


@dataclass(frozen=True)
class UserModel:
    """The built model (eval mode, on its device) and the record of what was judged."""

    model: nn.Module
    record: dict[str, Any]

    @property
    def name(self) -> str:
        """What the run index and the leaderboard call this model: the code, and the weights file."""
        weights = self.record.get("weights")
        return self.record["code"] + (f" + {Path(weights).name}" if weights else "")


def _literal(text: str) -> Any:
    """A keyword value: a Python literal (1, 0.5, True, 'a', (1, 2)) if it reads as one, else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_model_code(text: str) -> ModelCode:
    """`pkg.nets:resnet18` or `pkg.nets:resnet18:num_classes=10,width=2` -> ModelCode."""
    module, sep, rest = text.strip().partition(":")
    factory, _, args = rest.partition(":")
    module, factory = module.strip(), factory.strip()
    if not sep or not module or not factory:
        raise ConfigError(f"model code {text!r} must be MODULE:FACTORY, e.g. my_nets:resnet18 (or MODULE:FACTORY:key=value,...)")
    if not all(part.isidentifier() for part in module.split(".")) or not factory.isidentifier():
        raise ConfigError(f"model code {text!r}: {module!r} must be a dotted module name and {factory!r} a function name")
    kwargs = split_spec(f"_:{args}")[1] if args.strip() else {}
    return ModelCode(module, factory, tuple((k, _literal(v)) for k, v in kwargs.items()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def import_module_from(code: ModelCode, *, cwd: str | os.PathLike[str] | None = None) -> Any:
    """Import the module, with the current directory (or `cwd`) first on sys.path for this import only."""
    where = str(Path(cwd if cwd is not None else os.getcwd()).resolve())
    sys.path.insert(0, where)
    try:
        return importlib.import_module(code.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (code.module == exc.name or code.module.startswith(exc.name + ".")):
            raise ModelError(
                f"model code: no module {code.module!r} in {where} or the installed packages; run from the folder "
                "that holds it, or install it"
            ) from None
        raise ModelError(f"model code: importing {code.module!r} failed: {_first_line(exc)}") from None
    except Exception as exc:  # the user's module raised while it was imported
        raise ModelError(f"model code: importing {code.module!r} raised {_first_line(exc)}") from None
    finally:
        if where in sys.path:  # unless the module took it off itself
            sys.path.remove(where)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of the model's state_dict (names, dtypes, shapes, bytes): the weights judged, whatever set them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def build_from_code(code: ModelCode, *, cwd: str | os.PathLike[str] | None = None) -> tuple[nn.Module, Any]:
    """Import the module and call its factory; returns (model, module). One-line ModelError on every failure."""
    module = import_module_from(code, cwd=cwd)
    where = getattr(module, "__file__", None) or code.module
    if not hasattr(module, code.factory):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        shown = ", ".join(defined[:8]) + (", ..." if len(defined) > 8 else "")
        raise ModelError(f"model code: {where} defines no {code.factory!r}" + (f"; it defines {shown}" if shown else ""))
    factory = getattr(module, code.factory)
    if not callable(factory):
        raise ModelError(f"model code: {code.module}.{code.factory} is a {type(factory).__name__}, not a function that builds a model")
    try:
        model = factory(**dict(code.kwargs))
    except Exception as exc:  # the user's factory: say what it raised, in one line, without its traceback
        raise ModelError(f"model code: {code.call} raised {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model code: {code.call} returned a {type(model).__name__}, not a torch.nn.Module")
    return model, module


def foreign_format(path: Path) -> str | None:
    """What a file that is not safetensors is, when it is one of torch's own formats; None otherwise.

    Looks at the bytes only (a zip's member names, a pickle's first byte); nothing is unpickled or run.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
            return "a TorchScript archive (torch.jit.save)"
        if any(n.endswith("/data.pkl") for n in names):
            return "a torch.save archive (a pickle)"
        return None
    # a safetensors file opens with its header's length (8 bytes, little-endian) and then "{", and a
    # header of 128 + 256k bytes also opens with 0x80: only a pickle protocol byte without that "{" is a pickle
    if len(head) >= 2 and head[:1] == PICKLE_PROTOCOL and 2 <= head[1] <= 5 and head[8:9] != b"{":
        return "a pickle (torch.save or pickle.dump)"
    return None


HOW_TO_SAVE = "save its state_dict with safetensors.torch.save_file and pass --model-code MODULE:FACTORY --weights FILE.safetensors"


def refuse_foreign(path: Path, *, what: str) -> None:
    """ModelError naming the format when `path` is a pickle, torch.save or TorchScript file."""
    kind = foreign_format(path)
    if kind is None:
        return
    why = (
        "torch.jit.load runs the archive's own code while loading, which can read and overwrite files"
        if "TorchScript" in kind else "unpickling can run any code"
    )
    raise ModelError(f"{what} {path} is {kind}; redblue does not load it ({why}): {HOW_TO_SAVE}")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A safetensors file's tensors, on the CPU; one-line ModelError for a missing, foreign or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights {path} does not exist or is not a file")
    refuse_foreign(path, what="weights")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"weights {path} is not a readable safetensors file ({reason}); {HOW_TO_SAVE}") from None


def _shape(shape: torch.Size) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _some(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def load_weights(model: nn.Module, tensors: dict[str, Tensor], *, path: Path, code: str) -> None:
    """load_state_dict(strict=True), after one line naming what is missing, unexpected or mis-shaped."""
    expected = model.state_dict()
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    if missing or unexpected:
        parts = ([f"lacks {_some(missing)}"] if missing else []) + ([f"has unexpected {_some(unexpected)}"] if unexpected else [])
        raise ModelError(f"weights {path} does not fit {code}: it {' and '.join(parts)}")
    for name, wanted in expected.items():
        if tensors[name].shape != wanted.shape:
            raise ModelError(
                f"weights {path}: tensor {name!r} has shape {_shape(tensors[name].shape)} but {code} "
                f"needs {_shape(wanted.shape)}"
            )
    model.load_state_dict(tensors, strict=True)


def load_user_model(
    code_text: str, weights: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu",
    cwd: str | os.PathLike[str] | None = None,
) -> UserModel:
    """Build the user's model from `MODULE:FACTORY`, load `weights` (a safetensors state_dict, strict), eval mode, on `device`.

    The record names what was judged: the code, its module file and that file's SHA-256 (a package:
    its __init__ file only), the weights file and its SHA-256, and the SHA-256 of the state_dict
    actually loaded (which also names the weights a factory set itself, without --weights).
    """
    code = parse_model_code(code_text)
    tensors = read_state_dict(weights) if weights is not None else None  # a bad file fails before the user's code runs
    model, module = build_from_code(code, cwd=cwd)
    if tensors is not None:
        load_weights(model, tensors, path=Path(weights), code=code.call)
    model = model.to(device).eval()
    module_file = getattr(module, "__file__", None)
    record = {
        "code": code.text,
        "module_file": str(Path(module_file).resolve()) if module_file else None,
        "module_sha256": file_sha256(module_file) if module_file and Path(module_file).is_file() else None,
        "weights": str(weights) if weights is not None else None,
        "weights_sha256": file_sha256(weights) if weights is not None else None,
        "state_sha256": state_sha256(model),
    }
    return UserModel(model=model, record=record)


def check_logits(model: nn.Module, x: Tensor, *, dataset: str) -> None:
    """ModelError (one line) unless the model maps a batch of the dataset's images to float (N, classes) logits.

    Catches whatever the user's forward raises (not only RuntimeError), since it is their code.
    """
    probe = x[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(probe)
    except Exception as exc:
        raise ModelError(f"the model cannot read {dataset} images of shape {tuple(x.shape[1:])}: {_first_line(exc)}") from None
    finally:
        model.train(was_training)
    if not isinstance(logits, Tensor):
        raise ModelError(f"the model returned a {type(logits).__name__} on {dataset} images, not a tensor of logits (N, classes)")
    if logits.dim() != 2 or logits.shape[0] != len(probe) or not logits.is_floating_point():
        raise ModelError(
            f"the model returned {logits.dtype} of shape {tuple(logits.shape)} for {len(probe)} {dataset} images; "
            "it must return float logits of shape (N, classes)"
        )


def save_code_model(path: str | os.PathLike[str], model: nn.Module, code: str, *, record: dict[str, Any]) -> None:
    """The model's state_dict as safetensors, with the code that builds it: `load_code_model` reads it back."""
    save_tensors(path, model.state_dict(), {CODE_METADATA: code, "redblue.record": json.dumps(record, default=str)})


def code_of(path: str | os.PathLike[str]) -> str | None:
    """The code a weights file written by `save_code_model` names; None for any other file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return (handle.metadata() or {}).get(CODE_METADATA)
    except (SafetensorError, OSError, ValueError):
        return None
