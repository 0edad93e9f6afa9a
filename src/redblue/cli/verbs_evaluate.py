"""`redblue attack` (one attack, images written out) and `redblue evaluate` (attack x eps grid, worst case, bounds, checks).

Both verbs parse their options, call the engine (`redblue.evaluate`) and print (`evaluate_view`).
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer
from rich.console import Console

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
    recorded_threads,
    resolve_device,
    set_interrupt_message,
)
from redblue.cli.evaluate_view import (
    batch_progress_line,
    interactive,
    print_attack,
    print_evaluation,
    progress_line,
)
from redblue.cli.model_options import ModelArgument, ModelCodeOption, ModelSource, WeightsOption, load_source
from redblue.cli.publish import index_run, publish_run
from redblue.cli.verbs_data import DownloadOption, require_dataset
from redblue.config import atomic_write_bytes
from redblue.errors import ConfigError, require_choice, require_positive
from redblue.evaluate import (
    AUTO,
    CERTIFY_METHODS,
    MODES,
    evaluate,
    parse_attack_list,
    parse_batch_size,
    require_model_fits,
)
from redblue.evaluate.folder import CONFIG_FILE, EvaluationFolder
from redblue.evaluate.single import attack_every_sample
from redblue.models import save_tensors
from redblue.models.user import check_logits
from redblue.runs.store import environment, json_bytes

DatasetOption = Annotated[
    Optional[str],
    typer.Option(
        "--dataset",
        help="mnist, fashion-mnist, kmnist, cifar10, cifar100, or a user dataset's path (.npz, .safetensors, image folder). Default: the dataset the model was trained on (its metadata), else mnist.",
    ),
]
SplitOption = Annotated[str, typer.Option("--split", help="Which split to attack: test or train.")]
LimitOption = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N images of the split.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seeds the attacks' random starts and searches.")]
BatchOption = Annotated[
    str,
    typer.Option(
        "--batch-size",
        help="Images per attack call: auto (on a GPU the whole set, the model's passes split to fit its free memory; "
        "on a CPU the size measured fastest there) or an integer >= 1.",
    ),
]


def _versions() -> dict[str, str]:
    return {"redblue": redblue.__version__, "torch": torch.__version__, "python": platform.python_version()}


@dataclass(frozen=True, eq=False)
class _Inputs:
    """The model and the images a verb works on, and where they came from."""

    source: ModelSource
    x: torch.Tensor
    y: torch.Tensor
    dataset: str  # the dataset used: --dataset, else the one the model's record names, else mnist

    @property
    def model(self) -> torch.nn.Module:
        return self.source.model


def _load(
    model: tuple[Path | None, str | None, Path | None], dataset: str | None, split: str, limit: int | None,
    data_dir: Path | None, download: bool, device: torch.device,
) -> _Inputs:
    """Load the model (MODEL, or --model-code and --weights), then the dataset it was trained on unless
    --dataset names another (downloaded on first use with consent), and refuse a dataset whose images
    or classes the model does not fit."""
    from redblue.data import load_dataset

    if limit is not None:
        require_positive("--limit", limit)
    source = load_source(*model, device=device)
    trained_on = source.trained_on
    name = dataset or trained_on or "mnist"
    require_dataset(name, data_dir=data_dir, download=download, splits=(split,))
    data = load_dataset(name, split, data_dir=data_dir)
    x, y = (data.x, data.y) if limit is None else (data.x[:limit], data.y[:limit])
    x, y = x.to(device), y.to(device)
    if "model_code" in source.record:  # the user's forward may raise anything, or return anything
        check_logits(source.model, x, dataset=name)
    require_model_fits(source.model, x, classes=data.n_classes, dataset=name, trained_on=trained_on)
    return _Inputs(source, x, y, name)


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


def _prepare_out_dir(out: Path) -> None:
    """Create --out and prove a file can be written there, before the work rather than after it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot write to {out} ({reason}); choose a writable --out folder") from None


# --- redblue attack -------------------------------------------------------------------------------


@app.command("attack")
@_restoring_threads
def attack_command(
    attack: Annotated[str, typer.Option("--attack", help="Attack spec with its eps, e.g. fgsm:eps=0.1 or pgd:eps=0.3,steps=40.")],
    model_path: ModelArgument = None,
    model_code: ModelCodeOption = None,
    weights: WeightsOption = None,
    dataset: DatasetOption = None,
    split: SplitOption = "test",
    limit: LimitOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = AUTO,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Folder for adversarial.safetensors and metrics.json (nothing is written without it).")
    ] = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
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
    n_threads = apply_threads(threads)
    entry, params = parse_attack(attack)
    batch = parse_batch_size(batch_size)
    _check_out_dir(out)
    torch_device = resolve_device(device)
    inputs = _load((model_path, model_code, weights), dataset, split, limit, data_dir, download, torch_device)
    if out is not None:
        _prepare_out_dir(out)
    with batch_progress_line(interactive() and not as_json, description=attack, total=len(inputs.y)) as on_batch:
        outcome = attack_every_sample(
            inputs.model, inputs.x, inputs.y, entry, params, batch_size=batch,
            generator=_generator(seed, torch_device), on_batch=on_batch,
        )
    metrics = {
        "model": inputs.source.name,
        **inputs.source.record,
        "dataset": inputs.dataset,
        "split": split,
        **outcome.to_dict(),
        "seed": seed,
        "device": str(torch_device),
        "threads": n_threads,
        "versions": _versions(),
        "seconds": outcome.seconds,
    }
    if out is not None:
        images = {"x_adv": outcome.x_adv, "y": inputs.y, "predicted": outcome.predicted,
                  "indices": torch.arange(outcome.n), "valid": outcome.valid.to(torch.uint8)}
        about = {"redblue.attack": outcome.label, "redblue.eps": repr(params.eps), "redblue.model": inputs.source.name}
        save_tensors(out / "adversarial.safetensors", images, about)
        # written last: its presence marks a complete folder
        atomic_write_bytes(out / "metrics.json", json_bytes(metrics))
        metrics["written"] = [str(out / "adversarial.safetensors"), str(out / "metrics.json")]
    if as_json:
        print_json(metrics)
        return
    console = Console()
    print_attack(console, outcome, dataset=inputs.dataset, split=split)
    if out is not None:
        console.print(f"wrote {out / 'adversarial.safetensors'} and {out / 'metrics.json'}")


