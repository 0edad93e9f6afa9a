"""Batch sizes from the device, and the split on out-of-memory that changes no result.

An evaluation uses two sizes, kept apart so that memory never changes a number:

* `Batching.size`, samples per attack call. An attack draws its random numbers (random starts,
  Square's windows) for the whole call, so results depend on this size; it therefore depends only on
  what is fixed for a machine: the user's value, or with "auto" the device type and the number of
  samples (on a GPU the whole set, on a CPU `CPU_BATCH`, see below).
* `Batching.chunk`, samples per model call inside an attack call (`ChunkedModel`). It follows the
  free memory: on a GPU the per-sample memory of a forward + backward pass is measured on a probe
  batch and set against `torch.cuda.mem_get_info`. The attack still sees the whole call's batch and
  draws the same random numbers; only the model's passes are split, the backward pass by recomputing
  each chunk's forward pass (gradient checkpointing, one chunk at a time: one forward pass more per
  gradient, paid only when the whole batch does not fit).

An out-of-memory error during an attack call is caught, the generator put back where the call found
it, the chunk halved, and the call run again (`shrink`): never a crash, and the same numbers up to
float rounding (a row of a matrix product computed in a smaller batch may differ in its last bit).
Only when one sample per model call still does not fit is the attack call itself split; then the
random draws differ from the unsplit call's (each sample gets other, equally random numbers), the
one case where memory changes a result.

CPU_BATCH, measured on a 2-core Xeon, one torch thread (CPU microseconds per sample; `python
benchmarks/evaluate.py --sweep`, benchmarks/README.md):

    batch size            128   256   512  1024  2048  4096 10000
    MLP        PGD-10     259   255   252   238   232   227   223
               APGD-CE-10 414   384   364   377   371   396   414
               Square-50  931   618   506   403   394   425   416
    small CNN  PGD-10     961  1024   892   935   975  1065  1537
               APGD-CE-10 1748 1292  1162  1077  1118  1455  1550
               Square-50  1197 1145  1054   948   831   966  1326

Small batches pay the per-call overhead (Square's iterations most: each is a few dozen small
operations), large ones leave the caches (the CNN's activations first). 2,048 is at most 9 % slower
than the best size of each row (3 % on average); 1,024 would be at most 14 % (3.5 % on average).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, Union

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import eval_mode, loss_logits_and_gradient
from redblue.errors import ConfigError, RedblueError

AUTO = "auto"
# an integer >= 1, or "auto" / None: chosen from the device, the model and its free memory
BatchSize = Union[int, str, None]

CPU_BATCH = 2048  # samples per attack call on a CPU with "auto" (see the module docstring)
# Per sample, an attack keeps this many copies of its image (APGD: x, the iterate, the previous one, the
# best, the last fooled, the gradient and the best point's, the ball's two bounds, ...), generously.
STATE_COPIES = 24
# With "auto", the attack state of one call may take at most this share of a GPU's total memory ...
STATE_SHARE = 0.25
# ... and the model's passes this share of the memory free once the state is allocated.
CHUNK_SHARE = 0.7
PROBE_SAMPLES = 128


class OutOfMemory(RedblueError):
    """Even one sample per attack call does not fit in the device's memory."""


@dataclass
class Batching:
    """Samples per attack call (`size`, fixed for the evaluation) and per model call (`chunk`, lowered
    after an out-of-memory error and kept low for the calls that follow). `auto`: chosen by redblue."""

    size: int
    chunk: int
    auto: bool = False

    def shrink(self) -> bool:
        """After an out-of-memory error: halve the chunk, else (chunk 1) the attack call; False when both are 1."""
        if self.chunk > 1:
            self.chunk //= 2
            return True
        if self.size > 1:
            self.size //= 2
            return True
        return False


def require_batch_size(batch_size: BatchSize | Batching, *, name: str = "batch_size") -> None:
    """"auto" (or None), an integer >= 1, or a Batching of two; `name` is what the caller calls it (the CLI
    says --batch-size)."""
    if batch_size is None or batch_size == AUTO:
        return
    if isinstance(batch_size, Batching):
        for value in (batch_size.size, batch_size.chunk):
            require_batch_size(value, name=name)
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{name} must be auto or an integer >= 1, got {batch_size!r}")


def parse_batch_size(text: str, *, name: str = "--batch-size") -> int | str:
    """Command-line text -> "auto" or an integer >= 1 (one error line otherwise)."""
    if text.strip() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be auto or an integer >= 1, got {text}") from None
    if value < 1:
        raise ConfigError(f"{name} must be auto or an integer >= 1, got {text}")
    return value


def choose_batching(model: nn.Module, x: Tensor, y: Tensor, batch_size: BatchSize | Batching = AUTO) -> Batching:
    """The Batching of an evaluation of `model` on (x, y): see the module docstring.

    A given integer is both sizes (the chunk still halves on out-of-memory); a Batching is used as it is.
    """
    if isinstance(batch_size, Batching):
        return batch_size
    require_batch_size(batch_size)
    n = max(len(x), 1)
    if batch_size is not None and batch_size != AUTO:
        return Batching(size=int(batch_size), chunk=int(batch_size))
    if x.device.type != "cuda":
        size = min(n, CPU_BATCH)
        return Batching(size=size, chunk=size, auto=True)
    state_per_sample = STATE_COPIES * x[:1].numel() * x.element_size()
    total = torch.cuda.get_device_properties(x.device).total_memory
    size = max(1, min(n, int(STATE_SHARE * total / state_per_sample)))
    per_sample = gradient_bytes_per_sample(model, x, y)
    free, _ = torch.cuda.mem_get_info(x.device)
    free += torch.cuda.memory_reserved(x.device) - torch.cuda.memory_allocated(x.device)  # cached, reusable
    chunk = chunk_for_memory(size=size, state_per_sample=state_per_sample, free=free, per_sample=per_sample)
    return Batching(size=size, chunk=chunk, auto=True)


