"""`redblue attack` (one attack, images written out) and `redblue evaluate` (attack x eps grid, worst case, bounds, checks)."""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

import redblue
from redblue.attacks import parse_attack
from redblue.attacks.core import check_eps
from redblue.cli.app import (
    DataDirOption,
    DeviceOption,
    JsonOption,
    ThreadsOption,
    app,
    apply_threads,
    parse_floats,
    print_json,
    resolve_device,
    set_interrupt_message,
)
from redblue.config import atomic_write_bytes
from redblue.errors import ConfigError, require_choice, require_positive
from redblue.evaluate import (
    CERTIFY_METHODS,
    MODES,
    Evaluation,
    evaluate,
    parse_attack_list,
    require_batch_size,
    require_model_fits,
)
from redblue.evaluate.single import attack_every_sample
from redblue.metrics import DEFAULT_BATCH
from redblue.models import load_model, save_tensors

DatasetOption = Annotated[
    Optional[str],
    typer.Option(
        "--dataset",
        help="mnist, fashion-mnist or kmnist. Default: the dataset the model was trained on (its metadata), else mnist.",
    ),
]
SplitOption = Annotated[str, typer.Option("--split", help="Which split to attack: test or train.")]
LimitOption = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N images of the split.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seeds the attacks' random starts and searches.")]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Images per attack batch (an integer >= 1).")]

SEVERITY_STYLE = {"ok": ("ok", "green"), "warning": ("warning", "yellow"), "fail": ("FAIL", "bold red")}


def _versions() -> dict[str, str]:
    return {"redblue": redblue.__version__, "torch": torch.__version__, "python": platform.python_version()}


@dataclass(frozen=True, eq=False)
class _Inputs:
    """The model and the images a verb works on, and where they came from."""

    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    dataset: str  # the dataset used: --dataset, else the one the model's record names, else mnist


def _load(
    model_path: Path, dataset: str | None, split: str, limit: int | None, data_dir: Path | None, device: torch.device
) -> _Inputs:
    """Load the model, then the dataset it was trained on unless --dataset names another, and refuse
    a dataset whose images or classes the model does not fit."""
    from redblue.data import get_spec, load_dataset

    if limit is not None:
        require_positive("--limit", limit)
    loaded = load_model(model_path, device=device)
    trained_on = loaded.record.get("dataset") if isinstance(loaded.record.get("dataset"), str) else None
    name = dataset or trained_on or "mnist"
    data = load_dataset(name, split, data_dir=data_dir)
    x, y = (data.x, data.y) if limit is None else (data.x[:limit], data.y[:limit])
    x, y = x.to(device), y.to(device)
    require_model_fits(loaded.model, x, classes=get_spec(name).n_classes, dataset=name, trained_on=trained_on)
    return _Inputs(loaded.model, x, y, name)


