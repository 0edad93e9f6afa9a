"""Train a grid of models that differ only in l1, l2 and seed as one batched model (issue 11, item 3).

The paper's 3x3 (lambda1, lambda2) grid is nine copies of one MLP. `train_grid` trains them as
one stacked model (`redblue.gridmodel`): each Linear layer of all members is one batched matmul.
Member m is trained exactly as `redblue.train.train` trains it alone:

- initial weights: `init_model(build, seed=seed_m)`;
- data order: a permutation per epoch from a CPU generator seeded with seed_m;
- dropout masks: drawn, layer after layer, from a generator seeded with seed_m + 2, with the
  same calls as `F.dropout` makes on torch's global generator (members that share a seed share
  their data order and masks, as they do when trained one by one, so those are drawn once);
- its own penalty gradient lambda1_m * sign(w) + 2 * lambda2_m * w, added to its own gradient;
- the same optimiser arithmetic (NewmuRMSprop or torch's RMSprop), member by member.

On the CPU every operation is the one the single-model loop runs, so a member's weights match
one-by-one training to the last bit or nearly (the tests assert the agreement); on CUDA the
dropout masks come from another random stream, so members agree within seed noise.

What it supports: an `nn.Sequential` of Linear, ReLU, Dropout and Flatten layers, the clean
objective, `rmsprop-newmu` or `rmsprop` at a constant learning rate, no validation split.
`grid_refusal` says why it does not support a grid (None when it does), so a caller can fall
back to training one by one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Generator, Tensor, nn

from redblue.defenses import weight_penalty
from redblue.errors import ConfigError
from redblue.gridmodel import Layer, StackedMLP, ce_backward, layer_plan, linear_forward, relu_backward
from redblue.train import TrainConfig, TrainResult, init_model

log = logging.getLogger(__name__)

GRID_KEYS = ("l1", "l2", "seed")  # what may differ between members
OPTIMIZERS = ("rmsprop-newmu", "rmsprop")
PROGRESS_EVERY = 20  # batches between progress reports (they read no tensor)
CPU_BLOCK_ELEMENTS = 1 << 16  # a weight-gradient block that stays in a core's L2 cache with its optimiser state
# TrainConfig knobs reproduced here, and the values accepted for the loop's other knobs (its
# neutral settings); a knob in neither list (a newer loop's) makes the grid refuse.
HANDLED = {"epochs", "batch_size", "lr", "rho", "rms_eps", "l1", "l2", "penalize_bias", "objective", "seed", "optimizer"}
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "momentum": (None, 0.0),
    "nesterov": (None, False),
    "weight_decay": (None, 0.0),
    "schedule": (None, "constant"),
    "warmup_epochs": (None, 0.0),
    "eps_warmup_epochs": (None, 0.0),
    "grad_clip": (None,),
    "val_size": (None, 0),
    "keep": (None, "last"),
    "overfit_guard": (None, False),
}


@dataclass(frozen=True)
class GridProgress:
    """A progress report: `batch` of `batches` done in `epoch`; phase "epoch": the epoch is done and
    `rows` holds each member's history entry."""

    phase: Literal["batch", "epoch"]
    epoch: int
    epochs: int
    batch: int
    batches: int
    rows: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class GridResult:
    """One trained model (eval mode, on the data's device) and one TrainResult per member, in the
    order of the configs. Each TrainResult's `seconds` is the whole grid's training wall time."""

    models: list[nn.Module]
    results: list[TrainResult]
    seconds: float


def _resolved(config: TrainConfig, n_samples: int) -> TrainConfig:
    """The config with its defaults filled in, where the training loop resolves configs."""
    resolve = getattr(config, "resolved", None)
    return resolve(n_samples) if callable(resolve) else config


def _optimizer_name(config: TrainConfig) -> str:
    return str(getattr(config, "optimizer_name", config.optimizer))


def _neutral(name: str, value: Any) -> bool:
    return getattr(value, "name", value) in NEUTRAL[name]


