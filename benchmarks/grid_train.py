"""The paper's 3x3 grid trained as one batched model (`redblue.train.grid.loop`) against one model at a time.

Nine members (lambda1, lambda2 in {0, 1e-5, 1e-4}, seed 0), the paper's MLP and protocol, one
or more epochs on N MNIST training images. Modes, each in fresh processes, rotated within every
repeat so that load on a shared machine hits them alike:

    alone-1p   the nine models one after another (redblue.train.train), 1 process, 1 thread
    alone-2p   the same split over 2 processes (5 + 4 models), 1 thread each: today's reproduce
    grid-1p    one batched model of nine, 1 process, 1 thread
    grid-1p2t  the same with 2 threads
    grid-2p    two batched models (5 + 4 members) in 2 processes, 1 thread each

Printed per mode: median wall time of the training (first start to last end), the CPU time of
all its processes, the ratios against alone-1p and alone-2p, and whether every member's weights
are the same bits as alone-1p's. Then the batched FGSM scoring of nine models on the test set
against scoring them one by one, a profile of the grid's training step by kind of work, and an
extrapolation to `reproduce --profile full` (20 epochs of 60,000 images, 10,000 test images).

    python benchmarks/grid_train.py [--images 60000] [--epochs 1] [--repeats 2] [--modes ...]
    python benchmarks/grid_train.py --spread   # the seed spread behind tests/test_gridtrain.py's tolerance
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import torch

from redblue.data import load_dataset
from redblue.errors import RedblueError
from redblue.models import MLPSpec, build_model
from redblue.train import TrainConfig, init_model, train
from redblue.train.grid.loop import train_grid
from redblue.train.grid.score import fgsm_grid_scores

SPEC = MLPSpec(hidden=625, bias=False, init="normal-0.01")
LAMBDAS = (0.0, 1e-5, 1e-4)
MODES = ("alone-1p", "alone-2p", "grid-1p", "grid-1p2t", "grid-2p")
FULL_EPOCHS, FULL_IMAGES = 20, 60000
CURVE_EPS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3)
OTHER_CLIP_EPS = (0.05, 0.075, 0.1, 0.25)
PROFILE_KINDS = {
    "matmul": ("aten::bmm", "aten::mm"),
    "dropout RNG": ("aten::bernoulli_", "aten::div_"),
    "optimiser + penalty": ("aten::sign", "aten::add_", "aten::addcmul_", "aten::mul_", "aten::add", "aten::sqrt_", "aten::sqrt", "aten::addcdiv_"),
    "indexing": ("aten::index", "aten::index_select", "aten::randperm", "aten::gather", "aten::scatter_", "aten::copy_", "aten::_to_copy"),
    "activations + loss": ("aten::relu", "aten::clamp_min", "aten::threshold_backward", "aten::mul", "aten::_log_softmax", "aten::exp",
                           "aten::nll_loss_backward", "aten::_log_softmax_backward_data", "aten::sub", "aten::argmax", "aten::eq", "aten::sum"),
}


def grid_configs(epochs: int) -> list[TrainConfig]:
    base = TrainConfig(epochs=epochs, seed=0)
    return [dataclasses.replace(base, l1=l1, l2=l2) for l1, l2 in itertools.product(LAMBDAS, LAMBDAS)]


def _digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def worker(kind: str, members: list[int], images: int, epochs: int, threads: int) -> None:
    """Train `members` of the grid (alone or as one grid), print JSON: start/end (epoch seconds), CPU, digests."""
    torch.set_num_threads(threads)
    train_set = load_dataset("mnist", "train")
    x, y = train_set.x[:images], train_set.y[:images]
    configs = [grid_configs(epochs)[m] for m in members]
    build = lambda: build_model(SPEC)  # noqa: E731
    start, cpu = time.time(), time.process_time()
    if kind == "grid":
        models = train_grid(build, configs, x, y).models
    else:
        models = []
        for config in configs:
            model = init_model(build, seed=config.seed)
            train(model, x, y, config, progress=False)
            models.append(model)
    end, cpu = time.time(), time.process_time() - cpu
    print(json.dumps({"start": start, "end": end, "cpu": cpu, "digests": dict(zip(members, map(_digest, models)))}))


def run_mode(mode: str, images: int, epochs: int) -> dict:
    kind = "grid" if mode.startswith("grid") else "alone"
    threads = 2 if mode.endswith("2t") else 1
    splits = [list(range(5)), list(range(5, 9))] if mode.endswith("2p") else [list(range(9))]
    commands = [
        [sys.executable, __file__, "--worker", kind, "--members", ",".join(map(str, members)),
         "--images", str(images), "--epochs", str(epochs), "--threads", str(threads)]
        for members in splits
    ]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
    outputs = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"error: worker {process.args} failed with exit code {process.returncode}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    digests = {int(k): v for o in outputs for k, v in o["digests"].items()}
    return {
        "wall": max(o["end"] for o in outputs) - min(o["start"] for o in outputs),
        "cpu": sum(o["cpu"] for o in outputs),
        "digests": digests,
    }


def profile_step(images: int, steps: int) -> dict[str, float]:
    """Self CPU time of the grid's training ops over `steps` steps, summed by kind of work (1 thread)."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    train_set = load_dataset("mnist", "train")
    n = min(images, 128 * steps)
    x, y = train_set.x[:n], train_set.y[:n]
    build = lambda: build_model(SPEC)  # noqa: E731
    train_grid(build, grid_configs(1), x[:1280], y[:1280])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_grid(build, grid_configs(1), x, y)
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        kind = next((k for k, names in PROFILE_KINDS.items() if event.key in names), "other")
        totals[kind] += event.self_cpu_time_total / 1e6
    return dict(totals)


