"""Certified training losses (IBP, CROWN-IBP): their bounds are the certification bounds, their
gradients match finite differences, and a short run raises certified accuracy over clean training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from redblue.bounds import crown_ibp_margins, ibp_logit_bounds, ibp_margins, input_box, worst_case_logits
from redblue.certify import certified_accuracy, choose_method, interval_bounds, margin_lower_bounds
from redblue.defenses.certified import crown_ibp_loss, ibp_loss
from redblue.errors import ConfigError, ModelError
from redblue.models import CNNSmallSpec, build_model

F64 = torch.float64


def tiny_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 6), nn.ReLU(),
                         nn.Linear(6, 4)).to(F64)


def tiny_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 4)).to(F64)


NETS = {"mlp": (tiny_mlp, (1, 3, 4)), "cnn": (tiny_cnn, (1, 6, 6))}


def inputs(shape: tuple[int, ...], n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g, dtype=F64), torch.randint(0, 4, (n,), generator=g)


# --- the training bounds are the certification bounds ------------------------------------------------


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_training_bounds_equal_the_certification_bounds_in_float64(net):
    build, shape = NETS[net]
    model = build(1).train()  # dropout on: the bounds are still those of the eval network
    x, y = inputs(shape, 6, seed=2)
    others = torch.arange(4) != y[:, None]
    for eps in (0.02, 0.1):
        ibp = ibp_margins(model, x, y, eps=eps)
        crown_ibp, ibp_again = crown_ibp_margins(model, x, y, eps=eps)
        certified = {m: margin_lower_bounds(model, x, y, eps=eps, method=m) for m in ("ibp", "crown-ibp")}
        # certification subtracts a rounding allowance of about 1e-13 here, and nothing else
        for train_bound, cert in ((ibp, certified["ibp"]), (torch.maximum(crown_ibp, ibp), certified["crown-ibp"])):
            torch.testing.assert_close(train_bound[others], cert[others], rtol=1e-11, atol=1e-11)
            assert bool((cert[others] <= train_bound[others]).all())
        torch.testing.assert_close(ibp_again, ibp, rtol=0, atol=0)
        assert bool((ibp[~others] == 0).all()) and bool((crown_ibp[~others] == 0).all())
        lower, upper = ibp_logit_bounds(model, x, eps=eps)
        sound_lower, sound_upper = interval_bounds(model, *input_box(x, eps))
        torch.testing.assert_close(lower, sound_lower, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(upper, sound_upper, rtol=1e-11, atol=1e-11)
    assert model.training


def test_worst_case_cross_entropy_bounds_the_cross_entropy_of_every_point_of_the_ball():
    # CE(z, y) = log sum_j exp(z_j - z_y) grows as any margin z_y - z_j shrinks, so with
    # m_j <= z_y - z_j everywhere in the ball, CE(-m, y) >= CE(z(x'), y) for each x' there
    model = tiny_cnn(3).eval()
    x, y = inputs((1, 6, 6), 5, seed=4)
    eps = 0.05
    robust_ce = F.cross_entropy(worst_case_logits(ibp_margins(model, x, y, eps=eps)), y, reduction="none")
    lower, upper = input_box(x, eps)
    g = torch.Generator().manual_seed(5)
    points = lower + (upper - lower) * torch.rand((200, *x.shape), generator=g, dtype=F64)
    with torch.no_grad():
        ce = torch.stack([F.cross_entropy(model(p), y, reduction="none") for p in points])  # (200, N)
    assert bool((ce <= robust_ce.detach() + 1e-12).all())
    assert bool((robust_ce > ce.max(dim=0).values).any())  # the bound is not attained: it is a bound


# --- gradients -------------------------------------------------------------------------------------------


class LossOf(nn.Module):
    """The loss as a module, so torch.func.functional_call can swap every parameter of the model
    (the bounds read the layers' weights themselves, not only the model's forward)."""

    def __init__(self, model: nn.Module, loss_name: str) -> None:
        super().__init__()
        self.model, self.loss_name = model, loss_name

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if self.loss_name == "ibp":
            return ibp_loss(self.model, x, y, eps=0.1, kappa=0.3)[0]
        return crown_ibp_loss(self.model, x, y, eps=0.1, kappa=0.3, beta=0.6)[0]


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("loss_name", ["ibp", "crown-ibp"])
def test_loss_gradients_match_finite_differences_in_float64(net, loss_name):
    build, shape = NETS[net]
    module = LossOf(build(6).eval(), loss_name)  # eval: dropout would make the clean term random
    x, y = inputs(shape, 4, seed=7)
    names = [name for name, _ in module.named_parameters()]

    def loss_of(*params: Tensor) -> Tensor:
        return functional_call(module, dict(zip(names, params)), (x, y))

    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())
    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-6, rtol=1e-4)
    # and the robust term alone reaches every parameter
    model = module.model
    if loss_name == "ibp":
        loss, _ = ibp_loss(model, x, y, eps=0.1, kappa=0.0)
    else:
        loss, _ = crown_ibp_loss(model, x, y, eps=0.1, kappa=0.0, beta=1.0)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(bool(g.abs().sum() > 0) for g in grads)


# --- a short training run --------------------------------------------------------------------------------


def mnist_subset() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """1000 training and 300 evaluation images from MNIST's test split (fails loudly without MNIST)."""
    from redblue.data import load_dataset

    ds = load_dataset("mnist", "test")
    return ds.x[:1000], ds.y[:1000], ds.x[5000:5300], ds.y[5000:5300]


