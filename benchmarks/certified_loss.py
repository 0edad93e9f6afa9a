"""The cost of certified training: an epoch with `ibp_loss` / `crown_ibp_loss` over a clean epoch.

Each epoch is the same plain loop (Adam, batch 128, an in-memory MNIST slice cut by a shuffled
index); only the loss differs: clean CE, IBP (kappa 0.5), CROWN-IBP (kappa 0.5, beta 0.5). Runs
alternate between the variants so that load on a shared machine hits all alike; the ratios are
median(variant) / median(clean). Issue 8's target: an IBP epoch <= 2.5 x a clean epoch.

    python benchmarks/certified_loss.py [--n-train 6000] [--repeats 3] [--threads 1] [--models mlp,cnn]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redblue.data import load_dataset
from redblue.defenses.certified import crown_ibp_loss, ibp_loss
from redblue.models import CNNSpec, MLPSpec, build_model

Loss = Callable[[nn.Module, Tensor, Tensor], Tensor]

LOSSES: dict[str, Loss] = {
    "clean": lambda model, x, y: F.cross_entropy(model(x), y),
    "ibp": lambda model, x, y: ibp_loss(model, x, y, eps=0.1, kappa=0.5)[0],
    "crown-ibp": lambda model, x, y: crown_ibp_loss(model, x, y, eps=0.1, kappa=0.5, beta=0.5)[0],
}
MODELS = {"mlp": MLPSpec(), "cnn": CNNSpec()}


def epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Loss, x: Tensor, y: Tensor, seed: int) -> float:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    model.train()
    start = time.process_time()
    for first in range(0, len(x), 128):
        index = order[first : first + 128]
        loss = loss_fn(model, x[index], y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_set = load_dataset("mnist", "train")
    x, y = train_set.x[: args.n_train], train_set.y[: args.n_train]
    print(f"one epoch, {len(y)} images, batch 128, {args.threads} thread(s), {args.repeats} interleaved repeats")
    for name in args.models.split(","):
        torch.manual_seed(0)
        models = {loss: build_model(MODELS[name]) for loss in LOSSES}
        optimizers = {loss: torch.optim.Adam(models[loss].parameters(), lr=1e-3) for loss in LOSSES}
        seconds: dict[str, list[float]] = {loss: [] for loss in LOSSES}
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for loss, loss_fn in LOSSES.items():
                spent = epoch(models[loss], optimizers[loss], loss_fn, x, y, seed=repeat)
                if repeat:
                    seconds[loss].append(spent)
        clean = statistics.median(seconds["clean"])
        cells = ", ".join(f"{loss} {statistics.median(s):.2f} s ({statistics.median(s) / clean:.2f}x)" for loss, s in seconds.items())
        print(f"{name}: {cells} (CPU time)")


if __name__ == "__main__":
    main()
