"""Attack speed against the plain gradient, against the peer libraries, and time to a worst case.

On one model and the same test images, prints these tables. The model: the paper's MLP trained here
for one epoch on MNIST; with --rgb, a small pre-activation ResNet on 3 x 32 x 32 coloured digits
(benchmarks/rgb.py; eps 8/255, 200 images); or --model PATH (a redblue safetensors file) with
--data NAME (any data set redblue loads: mnist, cifar10, a user's .npz ...).


  (a) each attack's time over (its steps x one plain forward + backward pass to the input);
      target <= 1.05 for FGSM and PGD (issue 11, on a GPU). Square queries only: its unit is a
      plain forward pass, and it stops querying a sample once fooled, so its ratio can fall below 1.
  (b) our time over torchattacks', ART's and Foolbox's for FGSM and PGD-40, same settings, and the
      peak memory of one call of each; target <= 1.05 against torchattacks (a peer that cannot be
      imported is skipped with a note; install them with the `peers` extra).
  (c) the time to a worst-case robust accuracy over FGSM, PGD-40 with restarts, APGD-CE and
      Square: `redblue.evaluate.evaluate` (runs each attack only on the samples still robust)
      against torchattacks' attacks run one after another on the whole set; target <= 0.5,
      with a robust accuracy no higher than theirs.
  (y) on CUDA: the host synchronisations of one call of each attack, counted by CUDA's sync debug
      mode (`torch.cuda.set_sync_debug_mode("warn")`); the bound beside each is what the attack
      documents (one after the run for the input's range and the run's finiteness, plus one per
      restart or APGD run, to attack only the samples still robust, as the reference does). On a CPU
      there is no device to wait for: skipped with a note.

The `standard` preset against the original AutoAttack, and the evaluator's memory, are in
benchmarks/evaluate.py.

Timings are interleaved (the order rotates every repeat) and ratios are medians of per-repeat
ratios, because the machine may be shared and noisy. On a CPU each timing is taken twice: wall
clock, and the process's CPU time, which a busy machine (printed: its load average before and
after) disturbs far less than the wall clock when torch runs on one thread. On CUDA the device
is synchronised after every call.

    python benchmarks/attacks.py [--quick] [--rgb] [--device cpu|cuda] [--threads 1] [--model PATH] [--data NAME]
                                 [--n 1000] [--eps 0.1] [--repeats 5] [--skip a,b,c,y] [--summary FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from measure import Times, fresh_peak, hardware, interleaved, load, median_ratio, ratios, record, report_peak
from rgb import RGB_EPS, saved_rgb_resnet, test_images
from torch import Tensor, nn

from redblue.attacks import ATTACKS, parse_attack
from redblue.data import load_dataset
from redblue.errors import RedblueError
from redblue.evaluate import evaluate
from redblue.models import MLPSpec, build_model, load_model, save_model

FGSM_TARGET = PGD_TARGET = 1.05  # over one plain forward + backward per step (issue 11, on a GPU)
PEER_TARGET = 1.05  # against torchattacks (issue 11)
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
# a ResNet step costs ~100x an MLP step on a CPU: fewer images, the same PGD-40 and APGD-100
RGB = Budget(n=200, repeats=3, pgd_steps=40, pgd_restarts=2, apgd_iter=100, square_queries=1000)


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


def saved_mlp() -> str:
    """trained_mlp(), saved once to the temporary folder (fresh processes measuring memory load it from there)."""
    path = Path(tempfile.gettempdir()) / f"redblue-bench-mlp-{os.getuid()}.safetensors"
    if not path.exists():
        save_model(path, trained_mlp(), MLPSpec())
    return str(path)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).double().mean().item()


def classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def plain_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One plain forward and backward pass to the input: the unit every gradient attack pays per step."""
    x_var = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_var), y), x_var)
    return grad


