"""One training epoch of `redblue.train.train`, as ratios measured in one run.

Rows (each a ratio of medians over interleaved repeats, so load on a shared machine hits both alike;
seconds are CPU time on a CPU, wall time on a GPU):

  clean        ours / a plain PyTorch loop doing the same work (Newmu's RMSProp, batch 128, with and
               without the L1/L2 penalty, which the plain loop adds through autograd): target <= 1.10
  fgsm-at      a Goodfellow FGSM-AT epoch (fgsm:eps=0.1,alpha=0.5) / our clean epoch: target <= 1.8
  pgd7-at      our PGD-7 AT epoch / a hand-written PGD-7 loop in plain PyTorch (same optimiser, random
               start, eval-mode attack, same steps): target <= 1.05
  ibp          an IBP epoch (ibp:eps=0.1 at kappa 0.5: clean pass plus interval pass) / our clean epoch
               (target <= 2.5). Measured (CPU, 1 thread, load 5-7): MLP 2.37. With convolutions the
               interval pass costs about two clean passes (centre and radius), not one.

It also asserts that the attack steps inside training compute no weight gradients: a hook on every
parameter counts one gradient per batch over a whole PGD-7 epoch.

Beside each ratio it prints the ops one batch dispatches (counted, not timed, so the same on every
machine): every aten op, and in brackets those that compute (no view such as detach or t, no
profiler marker); on a GPU each of those is a kernel launch. A small model at batch 128 runs at
host speed there (the GPU waits for launches), so the computing-op ratio predicted the H200's time
ratios (before: clean 1.214 against 1.206 measured, fgsm-at 1.951 against 1.959); what it leaves
out is host work without a kernel (an autograd run, Python). A batch's count is the difference
between epochs of 40 and 20 batches, over 20 (the loop folds its running totals every 20 batches).
Before (a586bf4) and after the loop stopped summing its running loss and accuracy per batch and the
FGSM mix lost its per-parameter multiplications (the paper's MLP without bias, and cnn-small):

  ops per batch, all [computing]   mlp before   mlp after        cnn-small before   after
  clean, ours (rmsprop-newmu)      57 [34]      51.45 [28.45]    73 [36]            67.45 [30.45]
  clean, plain loop                49 [28]      49 [28]          65 [30]            65 [30]
  clean, ours (adam)               65 [41]      59.45 [35.45]    93 [55]            87.45 [49.45]
  fgsm-at (adam)                   125 [80]     110.45 [66.45]   171 [106]          150.45 [86.45]

Computing-op ratios: clean ours / plain 1.214 -> 1.016 (mlp), 1.200 -> 1.015 (cnn-small); fgsm-at /
clean 1.951 -> 1.874 (mlp), 1.927 -> 1.748 (cnn-small). The host time of a step at toy size (the
same structures at 4-16-3 and batch 8 on a CPU, all overhead; medians of 3, microseconds), MLP:
clean 333 -> 312, fgsm-at 666 -> 611 (2.00 -> 1.96 of clean); the FGSM variant that takes both
terms' gradients in the call launches 3 ops fewer (1.790) but ran 647 us (2.07), one autograd run
more. Neither proxy puts the MLP's fgsm-at under 1.8 on a GPU; measure it there.

Why fgsm-at cannot reach 1.8 by FLOPs (matrix multiply-adds per image, counted by a test in
tests/test_defenses_adversarial.py): a clean step is the forward F, the weight gradients (F again)
and the input gradients of every layer but the first (F - first); FGSM-AT is two clean steps plus
the first layer's input gradient, the crafting gradient:

  model       F          first layer   clean (3F - first)   FGSM-AT (2 clean + first)   ratio
  mlp         496,250    490,000       998,750              2,487,500                  2.49
  cnn-small   609,384     50,176       1,777,976            3,606,128                  2.03

An FGSM-AT epoch comes in under 2x a clean one only through the per-batch work both share: the
optimiser step (Adam: seven foreach passes over every weight), dropout's random masks (the MLP draws
two a pass; on a CPU they cost about as much as its matrix products), slicing, and on a GPU the
launches of ops that move little data. On a CPU these are small next to the matrix products, and
for cnn-small oneDNN's input gradient of the first convolution (1 channel in, stride 2) takes 2.6
ms a batch for its 50,176 multiply-adds an image, ten times that convolution's forward; so there
fgsm-at stays near or above the FLOP ratio. Measured here (1 thread, CPU seconds, the 2-core
machine shared, 1-minute load 2.6-8; before = a586bf4, three and two runs; after = this version,
and in brackets two runs of the variant with a third autograd run):

  model       clean ours/plain    fgsm-at / clean            pgd7 ours/plain    ibp / clean
  mlp before  1.017 1.031 1.043   1.730 1.927 1.888          0.976 0.953 1.030  2.248 2.277 2.239
  mlp after   1.043 (1.069 1.022) 1.825 (1.930 1.978)        0.993              2.315
  cnn before  0.970 1.027         2.231 2.428                0.961 0.970        3.320 3.819
  cnn after   1.001 (1.000 1.030) 2.421 (2.476 2.373)        1.016              3.791

    python benchmarks/train_epoch.py [--model mlp|cnn-small|cnn|cnn-large] [--n-train 12000] [--repeats 5] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from redblue.data import load_dataset
from redblue.defenses import OBJECTIVES, is_adversarial, parse_objective
from redblue.errors import RedblueError
from redblue.models import MODELS, MLPSpec, build_model, parse_model
from redblue.train import NewmuRMSprop, TrainConfig, init_model, train
from redblue.train.optim import ConstantSchedule

Epoch = Callable[[nn.Module, Tensor, Tensor, int], None]
PGD_EPS, PGD_STEPS = 0.1, 7


def ours(objective: str, *, optimizer: str = "adam", l1: float = 0.0, l2: float = 0.0) -> Epoch:
    """One epoch of our loop with everything but the objective switched off (no split, constant lr)."""
    params = parse_objective(objective)

    def epoch(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> None:
        config = TrainConfig(
            epochs=1, objective=params, optimizer=optimizer, l1=l1, l2=l2, seed=seed, schedule=ConstantSchedule(),
            eps_warmup_epochs=0.0 if is_adversarial(params) else None, val_size=0,
        )  # fmt: skip
        train(model, x, y, config)

    return epoch


def plain_clean(l1: float, l2: float) -> Epoch:
    def epoch(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> None:
        optimizer = NewmuRMSprop(model.parameters(), lr=1e-3, rho=0.9, eps=1e-6)
        weights = [p for p in model.parameters() if p.dim() >= 2]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
        model.train()
        for start in range(0, len(x), 128):
            index = order[start : start + 128]
            loss = F.cross_entropy(model(x[index]), y[index])
            if l1 or l2:
                loss = loss + sum(l1 * w.abs().sum() + l2 * w.square().sum() for w in weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def plain_pgd7(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> None:
    """Madry et al.'s PGD training as it is usually written: Adam, uniform random start, 7 signed
    steps of 2.5 * eps / 7 with projection, the attack in eval mode, the step on the last iterate."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    generator = torch.Generator(device=x.device).manual_seed(seed + 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    step_size = 2.5 * PGD_EPS / PGD_STEPS
    for start in range(0, len(x), 128):
        index = order[start : start + 128]
        xb, yb = x[index], y[index]
        model.eval()
        x_adv = (xb + PGD_EPS * (2 * torch.rand(xb.shape, generator=generator, device=x.device) - 1)).clamp(0, 1)
        for _ in range(PGD_STEPS):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), yb, reduction="sum"), x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), xb - PGD_EPS), xb + PGD_EPS).clamp(0, 1)
        model.train()
        loss = F.cross_entropy(model(x_adv), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class OpCount(TorchDispatchMode):
    """Counts the aten ops dispatched inside the block: all of them, and those that compute (neither
    a view, such as detach, t or a slice, nor a profiler marker); a foreach op counts once."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.computing = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        if not func.is_view and not func.overloadpacket.__name__.startswith("_record_function"):
            self.computing += 1
        return func(*args, **(kwargs or {}))


def ops_per_batch(epoch: Epoch, build: Callable[[], nn.Module], x: Tensor, y: Tensor) -> tuple[float, float]:
    """(ops, computing ops) one batch of `epoch` dispatches: epochs of 2k and k batches of 128
    (k = 20, fewer when x is short), the difference over k; the epochs' fixed costs cancel."""
    k = min(20, len(x) // 256)
    counts = []
    for n_batches in (k, 2 * k):
        model = init_model(build, seed=0).to(x.device)
        with OpCount() as count:
            epoch(model, x[: 128 * n_batches], y[: 128 * n_batches], 0)
        counts.append((count.ops, count.computing))
    (ops_k, computing_k), (ops_2k, computing_2k) = counts
    return (ops_2k - ops_k) / k, (computing_2k - computing_k) / k


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """CPU time of this process on a CPU (what other users of a shared machine cannot inflate; with
    several threads it sums them), wall time on a GPU (after a synchronize)."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def measure(variants: dict[str, Epoch], build: Callable[[], nn.Module], x: Tensor, y: Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per variant over `repeats` rounds; each round runs every variant once, in an
    order rotated per round; one extra round first warms up and is not counted."""
    now = clock(x.device)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeats + 1):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            model = init_model(build, seed=round_).to(x.device)
            sync(x.device)
            started = now()
            variants[name](model, x, y, round_)
            sync(x.device)
            if round_:
                seconds[name].append(now() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def check_no_weight_gradients_in_attack_steps(build: Callable[[], nn.Module], x: Tensor, y: Tensor) -> int:
    """Count, with a hook per parameter, how often autograd computes each weight gradient over one
    PGD-7 epoch: exactly once per batch (the training step), never inside the 7 attack steps."""
    model = init_model(build, seed=0).to(x.device)
    counts = {id(p): 0 for p in model.parameters()}
    for p in model.parameters():
        p.register_hook(lambda grad, key=id(p): counts.__setitem__(key, counts[key] + 1))
    ours(f"pgd:eps={PGD_EPS},steps={PGD_STEPS}")(model, x, y, 0)
    batches = -(-len(x) // 128)
    assert set(counts.values()) == {batches}, f"weight gradients computed {sorted(set(counts.values()))} times for {batches} batches"
    return batches


def row(name: str, numerator: float, denominator: float, target: float, what: str, ops: tuple[tuple[float, float], ...]) -> None:
    ratio = numerator / denominator
    verdict = "ok" if ratio <= target else "OVER TARGET"
    (top, top_computing), (bottom, bottom_computing) = ops
    counts = f"ops per batch {top:g} [{top_computing:g}] / {bottom:g} [{bottom_computing:g}]"
    counts += f" = {top / bottom:.3f} [{top_computing / bottom_computing:.3f}]"
    print(f"{name:9s} {what}: {numerator:.2f} s / {denominator:.2f} s = {ratio:.3f} (target <= {target}) {verdict}; {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="mlp", help="mlp: the paper's 784-625-10")
    parser.add_argument("--n-train", type=int, default=12000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.getLogger("redblue.train").setLevel(logging.ERROR)  # one epoch without a ramp, on purpose: no ramp warning
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train_set = load_dataset("mnist", "train")
    x, y = train_set.x[: args.n_train].to(device), train_set.y[: args.n_train].to(device)
    spec = MLPSpec(hidden=625, bias=False, init="normal-0.01") if args.model == "mlp" else parse_model(args.model)
    build = lambda: build_model(spec)  # noqa: E731
    print(
        f"one epoch of {args.model}, {len(y)} images, batch 128, {device}, {args.threads} thread(s), "
        f"{args.repeats} interleaved repeats, {'CPU' if device.type == 'cpu' else 'wall'} seconds, load {os.getloadavg()[0]:.1f}"
    )

    batches = check_no_weight_gradients_in_attack_steps(build, x, y)
    print(f"attack steps compute no weight gradients: one per parameter per batch over {batches} PGD-7 batches")

    for l1, l2 in ((0.0, 0.0), (1e-4, 1e-4)):
        pair = {"ours": ours("clean", optimizer="rmsprop-newmu", l1=l1, l2=l2), "plain": plain_clean(l1, l2)}
        ops = {name: ops_per_batch(epoch, build, x, y) for name, epoch in pair.items()}
        t = measure(pair, build, x, y, args.repeats)
        row("clean", t["ours"], t["plain"], 1.10, f"ours / plain loop, l1={l1:g} l2={l2:g}", (ops["ours"], ops["plain"]))

    variants = {
        "clean": ours("clean", optimizer="adam"),
        "fgsm": ours("fgsm:eps=0.1,alpha=0.5"),
        "pgd7": ours(f"pgd:eps={PGD_EPS},steps={PGD_STEPS}"),
        "plain-pgd7": plain_pgd7,
    }
    if "ibp" in OBJECTIVES:  # certified training (issue 8): its row appears once the objective is registered
        variants["ibp"] = ours(f"ibp:eps={PGD_EPS}")
    ops = {name: ops_per_batch(epoch, build, x, y) for name, epoch in variants.items()}
    t = measure(variants, build, x, y, args.repeats)
    row("fgsm-at", t["fgsm"], t["clean"], 1.8, "Goodfellow FGSM-AT epoch / clean epoch", (ops["fgsm"], ops["clean"]))
    row("pgd7-at", t["pgd7"], t["plain-pgd7"], 1.05, "PGD-7 AT epoch / hand-written PGD-7 loop", (ops["pgd7"], ops["plain-pgd7"]))
    if "ibp" in t:
        row("ibp", t["ibp"], t["clean"], 2.5, "IBP epoch / clean epoch", (ops["ibp"], ops["clean"]))
    else:
        print("ibp       IBP epoch / clean epoch: no `ibp` objective registered yet (target <= 2.5)")


if __name__ == "__main__":
    try:
        main()
    except RedblueError as exc:  # missing data, a bad model file: one line, like the CLI
        raise SystemExit(f"error: {exc}") from None
