"""A run folder read back: its kind, status, times, config hash, key metrics, cells and evaluated models.

Run folders are the source of truth; the run index (`redblue.runs.index`) and the reports only read
them. The layout every verb writes (see `redblue.runs.store`): `run.json` ({"kind", "name", "status",
"started", "finished", "host", "device", "redblue"}), `config.toml`, `environment.json`,
`cells/<cell-id>.json` (at least {"id", "config", "metrics"}), `results.json`.

Folders written before `run.json` existed are read too, their kind inferred from the files:
`reproduce` (cells/ and a results.json with "experiment" and "models"), `evaluate`
(`evaluation.json`, or a results.json holding `Evaluation.to_dict()`), `attack` (`metrics.json` of
`redblue attack --out`). Their times are the files' modification times (`started`: config.toml,
or the results file; `finished`: the results file), their status `done` when the results file is
there and `incomplete` otherwise (killed, or still running: the files cannot tell).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from redblue.config import read_toml
from redblue.errors import ConfigError, RedblueError

RUN_FILE = "run.json"
CONFIG_FILE = "config.toml"
ENVIRONMENT_FILE = "environment.json"
RESULTS_FILE = "results.json"
CELLS_DIR = "cells"
MODELS_DIR = "models"
# results files of folders written before results.json was the contract, by the verb that wrote them
LEGACY_RESULTS = {"evaluation.json": "evaluate", "metrics.json": "attack"}
KINDS = ("reproduce", "evaluate", "arena", "sweep", "train", "attack")
STATUSES = ("running", "done", "failed", "incomplete")
# the files whose change means the folder must be read again (see `signature`)
WATCHED = (RUN_FILE, CONFIG_FILE, ENVIRONMENT_FILE, RESULTS_FILE, *LEGACY_RESULTS)


class RunFolderError(RedblueError):
    """A run folder cannot be read (a file is not valid JSON or TOML, or the kind is unknown)."""


@dataclass(frozen=True)
class CellSummary:
    """One finished cell: its id, what its config hashes to, a few scalar metrics, where its files are."""

    id: str
    config_hash: str | None
    status: str
    metrics: dict[str, Any]
    record_path: str  # relative to the run folder
    artefact_path: str | None  # models/<id>.safetensors, when there
    finished: str | None  # ISO-8601 UTC


@dataclass(frozen=True)
class EvaluationRow:
    """One evaluated model at one (norm, eps): what the leaderboard ranks (accuracies in [0, 1])."""

    model: str
    norm: str
    eps: float
    worst_case_accuracy: float
    clean_accuracy: float | None
    certified_accuracy: float | None
    certified_method: str | None
    dataset: str | None
    split: str | None
    n: int | None
    attacks: str | None


@dataclass(frozen=True)
class RunSummary:
    """What the index stores about one run folder."""

    folder: Path
    kind: str
    name: str
    status: str
    config_hash: str | None
    started: str | None
    finished: str | None
    host: str | None
    device: str | None
    redblue: str | None
    metrics: dict[str, Any]
    cells: tuple[CellSummary, ...]
    evaluations: tuple[EvaluationRow, ...]
    inferred: bool  # no run.json: kind, status and times were read from the files
    signature: str


# --- small readers ------------------------------------------------------------------------------


def utc_iso(timestamp: float) -> str:
    """A POSIX timestamp as ISO-8601 UTC to the second, e.g. 2026-11-27T23:36:01Z."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_time(text: Any) -> str | None:
    """An ISO-8601 date or time (any offset; naive means UTC) as `utc_iso` writes it; None when not a time."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def config_hash(config: Any) -> str:
    """The first 16 hex digits of the SHA-256 of `config` as canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise RunFolderError(f"{path} is not readable JSON ({reason}); the run that wrote it may be corrupt") from None