def _restoring_threads(verb: Callable[..., None]) -> Callable[..., None]:
    """Run the verb, then give torch back the thread count it had: --threads holds for this verb only
    (a process that runs several verbs, such as the test suite, keeps its own setting)."""

    @functools.wraps(verb)
    def run(*args: Any, **kwargs: Any) -> None:
        before = torch.get_num_threads()
        try:
            verb(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return run


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _check_out_dir(out: Path | None) -> None:
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder to write the results into")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


# --- redblue attack -------------------------------------------------------------------------------


@app.command("attack")
@_restoring_threads
def attack_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model weights (.safetensors) from `redblue train`.")],
    attack: Annotated[str, typer.Option("--attack", help="Attack spec with its eps, e.g. fgsm:eps=0.1 or pgd:eps=0.3,steps=40.")],
    dataset: DatasetOption = None,
    split: SplitOption = "test",
    limit: LimitOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = DEFAULT_BATCH,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Folder for adversarial.safetensors and metrics.json (nothing is written without it).")
    ] = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Attack every image of a split once; report clean vs adversarial accuracy and confidence.

    Every image is attacked, misclassified ones included (the paper's protocol); `accuracy` is on the
    adversarial images, `robust_accuracy` counts only samples correct both clean and attacked. Each
    image is verified (eps-ball, [0, 1], finite) and re-predicted by the evaluator.
    """
    set_interrupt_message("interrupted; nothing was written" + (f" to {out}" if out is not None else ""))
    apply_threads(threads)
    entry, params = parse_attack(attack)
    require_batch_size(batch_size, name="--batch-size")
    _check_out_dir(out)
    torch_device = resolve_device(device)
    inputs = _load(model_path, dataset, split, limit, data_dir, torch_device)
    x, y, dataset = inputs.x, inputs.y, inputs.dataset
    outcome = attack_every_sample(
        inputs.model, x, y, entry, params, batch_size=batch_size, generator=_generator(seed, torch_device)
    )
    label, n = outcome.label, outcome.n
    metrics = {
        "model": str(model_path),
        "dataset": dataset,
        "split": split,
        **outcome.to_dict(),
        "seed": seed,
        "device": str(torch_device),
        "versions": _versions(),
        "seconds": outcome.seconds,
    }
    if out is not None:
        indices = torch.arange(n)
        save_tensors(
            out / "adversarial.safetensors",
            {"x_adv": outcome.x_adv, "y": y, "predicted": outcome.predicted, "indices": indices, "valid": outcome.valid.to(torch.uint8)},
            {"redblue.attack": label, "redblue.eps": repr(params.eps), "redblue.model": str(model_path)},
        )
        _write_json(out / "metrics.json", metrics)  # written last: its presence marks a complete folder
        metrics["written"] = [str(out / "adversarial.safetensors"), str(out / "metrics.json")]
    if as_json:
        print_json(metrics)
        return
    console = Console()
    table = Table("", "accuracy", "confidence", title=f"{label} at {entry.norm} eps={params.eps:g} on {n} {dataset} {split} images")
    table.add_row("clean", f"{metrics['clean']['accuracy']:.2%}", f"{metrics['clean']['confidence']:.3f}")
    adv = metrics["adversarial"]
    table.add_row("adversarial", f"{adv['accuracy']:.2%}", f"{adv['confidence']:.3f}")
    table.add_row("robust (correct both)", f"{adv['robust_accuracy']:.2%}", "")
    console.print(table)
    pert = metrics["perturbation"]
    console.print(f"perturbation: L-inf mean {pert['linf_mean']:.4f} max {pert['linf_max']:.4f}; L2 mean {pert['l2_mean']:.3f} max {pert['l2_max']:.3f}")
    _print_findings(console, metrics["findings"])
    if out is not None:
        console.print(f"wrote {out / 'adversarial.safetensors'} and {out / 'metrics.json'}")


# --- redblue evaluate -----------------------------------------------------------------------------


@app.command("evaluate")
@_restoring_threads
def evaluate_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model weights (.safetensors) from `redblue train`.")],
    attacks: Annotated[
        str,
        typer.Option(
            "--attacks",
            help="Attacks without eps, e.g. fgsm,pgd:steps=40,apgd-ce; or a preset: standard (APGD-CE, APGD-T, Square 5000) or fast (FGSM, PGD-40).",
        ),
    ] = "standard",
    eps: Annotated[str, typer.Option("--eps", help="Comma-separated eps values in pixel units, e.g. 0.05,0.1,0.2,0.3.")] = "0.05,0.1,0.2,0.3",
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="worst-case: cascade, each attack only on samples still robust (fast; attack rows cumulative); "
            "per-attack: every attack on every sample (exact per-attack rows, plus adversarial_accuracy, the paper's protocol). "
            "auto: worst-case for presets, per-attack for a list you give.",
        ),
    ] = "auto",
    certify: Annotated[str, typer.Option("--certify", help="Certified lower bound beside each eps: auto (crown for MLPs, crown-ibp with convolutions), crown, crown-ibp, ibp or none.")] = "auto",
    no_checks: Annotated[bool, typer.Option("--no-checks", help="Skip the gradient-masking sanity checks.")] = False,
    dataset: DatasetOption = None,
    split: SplitOption = "test",
    limit: LimitOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = DEFAULT_BATCH,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for evaluation.json and masks.safetensors.")] = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Robust accuracy for every attack x eps, the per-sample worst case, certified bounds and sanity findings."""
    set_interrupt_message("interrupted; nothing was saved")
    apply_threads(threads)
    eps_list = parse_floats("--eps", eps)
    if not eps_list:
        raise ConfigError("--eps needs at least one value, for example 0.1")
    require_choice("--mode", mode, ("auto",) + MODES)
    require_choice("--certify", certify, CERTIFY_METHODS + ("none",))
    require_batch_size(batch_size, name="--batch-size")
    plan, used_preset = parse_attack_list(attacks, eps=eps_list[0])
    for entry, _ in plan:  # every eps must suit every attack's norm, before anything loads
        for value in eps_list:
            check_eps(value, entry.norm)
    chosen_mode = ("worst-case" if used_preset else "per-attack") if mode == "auto" else mode
    _check_out_dir(out)
    torch_device = resolve_device(device)
    inputs = _load(model_path, dataset, split, limit, data_dir, torch_device)
    dataset = inputs.dataset
    result = evaluate(
        inputs.model, inputs.x, inputs.y, plan, eps_list,
        mode=chosen_mode,
        batch_size=batch_size,
        generator=_generator(seed, torch_device),
        certify_method=None if certify == "none" else certify,
        checks=not no_checks,
    )
    record = {
        "model": str(model_path),
        "dataset": dataset,
        "split": split,
        "limit": limit,
        "attacks": attacks,
        "eps": eps_list,
        "seed": seed,
        "device": str(torch_device),
        "versions": _versions(),
        **result.to_dict(),
    }
    if out is not None:
        masks = {name: mask.to(torch.uint8) for name, mask in result.masks().items()}
        save_tensors(out / "masks.safetensors", masks, {"redblue.model": str(model_path)})
        _write_json(out / "evaluation.json", record)
    if as_json:
        print_json(record)
        return
    _print_evaluation(Console(), result, title=f"{model_path.name} on {result.n} {dataset} {split} images")
    if out is not None:
        Console().print(f"wrote {out / 'evaluation.json'} and {out / 'masks.safetensors'}")


def _cell(accuracy: float, confidence: float | None = None) -> str:
    return f"{accuracy:.2%}" + (f" · {confidence:.2f}" if confidence is not None else "")


def _print_evaluation(console: Console, result: Evaluation, *, title: str) -> None:
    cumulative = result.mode == "worst-case"
    for norm in dict.fromkeys(r.norm for r in result.results):
        here = [r for r in result.results if r.norm == norm]
        table = Table(
            "attack", *[f"eps={r.eps:g}" for r in here],
            title=f"{title}: robust accuracy · confidence ({norm}, {result.mode} mode)",
            caption=(
                "attack rows are cumulative: each attack ran only on the samples every row above left robust"
                if cumulative
                else "each attack ran on every sample; rows are robust accuracy (correct clean and attacked); worst case = per-sample minimum"
            ),
        )
        table.add_row("clean", *[_cell(result.clean_accuracy, result.clean_confidence)] * len(here))
        for i, first in enumerate(here[0].attacks):
            name = ("+ " if cumulative and i else "") + first.label
            table.add_row(name, *[_cell(r.attacks[i].accuracy, r.attacks[i].confidence) for r in here])
        table.add_row("[bold]worst case[/bold]", *[f"[bold]{_cell(r.worst_case_accuracy, r.worst_case_confidence)}[/bold]" for r in here])
        if result.certify_method is not None:
            table.add_row(
                f"certified ({result.certify_method})",
                *[_cell(r.certified_accuracy) if r.certified_accuracy is not None else "—" for r in here],
            )
            table.add_row(
                "robust accuracy in",
                *[f"[{r.interval[0]:.2%}, {r.interval[1]:.2%}]" if r.interval else "—" for r in here],
            )
        console.print(table)
        notes = sorted({r.certified_note for r in here if r.certified_note})
        for note in notes:
            console.print(f"certified bound not available: {note}")
    stages = Table("stage", "eps", "attacked", "fooled", "invalid", "seconds", title="attack stages")
    for r in result.results:
        for a in r.attacks:
            stages.add_row(a.label, f"{r.eps:g}", str(a.n_attacked), str(a.n_fooled), str(a.n_invalid), f"{a.seconds:.2f}")
    console.print(stages)
    console.print(f"attacks {result.seconds_attacks:.1f} s, sanity checks {result.seconds_checks:.1f} s")
    _print_findings(console, [dataclasses.asdict(f) for f in result.findings])


def _print_findings(console: Console, findings: list[dict[str, str]]) -> None:
    if not findings:
        return
    console.print("[bold]sanity findings[/bold]")
    for f in sorted(findings, key=lambda f: ("fail", "warning", "ok").index(f["severity"])):
        word, style = SEVERITY_STYLE[f["severity"]]
        console.print(f"  [{style}]{word:>7}[/{style}] {f['check']}: {f['message']}", highlight=False)
