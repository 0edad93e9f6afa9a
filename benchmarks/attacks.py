"""Attack speed against the plain gradient, against the peer libraries, and time to a worst case.

On one model (the paper's MLP trained here for one epoch on MNIST, or --model PATH) and the same
test images, prints three tables:

  (a) each attack's time over (its steps x one plain forward + backward pass to the input);
      targets <= 1.10 for FGSM and PGD. Square queries only: its unit is a plain forward pass,
      and it stops querying a sample once fooled, so its ratio can fall below 1.
  (b) our time over torchattacks', ART's and Foolbox's for FGSM and PGD-40, same settings
      (a peer that cannot be imported is skipped with a note; install them with the `peers` extra).
  (c) the time to a worst-case robust accuracy over FGSM, PGD-40 with restarts, APGD-CE and
      Square: `redblue.evaluate.evaluate` (runs each attack only on the samples still robust)
      against torchattacks' attacks run one after another on the whole set; target <= 0.5,
      with a robust accuracy no higher than theirs.

Timings are interleaved (the order rotates every repeat) and ratios are medians of per-repeat
ratios, because the machine may be shared and noisy.

    python benchmarks/attacks.py [--quick] [--threads 1] [--model PATH] [--n 1000] [--eps 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redblue.attacks import ATTACKS, parse_attack
from redblue.data import load_dataset
from redblue.errors import RedblueError
from redblue.evaluate import evaluate
from redblue.models import MLPSpec, build_model, load_model

FGSM_TARGET = PGD_TARGET = 1.10
WORST_CASE_TARGET = 0.5


@dataclass(frozen=True)
class Budget:
    n: int
    repeats: int
    pgd_steps: int
    pgd_restarts: int
    apgd_iter: int
    square_queries: int


FULL = Budget(n=1000, repeats=5, pgd_steps=40, pgd_restarts=5, apgd_iter=100, square_queries=5000)
QUICK = Budget(n=300, repeats=3, pgd_steps=40, pgd_restarts=2, apgd_iter=50, square_queries=500)


# --- the model and the images -------------------------------------------------------------------------


def trained_mlp(epochs: int = 1, seed: int = 0) -> nn.Module:
    """The paper's MLP (784 -> 625 -> 10, dropout) trained with Adam, batch 128, on MNIST's training set."""
    train = load_dataset("mnist", "train")
    torch.manual_seed(seed)
    model = build_model(MLPSpec())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(train.y)).split(128):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(train.x[index]), train.y[index]).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).double().mean().item()


# --- timing ------------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, inner: dict[str, int] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, `repeats` times, in an order that rotates every repeat."""
    inner = inner or {}
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: allocator, lazy imports, first-call dispatch
        fns[name]()
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            calls = inner.get(name, 1)
            start = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            times[name].append((time.perf_counter() - start) / calls)
    return times


def median_ratio(num: list[float], den: list[float], scale: float = 1.0) -> float:
    return statistics.median(a / (scale * b) for a, b in zip(num, den))