def train_briefly(model: nn.Module, objective, *, epochs: int, lr: float = 1e-3) -> nn.Module:
    """Adam, batch 50; objective(model, x, y, ramp) with ramp going 0 -> 1 over the first half."""
    x, y, _, _ = mnist_subset()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(0)
    steps, step = epochs * -(-len(x) // 50), 0
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=order).split(50):
            ramp = min(1.0, step / (steps / 2))
            loss = objective(model, x[index], y[index], ramp)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return model.eval()


# the short IBP run through the registered objective `ibp` is in test_defenses_certified.py


@pytest.mark.slow  # about 6 s of CPU: CROWN-IBP's backward pass on every batch
def test_a_short_crown_ibp_run_certifies_a_small_cnn():
    # Zhang et al.'s mix by hand: beta 1 -> 0, kappa 1 -> 0.5, eps 0 -> 0.1 over half the run
    eps = 0.1
    _, _, x_eval, y_eval = mnist_subset()

    def cnn() -> nn.Module:
        torch.manual_seed(0)
        return build_model(CNNSmallSpec(channels1=4, channels2=8, hidden=32))

    def objective(m, x, y, r):
        return crown_ibp_loss(m, x, y, eps=eps * r, kappa=1 - 0.5 * r, beta=1 - r)[0]

    clean = train_briefly(cnn(), lambda m, x, y, ramp: F.cross_entropy(m(x), y), epochs=5, lr=2e-3)
    robust = train_briefly(cnn(), objective, epochs=5, lr=2e-3)
    method = choose_method(robust)
    assert method == "crown-ibp"
    certified = {name: certified_accuracy(m, x_eval, y_eval, eps=eps, method=method)
                 for name, m in (("clean", clean), ("crown-ibp", robust))}
    # measured: clean 0.01, CROWN-IBP-trained 0.33 (eps 0.1, 300 images)
    assert certified["crown-ibp"] >= certified["clean"] + 0.2
    assert (robust(x_eval).argmax(dim=1) == y_eval).double().mean() >= 0.6


# --- errors ---------------------------------------------------------------------------------------------


def test_bad_knobs_and_max_pooling_under_crown_ibp_are_one_line_errors():
    model = tiny_mlp(8)
    x, y = inputs((1, 3, 4), 2, seed=9)
    for kwargs, match in (({"eps": -0.1, "kappa": 0.5}, "eps"), ({"eps": 0.1, "kappa": 1.5}, "kappa")):
        with pytest.raises(ConfigError, match=match):
            ibp_loss(model, x, y, **kwargs)
    with pytest.raises(ConfigError, match="beta"):
        crown_ibp_loss(model, x, y, eps=0.1, kappa=0.5, beta=-1.0)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 4))
    x_img, _ = inputs((1, 4, 4), 2, seed=10)
    pooled = pooled.to(F64)
    ibp_loss(pooled, x_img, y, eps=0.1, kappa=0.5)[0].backward()  # IBP passes max-pooling
    with pytest.raises(ModelError, match="max-pooling layer '2'"):
        crown_ibp_loss(pooled, x_img, y, eps=0.1, kappa=0.5, beta=0.5)
