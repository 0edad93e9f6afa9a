"""Test helpers for the attack comparisons: a small MLP trained in a second or two on an MNIST subset.

The model is the paper's recipe shrunk (784-100-10 ReLU, dropout on the hidden layer, RMSProp with
mean-square decay 0.9, batch 128), trained on the first 9,500 images of MNIST's test split and
evaluated on its last 500, so no 60k training set is decoded. The thresholds of the tests that use
it were measured on MNIST, so without MNIST they fail with one message that says where to put it
(there is no stand-in data set: numbers measured on MNIST mean nothing on another). Each (seed)
model is trained once per test process.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from redblue.attacks.core import ce_loss, linf_project, linf_random_start, loss_and_input_gradient
from redblue.errors import DataError

N_TRAIN = 9500
N_EVAL = 500


class MnistMissing(RuntimeError):
    """MNIST is not where the tests look; the message says how to provide it."""


def load_mnist(split: str):
    """MNIST's `split` as redblue loads it; MnistMissing (with how to provide it) when it is not there."""
    from redblue.data import load_dataset

    try:
        return load_dataset("mnist", split)
    except DataError as exc:
        raise MnistMissing(f"these tests need MNIST (their thresholds were measured on it): {exc}") from None


@functools.lru_cache(maxsize=None)
def mnist_slices() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_eval, y_eval): disjoint slices of MNIST's test split."""
    ds = load_mnist("test")
    return ds.x[:N_TRAIN], ds.y[:N_TRAIN], ds.x[-N_EVAL:], ds.y[-N_EVAL:]


@functools.lru_cache(maxsize=None)
def trained_mlp(seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """(model in eval mode, x_eval (500, 1, 28, 28), y_eval (500,)); `seed` picks init and batch order."""
    x_train, y_train, x_eval, y_eval = mnist_slices()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Dropout(0.2), nn.Linear(100, 10))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9)
    order = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    # batches of 128 gain nothing from a second thread; on a busy machine its spinning costs 10x
    torch.set_num_threads(1)
    try:
        for _ in range(8):
            for batch in torch.randperm(N_TRAIN, generator=order).split(128):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    for parameter in model.parameters():
        parameter.grad = None
    return model.eval(), x_eval, y_eval


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def sign_pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int, step_size: float,
             generator: torch.Generator) -> Tensor:
    """Plain L-inf PGD with a random start (Madry et al., 2018) that returns its last iterate,
    written from the core pieces as a reference that shares no loop with redblue's attacks."""
    x_adv = linf_random_start(x, eps, generator)
    for _ in range(steps):
        _, _, grad = loss_and_input_gradient(model, x_adv, y, loss=ce_loss)
        x_adv = linf_project(x_adv + step_size * grad.sign(), center=x, eps=eps)
    return x_adv
