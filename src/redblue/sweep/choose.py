"""Choose the executor of a sweep by name: `local` (this process or a process pool) or `ray`.

Apart from the executors themselves, so that `redblue.sweep.ray_executor`, which builds on the
local executors' pieces, is imported only when Ray is asked for, and no module imports the other back.
"""

from __future__ import annotations

import torch

from redblue.errors import ConfigError
from redblue.sweep.executors import EXECUTORS, Executor, InProcessExecutor, ProcessPoolCellExecutor, default_workers


def make_executor(name: str, *, workers: int | None, gpu: bool, cells: int) -> Executor:
    """The executor `name` ("local" or "ray") sized for `cells` cells: at most `workers` in flight.

    local: `workers` processes (default: the cores this process may use; with `gpu`, the GPUs),
    and this process alone when that comes to one. ray: see `redblue.sweep.ray_executor`.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if name == "ray":
        from redblue.sweep.ray_executor import RayExecutor

        return RayExecutor(workers=workers, gpu=gpu)
    gpus = torch.cuda.device_count() if gpu else 0
    if gpu and gpus == 0:
        raise ConfigError("the cells run on CUDA but no GPU is visible; use --device cpu")
    size = max(1, min(workers or gpus or default_workers(), cells))
    if size == 1:
        return InProcessExecutor()
    return ProcessPoolCellExecutor(workers=size, gpus=gpus)
