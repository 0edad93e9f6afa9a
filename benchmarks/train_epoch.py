"""One training epoch of `redblue.train.train` over a plain PyTorch loop doing the same work.

Both train the paper's MLP (784 -> 625 -> 10, dropout, no biases) with the same optimiser
(Newmu's RMSProp, decay 0.9), batch 128, on MNIST as one in-memory tensor sliced by a
shuffled index. The plain loop adds the L1/L2 penalty to the loss the usual way (autograd);
ours adds its gradient directly. Runs alternate (ours, plain, ours, ...) so that load on a
shared machine hits both alike; the ratio printed is median(ours) / median(plain), target <= 1.10.

    python benchmarks/train_epoch.py [--n-train 60000] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from redblue.data import load_dataset
from redblue.errors import RedblueError
from redblue.models import MLPSpec, build_model
from redblue.train import NewmuRMSprop, TrainConfig, init_model, train


def plain_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, l1: float, l2: float, seed: int) -> None:
    optimizer = NewmuRMSprop(model.parameters(), lr=1e-3, rho=0.9, eps=1e-6)
    weights = [p for p in model.parameters() if p.dim() >= 2]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    model.train()
    for start in range(0, len(x), 128):
        index = order[start : start + 128]
        loss = F.cross_entropy(model(x[index]), y[index])
        if l1 or l2:
            loss = loss + sum(l1 * w.abs().sum() + l2 * w.square().sum() for w in weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def ours_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, l1: float, l2: float, seed: int) -> None:
    train(model, x, y, TrainConfig(epochs=1, lr=1e-3, l1=l1, l2=l2, seed=seed), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_set = load_dataset("mnist", "train")
    x, y = train_set.x[: args.n_train], train_set.y[: args.n_train]
    spec = MLPSpec(hidden=625, bias=False, init="normal-0.01")
    print(f"one epoch, {len(y)} images, batch 128, {args.threads} thread(s), {args.repeats} interleaved repeats")
    for l1, l2 in ((0.0, 0.0), (1e-4, 1e-4)):
        seconds: dict[str, list[float]] = {"ours": [], "plain": []}
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, epoch in (("ours", ours_epoch), ("plain", plain_epoch)):
                model = init_model(lambda: build_model(spec), seed=repeat)
                started = time.perf_counter()
                epoch(model, x, y, l1=l1, l2=l2, seed=repeat)
                if repeat:
                    seconds[name].append(time.perf_counter() - started)
        ours, plain = statistics.median(seconds["ours"]), statistics.median(seconds["plain"])
        print(f"l1={l1:g} l2={l2:g}: ours {ours:.2f} s, plain {plain:.2f} s, ratio {ours / plain:.3f} (target <= 1.10)")


if __name__ == "__main__":
    try:
        main()
    except RedblueError as exc:  # missing data, a bad model file: one line, like the CLI
        raise SystemExit(f"error: {exc}") from None