def plain_forward(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def ms(times: Times) -> str:
    return f"{1000 * statistics.median(times.wall):9.1f}"


# --- (a) against the plain gradient --------------------------------------------------------------------


def ours(name: str, model: nn.Module, x: Tensor, y: Tensor, spec: str, seed: int = 0) -> Callable[[], Tensor]:
    """One call of our attack; its generator is made once, outside the timed call (the peers draw from
    torch's global generator, which costs them nothing per call either)."""
    entry, params = parse_attack(f"{name}:{spec}" if spec else name)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return lambda: entry(model, x, y, params, generator=generator)


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
    times = interleaved(fns, repeats=budget.repeats, device=x.device, inner={"fgsm": 10, "plain fwd+bwd": 10, "plain fwd": 10})
    print(f"\n(a) time over (steps x one plain pass), {len(x)} images, eps={eps}, median of {budget.repeats} interleaved repeats")
    print(f"    plain forward+backward to the input: {ms(times['plain fwd+bwd']).strip()} ms; plain forward: {ms(times['plain fwd']).strip()} ms")
    print(f"{'attack':<16}{'steps':>7}{'unit':>6}{'ms':>10}  {'ratio':<24}{'target':>8}")
    results = []
    for name, (_, steps, unit) in attacks.items():
        baseline = times["plain fwd+bwd" if unit == "grad" else "plain fwd"]
        target = {"fgsm": f"{FGSM_TARGET:.2f}", f"pgd-{budget.pgd_steps}": f"{PGD_TARGET:.2f}"}.get(name, "-")
        print(f"{name:<16}{steps:>7}{unit:>6}{ms(times[name])}  {ratios(times[name], baseline, x.device, steps):<24}{target:>8}")
        results.append((name, median_ratio(times[name].wall, baseline.wall, steps)))
    return results


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
            model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=classes(model, x),
            clip_values=(0.0, 1.0), device_type="gpu" if x.device.type == "cuda" else "cpu",
        )
        fgsm_art = FastGradientMethod(classifier, norm=np.inf, eps=eps, batch_size=len(x))
        pgd_art = ProjectedGradientDescent(
            classifier, norm=np.inf, eps=eps, eps_step=step, max_iter=steps, num_random_init=1,
            batch_size=len(x), verbose=False,
        )
        x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
        peers["ART"] = {"fgsm": lambda: fgsm_art.generate(x_np, y_np), "pgd": lambda: pgd_art.generate(x_np, y_np)}
    except ImportError as exc:
        print(f"    note: ART skipped ({exc}); install the `peers` extra")
    try:
        import foolbox

        fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        fgsm_fb = foolbox.attacks.FGSM()
        pgd_fb = foolbox.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=True)
        peers["Foolbox"] = {
            "fgsm": lambda: fgsm_fb(fmodel, x, y, epsilons=eps),
            "pgd": lambda: pgd_fb(fmodel, x, y, epsilons=eps),
        }
    except ImportError as exc:
        print(f"    note: Foolbox skipped ({exc}); install the `peers` extra")
    return peers


def workloads(model: nn.Module, x: Tensor, y: Tensor, eps: float, budget: Budget) -> dict[str, dict[str, Callable[[], object]]]:
    """{"fgsm" | "pgd": {library: one call}}: table (b)'s calls, ours first, the peers that import after."""
    steps, step = budget.pgd_steps, 2.5 * eps / budget.pgd_steps
    peers = peer_attacks(model, x, y, eps, steps, step)
    calls = {}
    for attack, spec in (("fgsm", f"eps={eps}"), ("pgd", f"eps={eps},steps={steps},step_size={step}")):
        calls[attack] = {"redblue": ours(attack, model, x, y, spec), **{peer: fns[attack] for peer, fns in peers.items()}}
    return calls