def plain_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One plain forward and backward pass to the input: the unit every gradient attack pays per step."""
    x_var = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_var), y), x_var)
    return grad


def plain_forward(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def ms(seconds: list[float]) -> str:
    return f"{1000 * statistics.median(seconds):9.1f}"


# --- (a) against the plain gradient --------------------------------------------------------------------


def ours(name: str, model: nn.Module, x: Tensor, y: Tensor, spec: str, seed: int = 0) -> Callable[[], Tensor]:
    entry, params = parse_attack(f"{name}:{spec}" if spec else name)
    return lambda: entry(model, x, y, params, generator=torch.Generator().manual_seed(seed))


def table_a(model: nn.Module, x: Tensor, y: Tensor, eps: float, budget: Budget) -> list[tuple[str, float]]:
    step = 2.5 * eps / budget.pgd_steps
    attacks = {
        "fgsm": (ours("fgsm", model, x, y, f"eps={eps}"), 1, "grad"),
        f"pgd-{budget.pgd_steps}": (ours("pgd", model, x, y, f"eps={eps},steps={budget.pgd_steps},step_size={step}"), budget.pgd_steps, "grad"),
        f"apgd-ce-{budget.apgd_iter}": (ours("apgd-ce", model, x, y, f"eps={eps},n_iter={budget.apgd_iter}"), budget.apgd_iter, "grad"),
        f"square-{budget.square_queries}": (ours("square", model, x, y, f"eps={eps},n_queries={budget.square_queries}"), budget.square_queries, "fwd"),
    }
    fns: dict[str, Callable[[], object]] = {name: fn for name, (fn, _, _) in attacks.items()}
    fns["plain fwd+bwd"] = lambda: plain_gradient(model, x, y)
    fns["plain fwd"] = lambda: plain_forward(model, x)
    times = interleaved(fns, repeats=budget.repeats, inner={"fgsm": 10, "plain fwd+bwd": 10, "plain fwd": 10})
    print(f"\n(a) time over (steps x one plain pass), {len(x)} images, eps={eps}, median of {budget.repeats} interleaved repeats")
    print(f"    plain forward+backward to the input: {ms(times['plain fwd+bwd']).strip()} ms; plain forward: {ms(times['plain fwd']).strip()} ms")
    print(f"{'attack':<16}{'steps':>7}{'unit':>6}{'ms':>10}{'ratio':>8}{'target':>8}")
    ratios = []
    for name, (_, steps, unit) in attacks.items():
        baseline = times["plain fwd+bwd" if unit == "grad" else "plain fwd"]
        ratio = median_ratio(times[name], baseline, steps)
        target = {"fgsm": f"{FGSM_TARGET:.2f}", f"pgd-{budget.pgd_steps}": f"{PGD_TARGET:.2f}"}.get(name, "-")
        print(f"{name:<16}{steps:>7}{unit:>6}{ms(times[name])}{ratio:>8.3f}{target:>8}")
        ratios.append((name, ratio))
    return ratios


# --- (b) against the peers -----------------------------------------------------------------------------


def peer_attacks(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step: float) -> dict[str, dict[str, Callable[[], object]]]:
    """{peer: {"fgsm": fn, "pgd": fn}} for each peer library that imports; notes for the others."""
    peers: dict[str, dict[str, Callable[[], object]]] = {}
    try:
        import torchattacks

        fgsm_ta = torchattacks.FGSM(model, eps=eps)
        pgd_ta = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)
        peers["torchattacks"] = {"fgsm": lambda: fgsm_ta(x, y), "pgd": lambda: pgd_ta(x, y)}
    except ImportError as exc:
        print(f"    note: torchattacks skipped ({exc}); install it with `make setup-test`")
    try:
        import numpy as np
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(
            model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
            clip_values=(0.0, 1.0), device_type="cpu",
        )
        fgsm_art = FastGradientMethod(classifier, norm=np.inf, eps=eps, batch_size=len(x))
        pgd_art = ProjectedGradientDescent(
            classifier, norm=np.inf, eps=eps, eps_step=step, max_iter=steps, num_random_init=1,
            batch_size=len(x), verbose=False,
        )
        x_np, y_np = x.numpy(), y.numpy()
        peers["ART"] = {"fgsm": lambda: fgsm_art.generate(x_np, y_np), "pgd": lambda: pgd_art.generate(x_np, y_np)}
    except ImportError as exc:
        print(f"    note: ART skipped ({exc}); install the `peers` extra")
    try:
        import foolbox

        fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
        fgsm_fb = foolbox.attacks.FGSM()
        pgd_fb = foolbox.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=True)
        peers["Foolbox"] = {
            "fgsm": lambda: fgsm_fb(fmodel, x, y, epsilons=eps),
            "pgd": lambda: pgd_fb(fmodel, x, y, epsilons=eps),
        }
    except ImportError as exc:
        print(f"    note: Foolbox skipped ({exc}); install the `peers` extra")
    return peers


def table_b(model: nn.Module, x: Tensor, y: Tensor, eps: float, budget: Budget) -> dict[tuple[str, str], float]:
    steps, step = budget.pgd_steps, 2.5 * eps / budget.pgd_steps
    print(f"\n(b) our time / peer's time, {len(x)} images, eps={eps}, PGD-{steps} step {step:.4g} with random start")
    peers = peer_attacks(model, x, y, eps, steps, step)
    ratios: dict[tuple[str, str], float] = {}
    for attack, spec in (("fgsm", f"eps={eps}"), ("pgd", f"eps={eps},steps={steps},step_size={step}")):
        fns: dict[str, Callable[[], object]] = {"redblue": ours(attack, model, x, y, spec)}
        fns.update({peer: attacks[attack] for peer, attacks in peers.items()})
        times = interleaved(fns, repeats=budget.repeats, inner={name: 10 for name in fns} if attack == "fgsm" else None)
        cells = [f"redblue {ms(times['redblue']).strip()} ms"]
        for peer in peers:
            ratios[(attack, peer)] = median_ratio(times["redblue"], times[peer])
            cells.append(f"{peer} {ms(times[peer]).strip()} ms (ours/theirs {ratios[(attack, peer)]:.3f})")
        print(f"{attack if attack == 'fgsm' else f'pgd-{steps}':<9}" + "   ".join(cells))
    return ratios


# --- (c) time to a worst-case robust accuracy -------------------------------------------------------


def table_c(model: nn.Module, x: Tensor, y: Tensor, eps: float, budget: Budget, repeats: int) -> tuple[float, float, float]:
    specs = [
        "fgsm",
        f"pgd:steps={budget.pgd_steps},step_size={2.5 * eps / budget.pgd_steps},restarts={budget.pgd_restarts}",
        f"apgd-ce:n_iter={budget.apgd_iter}",
        f"square:n_queries={budget.square_queries}",
    ]
    plan = [parse_attack(spec, eps=eps) for spec in specs]
    print(f"\n(c) time to the worst case over {', '.join(specs)} at eps={eps}, {len(x)} images, {repeats} interleaved repeats")
    try:
        import torchattacks
    except ImportError as exc:
        print(f"    note: torchattacks not importable ({exc}); no comparison")
        return float("nan"), float("nan"), float("nan")

    robust: dict[str, float] = {}

    def run_ours() -> None:
        result = evaluate(model, x, y, plan, [eps], mode="worst-case", checks=False, generator=torch.Generator().manual_seed(0))
        robust["ours"] = result.result(eps).worst_case_accuracy

    def run_theirs() -> None:
        attacks = [torchattacks.FGSM(model, eps=eps)]
        attacks += [
            torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / budget.pgd_steps, steps=budget.pgd_steps, random_start=True)
            for _ in range(budget.pgd_restarts)
        ]
        attacks += [
            torchattacks.APGD(model, eps=eps, steps=budget.apgd_iter, loss="ce", n_restarts=1, seed=0),
            torchattacks.Square(model, eps=eps, n_queries=budget.square_queries, n_restarts=1, seed=0),
        ]
        still_robust = torch.ones(len(y), dtype=torch.bool)
        for attack in attacks:
            x_adv = attack(x, y)
            with torch.no_grad():
                still_robust &= model(x_adv).argmax(dim=1) == y
        robust["theirs"] = still_robust.double().mean().item()

    times = interleaved({"ours": run_ours, "theirs": run_theirs}, repeats=repeats)
    ratio = median_ratio(times["ours"], times["theirs"])
    print(f"{'':<14}{'seconds':>9}{'robust acc':>12}")
    print(f"{'redblue':<14}{statistics.median(times['ours']):9.2f}{robust['ours']:12.4f}")
    print(f"{'torchattacks':<14}{statistics.median(times['theirs']):9.2f}{robust['theirs']:12.4f}")
    print(f"time ours/theirs {ratio:.3f} (target <= {WORST_CASE_TARGET}); robust accuracy ours <= theirs: {robust['ours'] <= robust['theirs']}")
    return ratio, robust["ours"], robust["theirs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller budgets: {QUICK}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--model", help="a model saved by redblue (safetensors); default: train the paper's MLP for one epoch")
    parser.add_argument("--n", type=int, help="number of test images (default 1000, quick 300)")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, help="interleaved repeats per timing (default 5, quick 3)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    if args.n or args.repeats:
        budget = Budget(**{**budget.__dict__, "n": args.n or budget.n, "repeats": args.repeats or budget.repeats})
    for name in ("fgsm", "pgd", "apgd-ce", "square"):
        if name not in ATTACKS:
            raise SystemExit(f"attack {name!r} is not registered in this redblue")

    start = time.perf_counter()
    model = load_model(args.model).model if args.model else trained_mlp()
    model.eval()
    test = load_dataset("mnist", "test")
    x, y = test.x[: budget.n].contiguous(), test.y[: budget.n].contiguous()
    print(f"model: {args.model or 'paper MLP, 1 epoch of Adam'}; clean accuracy on {len(x)} test images "
          f"{accuracy(model, x, y):.4f}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"setup {time.perf_counter() - start:.1f} s")
    skip = set(filter(None, args.skip.split(",")))
    if "a" not in skip:
        table_a(model, x, y, args.eps, budget)
    if "b" not in skip:
        table_b(model, x, y, args.eps, budget)
    if "c" not in skip:
        table_c(model, x, y, args.eps, budget, repeats=max(1, min(budget.repeats, 3)))


if __name__ == "__main__":
    try:
        main()
    except RedblueError as exc:  # missing data, a bad model file: one line, like the CLI
        raise SystemExit(f"error: {exc}") from None
