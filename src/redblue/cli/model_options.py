"""The model a verb judges, from its command line: a redblue model file (MODEL), or the user's own
code and weights (`--model-code MODULE:FACTORY --weights FILE.safetensors`); and what its record says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from redblue.errors import ConfigError
from redblue.models import load_model
from redblue.models.user import load_user_model, refuse_foreign

MODEL_HELP = "Model weights (.safetensors) from `redblue train`; leave it out with --model-code."
ModelArgument = Annotated[Optional[Path], typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)]
ModelCodeOption = Annotated[
    Optional[str],
    typer.Option(
        "--model-code",
        help="Your own model instead of MODEL: MODULE:FACTORY names a function that returns "
        "an nn.Module mapping pixels in [0, 1] to logits, imported from the current folder or an installed package "
        "(keyword arguments after a second colon: key=value,...). "
        "This runs that module's code: name only code you trust.",
    ),
]
WeightsOption = Annotated[
    Optional[Path],
    typer.Option("--weights", help="With --model-code: a safetensors state_dict, loaded strictly (every tensor, no extra)."),
]


@dataclass(frozen=True)
class ModelSource:
    """The model in eval mode on its device, the name runs and the leaderboard show, and its record."""

    model: torch.nn.Module
    name: str
    trained_on: str | None  # the dataset a redblue model file's record names
    record: dict[str, Any]  # merged into the verb's record: the file and its digest, or the code and its digests


def load_source(model_path: Path | None, model_code: str | None, weights: Path | None, *, device: torch.device) -> ModelSource:
    """One-line ConfigError for an incoherent choice (both, neither, --weights alone); ModelError for a bad model."""
    if model_path is not None and model_code is not None:
        raise ConfigError(f"give either MODEL ({model_path}) or --model-code {model_code}, not both")
    if model_code is None:
        if weights is not None:
            raise ConfigError("--weights goes with --model-code MODULE:FACTORY; a redblue MODEL file holds its own weights")
        if model_path is None:
            raise ConfigError("give a MODEL file from `redblue train`, or your own model with --model-code MODULE:FACTORY --weights FILE.safetensors")
        if model_path.is_file():
            refuse_foreign(model_path, what="model file")
        from redblue.evaluate.folder import file_sha256

        loaded = load_model(model_path, device=device)
        trained_on = loaded.record.get("dataset") if isinstance(loaded.record.get("dataset"), str) else None
        return ModelSource(loaded.model, str(model_path), trained_on, {"model_sha256": file_sha256(model_path)})
    user = load_user_model(model_code, weights, device=device)
    return ModelSource(user.model, user.name, None, {"model_code": user.record})
