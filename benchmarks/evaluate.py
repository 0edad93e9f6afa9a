"""The evaluator's speed and memory: `standard` against the original AutoAttack, peak memory, batch sizes.

On one model and the first --n test images (the paper's MLP trained here for one epoch on MNIST; with
--rgb, a small pre-activation ResNet on 3 x 32 x 32 coloured digits, benchmarks/rgb.py, eps 8/255,
100 images; or --model PATH, a redblue safetensors file, with --data NAME, any data set redblue
loads), prints:

  (s) `evaluate(..., "standard")` with the default batch size ("auto") against the two other
      implementations of AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square 5000: the same
      four attacks and budgets as our preset), one run each, each in a fresh process:
        - the original AutoAttack (`pyautoattack`, fra31's code);
        - torchattacks' attacks at AutoAttack's budgets (APGD, APGDT and FAB of 100 iterations, Square
          5000 with AutoAttack's unrescaled schedule) in its MultiAttack: like with like;
        - torchattacks' own `AutoAttack(version="standard")`, which builds APGD, APGDT and FAB with
          their default of 10 iterations (torchattacks 3.5.1), a tenth of AutoAttack's: faster and
          weaker; shown for what its users get, not as the target.
      Time, worst-case robust accuracy and peak memory of each, and the ratios. Targets (issues 11, 17):
      time <= 0.5x the original AutoAttack's and <= 1.0x torchattacks' at the same budgets, robust
      accuracy <= the original's + 0.001. Beside them, "plain PyTorch":
      the time of the forward (+ backward) passes the cascade's rows could have made at most (every
      attacked sample for every step, query, restart and target, none stopped early) with nothing else
      around them, measured at the same batch size.
  (m) memory: `evaluate` of --memory-attacks on --memory-n images with the default batch size, in a
      fresh process; its peak above the model and images already loaded, beside what one attack call
      may hold (one batch's attack state and one chunk's activations; see `redblue.evaluate.batching`):
      a ratio above 1 would mean something accumulates across batches.
  (b) with --sweep: time per sample of APGD-CE, PGD and Square over batch sizes 128 ... 10,000 on the
      MLP and the small CNN (untrained: the cost of a pass does not depend on the weights): the
      measurement behind batching.CPU_BATCH.

    python benchmarks/evaluate.py [--rgb] [--device cpu|cuda] [--threads 1] [--model PATH] [--data NAME] [--n 1000]
                                  [--eps 0.1] [--skip s,m] [--sweep] [--memory-n 10000] [--summary FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from attacks import classes, saved_mlp
from measure import MIB, Peak, hardware, interleaved, load, record, sync, with_peak
from rgb import RGB_EPS, saved_rgb_resnet, test_images
from torch import Tensor, nn

from redblue.attacks import parse_attack
from redblue.errors import RedblueError
from redblue.evaluate import Evaluation, choose_batching, evaluate
from redblue.evaluate.batching import STATE_COPIES
from redblue.models import CNNSmallSpec, MLPSpec, build_model, load_model

STANDARD_TARGET = 0.5  # against the original AutoAttack
TORCHATTACKS_TARGET = 1.0  # against torchattacks' AutoAttack (issue 17)
RGB_N, RGB_MEMORY_N = 100, 1000  # a ResNet pass costs ~100x an MLP pass on a CPU
ACCURACY_SLACK = 0.001  # robust accuracy no higher than AutoAttack's + 0.1 point


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (torch.cat([model(part) for part in x.split(1000)]).argmax(dim=1) == y).double().mean().item()


# --- (s) standard against AutoAttack -------------------------------------------------------------------


def run_ours(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Evaluation:
    return evaluate(model, x, y, "standard", [eps], mode="worst-case", checks=False, certify_method=None,
                    generator=torch.Generator(device=x.device).manual_seed(0))  # fmt: skip


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """The original AutoAttack's standard version; returns its adversarial images."""
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    reference = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device=x.device)
    x_adv, _ = reference.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv


