"""What every benchmark here measures with: interleaved timings, peak memory, and the machine it ran on.

Peak memory is the growth over what was allocated before the call: on CUDA from the allocator's
statistics (`torch.cuda.max_memory_allocated`), on a CPU from the kernel's high-water mark of the
process's resident memory (VmHWM, reset through /proc/self/clear_refs), which sees every allocation,
torch's included (tracemalloc sees only Python's). On a CPU the C allocator keeps memory that
earlier calls freed and hands it out again unseen, so a peak is only meaningful in a process that
has run nothing big before: `fresh_peak` runs the call in a new process.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

MIB = 2**20


@dataclass
class Times:
    """Seconds per call, one entry per repeat: wall clock and this process's CPU time."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], object]], *, repeats: int, device: torch.device, inner: dict[str, int] | None = None
) -> dict[str, Times]:
    """Time each function `repeats` times, in an order that rotates every repeat (after one warm-up call each)."""
    inner = inner or {}
    names = list(fns)
    times = {name: Times() for name in names}
    for name in names:  # warm-up: allocator, lazy imports, first-call dispatch
        fns[name]()
    sync(device)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            calls = inner.get(name, 1)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fns[name]()
            sync(device)
            times[name].wall.append((time.perf_counter() - wall) / calls)
            times[name].cpu.append((time.process_time() - cpu) / calls)
    return times


def median_ratio(num: list[float], den: list[float], scale: float = 1.0) -> float:
    return statistics.median(a / (scale * b) for a, b in zip(num, den))


def ratios(num: Times, den: Times, device: torch.device, scale: float = 1.0) -> str:
    """'wall R' and, on a CPU, 'cpu R': medians of per-repeat ratios."""
    text = f"wall {median_ratio(num.wall, den.wall, scale):.3f}"
    if device.type == "cpu":
        text += f", cpu {median_ratio(num.cpu, den.cpu, scale):.3f}"
    return text


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


@dataclass
class Peak:
    """Peak memory of the last `measure` call above what was allocated before it, in bytes (None: unknown)."""

    bytes: float | None = None

    def __str__(self) -> str:
        return "n/a" if self.bytes is None else f"{self.bytes / MIB:.0f} MiB"


def with_peak(fn: Callable[[], object], device: torch.device) -> tuple[object, Peak]:
    """(fn(), the peak memory it needed above what was in use before it) on `device`."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        value = fn()
        sync(device)
        return value, Peak(torch.cuda.max_memory_allocated(device) - base)
    if not _reset_cpu_peak():
        return fn(), Peak(None)
    base = _status_kib("VmRSS")
    value = fn()
    peak = _status_kib("VmHWM")
    return value, Peak(None if base is None or peak is None else (peak - base) * 1024.0)


def fresh_peak(script: str, args: list[str], name: str) -> Peak:
    """The peak memory of workload `name`, run once by `script --peak-of name` in a new process (the
    script's own arguments `args` make the same model and data there); Peak(None) if that fails."""
    done = subprocess.run([sys.executable, script, *args, "--peak-of", name], capture_output=True, text=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return Peak(json.loads(line)["peak"])
    print(f"    note: the peak of {name} was not measured: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return Peak(None)


def report_peak(fn: Callable[[], object], device: torch.device) -> None:
    """The --peak-of side of `fresh_peak`: run fn once (after one small warm-up of nothing), print the peak as JSON."""
    _, peak = with_peak(fn, device)
    print(json.dumps({"peak": peak.bytes}))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def hardware(device: torch.device) -> str:
    """The machine in one line: GPU or CPU model, cores, torch threads, torch version, date, load."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), host {cpu_model()}"
    else:
        what = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    return f"{what}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}; {load()}"


def record(path: str | None, **fields: object) -> None:
    """Append one result (a JSON object with the date and the machine) to `path`; nothing when path is None."""
    if path is None:
        return
    device = torch.device(str(fields.get("device", "cpu")))
    fields = {"date": time.strftime("%Y-%m-%d %H:%M"), "hardware": hardware(device), **fields}
    with open(path, "a") as file:
        file.write(json.dumps(fields) + "\n")


def summary_table(path: str) -> str:
    """The results `record` wrote to `path`, as a Markdown table (the format of benchmarks/README.md)."""
    lines = ["| work | redblue | peer | peer's time | ratio | robust acc (ours / peer) | peak memory (ours / peer) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for text in Path(path).read_text().splitlines():
        r = json.loads(text)
        accuracy = f"{r['ours_acc']:.4f} / {r['peer_acc']:.4f}" if "ours_acc" in r else "-"
        peaks = " / ".join("n/a" if b is None else f"{b / MIB:.0f} MiB" for b in (r.get("ours_peak"), r.get("peer_peak")))
        cpu_ratio = r.get("cpu_ratio")
        if cpu_ratio is None and r.get("ours_cpu_s") and r.get("peer_cpu_s"):
            cpu_ratio = r["ours_cpu_s"] / r["peer_cpu_s"]
        ratio = f"{r['ratio']:.3f}" + (f" (CPU time {cpu_ratio:.3f})" if cpu_ratio is not None else "")
        lines.append(f"| {r['work']} | {_seconds(r['ours_s'])} | {r['peer']} | {_seconds(r['peer_s'])} | "
                     f"{ratio} | {accuracy} | {peaks} |")  # fmt: skip
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value * 1000:.2f} ms" if value < 1 else f"{value:.1f} s"


if __name__ == "__main__":  # python benchmarks/measure.py FILE: the table of a --summary file
    print(summary_table(sys.argv[1]))