def results_file(folder: Path) -> Path | None:
    """The file a run's report is made from: results.json, else a legacy evaluation.json / metrics.json."""
    for name in (RESULTS_FILE, *LEGACY_RESULTS):
        if (folder / name).is_file():
            return folder / name
    return None


def is_run_folder(path: Path) -> bool:
    """A folder written by a redblue verb: run.json, a results file, or a config.toml beside cells/."""
    if (path / RUN_FILE).is_file() or results_file(path) is not None:
        return True
    return (path / CONFIG_FILE).is_file() and (path / CELLS_DIR).is_dir()


def find_run_folders(root: Path, *, max_depth: int = 4) -> list[Path]:
    """Every run folder under `root` (not descending into run folders or hidden folders), sorted."""
    found: list[Path] = []

    def walk(path: Path, depth: int) -> None:
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if is_run_folder(child):
                found.append(child)
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(root, 1)
    return found


def signature(folder: Path) -> str:
    """Modification times and sizes of the files that define the run, and of cells/: equal means unchanged."""
    parts = []
    for name in (*WATCHED, CELLS_DIR):
        try:
            stat = (folder / name).stat()
        except OSError:
            continue
        parts.append(f"{name}:{stat.st_mtime_ns}:{stat.st_size}")
    return ";".join(parts)


# --- kinds and their key metrics ----------------------------------------------------------------


def infer_kind(folder: Path, results: dict[str, Any] | None, source: str | None) -> str:
    """The verb that wrote a folder without run.json, from its files."""
    if source in LEGACY_RESULTS:
        return LEGACY_RESULTS[source]
    if results is not None:
        if "experiment" in results and "models" in results:
            return "reproduce"
        if isinstance(results.get("results"), list) and "clean" in results:
            return "evaluate"
        if isinstance(results.get("kind"), str) and results["kind"] in KINDS:
            return results["kind"]
    if (folder / CONFIG_FILE).is_file():
        try:
            config = read_toml(folder / CONFIG_FILE)
        except ConfigError:
            config = {}
        if "grid" in config and "fgsm" in config:
            return "reproduce"
    if (folder / CELLS_DIR).is_dir():
        return "sweep"
    raise RunFolderError(f"{folder}: cannot tell which verb wrote this folder (no run.json); add one or remove the folder")