def run_torchattacks(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, budgets: bool) -> Tensor:
    """torchattacks' attacks at AutoAttack's budgets in its MultiAttack (budgets), or its own AutoAttack
    (10 iterations per gradient attack); returns the adversarial images."""
    import torchattacks as ta

    n = classes(model, x)
    if not budgets:
        return ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n, seed=0)(x, y)
    attacks = [
        ta.APGD(model, eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
        ta.APGDT(model, eps=eps, steps=100, n_restarts=1, n_classes=n, seed=0),
        ta.FAB(model, eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=n, seed=0),
        ta.Square(model, eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, resc_schedule=False, seed=0),
    ]
    return ta.MultiAttack(attacks)(x, y)


def plain_passes(model: nn.Module, x: Tensor, y: Tensor, ours: dict[str, object], eps: float, batch: int) -> float:
    """Seconds of the plain passes the standard cascade's rows could have made at most (see the module)."""
    xb, yb = x[:batch], y[:batch]

    def gradient() -> None:
        x_var = xb.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_var), yb), x_var)

    def forward() -> None:
        with torch.no_grad():
            model(xb)

    times = interleaved({"grad": gradient, "fwd": forward}, repeats=3, device=x.device, inner={"grad": 5, "fwd": 5})
    per_grad = statistics.median(times["grad"].wall) / len(xb)
    per_fwd = statistics.median(times["fwd"].wall) / len(xb)
    seconds = 0.0
    for row in ours["attacks"]:  # type: ignore[union-attr]
        p = row["params"]
        if row["attack"] == "square":
            seconds += row["n_attacked"] * p["n_queries"] * p["restarts"] * per_fwd
        elif row["attack"].startswith("fab"):  # a gradient and a forward pass per iteration
            targets = p.get("n_target_classes", 1)
            seconds += row["n_attacked"] * p["n_iter"] * p["restarts"] * targets * (per_grad + per_fwd)
        else:
            targets = p.get("n_target_classes", 1)
            seconds += row["n_attacked"] * (p["n_iter"] + 1) * p["restarts"] * targets * per_grad
    return seconds


def worker(name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, memory_attacks: str) -> dict[str, object]:
    """One workload of (s) or (m), timed, with its peak memory above what was in use before it."""
    device = x.device
    if name == "ours":
        fn = lambda: run_ours(model, x, y, eps)  # noqa: E731
    elif name == "memory":
        fn = lambda: evaluate(model, x, y, memory_attacks, [eps], checks=False, certify_method=None,  # noqa: E731
                              generator=torch.Generator(device=device).manual_seed(0))
    elif name == "aa":
        fn = lambda: run_autoattack(model, x, y, eps)  # noqa: E731
    elif name in ("torchattacks", "torchattacks-aa"):
        fn = lambda: run_torchattacks(model, x, y, eps, budgets=name == "torchattacks")  # noqa: E731
    else:
        raise SystemExit(f"unknown workload {name}")
    start, cpu_start = time.perf_counter(), time.process_time()
    value, peak = with_peak(fn, device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if isinstance(value, Evaluation):
        rows = {a.label.split(":")[0]: a.seconds for a in value.result(eps).attacks}
        attacks = [{"attack": a.attack, "params": a.params, "n_attacked": a.n_attacked} for a in value.result(eps).attacks]
        return {"seconds": seconds, "cpu_seconds": cpu_seconds, "robust": value.result(eps).worst_case_accuracy,
                "peak": peak.bytes, "rows": rows, "attacks": attacks, "batch_size": value.batch_size,
                "chunk_size": value.chunk_size}  # fmt: skip
    assert isinstance(value, Tensor)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "robust": accuracy(model, value, y), "peak": peak.bytes}


def in_fresh_process(args: list[str], name: str) -> dict[str, object]:
    """`worker(name)` in a new process (the same model and data): no allocator state or warm cache shared."""
    done = subprocess.run([sys.executable, __file__, *args, "--worker", name], capture_output=True, text=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"error: workload {name} failed: {done.stderr.strip()[-2000:]}")