def chunk_for_memory(*, size: int, state_per_sample: float, free: float, per_sample: float) -> int:
    """Samples per model call: CHUNK_SHARE of the memory left free by `size` samples' attack state, over
    the memory one sample's forward + backward pass takes; between 1 and size. Bytes throughout."""
    budget = CHUNK_SHARE * (free - size * state_per_sample)
    if per_sample <= 0:
        return size
    return max(1, min(size, int(budget / per_sample)))


def gradient_bytes_per_sample(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """CUDA memory one more sample costs in a forward + backward pass to the input (bytes).

    Measured as the growth of the peak allocation between probes of PROBE_SAMPLES / 2 and
    PROBE_SAMPLES images, after one warm-up pass (which allocates the libraries' workspaces), so
    that fixed costs cancel. Resets the device's peak-memory statistics.
    """
    half = max(1, min(len(x), PROBE_SAMPLES) // 2)
    peaks = []
    with eval_mode(model):
        loss_logits_and_gradient(model, x[: 2 * half], y[: 2 * half])  # warm-up
        for count in (half, 2 * half):
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            base = torch.cuda.memory_allocated(x.device)
            loss_logits_and_gradient(model, x[:count], y[:count])
            torch.cuda.synchronize(x.device)
            peaks.append(torch.cuda.max_memory_allocated(x.device) - base)
    grown = (peaks[1] - peaks[0]) / half
    # a probe too small to show growth (allocator rounding) falls back to the larger probe's average
    return grown if grown > 0 else peaks[1] / (2 * half)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error (CUDA and others), or the CPU allocator's failure."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


T = TypeVar("T")


def attempt(call: Callable[[], T]) -> tuple[bool, T | None]:
    """(True, call()), or (False, None) when call() ran out of memory; any other error propagates.

    The failed attempt's tensors are freed when this returns (its traceback goes with the except block).
    """
    try:
        return True, call()
    except Exception as exc:  # noqa: BLE001 -- only out-of-memory errors are handled; the rest re-raised
        if not is_out_of_memory(exc):
            raise
    return False, None


def recover(batching: Batching, generator: Generator | None, state: Tensor | None, *, cut_size: bool) -> None:
    """After an out-of-memory error: shrink `batching` (the chunk; with cut_size, then the call's size),
    put the generator back to `state`, and free the allocator's cache; OutOfMemory when nothing is left to cut."""
    if not (batching.chunk > 1 or cut_size) or not batching.shrink():
        raise OutOfMemory(
            "out of memory on the device even with one image per model call; free device memory "
            "(other processes) or run on the CPU with --device cpu"
        )
    if generator is not None and state is not None:
        generator.set_state(state)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def with_retry(call: Callable[[], T], batching: Batching, *, generator: Generator | None = None) -> T:
    """call() again, with a halved chunk, after each out-of-memory error (see `recover`)."""
    state = generator.get_state() if generator is not None else None
    while True:
        ok, value = attempt(call)
        if ok:
            return value  # type: ignore[return-value]
        recover(batching, generator, state, cut_size=False)


class ChunkedModel(nn.Module):
    """`model`, called on at most `batching.chunk` samples at a time (read at each call).

    Without gradients the logits are computed chunk by chunk. With gradients to an input that
    requires them, the logits are computed without a graph, and the backward pass recomputes and
    backpropagates one chunk at a time (see `_RecomputedChunks`): input gradients only, no weight
    gradients. Below the chunk size it is `model` itself. Used by the evaluator only; its mode is
    the model's (it is built inside the evaluator's eval mode).
    """

    def __init__(self, model: nn.Module, batching: Batching) -> None:
        super().__init__()
        self.model = model
        self.batching = batching
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        chunk = self.batching.chunk
        if len(x) <= chunk:
            return self.model(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _RecomputedChunks.apply(x, self.model, chunk)
        return torch.cat([self.model(part) for part in x.split(chunk)])


class _RecomputedChunks(torch.autograd.Function):
    """Logits of x computed chunk by chunk, keeping no graph; the backward pass recomputes each chunk's
    forward pass and backpropagates it alone, to the input only (gradient checkpointing per chunk)."""

    @staticmethod
    def forward(ctx, x: Tensor, model: nn.Module, chunk: int) -> Tensor:  # type: ignore[override]
        ctx.model, ctx.chunk = model, chunk
        ctx.save_for_backward(x)
        return torch.cat([model(part) for part in x.split(chunk)])  # autograd runs forward without a graph

    @staticmethod
    def backward(ctx, grad_logits: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grads = []
        with torch.enable_grad():
            for part, grad_part in zip(x.split(ctx.chunk), grad_logits.split(ctx.chunk)):
                leaf = part.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(ctx.model(leaf), leaf, grad_part)
                grads.append(grad)
        return torch.cat(grads), None, None
