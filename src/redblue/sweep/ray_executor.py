"""The `ray` executor: each cell is a Ray core task (not Tune: a cell is one plain function call).

Ray is an optional extra (`pip install 'redblue[ray]'`). With `RAY_ADDRESS` set, the sweep
attaches to that cluster (every node needs redblue installed, the data where `--data-dir` or
`$REDBLUE_DATA_DIR` says; the run folder stays on this machine, since the driver writes every
file); otherwise it starts a local Ray instance for the sweep and shuts it down after. A CPU cell
asks Ray for one CPU (and runs with one torch thread), a GPU cell for one GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from redblue.errors import ConfigError, RedblueError
from redblue.sweep.executors import CellOutput, Finished, default_workers, execute

LOCAL_OBJECT_STORE_BYTES = 512 * 2**20  # cell outputs only (metrics and a model or two): no data passes through it


def import_ray() -> Any:
    """The `ray` module, or one line that says how to get it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the ray executor needs Ray, which is not installed; pip install 'redblue[ray]', or use --executor local"
        ) from None
    return ray


def _execute_task(fn: Callable[[Any], CellOutput], config: Any, gpu: bool) -> Finished:
    if not gpu:
        torch.set_num_threads(1)  # one CPU per task, as the local executor's workers
    return execute(fn, config)


def start_ray(*, workers: int | None) -> bool:
    """Attach to `RAY_ADDRESS`, or start a local Ray instance of `workers` CPUs, unless Ray is running in this
    process already; True when this call started it (the caller then shuts it down). Several sweeps in a
    row (the arena's stages) start it once this way instead of once per sweep."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **options)
    else:
        ray.init(num_cpus=workers or default_workers(), object_store_memory=LOCAL_OBJECT_STORE_BYTES, **options)
    return True


class RayExecutor:
    """Ray tasks, at most `slots` in flight: `workers`, or every CPU (GPU) of the instance or cluster."""

    name = "ray"

    def __init__(self, *, workers: int | None, gpu: bool) -> None:
        ray = import_ray()
        self._ray = ray
        self._owns_instance = start_ray(workers=workers)
        resource = "GPU" if gpu else "CPU"
        capacity = int(ray.cluster_resources().get(resource, 0))
        if capacity < 1:
            self.close(cancel=True)
            raise ConfigError(f"the Ray cluster has no {resource}; start it with one, or use --executor local")
        self.slots = min(workers or capacity, capacity)
        self._gpu = gpu
        self._task = ray.remote(_execute_task).options(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0)
        self._refs: dict[Any, str] = {}

    def start(self, key: str, fn: Callable[[Any], CellOutput], config: Any) -> None:
        self._refs[self._task.remote(fn, config, self._gpu)] = key

    def next_done(self) -> tuple[str, Finished]:
        ray = self._ray
        (ready,), _ = ray.wait(list(self._refs), num_returns=1)
        key = self._refs.pop(ready)
        try:
            return key, ray.get(ready)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RedblueError):
                raise cause from None  # the cell's own one-line error, not Ray's traceback dump
            raise
        except ray.exceptions.RayError as exc:
            raise RedblueError(
                f"a Ray worker failed ({type(exc).__name__}); finished cells are kept, rerun the same command to resume"
            ) from None

    def close(self, *, cancel: bool) -> None:
        if cancel:
            for ref in self._refs:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - a task that finished meanwhile cannot be cancelled; nothing to do
                    pass
            self._refs.clear()
        if self._owns_instance and self._ray.is_initialized():
            self._ray.shutdown()
