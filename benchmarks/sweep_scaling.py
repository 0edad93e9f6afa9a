"""`redblue reproduce` on 2 workers (local processes, Ray tasks) against 1 worker: wall-time ratio and the same numbers.

Each configuration is the real command, `redblue reproduce --profile P --seeds S --executor E
--workers W`, run in a fresh process into a fresh folder (start-up, data loading, Ray's start and
shutdown, Figure 1 and the report included), on the same machine one after another. The
baseline is one worker (the cells one after another in that process). Printed per run: wall
time, ratio to the baseline (issue 9's target for 2 workers: <= 0.6), ratio to the same executor
with one worker ("same-ex"), and whether every cell's
numbers (curves and training history) equal the baseline's, and, for the local executor, the CPU
seconds the run used (all its processes; Ray's workers are not our descendants, so not for Ray):
with 2 free cores, a 2-worker run's wall time is about its CPU time / 2. The load
average is printed before and after each run: on a shared machine, other work shows up in the ratio.

Default: the quick profile with 2 seeds (18 cells: 9 rounds of 2, an ideal ratio of 0.50; the
README's 9 cells give 5 rounds of 2, an ideal 0.56). By default reproduce trains each worker's
cells as one batched grid (one task per worker; one 18-model grid for the 1-worker baseline, two
9-model grids for 2 workers); `--grid-size 1` measures one-by-one training, as before the grid trainer.

    python benchmarks/sweep_scaling.py [--profile quick] [--seeds 2] [--executors local,ray] [--train-subset N] [--grid-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redblue.reproduce import PAPER_TOML


def cell_numbers(results: dict) -> list[dict]:
    """Every cell's numbers without its timings: what must not depend on the executor."""
    keep = ("cell", "l1", "l2", "seed", "n_train", "n_test", "curve", "other_clip_curve")
    return [
        {**{k: c[k] for k in keep}, "history": [{k: v for k, v in h.items() if k != "seconds"} for h in c["history"]]}
        for c in results["cells"]
    ]


def run(
    config: Path, out: Path, *, profile: str, seeds: int, executor: str, workers: int, grid_size: int | None
) -> tuple[float, float, dict, str]:
    command = [
        sys.executable, "-m", "redblue", "reproduce", "--config", str(config), "--profile", profile, "--seeds", str(seeds),
        "--executor", executor, "--workers", str(workers), "--out", str(out), "--device", "cpu", "--json",
    ] + (["--grid-size", str(grid_size)] if grid_size else [])
    load = os.getloadavg()[0]
    cpu_before = _children_cpu()
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    return wall, cpu, json.loads((out / "results.json").read_text()), f"{load:.1f} -> {os.getloadavg()[0]:.1f}"


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished descendant: the command, its workers, Ray's processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--executors", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N images (shorter cells)")
    parser.add_argument("--grid-size", type=int, default=None, help="reproduce --grid-size (1: one by one; default: batched grids)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="redblue-sweep-bench-") as tmp:
        config = Path(tmp) / "paper.toml"
        text = PAPER_TOML.read_text()
        if args.train_subset:
            text = text.replace('name = "paper"', f'name = "paper"\ntrain_subset = {args.train_subset}', 1)
        config.write_text(text)
        # each executor at 1 and 2 workers: the ratio against the same executor's one worker counts its
        # start-up (Ray's ~10 s) on both sides; the ratio against local's one worker on one side only
        plan = [(executor, workers) for executor in args.executors.split(",") for workers in (1, 2)]
        if plan[0] != ("local", 1):
            plan.insert(0, ("local", 1))
        print(f"reproduce --profile {args.profile} --seeds {args.seeds}"
              + (f", train_subset {args.train_subset}" if args.train_subset else "")
              + (f", --grid-size {args.grid_size}" if args.grid_size else ", batched grids") + f"; {os.cpu_count()} CPUs")
        print(f"{'executor':<9} {'workers':>7} {'wall s':>8} {'ratio':>6} {'same-ex':>7} {'cpu s':>8}  {'same numbers':<12}  load (1 min)")
        baseline: tuple[float, list[dict]] | None = None
        one_worker: dict[str, float] = {}
        for executor, workers in plan:
            out = Path(tmp) / f"{executor}-{workers}"
            wall, cpu, results, load = run(config, out, profile=args.profile, seeds=args.seeds, executor=executor, workers=workers,
                                           grid_size=args.grid_size)
            numbers = cell_numbers(results)
            if baseline is None:
                baseline = (wall, numbers)
            if workers == 1:
                one_worker[executor] = wall
            ratio = wall / baseline[0]
            same_executor = wall / one_worker[executor] if executor in one_worker else float("nan")
            same = "yes" if numbers == baseline[1] else "NO"
            cpu_text = f"{cpu:>8.1f}" if executor == "local" else f"{'n/a':>8}"
            print(f"{executor:<9} {workers:>7} {wall:>8.1f} {ratio:>6.2f} {same_executor:>7.2f} {cpu_text}  {same:<12}  {load}",
                  flush=True)


if __name__ == "__main__":
    main()
