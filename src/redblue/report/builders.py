"""The page registry and the sections every kind of run's page shares: `PageOptions`, `register_page`
(a kind of run plugs in with `@register_page("arena")` on a function (results, folder, options) ->
Page), the environment section and the run header. `redblue.report.pages` builds and writes pages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redblue.report.page import Finding, Findings, KeyValues, Page, Section
from redblue.runs.folders import ENVIRONMENT_FILE, RUN_FILE, read_json

DEFAULT_SAMPLES = 8


@dataclass(frozen=True)
class PageOptions:
    """Choices a reader makes: which saved samples the image grid shows (positions in the saved arrays)."""

    samples: tuple[int, ...] | None = None
    max_samples: int = DEFAULT_SAMPLES
    data_dir: str | None = None


PageBuilder = Callable[[dict[str, Any], Path, PageOptions], Page]
BUILDERS: dict[str, PageBuilder] = {}


def register_page(kind: str) -> Callable[[PageBuilder], PageBuilder]:
    def register(builder: PageBuilder) -> PageBuilder:
        BUILDERS[kind] = builder
        return builder

    return register


# --- shared sections ----------------------------------------------------------------------------


def lambda_text(value: float) -> str:
    return "0" if value == 0 else f"{value:g}"


def findings_block(items: Sequence[dict[str, Any]]) -> Findings:
    return Findings(tuple(Finding(str(f.get("severity", "warning")), str(f.get("check", "")), str(f.get("message", ""))) for f in items))


def environment_section(folder: Path, *, fallback: dict[str, Any] | None = None, extra: Sequence[tuple[str, Any]] = ()) -> Section:
    """Versions, device, seeds and platform from environment.json (else what the results recorded), and run.json."""
    env_path = folder / ENVIRONMENT_FILE
    env = read_json(env_path) if env_path.is_file() else dict(fallback or {})
    items: list[tuple[str, Any]] = list(extra)
    run_path = folder / RUN_FILE
    if run_path.is_file():
        run = read_json(run_path)
        items += [(key, run.get(key)) for key in ("status", "started", "finished", "host", "device") if run.get(key) is not None]
    versions = env.get("versions", {}) if isinstance(env.get("versions"), dict) else {}
    items += [(name, version) for name, version in versions.items()]
    items += [(key, json.dumps(value) if isinstance(value, (list, dict)) else value)
              for key, value in env.items() if key != "versions"]
    return Section("environment", "Environment", (KeyValues(tuple(items)),))


def run_header(folder: Path) -> str:
    return f"Run folder {folder.name}"
