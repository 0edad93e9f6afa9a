"""The training loop: RMSProp on an in-memory dataset, one objective plus weight penalties, seeded.

The loop does not know which objective it runs (DESIGN.md): it shuffles with a seeded
permutation per epoch, slices batches out of one tensor (no DataLoader), and keeps the running
loss and accuracy as device tensors, synchronising once per epoch.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from redblue.defenses import CleanObjective, ObjectiveParams, TrainStep, make_objective, weight_penalty
from redblue.defenses.penalties import add_penalty_gradient_, penalized_parameters
from redblue.errors import ConfigError, ModelError, require_in_range, require_non_negative, require_positive

log = logging.getLogger(__name__)

OPTIMIZERS = ("rmsprop-newmu", "rmsprop")
PROGRESS_EVERY = 20  # batches between progress-bar refreshes; the bar never reads a tensor


class NewmuRMSprop(torch.optim.Optimizer):
    """RMSProp as in Newmu's Theano tutorial, which the paper cites (eps inside the square root).

        ms <- rho * ms + (1 - rho) * g^2
        w  <- w - lr * g / sqrt(ms + eps)

    torch.optim.RMSprop (and the paper's equation) put eps outside: g / (sqrt(ms) + eps). The two
    differ where ms is tiny, e.g. weights whose only gradient is a small L1 term.
    """

    def __init__(self, params: Iterable[Tensor], *, lr: float, rho: float, eps: float) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ConfigError("NewmuRMSprop takes no closure; compute the loss and call backward() first")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            mean_squares = []
            for p in params:
                state = self.state[p]
                if "mean_square" not in state:
                    state["mean_square"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                mean_squares.append(state["mean_square"])
            torch._foreach_mul_(mean_squares, group["rho"])
            torch._foreach_addcmul_(mean_squares, grads, grads, value=1.0 - group["rho"])
            denominators = torch._foreach_add(mean_squares, group["eps"])
            torch._foreach_sqrt_(denominators)
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; the paper's protocol is RMSProp (decay 0.9), batch 128, eq. (2) penalties.

    optimizer: "rmsprop-newmu" puts rms_eps inside the square root (Newmu's tutorial, which the
    paper cites); "rmsprop" is torch.optim.RMSprop(alpha=rho, eps=rms_eps), eps outside, as the
    paper's equation writes it. penalize_bias: whether l1/l2 also cover the biases.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    rho: float = 0.9
    rms_eps: float = 1e-6
    l1: float = 0.0
    l2: float = 0.0
    penalize_bias: bool = False
    objective: ObjectiveParams = field(default_factory=CleanObjective)
    seed: int = 0
    optimizer: Literal["rmsprop-newmu", "rmsprop"] = "rmsprop-newmu"

    def __post_init__(self) -> None:
        _require_int("epochs", self.epochs, minimum=0)
        _require_int("batch_size", self.batch_size, minimum=1)
        _require_int("seed", self.seed, minimum=0)
        require_positive("lr", self.lr)
        require_in_range("rho", self.rho, 0.0, 0.999999)
        require_non_negative("rms_eps", self.rms_eps)
        require_non_negative("l1", self.l1)
        require_non_negative("l2", self.l2)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not isinstance(self.objective, ObjectiveParams):
            raise ConfigError(f"objective must be objective params (see redblue.defenses), got {type(self.objective).__name__}")


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class TrainResult:
    """What a run did. history: one dict per epoch with epoch, loss (the objective without the
    penalty, mean over samples), penalty (lambda1 * sum|w| + lambda2 * sum w^2 at the end of the
    epoch), accuracy (on the batches as trained: dropout on, adversarial inputs for fast-fgsm and
    pgd), seconds, plus whatever `on_epoch` returned. seconds: the whole run's wall time."""

    history: list[dict[str, Any]]
    seconds: float


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, alpha=config.rho, eps=config.rms_eps, foreach=True)
    return NewmuRMSprop(params, lr=config.lr, rho=config.rho, eps=config.rms_eps)


def init_model(build: Callable[[], nn.Module], *, seed: int) -> nn.Module:
    """Call `build()` (e.g. `lambda: build_model(spec)`) with torch's CPU generator seeded by `seed`,
    without disturbing the caller's random state, so a seed fixes the initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _check_data(model: nn.Module, x: Tensor, y: Tensor) -> None:
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ConfigError(f"x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; pass one label per image")
    if len(x) == 0:
        raise ConfigError("the training set is empty; pass at least one image")
    if y.dtype != torch.long:
        raise ConfigError(f"labels must be int64 class indices, got {y.dtype}")
    param = next(model.parameters(), None)
    if param is None:
        raise ModelError("the model has no parameters to train")
    if param.device != x.device or y.device != x.device:
        raise ModelError(f"the model is on {param.device} but the data on {x.device}/{y.device}; move both to one device")


class _ProgressBar:
    """A rich bar on stderr over the batches of a run; it only ever receives Python numbers."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, status="")

    def advance(self, steps: int) -> None:
        self._progress.update(self._task, advance=steps)

    def set(self, completed: int, status: str) -> None:
        self._progress.update(self._task, completed=completed, status=status)

    def stop(self) -> None:
        self._progress.stop()