def table_b(model: nn.Module, x: Tensor, y: Tensor, eps: float, budget: Budget, summary: str | None,
            peak_args: list[str]) -> dict[tuple[str, str], float]:  # fmt: skip
    """Timings interleaved in this process; each call's peak memory in a fresh process (see measure.py)."""
    steps, step = budget.pgd_steps, 2.5 * eps / budget.pgd_steps
    print(f"\n(b) our time / peer's time, {len(x)} images, eps={eps}, PGD-{steps} step {step:.4g} with random start;"
          f" target <= {PEER_TARGET} against torchattacks; peak memory of one call in a fresh process; {load()}")
    calls = workloads(model, x, y, eps, budget)
    results: dict[tuple[str, str], float] = {}
    for attack, fns in calls.items():
        times = interleaved(fns, repeats=budget.repeats, device=x.device,
                            inner={name: 10 for name in fns} if attack == "fgsm" else None)  # fmt: skip
        peaks = {name: fresh_peak(__file__, peak_args, f"{attack}/{name}") for name in fns}
        work = attack if attack == "fgsm" else f"pgd-{steps}"
        print(f"{work}: redblue {ms(times['redblue']).strip()} ms, peak memory {peaks['redblue']}")
        for peer in fns:
            if peer == "redblue":
                continue
            results[(attack, peer)] = median_ratio(times["redblue"].wall, times[peer].wall)
            print(f"    {peer:<13}{ms(times[peer])} ms   ours/theirs {ratios(times['redblue'], times[peer], x.device)}"
                  f"   peak memory {peaks[peer]}")  # fmt: skip
            record(summary, work=f"{work}, {len(x)} images", ours_s=statistics.median(times["redblue"].wall),
                   peer=peer, peer_s=statistics.median(times[peer].wall), ratio=results[(attack, peer)],
                   cpu_ratio=median_ratio(times["redblue"].cpu, times[peer].cpu) if x.device.type == "cpu" else None,
                   ours_peak=peaks["redblue"].bytes, peer_peak=peaks[peer].bytes, device=str(x.device))  # fmt: skip
    print(f"    after: {load()}")
    return results


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

    times = interleaved({"ours": run_ours, "theirs": run_theirs}, repeats=repeats, device=x.device)
    ratio = median_ratio(times["ours"].wall, times["theirs"].wall)
    print(f"{'':<14}{'seconds':>9}{'robust acc':>12}")
    print(f"{'redblue':<14}{statistics.median(times['ours'].wall):9.2f}{robust['ours']:12.4f}")
    print(f"{'torchattacks':<14}{statistics.median(times['theirs'].wall):9.2f}{robust['theirs']:12.4f}")
    print(f"time ours/theirs {ratios(times['ours'], times['theirs'], x.device)} (target <= {WORST_CASE_TARGET}); "
          f"robust accuracy ours <= theirs: {robust['ours'] <= robust['theirs']}")
    return ratio, robust["ours"], robust["theirs"]


# --- (y) host synchronisations per call (CUDA) ---------------------------------------------------------


