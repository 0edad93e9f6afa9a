"""Test helper for the trust checks: an MLP that plain FGSM training taught to mask its gradient.

The recipe is the paper's MLP (784-256-10 ReLU, RMSProp with mean-square decay 0.9, batch 128)
trained as Goodfellow et al. (2015) did, on half clean and half FGSM images at eps 0.1, with no
random start and a learning rate of 1e-2, ten epochs over the first 20,000 images of MNIST's train
split. The large step makes it over-fit to FGSM (catastrophic overfitting, Wong et al., 2020): FGSM
leaves far more samples correct than PGD does, so a white-box attack that trusts the gradient is
weak and the black-box ones matter. Evaluation images are the first ones of MNIST's test split, as
the issue's hidden check takes them, so they never met training. Each seed is trained once per test
process, on one torch thread (about 8 s).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from mlp_fixtures import load_mnist

EPS = 0.1
N_TRAIN = 20_000
EPOCHS = 10


def plain_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """x + eps * sign(grad_x CE), clipped to [0, 1]: written here, so it shares nothing with redblue's attacks."""
    x_var = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x_var), y, reduction="sum").backward()
    return (x + eps * x_var.grad.sign()).clamp(0.0, 1.0).detach()


@functools.lru_cache(maxsize=None)
def masked_mlp(seed: int = 1) -> nn.Module:
    """The FGSM-trained MLP of `seed` (init and batch order), in eval mode, its parameters' grads cleared."""
    train = load_mnist("train")
    x_train, y_train = train.x[:N_TRAIN], train.y[:N_TRAIN]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-2, alpha=0.9)
    order = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 128 gain nothing from a second thread; on a busy machine it spins
    try:
        for _ in range(EPOCHS):
            for batch in torch.randperm(N_TRAIN, generator=order).split(128):
                x, y = x_train[batch], y_train[batch]
                x_adv = plain_fgsm(model, x, y, EPS)  # no dropout nor batch norm: train and eval mode agree
                optimizer.zero_grad()
                logits = model(torch.cat([x, x_adv]))
                loss = 0.5 * nn.functional.cross_entropy(logits[: len(y)], y) + 0.5 * nn.functional.cross_entropy(logits[len(y) :], y)
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    for parameter in model.parameters():
        parameter.grad = None
    return model.eval()


@functools.lru_cache(maxsize=None)
def first_test_images(n: int) -> tuple[Tensor, Tensor]:
    """(x (n, 1, 28, 28), y (n,)): the first n images of MNIST's test split."""
    test = load_mnist("test")
    return test.x[:n], test.y[:n]