def _scalars(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _eps_key(prefix: str, norm: str, eps: float) -> str:
    return f"{prefix}@{eps:g}" if norm == "linf" else f"{prefix}@{norm}:{eps:g}"


def _curve_value(curve: list[dict[str, Any]], eps: float, metric: str) -> Any:
    for point in curve:
        if abs(point["eps"] - eps) < 1e-9:
            value = point[metric]
            return value["mean"] if isinstance(value, dict) else value
    return None


def reproduce_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The chosen model's clean and FGSM accuracy at the first table eps, the shape checks, the wall time."""
    experiment = results.get("experiment", {})
    chosen = (experiment.get("chosen_l1"), experiment.get("chosen_l2"))
    table_eps = (experiment.get("fgsm", {}).get("table_eps") or [0.1])[0]
    metrics: dict[str, Any] = {"profile": results.get("profile"), "wall_seconds": results.get("wall_seconds")}
    for entry in results.get("models", []):
        if (entry["l1"], entry["l2"]) == chosen:
            metrics["model"] = f"l1={entry['l1']:g}, l2={entry['l2']:g}"
            metrics["clean_accuracy"] = _curve_value(entry["curve"], 0.0, "accuracy")
            metrics[f"fgsm_accuracy@{table_eps:g}"] = _curve_value(entry["curve"], table_eps, "accuracy")
    checks = results.get("checks", [])
    metrics["checks_passed"] = sum(1 for c in checks if c.get("passed"))
    metrics["checks_judged"] = sum(1 for c in checks if c.get("passed") is not None)
    return metrics


def evaluation_rows(results: dict[str, Any]) -> list[EvaluationRow]:
    """One row per (norm, eps) of an evaluate run's results (`Evaluation.to_dict()` plus the CLI's keys),
    or the rows an arena or sweep lists under "evaluations" (same keys as EvaluationRow)."""
    if isinstance(results.get("evaluations"), list):
        return [EvaluationRow(**{f: row.get(f) for f in EvaluationRow.__dataclass_fields__}) for row in results["evaluations"]]
    if not isinstance(results.get("results"), list) or "clean" not in results:
        return []
    model = str(results.get("model", "?"))
    rows = []
    for r in results["results"]:
        certified = r.get("certified") or {}
        rows.append(
            EvaluationRow(
                model=model,
                norm=r["norm"],
                eps=float(r["eps"]),
                worst_case_accuracy=r["worst_case"]["accuracy"],
                clean_accuracy=results["clean"].get("accuracy"),
                certified_accuracy=certified.get("accuracy"),
                certified_method=certified.get("method") if certified.get("accuracy") is not None else None,
                dataset=results.get("dataset"),
                split=results.get("split"),
                n=results.get("n"),
                attacks=results.get("attacks"),
            )
        )
    return rows


def evaluate_metrics(results: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {"model": results.get("model"), "n": results.get("n"), "clean_accuracy": results["clean"]["accuracy"]}
    for row in evaluation_rows(results):
        metrics[_eps_key("worst_case", row.norm, row.eps)] = row.worst_case_accuracy
        if row.certified_accuracy is not None:
            metrics[_eps_key("certified", row.norm, row.eps)] = row.certified_accuracy
    failures = [f for f in results.get("findings", []) if f.get("severity") != "ok"]
    metrics["findings_not_ok"] = len(failures)
    return metrics


def attack_metrics(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": results.get("model"),
        "attack": results.get("attack", {}).get("label"),
        "eps": results.get("eps"),
        "n": results.get("n"),
        "clean_accuracy": results.get("clean", {}).get("accuracy"),
        "adversarial_accuracy": results.get("adversarial", {}).get("accuracy"),
    }


def key_metrics(kind: str, results: dict[str, Any] | None) -> dict[str, Any]:
    """A few scalars that say how a run went; other kinds put theirs under results.json's "summary"."""
    if results is None:
        return {}
    if isinstance(results.get("summary"), dict):
        return _scalars(results["summary"])
    if kind == "reproduce":
        return reproduce_metrics(results)
    if kind == "evaluate":
        return evaluate_metrics(results)
    if kind == "attack":
        return attack_metrics(results)
    return {}


def _record_config_hash(results: dict[str, Any] | None, kind: str) -> str | None:
    """Legacy evaluate/attack folders have no config.toml: hash the settings their record holds."""
    if results is None:
        return None
    keys = {
        "evaluate": ("model", "dataset", "split", "limit", "attacks", "eps", "mode", "seed"),
        "attack": ("model", "dataset", "split", "n", "attack", "seed"),
    }.get(kind)
    return config_hash({k: results.get(k) for k in keys}) if keys else None


# --- cells --------------------------------------------------------------------------------------


def cell_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A cell's "metrics" scalars; for reproduce's cells, the FGSM curve's accuracies and the training time
    (under "metrics" in a sweep record, at the top of a record written before the sweep engine)."""
    nested = isinstance(record.get("metrics"), dict)
    source = record["metrics"] if nested else record
    metrics: dict[str, Any] = _scalars(source) if nested else {}
    for point in source.get("curve", []):
        name = "clean_accuracy" if point["eps"] == 0 else f"fgsm_accuracy@{point['eps']:g}"
        metrics[name] = point["accuracy"]
    if "train_seconds" in source:
        metrics["train_seconds"] = source["train_seconds"]
    return metrics


def cell_id(record: dict[str, Any], fallback: str | None = None) -> str:
    value = record.get("id", record.get("cell", fallback))
    if not isinstance(value, str) or not value:
        raise RunFolderError("a cell record needs an \"id\" (or reproduce's \"cell\") string")
    return value


def summarize_cell(folder: Path, record: dict[str, Any], *, record_path: Path | None = None) -> CellSummary:
    """What the index keeps of one finished cell record (as written to cells/<id>.json)."""
    ident = cell_id(record, record_path.stem if record_path else None)
    path = record_path or folder / CELLS_DIR / f"{ident}.json"
    artefact = folder / MODELS_DIR / f"{ident}.safetensors"
    try:
        finished = normalize_time(record.get("finished")) or utc_iso(path.stat().st_mtime)
    except OSError:
        finished = None
    return CellSummary(
        id=ident,
        config_hash=config_hash(record["config"]) if "config" in record else None,
        status=str(record.get("status", "done")),
        metrics=cell_metrics(record),
        record_path=str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path),
        artefact_path=str(artefact.relative_to(folder)) if artefact.is_file() else None,
        finished=finished,
    )


def read_cells(folder: Path) -> Iterator[CellSummary]:
    cells = folder / CELLS_DIR
    if not cells.is_dir():
        return
    for path in sorted(cells.glob("*.json")):
        if path.name.startswith("."):
            continue  # a temporary file of an atomic write
        record = read_json(path)
        if isinstance(record, dict):
            yield summarize_cell(folder, record, record_path=path)


# --- the whole run ------------------------------------------------------------------------------


def _mtime(path: Path) -> str | None:
    try:
        return utc_iso(path.stat().st_mtime)
    except OSError:
        return None


def summarize_run(folder: str | os.PathLike[str]) -> RunSummary:
    """Read one run folder (see the module docstring); raises RunFolderError when a file is unreadable."""
    folder = Path(folder)
    sig = signature(folder)  # before reading: a change during the read shows as a later signature
    source = results_file(folder)
    results = read_json(source) if source is not None else None
    if results is not None and not isinstance(results, dict):
        raise RunFolderError(f"{source} holds no JSON object; the run that wrote it may be corrupt")
    run = read_json(folder / RUN_FILE) if (folder / RUN_FILE).is_file() else None
    if run is not None and not isinstance(run, dict):
        raise RunFolderError(f"{folder / RUN_FILE} holds no JSON object")
    environment = read_json(folder / ENVIRONMENT_FILE) if (folder / ENVIRONMENT_FILE).is_file() else {}
    environment = environment if isinstance(environment, dict) else {}
    config_file = folder / CONFIG_FILE
    if config_file.is_file():
        try:
            config_digest: str | None = config_hash(read_toml(config_file))
        except ConfigError as exc:
            raise RunFolderError(str(exc)) from None
    else:
        config_digest = None
    if run is not None:
        kind = run.get("kind")
        if kind not in KINDS:
            raise RunFolderError(f"{folder / RUN_FILE}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        status = str(run.get("status", "running"))
        started, finished = normalize_time(run.get("started")), normalize_time(run.get("finished"))
    else:
        kind = infer_kind(folder, results, source.name if source else None)
        status = "done" if results is not None else "incomplete"
        started = _mtime(config_file) or (_mtime(source) if source else None)
        finished = _mtime(source) if source is not None else None
    run = run or {}
    device = run.get("device") or environment.get("device") or (results or {}).get("device")
    versions = environment.get("versions") or (results or {}).get("versions") or {}
    return RunSummary(
        folder=folder,
        kind=kind,
        name=str(run.get("name") or folder.name),
        status=status,
        config_hash=config_digest or _record_config_hash(results, kind),
        started=started,
        finished=finished,
        host=run.get("host"),
        device=str(device) if device is not None else None,
        redblue=run.get("redblue") or versions.get("redblue"),
        metrics=key_metrics(kind, results),
        cells=tuple(read_cells(folder)),
        evaluations=tuple(evaluation_rows(results)) if results is not None and kind != "attack" else (),
        inferred=not run,
        signature=sig,
    )