def count_syncs(fn: Callable[[], object]) -> int:
    """How many times one call of fn waits for the device, as CUDA's sync debug mode reports it."""
    fn()  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def table_y(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, int]:
    if x.device.type != "cuda":
        print("\n(y) host synchronisations per call: CUDA only (torch.cuda.set_sync_debug_mode); skipped on the CPU")
        return {}
    # name: (attack spec, the documented bound: 1 after the run + 1 per restart / APGD run)
    cases = {
        "fgsm": (f"fgsm:eps={eps}", 1),
        "pgd-40": (f"pgd:eps={eps},steps=40", 1),
        "pgd-40, 3 restarts": (f"pgd:eps={eps},steps=40,restarts=3", 3),  # restarts 2 and 3 select the robust
        "apgd-ce-100": (f"apgd-ce:eps={eps},n_iter=100", 2),
        "apgd-t-100, 9 targets": (f"apgd-t:eps={eps},n_iter=100,n_target_classes=9", 10),
        "square-1000": (f"square:eps={eps},n_queries=1000", 2),
        "deepfool": (f"deepfool:eps={eps}", 1),
        "cw-l2": ("cw-l2:eps=1.5,steps=20,binary_search_steps=3", 1),
    }
    print(f"\n(y) host synchronisations in one call, {len(x)} images (CUDA sync debug mode); bound = 1 after the run "
          "+ 1 per restart or APGD run")
    print(f"{'attack':<24}{'syncs':>6}{'bound':>7}")
    counts = {}
    for name, (spec, bound) in cases.items():
        entry, params = parse_attack(spec)
        generator = torch.Generator(device=x.device).manual_seed(0)
        counts[name] = count_syncs(lambda: entry(model, x, y, params, generator=generator))
        print(f"{name:<24}{counts[name]:>6}{bound:>7}{'' if counts[name] <= bound else '   ABOVE THE BOUND'}", flush=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller budgets: {QUICK}")
    parser.add_argument("--rgb", action="store_true", help=f"the RGB rows: a small ResNet on 3x32x32 images (benchmarks/rgb.py); {RGB}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model and images live (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--model", help="a model saved by redblue (safetensors); default: train the paper's MLP for one epoch")
    parser.add_argument("--data", help="the data set of the test images (default: mnist; --rgb: coloured digits)")
    parser.add_argument("--n", type=int, help="number of test images (default 1000, quick 300, rgb 200)")
    parser.add_argument("--eps", type=float, help="default 0.1; --rgb 8/255")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per timing (default 5, quick 3)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,y")
    parser.add_argument("--summary", help="append the key results to this file, one JSON object a line")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)  # internal: one call of table (b), its peak as JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = RGB if args.rgb else QUICK if args.quick else FULL
    args.eps = args.eps if args.eps is not None else RGB_EPS if args.rgb else 0.1
    if args.n or args.repeats:
        budget = Budget(**{**budget.__dict__, "n": args.n or budget.n, "repeats": args.repeats or budget.repeats})
    for name in ("fgsm", "pgd", "apgd-ce", "square"):
        if name not in ATTACKS:
            raise SystemExit(f"attack {name!r} is not registered in this redblue")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device; use --device cpu")
    start = time.perf_counter()
    model_path = args.model or (saved_rgb_resnet() if args.rgb else saved_mlp())
    model = load_model(model_path).model.eval().to(device)
    x, y = (t.to(device) for t in test_images(args.data, args.rgb, budget.n))
    if args.peak_of:
        attack, library = args.peak_of.split("/")
        report_peak(workloads(model, x, y, args.eps, budget)[attack][library], device)
        return
    peak_args = ["--model", model_path, "--device", args.device, "--threads", str(args.threads), "--n", str(budget.n),
                 "--eps", str(args.eps)] + (["--quick"] if args.quick else []) + (["--rgb"] if args.rgb else []) \
                + (["--data", args.data] if args.data else [])  # fmt: skip
    default = f"preact-resnet18 width 8, coloured digits {tuple(x.shape[1:])}" if args.rgb else "paper MLP, 1 epoch of Adam"
    print(f"model: {args.model or f'{default} ({model_path})'}; clean accuracy on {len(x)} test images "
          f"{accuracy(model, x, y):.4f}; {hardware(device)}; setup {time.perf_counter() - start:.1f} s")
    skip = set(filter(None, args.skip.split(",")))
    if "a" not in skip:
        table_a(model, x, y, args.eps, budget)
    if "b" not in skip:
        table_b(model, x, y, args.eps, budget, args.summary, peak_args)
    if "c" not in skip:
        table_c(model, x, y, args.eps, budget, repeats=max(1, min(budget.repeats, 3)))
    if "y" not in skip:
        table_y(model, x, y, args.eps)


if __name__ == "__main__":
    try:
        main()
    except RedblueError as exc:  # missing data, a bad model file: one line, like the CLI
        raise SystemExit(f"error: {exc}") from None