def config_refusal(configs: Sequence[TrainConfig], *, n_samples: int) -> str | None:
    """Why these training configs cannot train as one grid (one line), or None."""
    if not configs:
        return "a grid needs at least one member"
    first = configs[0]
    for config in configs[1:]:
        differing = [
            f.name for f in dataclasses.fields(first) if f.name not in GRID_KEYS and getattr(first, f.name) != getattr(config, f.name)
        ]
        if differing:
            return f"the members differ in {', '.join(differing)}; a grid's members may differ only in l1, l2 and seed"
    if first.objective.name != "clean":
        return f"grid training supports the clean objective, not {first.objective.name!r}"
    resolved = _resolved(first, n_samples)
    optimizer = _optimizer_name(resolved)
    if optimizer not in OPTIMIZERS:
        return f"grid training supports the optimizers {', '.join(OPTIMIZERS)}, not {optimizer!r}"
    for f in dataclasses.fields(resolved):
        if f.name in HANDLED:
            continue
        value = getattr(resolved, f.name)
        if f.name not in NEUTRAL:
            return f"grid training does not know the training knob {f.name!r}"
        if not _neutral(f.name, value):
            return f"grid training does not support {f.name}={getattr(value, 'name', value)!r}"
    return None


def grid_refusal(build: Callable[[], nn.Module], configs: Sequence[TrainConfig], *, n_samples: int = 60000) -> str | None:
    """Why `train_grid(build, configs, ...)` would refuse (one line), or None when it trains them as one grid.

    n_samples: the training-set size (some loops resolve defaults against it).
    """
    reason = config_refusal(configs, n_samples=n_samples)
    if reason is not None:
        return reason
    plan = layer_plan(init_model(build, seed=configs[0].seed))
    return plan if isinstance(plan, str) else None


def supports(build: Callable[[], nn.Module], configs: Sequence[TrainConfig], *, n_samples: int = 60000) -> bool:
    """Whether `train_grid` trains these members as one grid (else train them one by one)."""
    return grid_refusal(build, configs, n_samples=n_samples) is None


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush denormal floats to zero in this thread, as long as the block runs (CPU).

    Optimiser state that decays towards zero passes through denormal numbers, which the CPU
    computes on ~100x slower; they are < 1.2e-38, far below the 1e-6 of the RMSProp epsilon, so
    flushing them changes no weight (measured: the same weights bit for bit). torch has no getter
    for the flag, so the previous state is read from the arithmetic itself.
    """
    before = float(torch.tensor([1e-38]) * 1e-3) == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


class _Streams:
    """The random streams of one seed group (the members that share a seed): data order and dropout."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.shuffle = torch.Generator().manual_seed(seed)
        self.dropout = Generator(device=device).manual_seed(seed + 2)

    def mask(self, like: Tensor, p: float) -> Tensor:
        """F.dropout's scaled noise for `like`'s shape: bernoulli(1 - p) / (1 - p), one draw of the stream."""
        if p == 1.0:
            return torch.zeros_like(like)
        return torch.empty_like(like).bernoulli_(1.0 - p, generator=self.dropout).div_(1.0 - p)


def _by_member(per_group: list[Tensor], member_group: Tensor, groups: int) -> Tensor:
    """(M, ...) from one tensor per seed group: an expanded view when all members share one group."""
    if groups == 1:
        return per_group[0].unsqueeze(0).expand(len(member_group), *per_group[0].shape)
    return torch.stack(per_group).index_select(0, member_group)


def _dropout_forward(a: Tensor, p: float, streams: list[_Streams], member_group: Tensor) -> tuple[Tensor, Tensor | None]:
    """Member activations a (M, B, F) times each group's dropout mask (B, F); p == 0 draws nothing, like F.dropout."""
    if p == 0.0:
        return a, None
    masks = _by_member([s.mask(a[0], p) for s in streams], member_group, len(streams))
    return a * masks, masks


@dataclass
class _Optimiser:
    """The optimiser arithmetic of NewmuRMSprop (eps inside the square root) or torch's RMSprop, per block.

    `step_block` runs the single-model loop's operations on one block of one member's weight:
    the penalty gradient first (`add_penalty_gradient_`), then the optimiser's foreach ops.
    """

    lr: float
    rho: float
    eps: float
    newmu: bool

    @torch.no_grad()
    def step_block(self, p: Tensor, grad: Tensor, mean_square: Tensor, scratch: Tensor, *, l1: Any, l2: Any) -> None:
        """p, grad, mean_square, scratch: one shape. l1, l2: floats (a member's block) or (M, 1, ...) tensors."""
        if isinstance(l1, Tensor):
            grad.addcmul_(torch.sign(p), l1).addcmul_(p, 2.0 * l2)
        else:
            if l1:
                torch.sign(p, out=scratch)
                grad.add_(scratch, alpha=l1)
            if l2:
                grad.add_(p, alpha=2.0 * l2)
        mean_square.mul_(self.rho)
        mean_square.addcmul_(grad, grad, value=1.0 - self.rho)
        if self.newmu:
            torch.add(mean_square, self.eps, out=scratch)
            scratch.sqrt_()
        else:
            torch.sqrt(mean_square, out=scratch)
            scratch.add_(self.eps)
        p.addcdiv_(grad, scratch, value=-self.lr)