def show_progress_by_default() -> bool:
    """The bar is drawn only on an interactive terminal: off when stdout (e.g. `--json > file`)
    or stderr is redirected, so logs and machine-readable output never contain it."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def _progress_bar(enabled: bool | None, total: int) -> _ProgressBar | None:
    if enabled is None:
        enabled = show_progress_by_default()
    return _ProgressBar(total) if enabled else None


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    progress: bool | None = None,
    on_epoch: Callable[[int, nn.Module], dict[str, Any] | None] | None = None,
) -> TrainResult:
    """Train `model` in place on (x, y) with `config`; returns the per-epoch history.

    x: (N, 1, 28, 28) pixels in [0, 1] on the model's device; y: (N,) int64 labels. Each epoch
    visits the samples in a permutation drawn from a generator seeded with `config.seed`; dropout
    and the objective's random starts are seeded from it too, so the same seed, initial weights
    and device give the same weights (torch's global random state is saved and restored).
    progress: a rich bar on stderr; None shows it only when stdout and stderr are terminals.
    on_epoch(epoch, model): called after each epoch (model in eval mode), e.g. to score a
    validation set; a returned dict is merged into that epoch's history entry.
    The model is left in eval mode.
    """
    _check_data(model, x, y)
    device = x.device
    objective = make_objective(config.objective)
    optimizer = make_optimizer(model, config)
    n = len(x)
    n_batches = (n + config.batch_size - 1) // config.batch_size
    penalize = config.l1 > 0 or config.l2 > 0
    penalized = [p for p in penalized_parameters(model, include_bias=config.penalize_bias) if p.requires_grad]
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    attack_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    step = TrainStep(generator=attack_generator)
    history: list[dict[str, Any]] = []
    bar = _progress_bar(progress, config.epochs * n_batches)
    started = time.perf_counter()
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(config.seed + 2)  # dropout masks
            for epoch in range(1, config.epochs + 1):
                epoch_started = time.perf_counter()
                model.train()
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                n_correct = torch.zeros((), dtype=torch.long, device=device)
                order = torch.randperm(n, generator=shuffle_generator).to(device)
                for batch in range(n_batches):
                    index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
                    xb, yb = x[index], y[index]
                    loss, logits = objective(model, xb, yb, step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if penalize:  # d(penalty)/dw added directly: the same step as autograd, far cheaper
                        add_penalty_gradient_(penalized, l1=config.l1, l2=config.l2)
                    optimizer.step()
                    loss_sum += loss.detach() * len(yb)
                    n_correct += (logits.detach().argmax(dim=1) == yb).sum()
                    if bar is not None and (batch + 1) % PROGRESS_EVERY == 0:
                        bar.advance(PROGRESS_EVERY)
                model.eval()
                with torch.no_grad():
                    penalty = weight_penalty(model, l1=config.l1, l2=config.l2, include_bias=config.penalize_bias)
                    # the epoch's one device sync: loss, correct count and penalty read together
                    loss_total, correct_total, penalty_value = torch.stack(
                        [loss_sum, n_correct.to(torch.float64), penalty.to(device=device, dtype=torch.float64)]
                    ).tolist()
                row: dict[str, Any] = {
                    "epoch": epoch,
                    "loss": loss_total / n,
                    "penalty": penalty_value,
                    "accuracy": correct_total / n,
                    "seconds": time.perf_counter() - epoch_started,
                }
                if not all(map(_finite, (row["loss"], row["penalty"]))):
                    raise ConfigError(
                        f"the training loss became {row['loss']} in epoch {epoch}; lower lr or the penalties and retry"
                    )
                if on_epoch is not None:
                    row.update(on_epoch(epoch, model) or {})
                history.append(row)
                log.info(
                    "epoch %d/%d: loss %.4f, train accuracy %.4f, %.1f s",
                    epoch, config.epochs, row["loss"], row["accuracy"], row["seconds"],
                )
                if bar is not None:
                    bar.set(epoch * n_batches, f"loss {row['loss']:.4f} acc {row['accuracy']:.3f}")
    finally:
        if bar is not None:
            bar.stop()
    model.eval()
    return TrainResult(history=history, seconds=time.perf_counter() - started)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