def table_s(model: nn.Module, x: Tensor, y: Tensor, eps: float, summary: str | None, args: list[str]) -> None:
    device = x.device
    print(f"\n(s) `standard` against AutoAttack's standard version, {len(x)} images, eps={eps:.4g}, one run each, each "
          f"in a fresh process; {load()}")
    peers = []
    for module, name, workload in (("pyautoattack", "AutoAttack (original)", "aa"),
                                   ("torchattacks", "torchattacks, same budgets", "torchattacks"),
                                   ("torchattacks", "torchattacks.AutoAttack (10 it.)", "torchattacks-aa")):  # fmt: skip
        try:
            __import__(module)
            peers.append((name, workload))
        except ImportError as exc:
            print(f"    note: {module} not importable ({exc}); install the `peers` extra")
    if not peers:
        return
    rows: dict[str, dict[str, object]] = {}
    rows["redblue standard"] = ours = in_fresh_process(args, "ours")
    per_row = ", ".join(f"{label} {seconds:.2f} s" for label, seconds in ours["rows"].items())  # type: ignore[union-attr]
    print(f"    redblue: batch size {ours['batch_size']}, chunk {ours['chunk_size']} (auto); {per_row}", flush=True)
    for name, workload in peers:
        rows[name] = in_fresh_process(args, workload)
        print(f"    {name}: {rows[name]['seconds']:.2f} s", flush=True)
    plain = plain_passes(model, x, y, rows["redblue standard"], eps, int(ours["chunk_size"]))  # type: ignore[arg-type]

    ours_s, ours_acc = float(ours["seconds"]), float(ours["robust"])  # type: ignore[arg-type]
    cpu = device.type == "cpu"  # on a shared CPU the process's CPU time is the steadier clock: both are shown
    print(f"{'':<34}{'seconds':>9}{'cpu s' if cpu else '':>9}{'robust acc':>12}{'peak memory':>13}"
          f"{'ours/theirs':>13}{'(cpu)' if cpu else '':>8}{'acc ours-theirs':>17}")  # fmt: skip
    for name, row in rows.items():
        seconds, cpu_seconds, acc = float(row["seconds"]), float(row["cpu_seconds"]), float(row["robust"])  # type: ignore[arg-type]
        ratio = "" if row is ours else f"{ours_s / seconds:.3f}"
        cpu_ratio = "" if row is ours or not cpu else f"{float(ours['cpu_seconds']) / cpu_seconds:.3f}"  # type: ignore[arg-type]
        gap = "" if row is ours else f"{ours_acc - acc:+.4f}"
        print(f"{name:<34}{seconds:9.2f}{f'{cpu_seconds:.2f}' if cpu else '':>9}{acc:12.4f}{str(Peak(row['peak'])):>13}"  # type: ignore[arg-type]
              f"{ratio:>13}{cpu_ratio:>8}{gap:>17}")  # fmt: skip
        if row is not ours:
            record(summary, work=f"standard, {len(x)} images {tuple(x.shape[1:])}, eps {eps:.4g}, batch {ours['batch_size']}", ours_s=ours_s,
                   peer=name, peer_s=seconds, ratio=ours_s / seconds, ours_acc=ours_acc, peer_acc=acc,
                   ours_peak=ours["peak"], peer_peak=row["peak"], device=str(device),
                   ours_cpu_s=ours["cpu_seconds"], peer_cpu_s=cpu_seconds)  # fmt: skip
    print(f"{'plain PyTorch passes (bound)':<34}{plain:9.2f}{'':>12}{'':>13}{ours_s / plain:13.3f}")
    for name, target in (("AutoAttack (original)", STANDARD_TARGET), ("torchattacks, same budgets", TORCHATTACKS_TARGET)):
        if name in rows:
            peer_s, peer_acc = float(rows[name]["seconds"]), float(rows[name]["robust"])  # type: ignore[arg-type]
            print(f"target: time <= {target} x {name}: {ours_s / peer_s:.3f} ({'met' if ours_s / peer_s <= target else 'NOT met'});"
                  f" robust accuracy <= its + {ACCURACY_SLACK}: {'met' if ours_acc <= peer_acc + ACCURACY_SLACK else 'NOT met'}")
    print(f"after: {load()}")


# --- (m) memory ----------------------------------------------------------------------------------------


def activation_bytes_per_sample(model: nn.Module, x: Tensor) -> float:
    """The outputs of every leaf module for one image, in bytes: what a forward pass keeps for the backward."""
    total = 0.0

    def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
        nonlocal total
        total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


def table_m(model: nn.Module, x: Tensor, y: Tensor, eps: float, attacks: str, args: list[str]) -> None:
    print(f"\n(m) peak memory of evaluate({attacks!r}) on {len(x)} images, eps={eps}, default batch size, in a fresh "
          f"process; {load()}")
    batching = choose_batching(model, x, y, "auto")
    result = in_fresh_process(args, "memory")
    image = x[:1].numel() * x.element_size()
    activations = 2 * activation_bytes_per_sample(model, x)  # forward outputs and their gradients
    state = STATE_COPIES * image * batching.size
    chunk_activations = activations * batching.chunk
    print(f"    batch size {result['batch_size']}, chunk {result['chunk_size']}; {result['seconds']:.1f} s; worst-case "
          f"robust accuracy {result['robust']:.4f}")
    print(f"    peak above the model and data already in memory: {Peak(result['peak'])}")  # type: ignore[arg-type]
    print(f"    for scale: one batch's attack state ({STATE_COPIES} image copies x {batching.size}) "
          f"{state / MIB:.0f} MiB; one chunk's activations and their gradients {chunk_activations / MIB:.0f} MiB; "
          f"together {(state + chunk_activations) / MIB:.0f} MiB")
    if result["peak"] is not None:
        print(f"    peak / (state + activations) = {float(result['peak']) / (state + chunk_activations):.2f} "  # type: ignore[arg-type]
              "(<= 1: nothing accumulates beyond one batch)")


# --- (b) batch sizes on this device ---------------------------------------------------------------------


SWEEP_SIZES = (128, 256, 512, 1024, 2048, 4096, 10000)
SWEEP_ATTACKS = {"pgd-10": "pgd:steps=10", "apgd-ce-10": "apgd-ce:n_iter=10", "square-50": "square:n_queries=50"}