# --- redblue evaluate -----------------------------------------------------------------------------


@app.command("evaluate")
@_restoring_threads
def evaluate_command(
    model_path: ModelArgument = None,
    attacks: Annotated[
        str,
        typer.Option(
            "--attacks",
            help="Attacks without eps, e.g. fgsm,pgd:steps=40,apgd-ce; or a preset: standard (APGD-CE, APGD-T, FAB-T, Square 5000) or fast (FGSM, PGD-40).",
        ),
    ] = "standard",
    model_code: ModelCodeOption = None,
    weights: WeightsOption = None,
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
    batch_size: BatchOption = AUTO,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Run folder: results.json, masks.safetensors, and each finished attack row in cells/, so that "
            "an interrupted run resumes when the same command runs again.",
        ),
    ] = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    device: DeviceOption = "auto",
    threads: ThreadsOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Robust accuracy for every attack x eps, the per-sample worst case, certified bounds and sanity findings."""
    set_interrupt_message("interrupted; nothing was saved (with --out DIR, finished attack rows are kept and a rerun resumes)")
    # a rerun into --out with auto takes the count the folder recorded: its rows are keyed on it
    n_threads = apply_threads(threads, recorded=recorded_threads(out / CONFIG_FILE) if out is not None else None)
    eps_list = parse_floats("--eps", eps)
    if not eps_list:
        raise ConfigError("--eps needs at least one value, for example 0.1")
    require_choice("--mode", mode, ("auto",) + MODES)
    require_choice("--certify", certify, CERTIFY_METHODS + ("none",))
    batch = parse_batch_size(batch_size)
    plan, used_preset = parse_attack_list(attacks, eps=eps_list[0])
    for entry, _ in plan:  # every eps must suit every attack's norm, before anything loads
        for value in eps_list:
            check_eps(value, entry.norm)
    chosen_mode = ("worst-case" if used_preset else "per-attack") if mode == "auto" else mode
    _check_out_dir(out)
    torch_device = resolve_device(device)
    inputs = _load((model_path, model_code, weights), dataset, split, limit, data_dir, download, torch_device)
    settings = {
        "model": inputs.source.name,
        **inputs.source.record,  # model_sha256 of a MODEL file, or model_code: the code, the weights and their digests
        "dataset": inputs.dataset,
        "split": split,
        "limit": limit,
        "attacks": attacks,
        "eps": eps_list,
        "mode": chosen_mode,
        "certify": certify,
        "checks": not no_checks,
        "seed": seed,
        "batch_size": batch,
        "device": str(torch_device),
        "threads": n_threads,
    }
    folder = None
    if out is not None:
        folder = EvaluationFolder(
            out, settings,
            environment(device=str(torch_device), seed=seed, threads=n_threads), device=str(torch_device),
        )
        folder.check_writable()
        set_interrupt_message(f"interrupted; finished attack rows are kept in {out / 'cells'}; run the same command again to resume")
    try:
        with progress_line(interactive() and not as_json) as progress:
            result = evaluate(
                inputs.model, inputs.x, inputs.y, plan, eps_list,
                mode=chosen_mode,
                batch_size=batch,
                generator=_generator(seed, torch_device),
                certify_method=None if certify == "none" else certify,
                checks=not no_checks,
                cache=folder,
                progress=progress,
            )
    except BaseException as exc:
        if folder is not None:
            folder.fail("interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
            if (out / "run.json").is_file():
                index_run(out)
        raise
    record = {**settings, "versions": _versions(), **result.to_dict()}
    written = [] if folder is None else folder.finish(record, result.masks())
    if folder is not None:
        reports = publish_run(out, data_dir=data_dir)
        written += [reports["markdown"], reports["html"]]
    if as_json:
        print_json(record)
        return
    console = Console()
    print_evaluation(console, result, title=f"{Path(inputs.source.name).name if model_code is None else inputs.source.name} on {result.n} {inputs.dataset} {split} images")
    if folder is not None:
        total = sum(len(r.attacks) for r in result.results)
        reuse = f"reused {result.rows_reused} of {total} attack rows from {out / 'cells'}"
        console.print(f"{reuse}; wrote {' and '.join(map(str, written))}", soft_wrap=True, highlight=False)