@dataclass(frozen=True)
class _Block:
    """Rows start:stop of one member's weight: views of the weight, its optimiser state and the buffers."""

    member: int
    start: int
    stop: int
    weight: Tensor
    state: Tensor
    grad: Tensor
    scratch: Tensor
    l1: float
    l2: float


class _GridStep:
    """One training step of the stacked model: forward, loss, backward with each weight updated as
    soon as its gradient is known (after the gradient that flows through it has been taken)."""

    def __init__(self, stack: StackedMLP, configs: Sequence[TrainConfig], *, block_elements: int | None) -> None:
        first = configs[0]
        device = stack.weights[0].device
        self.stack = stack
        self.optimiser = _Optimiser(first.lr, first.rho, first.rms_eps, _optimizer_name(first) == "rmsprop-newmu")
        self.state = [torch.zeros_like(p) for p in stack.parameters()]
        self.l1 = [c.l1 for c in configs]
        self.l2 = [c.l2 for c in configs]
        self.penalize_bias = first.penalize_bias
        self.block_elements = block_elements
        shape = (stack.members,) + (1, 1)
        self.l1_tensor = torch.tensor(self.l1, dtype=stack.weights[0].dtype, device=device).view(shape)
        self.l2_tensor = torch.tensor(self.l2, dtype=stack.weights[0].dtype, device=device).view(shape)
        self.blocks = [self._blocks(k) for k in range(len(stack.weights))] if block_elements is not None else []

    def _blocks(self, k: int) -> list[_Block]:
        """Weight k cut into blocks of whole rows, about block_elements each, never across two members;
        the views are made once, and the gradient and scratch buffers are shared by all blocks."""
        assert self.block_elements is not None
        weight, state = self.stack.weights[k], self.state[k]
        rows, cols = weight.shape[1:]
        block = max(1, min(rows, self.block_elements // cols))
        grad_buffer = torch.empty(block, cols, dtype=weight.dtype, device=weight.device)
        scratch = torch.empty_like(grad_buffer)
        blocks = []
        for m in range(self.stack.members):
            for start in range(0, rows, block):
                stop = min(rows, start + block)
                blocks.append(
                    _Block(m, start, stop, weight[m, start:stop], state[m, start:stop], grad_buffer[: stop - start],
                           scratch[: stop - start], self.l1[m], self.l2[m])
                )
        return blocks

    def _update_weight(self, k: int, grad_out: Tensor, a_in: Tensor) -> None:
        """Weight k's gradient (member m: grad_out[m]^T a_in[m]) and its update, block by block."""
        if self.block_elements is None:  # the whole stack at once: fewest kernel launches (CUDA)
            grad = torch.bmm(grad_out.transpose(1, 2), a_in)
            weight, state = self.stack.weights[k], self.state[k]
            self.optimiser.step_block(weight, grad, state, torch.empty_like(grad), l1=self.l1_tensor, l2=self.l2_tensor)
            return
        grad_rows, inputs = grad_out.unbind(0), a_in.unbind(0)
        for block in self.blocks[k]:
            torch.mm(grad_rows[block.member][:, block.start : block.stop].t(), inputs[block.member], out=block.grad)
            self.optimiser.step_block(block.weight, block.grad, block.state, block.scratch, l1=block.l1, l2=block.l2)

    def _update_bias(self, k: int, grad_out: Tensor) -> None:
        bias = self.stack.biases[k]
        assert bias is not None
        state = self.state[len(self.stack.weights) + sum(b is not None for b in self.stack.biases[:k])]
        grad = grad_out.sum(dim=1)  # (M, out)
        penalize = self.penalize_bias
        for m in range(self.stack.members):
            self.optimiser.step_block(
                bias[m], grad[m], state[m], torch.empty_like(grad[m]),
                l1=self.l1[m] if penalize else 0.0, l2=self.l2[m] if penalize else 0.0,
            )

    def __call__(self, inputs: Tensor, y: Tensor, streams: list[_Streams], member_group: Tensor) -> tuple[Tensor, Tensor]:
        """inputs (M, B, in): each member's batch after the shared layers; y (M, B). Returns (loss (M,), logits (M, B, C))."""
        stack = self.stack
        body = stack.plan[stack.first_linear():]
        saved: list[Tensor | None] = []
        a = inputs
        for layer in body:
            if layer.kind == "linear":
                saved.append(a)
                a = linear_forward(a, stack.weights[layer.linear], stack.biases[layer.linear])
            elif layer.kind == "relu":
                a = a.relu()
                saved.append(a)
            elif layer.kind == "dropout":
                a, mask = _dropout_forward(a, layer.p, streams, member_group)
                saved.append(mask)
            else:
                saved.append(None)
        logits = a
        logp, grad = ce_backward(logits, y, mean=True)
        loss = -logp.gather(2, y.unsqueeze(2)).squeeze(2).mean(dim=1)
        with torch.no_grad():
            for layer, kept in zip(reversed(body), reversed(saved)):
                grad = self._backward(layer, kept, grad)
        return loss.detach(), logits.detach()

    def _backward(self, layer: Layer, kept: Tensor | None, grad: Tensor) -> Tensor:
        if layer.kind == "relu":
            assert kept is not None
            return relu_backward(grad, kept)
        if layer.kind == "dropout":
            return grad if kept is None else grad * kept
        if layer.kind == "linear":
            assert kept is not None
            k = layer.linear
            grad_in = torch.bmm(grad, self.stack.weights[k]) if k > 0 else grad  # before the weight changes
            self._update_weight(k, grad, kept)
            if self.stack.biases[k] is not None:
                self._update_bias(k, grad)
            return grad_in
        return grad


def _shared_inputs(x: Tensor, index: Tensor, prefix: list[Layer], streams: _Streams) -> Tensor:
    """One seed group's batch through the layers before the first Linear (flatten, dropout)."""
    xb = x[index]
    for layer in prefix:
        if layer.kind == "flatten":
            xb = xb.flatten(1)
        elif layer.kind == "dropout" and layer.p > 0.0:
            xb = xb * streams.mask(xb, layer.p)
    return xb


def _check_data(x: Tensor, y: Tensor) -> None:
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ConfigError(f"x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; pass one label per image")
    if len(x) == 0:
        raise ConfigError("the training set is empty; pass at least one image")
    if y.dtype != torch.long:
        raise ConfigError(f"labels must be int64 class indices, got {y.dtype}")
    if y.device != x.device:
        raise ConfigError(f"the images are on {x.device} but the labels on {y.device}; move both to one device")


def train_grid(
    build: Callable[[], nn.Module],
    configs: Sequence[TrainConfig],
    x: Tensor,
    y: Tensor,
    *,
    progress: Callable[[GridProgress], None] | None = None,
    block_elements: int | None | Literal["auto"] = "auto",
) -> GridResult:
    """Train one model per config, all at once; member m gets the model `train(init_model(build,
    seed=configs[m].seed), x, y, configs[m])` would give (see the module docstring).

    build: makes the (untrained) architecture, e.g. `lambda: build_model(spec)`; configs: one
    TrainConfig per member, equal but for l1, l2 and seed (else ConfigError with the reason, see
    `grid_refusal`). x: (N, 1, 28, 28) pixels in [0, 1]; y: (N,) int64 labels; the models are
    trained on x's device. progress: called every PROGRESS_EVERY batches and after each epoch;
    it reads no tensor, so it costs no device sync. block_elements: the weight gradient and its
    update run in blocks of about this many elements per member (cache-sized on a CPU); None: the
    whole stack at once; "auto": CPU_BLOCK_ELEMENTS on a CPU, None on CUDA.
    """
    _check_data(x, y)
    reason = config_refusal(configs, n_samples=len(x))
    if reason is not None:
        raise ConfigError(f"{reason}; train these models one by one (redblue.train.train)")
    configs = [_resolved(c, len(x)) for c in configs]
    device = x.device
    models = [init_model(build, seed=c.seed).to(device) for c in configs]
    plan = layer_plan(models[0])
    if isinstance(plan, str):
        raise ConfigError(f"{plan}; train these models one by one (redblue.train.train)")
    stack = StackedMLP.from_models(models, device=device)
    prefix = stack.plan[: stack.first_linear()]
    flattened = any(layer.kind == "flatten" for layer in prefix)
    features = x[0].numel() if flattened else x.shape[-1]
    if (x.dim() != 2 and not flattened) or features != stack.in_features():
        raise ConfigError(
            f"the model's first Linear layer takes {stack.in_features()} features but x has shape {tuple(x.shape)}; "
            "pass matching data (or a model that flattens it)"
        )
    if block_elements == "auto":
        block_elements = CPU_BLOCK_ELEMENTS if device.type == "cpu" else None
    step = _GridStep(stack, configs, block_elements=block_elements)
    seeds = sorted({c.seed for c in configs})
    streams = [_Streams(seed, device) for seed in seeds]
    member_group = torch.tensor([seeds.index(c.seed) for c in configs], device=device)
    first = configs[0]
    n, members = len(x), len(configs)
    n_batches = -(-n // first.batch_size)
    histories: list[list[dict[str, Any]]] = [[] for _ in configs]
    started = time.perf_counter()
    with flushed_denormals() if device.type == "cpu" else nullcontext():
        for epoch in range(1, first.epochs + 1):
            epoch_started = time.perf_counter()
            orders = [torch.randperm(n, generator=s.shuffle).to(device) for s in streams]
            loss_sum = torch.zeros(members, dtype=torch.float64, device=device)
            n_correct = torch.zeros(members, dtype=torch.long, device=device)
            for batch in range(n_batches):
                window = slice(batch * first.batch_size, (batch + 1) * first.batch_size)
                indices = [order[window] for order in orders]
                inputs = _by_member(
                    [_shared_inputs(x, index, prefix, s) for index, s in zip(indices, streams)], member_group, len(streams)
                )
                labels = _by_member([y[index] for index in indices], member_group, len(streams))
                loss, logits = step(inputs, labels, streams, member_group)
                loss_sum += loss * labels.shape[1]
                n_correct += (logits.argmax(dim=2) == labels).sum(dim=1)
                if progress is not None and (batch + 1) % PROGRESS_EVERY == 0:
                    progress(GridProgress("batch", epoch, first.epochs, batch + 1, n_batches))
            rows = _epoch_rows(stack, models, configs, epoch, loss_sum, n_correct, n, time.perf_counter() - epoch_started)
            for history, row in zip(histories, rows):
                history.append(row)
            log.info("grid epoch %d/%d: loss %s", epoch, first.epochs, ", ".join(f"{r['loss']:.4f}" for r in rows))
            if progress is not None:
                progress(GridProgress("epoch", epoch, first.epochs, n_batches, n_batches, tuple(rows)))
    seconds = time.perf_counter() - started
    stack.write_to(models)
    for model in models:
        model.eval()
    return GridResult(models=models, results=[TrainResult(history=h, seconds=seconds) for h in histories], seconds=seconds)


def _epoch_rows(
    stack: StackedMLP,
    models: list[nn.Module],
    configs: Sequence[TrainConfig],
    epoch: int,
    loss_sum: Tensor,
    n_correct: Tensor,
    n: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """Each member's history entry, as the single-model loop writes it; the epoch's one device sync."""
    stack.write_to(models)
    with torch.no_grad():
        penalties = torch.stack(
            [
                weight_penalty(model, l1=c.l1, l2=c.l2, include_bias=c.penalize_bias).to(loss_sum.device, torch.float64)
                for model, c in zip(models, configs)
            ]
        )
        losses, corrects, penalty_values = torch.stack([loss_sum, n_correct.to(torch.float64), penalties]).tolist()
    rows = []
    for m, config in enumerate(configs):
        row = {
            "epoch": epoch,
            "loss": losses[m] / n,
            "penalty": penalty_values[m],
            "accuracy": corrects[m] / n,
            "lr": config.lr,
            "eps": 0.0,
            "seconds": seconds,
        }
        if not all(map(_finite, (row["loss"], row["penalty"]))):
            raise ConfigError(
                f"the training loss of member l1={config.l1:g}, l2={config.l2:g}, seed={config.seed} became {row['loss']} "
                f"in epoch {epoch}; lower lr or the penalties and retry"
            )
        rows.append(row)
    return rows


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