def table_b(device: torch.device, eps: float, sizes: tuple[int, ...] = SWEEP_SIZES) -> None:
    """CPU time (on a CPU; wall clock on CUDA) per sample of each attack at each batch size, on random images
    labelled by the model itself (so that every sample is attacked, none skipped as misclassified)."""
    n = max(sizes)
    torch.manual_seed(0)
    x = torch.rand(n, 1, 28, 28, device=device)  # the MNIST models' shape
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    print(f"\n(b) {'CPU' if device.type == 'cpu' else 'wall'} microseconds per sample over batch sizes, {n} random images; {load()}")
    print(f"{'model':<11}{'attack':<12}" + "".join(f"{size:>8}" for size in sizes) + "   best")
    for model_name, spec in (("mlp", MLPSpec()), ("cnn-small", CNNSmallSpec())):
        model = build_model(spec).to(device).eval()
        with torch.no_grad():
            y = model(x).argmax(dim=1)
        for attack_name, spec_text in SWEEP_ATTACKS.items():
            entry, params = parse_attack(spec_text, eps=eps)
            cells = []
            for size in sizes:
                generator = torch.Generator(device=device).manual_seed(0)
                sync(device)
                start = clock()
                for begin in range(0, n, size):
                    entry(model, x[begin : begin + size], y[begin : begin + size], params, generator=generator)
                sync(device)
                cells.append(1e6 * (clock() - start) / n)
            best = sizes[min(range(len(sizes)), key=cells.__getitem__)]
            print(f"{model_name:<11}{attack_name:<12}" + "".join(f"{c:8.0f}" for c in cells) + f"{best:>7}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model and images live (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rgb", action="store_true", help="the RGB rows: a small ResNet on 3x32x32 images (benchmarks/rgb.py)")
    parser.add_argument("--model", help="a model saved by redblue (safetensors); default: train the paper's MLP for one epoch")
    parser.add_argument("--data", help="the data set of the test images (default: mnist; --rgb: coloured digits)")
    parser.add_argument("--n", type=int, help=f"test images for (s) (default 1000, --rgb {RGB_N})")
    parser.add_argument("--eps", type=float, help="default 0.1; --rgb 8/255")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: s,m")
    parser.add_argument("--sweep", action="store_true", help="also run (b), the batch-size sweep (long)")
    parser.add_argument("--memory-n", type=int, help=f"images for (m) (default 10000, --rgb {RGB_MEMORY_N})")
    parser.add_argument("--memory-attacks", default="fast", help="attacks for (m) (default: the fast preset)")
    parser.add_argument("--summary", help="append the key results to this file, one JSON object a line")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one workload, its numbers as JSON
    args = parser.parse_args()
    args.n = args.n or (RGB_N if args.rgb else 1000)
    args.memory_n = args.memory_n or (RGB_MEMORY_N if args.rgb else 10000)
    args.eps = args.eps if args.eps is not None else RGB_EPS if args.rgb else 0.1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device; use --device cpu")

    start = time.perf_counter()
    model_path = args.model or (saved_rgb_resnet() if args.rgb else saved_mlp())
    model = load_model(model_path).model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # nobody needs weight gradients here: AutoAttack's FAB-T would compute them
    def images(n: int) -> tuple[Tensor, Tensor]:
        x, y = test_images(args.data, args.rgb, n)
        return x.to(device), y.to(device)

    if args.worker:
        x, y = images(args.memory_n if args.worker == "memory" else args.n)
        print(json.dumps(worker(args.worker, model, x, y, args.eps, args.memory_attacks)))
        return
    worker_args = ["--model", model_path, "--device", args.device, "--threads", str(args.threads), "--n", str(args.n),
                   "--eps", str(args.eps), "--memory-n", str(args.memory_n), "--memory-attacks", args.memory_attacks] \
        + (["--rgb"] if args.rgb else []) + (["--data", args.data] if args.data else [])  # fmt: skip
    default = "preact-resnet18 width 8 on coloured digits (3, 32, 32)" if args.rgb else "paper MLP, 1 epoch of Adam"
    print(f"model: {args.model or f'{default} ({model_path})'}; {hardware(device)}; setup {time.perf_counter() - start:.1f} s")
    skip = set(filter(None, args.skip.split(",")))
    if "s" not in skip:
        x, y = images(args.n)
        print(f"clean accuracy on {len(x)} test images {accuracy(model, x, y):.4f}")
        table_s(model, x, y, args.eps, args.summary, worker_args)
    if "m" not in skip:
        x, y = images(args.memory_n)
        table_m(model, x, y, args.eps, args.memory_attacks, worker_args)
    if args.sweep:
        table_b(device, args.eps)


if __name__ == "__main__":
    try:
        main()
    except RedblueError as exc:  # missing data, a bad model file: one line, like the CLI
        raise SystemExit(f"error: {exc}") from None
