"""Executors of the sweep engine: where cells run. `local`: this process or a process pool; `ray`: Ray tasks.

An executor keeps up to `slots` cells in flight: `start(key, fn, config)` hands one cell to a
worker, `next_done()` blocks until one finishes and returns (key, Finished), `close(cancel=...)`
ends it (cancel: stop the cells still in flight). Every CPU cell runs with one torch thread,
whichever executor and however many workers, so its numbers do not depend on them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from redblue.errors import RedblueError
from redblue.runs.store import utc_now

EXECUTORS = ("local", "ray")
PARENT_POLL_S = 1.0  # how often a pool worker checks that the process that started it is alive


@dataclass(frozen=True)
class Artefact:
    """A file a cell produces; the run folder stores it as `<folder>/<cell-id><suffix>`."""

    folder: str  # e.g. "models"
    suffix: str  # e.g. ".safetensors"
    data: bytes


@dataclass(frozen=True)
class CellOutput:
    """What a cell function returns: JSON-able metrics and the artefacts to store beside them."""

    metrics: dict[str, Any]
    artefacts: tuple[Artefact, ...] = ()


@dataclass(frozen=True)
class Finished:
    """A cell's output (a batch's: one per cell) and where and how long it ran."""

    output: CellOutput | tuple[CellOutput, ...]
    host: str
    pid: int
    started: str  # ISO-8601 UTC
    seconds: float


class Executor(Protocol):
    name: str
    slots: int

    def start(self, key: str, fn: Callable[[Any], CellOutput], config: Any) -> None: ...

    def next_done(self) -> tuple[str, Finished]: ...

    def close(self, *, cancel: bool) -> None: ...


def execute(fn: Callable[[Any], Any], config: Any) -> Finished:
    """Run one cell (or one batch of cells: a tuple of configs) here and time it, in whichever process the executor chose."""
    started, clock = utc_now(), time.perf_counter()
    output = fn(config)
    if isinstance(output, list):
        output = tuple(output)
    if not isinstance(output, CellOutput) and not (
        isinstance(output, tuple) and all(isinstance(item, CellOutput) for item in output)
    ):
        raise TypeError(f"a cell function must return a CellOutput (a batch function a tuple of them), got {type(output).__name__}")
    return Finished(output, socket.gethostname(), os.getpid(), started, time.perf_counter() - clock)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers() -> int:
    """The cores this process may use (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


class InProcessExecutor:
    """One cell at a time, in this process (one worker: no start-up cost, and easy to debug)."""

    name = "local"
    slots = 1

    def __init__(self) -> None:
        self._next: tuple[str, Callable[[Any], CellOutput], Any] | None = None

    def start(self, key: str, fn: Callable[[Any], CellOutput], config: Any) -> None:
        assert self._next is None, "InProcessExecutor runs one cell at a time"
        self._next = (key, fn, config)

    def next_done(self) -> tuple[str, Finished]:
        assert self._next is not None, "next_done() before start()"
        key, fn, config = self._next
        self._next = None
        with torch_threads(1):
            return key, execute(fn, config)

    def close(self, *, cancel: bool) -> None:
        self._next = None


def _init_worker(parent_pid: int, gpus: int, gpu_counter: Any) -> None:
    """Pool worker start-up: Ctrl-C ends it quietly, one torch thread, its own GPU, and it dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    torch.set_num_threads(1)
    if gpus:
        with gpu_counter.get_lock():
            index = gpu_counter.value
            gpu_counter.value += 1
        torch.cuda.set_device(index % gpus)

    def exit_with_parent() -> None:  # a parent killed with kill -9 cannot tell its workers to stop
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


class ProcessPoolCellExecutor:
    """`workers` spawned processes (spawn: no state copied from this one); with `gpus`, worker i uses GPU i mod gpus.

    The CUDA branch (one process per GPU) is not exercised on the project's CPU-only CI.
    """

    name = "local"

    def __init__(self, *, workers: int, gpus: int = 0) -> None:
        context = multiprocessing.get_context("spawn")
        self.slots = workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(os.getpid(), gpus, context.Value("i", 0) if gpus else None),
        )
        self._futures: dict[Future[Finished], str] = {}

    def start(self, key: str, fn: Callable[[Any], CellOutput], config: Any) -> None:
        self._futures[self._pool.submit(execute, fn, config)] = key

    def next_done(self) -> tuple[str, Finished]:
        done, _ = wait(self._futures, return_when=FIRST_COMPLETED)
        future = next(iter(done))
        key = self._futures.pop(future)
        try:
            return key, future.result()
        except BrokenProcessPool:
            raise RedblueError(
                "a worker process ended abruptly (interrupted, or killed for memory); finished cells are kept, "
                "rerun the same command to resume (--workers 1 uses less memory)"
            ) from None

    def close(self, *, cancel: bool) -> None:
        if not cancel:
            self._pool.shutdown(wait=True)
            return
        processes = list(getattr(self._pool, "_processes", {}).values())  # the pool has no public kill
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        self._futures.clear()
