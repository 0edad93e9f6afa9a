"""Issue 8's GPU recipes in one device call: train each README recipe that needs a GPU, evaluate it
with `standard` and a certified bound on the full test set, and bring back the weights and records.

A device session is short (about 15 minutes of GPU time, start-up included), so the recipes train
side by side on the one GPU (each is bound by kernel launches at batch 128, not by the GPU's
arithmetic), and each one's epoch count is chosen from a calibration run first: every recipe
trains for 12 s beside the others, and gets as many whole epochs (rounded down to a
multiple of 5) as fit the training part of the time budget. The command each row of the README gives is
the one that ran, with that epoch count; `summary.json` records it, the calibration, the training
and evaluation times, and the evaluator's numbers.

    python benchmarks/gpu_recipes.py --out OUT [--budget 540] [--recipes cnn-pgd,cnn-trades,...]
    python benchmarks/gpu_recipes.py --out OUT --cpu-dry-run   # here: every step on the CPU, tiny

Run from the repository root, after benchmarks/gpu_prepare.sh (it fills .gpu-data/ with MNIST).
The weights come back as OUT/NAME.safetensors; the logs and run folders as OUT/logs.tar.gz.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 128
CALIBRATION_START = 25.0  # seconds for every calibration process to load and warm up
CALIBRATION_SECONDS = 12.0
VALIDATION_SHARE = 1.10  # per-epoch PGD validation on 5000 images, the test-accuracy pass, saving


@dataclass(frozen=True)
class Recipe:
    model: str
    objective: str
    eps: float
    args: tuple[str, ...] = ()
    min_epochs: int = 10
    max_epochs: int = 60

    def train_command(self, epochs: int, out: str, device: str) -> list[str]:
        return ["redblue", "train", "--model", self.model, "--objective", self.objective, "--epochs", str(epochs),
                *self.args, "--device", device, "--out", out]  # fmt: skip


RECIPES = {
    "cnn-pgd": Recipe("cnn", "pgd:eps=0.3,steps=10", 0.3, ("--weight-average", "0.999")),
    "cnn-trades": Recipe("cnn", "trades:eps=0.3,steps=10,beta=6", 0.3, ("--weight-average", "0.999")),
    "cnn-large-crown-ibp": Recipe("cnn-large", "crown-ibp:eps=0.3", 0.3, max_epochs=100),
}


@dataclass
class Job:
    name: str
    recipe: Recipe
    epochs: int = 0
    seconds_per_batch: float = 0.0


def calibrate(name: str, device: str, start_at: float, seconds: float) -> None:
    """Print seconds per training batch of recipe `name` (one JSON line): chunks of 16 batches of the
    recipe's own model and objective, from the wall-clock time `start_at` (so that every recipe's
    calibration runs beside the others, as their training will) for `seconds`, after a warm-up."""
    import torch

    from redblue.data import load_dataset
    from redblue.defenses import parse_objective
    from redblue.models import build_model, parse_model
    from redblue.train import TrainConfig, init_model, train
    from redblue.train.optim import ConstantSchedule

    recipe = RECIPES[name]
    data = load_dataset("mnist", "train")
    chunk = (16 if device == "cuda" else 2) * BATCH
    x, y = data.x[:chunk].to(device), data.y[:chunk].to(device)
    spec = parse_model(recipe.model)
    model = init_model(lambda: build_model(spec), seed=0).to(device)
    # the ramp spans each call: CROWN-IBP pays for its CROWN pass while beta > 0 (all but a call's
    # last batch here, the first half of a real run): timing that for every epoch overestimates
    config = TrainConfig(epochs=1, objective=parse_objective(recipe.objective), val_size=0,
                         schedule=ConstantSchedule(), eps_warmup_epochs=1.0)  # fmt: skip
    train(model, x, y, config)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    time.sleep(max(0.0, start_at - time.time()))
    started, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - started < seconds:
        train(model, x, y, config)
        n += chunk // BATCH
    sync()
    print(json.dumps({"name": name, "seconds_per_batch": (time.perf_counter() - started) / n, "batches": n}), flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="gpu-recipes-"))  # not under OUT: a device call brings back 8 files
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    summary: dict = {"device": args.device, "budget_s": args.budget, "recipes": {}}
    if args.device == "cuda":
        import torch

        summary["gpu"] = torch.cuda.get_device_name()
        summary["torch"] = torch.__version__
    jobs = [Job(name, RECIPES[name]) for name in args.recipes.split(",")]
    n_train = 60000 - 5000 if not args.cpu_dry_run else 1000 - 100

    def elapsed() -> float:
        return time.perf_counter() - started

    def log(message: str) -> None:
        print(f"[{elapsed():6.1f} s] {message}", flush=True)

    # 1. calibration, all recipes at once (as they will train)
    start_at = time.time() + CALIBRATION_START
    procs = {job.name: subprocess.Popen([sys.executable, __file__, "--calibrate", job.name, "--device", args.device,
                                         "--start-at", str(start_at), "--seconds", str(CALIBRATION_SECONDS)],
                                        stdout=subprocess.PIPE, text=True, env=env)
             for job in jobs}  # fmt: skip
    for job in jobs:
        text, _ = procs[job.name].communicate(timeout=CALIBRATION_START + 4 * CALIBRATION_SECONDS + 60)
        job.seconds_per_batch = json.loads(text.strip().splitlines()[-1])["seconds_per_batch"]
    calibration_s = elapsed()
    log(f"calibrated: {', '.join(f'{j.name} {1000 * j.seconds_per_batch:.1f} ms/batch' for j in jobs)}")

    # 2. epochs: training ends by `train_end`, leaving `eval_share` of the budget for the evaluations
    train_end = args.budget * (1 - args.eval_share)
    for job in jobs:
        epoch_s = job.seconds_per_batch * -(-n_train // BATCH) * VALIDATION_SHARE
        fit = int((train_end - calibration_s - 15) / epoch_s)
        job.epochs = 1 if args.cpu_dry_run else min(job.recipe.max_epochs, fit // 5 * 5)
        log(f"{job.name}: {epoch_s:.1f} s per epoch -> {job.epochs} epochs (fit {fit})")
    skipped = [job for job in jobs if job.epochs < (1 if args.cpu_dry_run else job.recipe.min_epochs)]
    for job in skipped:
        log(f"{job.name}: skipped, fewer than {job.recipe.min_epochs} epochs fit")
        summary["recipes"][job.name] = {"skipped": True, "seconds_per_batch": job.seconds_per_batch, "epochs_fit": job.epochs}
    jobs = [job for job in jobs if job not in skipped]

    # 3. train and evaluate, each recipe in its own chain
    chains = {}
    deadline = int(time.time() + args.budget - elapsed() - 20)  # the evaluations' wall-clock end, in epoch seconds
    for job in jobs:
        model_path = out / f"{job.name}.safetensors"
        train_cmd = job.recipe.train_command(job.epochs, str(model_path), args.device)
        extra_train = ["--train-subset", "1000"] if args.cpu_dry_run else []
        eval_cmd = ["redblue", "evaluate", str(model_path), "--attacks", "standard", "--eps", str(job.recipe.eps),
                    "--device", args.device, "--out", str(work / f"{job.name}-eval")]  # fmt: skip
        if args.cpu_dry_run:
            eval_cmd += ["--limit", "50"]
        summary["recipes"][job.name] = {"train_command": " ".join(train_cmd), "eval_command": " ".join(eval_cmd),
                                        "epochs": job.epochs, "seconds_per_batch": job.seconds_per_batch}  # fmt: skip
        script = (
            f"s=$(date +%s.%N); {_quote(_runnable(train_cmd) + extra_train + ['--json'])} > {work}/{job.name}-train.json "
            f"2> {work}/{job.name}-train.log; rc=$?; e=$(date +%s.%N); echo train $rc $s $e > {work}/{job.name}-times; "
            f"[ $rc = 0 ] || exit $rc; s=$(date +%s.%N); left=$(( {deadline} - $(date +%s) )); [ $left -gt 1 ] || left=1; "
            f"timeout $left "
            f"{_quote(_runnable(eval_cmd) + ['--json'])} > {work}/{job.name}-eval.json 2> {work}/{job.name}-eval.log; "
            f"rc=$?; e=$(date +%s.%N); echo evaluate $rc $s $e >> {work}/{job.name}-times; exit $rc"
        )
        chains[job.name] = subprocess.Popen(["bash", "-c", script], env=env)
    for job in jobs:
        try:
            chains[job.name].wait(timeout=max(1.0, args.budget - elapsed() - 5))
        except subprocess.TimeoutExpired:
            chains[job.name].kill()
            log(f"{job.name}: out of time")

    # 4. gather
    for job in jobs:
        entry = summary["recipes"][job.name]
        times = work / f"{job.name}-times"
        for line in times.read_text().splitlines() if times.exists() else []:
            step, rc, start, end = line.split()
            entry[f"{step}_exit"] = int(rc)
            entry[f"{step}_s"] = round(float(end) - float(start), 1)
        for step in ("train", "eval"):
            path = work / f"{job.name}-{step}.json"
            try:
                entry[step] = json.loads(path.read_text())
            except (OSError, ValueError):
                entry[step] = None
        log(f"{job.name}: {json.dumps({k: v for k, v in entry.items() if k not in ('train', 'eval')})}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="work")
    shutil.rmtree(work)
    log("done")
    return 0


def _runnable(command: list[str]) -> list[str]:
    """`redblue ...` as this interpreter runs it (the GPU machine has the source tree, not an install)."""
    return [sys.executable, "-m", *command] if command[0] == "redblue" else command


def _quote(command: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(part) for part in command)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/gpu-recipes")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for everything, calibration to evaluation")
    parser.add_argument("--eval-share", type=float, default=0.35, help="the budget's share kept for the evaluations")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--cpu-dry-run", action="store_true", help="every step on the CPU on tiny data: a check of this script")
    parser.add_argument("--calibrate", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=CALIBRATION_SECONDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_dry_run:
        args.device = "cpu"
    if args.calibrate:
        calibrate(args.calibrate, args.device, args.start_at, args.seconds)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