def scoring(images: int) -> tuple[float, float, float]:
    """Seconds (CPU) to score nine models on `images` test images at every eps: batched, one by one; max |difference|."""
    try:
        from redblue.reproduce.cell import fgsm_scores  # the sweep engine's layout
    except ImportError:
        from redblue.reproduce import fgsm_scores  # type: ignore[no-redef]
    torch.set_num_threads(1)
    test_set = load_dataset("mnist", "test")
    x, y = test_set.x[:images], test_set.y[:images]
    models = [init_model(lambda: build_model(SPEC), seed=s) for s in range(9)]
    settings = [(e, False) for e in CURVE_EPS] + [(e, True) for e in OTHER_CLIP_EPS]
    started = time.process_time()
    batched = fgsm_grid_scores(models, x, y, settings)
    batched_seconds = time.process_time() - started
    started = time.process_time()
    alone = [fgsm_scores(model, x, y, settings) for model in models]
    alone_seconds = time.process_time() - started
    worst = max(abs(a.accuracy - b.accuracy) for ms, ss in zip(batched, alone) for a, b in zip(ms, ss))
    return batched_seconds, alone_seconds, worst


def seed_spread() -> None:
    """Clean and FGSM accuracy of one-by-one training over 6 seeds, in tests/test_gridtrain.py's setting."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from test_gridtrain import N_TEST, N_TRAIN, SETTINGS  # noqa: PLC0415

    torch.set_num_threads(1)
    test_split = load_dataset("mnist", "test")
    x, y, x_test, y_test = test_split.x[:N_TRAIN], test_split.y[:N_TRAIN], test_split.x[-N_TEST:], test_split.y[-N_TEST:]
    print(f"seed spread of one-by-one training: {N_TRAIN} images, 2 epochs, {N_TEST} test images, seeds 0-5")
    for l1, l2 in ((0.0, 0.0), (1e-4, 0.0), (0.0, 1e-4), (1e-5, 1e-4)):
        models = []
        for seed in range(6):
            model = init_model(lambda: build_model(SPEC), seed=seed)
            train(model, x, y, TrainConfig(epochs=2, l1=l1, l2=l2, seed=seed), progress=False)
            models.append(model)
        scores = fgsm_grid_scores(models, x_test, y_test, SETTINGS)
        for s, (eps, clip) in enumerate(SETTINGS):
            values = [member[s].accuracy for member in scores]
            pairs = [abs(a - b) for a, b in itertools.combinations(values, 2)]
            print(f"  l1={l1:g} l2={l2:g} eps={eps:g}{' clipped' if clip else ''}: |seed a - seed b| min {min(pairs):.4f} "
                  f"median {statistics.median(pairs):.4f} max {max(pairs):.4f}, std {statistics.stdev(values):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--profile-steps", type=int, default=60)
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--worker", choices=("grid", "alone"))
    parser.add_argument("--members", default="")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, [int(m) for m in args.members.split(",")], args.images, args.epochs, args.threads)
        return
    if args.spread:
        seed_spread()
        return
    modes = args.modes.split(",")
    print(f"paper grid (9 members), {args.images} images x {args.epochs} epoch(s), batch 128, "
          f"{args.repeats} rotated repeat(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    runs: dict[str, list[dict]] = defaultdict(list)
    for repeat in range(args.repeats):
        for mode in modes[repeat % len(modes):] + modes[: repeat % len(modes)]:
            runs[mode].append(run_mode(mode, args.images, args.epochs))
            print(f"  {mode}: {runs[mode][-1]['wall']:.1f} s wall, {runs[mode][-1]['cpu']:.1f} s CPU", flush=True)
    wall = {mode: statistics.median(r["wall"] for r in runs[mode]) for mode in modes}
    cpu = {mode: statistics.median(r["cpu"] for r in runs[mode]) for mode in modes}
    reference = runs[modes[0]][0]["digests"]
    print(f"\n{'mode':10s} {'wall s':>8s} {'CPU s':>8s} {'/alone-1p':>10s} {'/alone-2p':>10s}  weights = {modes[0]}'s")
    for mode in modes:
        same = all(r["digests"] == reference for r in runs[mode])
        ratios = [f"{wall[mode] / wall[b]:10.3f}" if b in wall else f"{'-':>10s}" for b in ("alone-1p", "alone-2p")]
        print(f"{mode:10s} {wall[mode]:8.1f} {cpu[mode]:8.1f} {ratios[0]} {ratios[1]}  {'bit for bit' if same else 'DIFFERENT'}")
    batched, alone, worst = scoring(args.test_images)
    print(f"\nscoring 9 models, {args.test_images} test images, {len(CURVE_EPS) + len(OTHER_CLIP_EPS)} settings, 1 thread: "
          f"batched {batched:.1f} s CPU, one by one {alone:.1f} s CPU, ratio {batched / alone:.3f}, max |accuracy difference| {worst:g}")
    kinds = profile_step(args.images, args.profile_steps)
    total = sum(kinds.values())
    print(f"\ngrid training step by kind of work ({args.profile_steps} steps, 1 thread, self time): "
          + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    scale = FULL_EPOCHS * FULL_IMAGES / (args.epochs * args.images)
    eval_cpu = batched * 10000 / args.test_images
    print(f"\nextrapolated to reproduce --profile full ({FULL_EPOCHS} epochs x {FULL_IMAGES} images, "
          f"{scale:.0f}x this run's training; scoring {eval_cpu:.0f} s CPU; start-up and report not included):")
    for mode in modes:
        cores = 1 if mode in ("alone-1p", "grid-1p") else 2
        print(f"  {mode:10s} at this run's load: {scale * wall[mode] + eval_cpu / cores:6.0f} s; "
              f"from its CPU time on {cores} idle core(s): {(scale * cpu[mode] + eval_cpu) / cores:6.0f} s")


if __name__ == "__main__":
    try:
        main()
    except RedblueError as exc:
        raise SystemExit(f"error: {exc}") from None
