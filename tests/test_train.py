"""The training loop: RMSProp steps against the hand formula, penalties in the step, seeding, learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from redblue.data import load_dataset
from redblue.defenses import CleanObjective, FastFGSMObjective, parse_objective
from redblue.errors import ConfigError, ModelError
from redblue.metrics import score
from redblue.models import MLPSpec, build_model
from redblue.train import NewmuRMSprop, TrainConfig, init_model, make_optimizer, show_progress_by_default, train

D = torch.float64


def linear_model() -> nn.Module:
    """Flatten -> Linear(4, 3) in float64 with fixed weights: no dropout, one step is a formula."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).to(D)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.5, -1.0, 0.0, 0.25], [0.1, 0.2, -0.3, 0.0], [-0.5, 0.5, 1.0, -1.0]]))
        model[1].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return model


def data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 2, 2, generator=g, dtype=D), torch.randint(0, 3, (n,), generator=g)


def ce_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean-CE / d(W, b) by the closed form (softmax - onehot)^T x / N, in float64."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    flat = x.flatten(1)
    probs = (flat @ w.T + b).softmax(dim=1)
    residual = (probs - F.one_hot(y, 3).to(D)) / len(y)
    return residual.T @ flat, residual.sum(dim=0)


# ---- optimiser -------------------------------------------------------------------------------


def test_newmu_rmsprop_two_steps_match_the_hand_formula():
    w = torch.tensor([1.0, -2.0, 0.5], dtype=D, requires_grad=True)
    lr, rho, eps = 0.01, 0.9, 1e-6
    optimizer = NewmuRMSprop([w], lr=lr, rho=rho, eps=eps)
    expected = w.detach().clone()
    mean_square = torch.zeros(3, dtype=D)
    for scale in (1.0, -3.0):
        grad = scale * torch.tensor([0.3, -0.001, 2.0], dtype=D)
        w.grad = grad.clone()
        optimizer.step()
        # Newmu's tutorial: ms <- rho ms + (1 - rho) g^2;  w <- w - lr g / sqrt(ms + eps)
        mean_square = rho * mean_square + (1 - rho) * grad**2
        expected = expected - lr * grad / torch.sqrt(mean_square + eps)
        torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-15)


def test_torch_rmsprop_option_puts_eps_outside_the_root_as_the_papers_equation():
    w = torch.tensor([1.0, -2.0], dtype=D, requires_grad=True)
    optimizer = make_optimizer(nn.ParameterList([nn.Parameter(w.detach().clone())]), TrainConfig(
        epochs=1, lr=0.01, rms_eps=1e-3, optimizer="rmsprop"
    ))
    (param,) = optimizer.param_groups[0]["params"]
    grad = torch.tensor([0.5, 1e-4], dtype=D)
    param.grad = grad.clone()
    optimizer.step()
    mean_square = 0.1 * grad**2
    expected = w.detach() - 0.01 * grad / (torch.sqrt(mean_square) + 1e-3)
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-15)


def test_one_training_step_is_rmsprop_on_ce_plus_the_penalty_of_the_weights_only():
    model = linear_model()
    x, y = data()
    w0, b0 = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    grad_w, grad_b = ce_gradients(model, x, y)
    l1, l2, lr, eps = 1e-2, 5e-2, 0.01, 1e-6
    grad_w = grad_w + l1 * torch.sign(w0) + 2 * l2 * w0  # biases are not penalised
    config = TrainConfig(epochs=1, batch_size=len(y), lr=lr, rms_eps=eps, l1=l1, l2=l2, seed=0)
    history = train(model, x, y, config, progress=False).history
    for got, start, grad in ((model[1].weight, w0, grad_w), (model[1].bias, b0, grad_b)):
        expected = start - lr * grad / torch.sqrt(0.1 * grad**2 + eps)
        torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-12)
    # the history reports the CE of the batch and the penalty after the step
    with torch.no_grad():
        logits0 = x.flatten(1) @ w0.T + b0
        ce0 = F.cross_entropy(logits0, y).item()
        w1 = model[1].weight.detach()
        penalty1 = l1 * w1.abs().sum().item() + l2 * w1.square().sum().item()
    assert history[0]["loss"] == pytest.approx(ce0, rel=1e-12)
    assert history[0]["penalty"] == pytest.approx(penalty1, rel=1e-12)
    assert history[0]["accuracy"] == (logits0.argmax(1) == y).double().mean().item()


def test_penalize_bias_puts_the_biases_under_the_penalty_too():
    model = linear_model()
    x, y = data()
    b0 = model[1].bias.detach().clone()
    _, grad_b = ce_gradients(model, x, y)
    grad_b = grad_b + 1e-2 * torch.sign(b0)
    train(model, x, y, TrainConfig(epochs=1, batch_size=len(y), l1=1e-2, penalize_bias=True), progress=False)
    expected = b0 - 1e-3 * grad_b / torch.sqrt(0.1 * grad_b**2 + 1e-6)
    torch.testing.assert_close(model[1].bias.detach(), expected, rtol=0, atol=1e-12)


# ---- seeding and determinism ---------------------------------------------------------------------


def tiny_mlp(seed: int, *, dropout: bool = True) -> nn.Module:
    rates = {"dropout_input": 0.2, "dropout_hidden": 0.5} if dropout else {"dropout_input": 0.0, "dropout_hidden": 0.0}
    spec = MLPSpec(hidden=16, in_features=4, classes=3, **rates)
    return init_model(lambda: build_model(spec), seed=seed)


def separable_data(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    centers = torch.tensor([[0.2, 0.2, 0.8, 0.8], [0.8, 0.2, 0.2, 0.8], [0.5, 0.8, 0.5, 0.2]])
    y = torch.randint(0, 3, (n,), generator=g)
    x = (centers[y] + 0.08 * torch.randn(n, 4, generator=g)).clamp(0, 1)
    return x.view(n, 1, 2, 2), y


@pytest.mark.parametrize("objective", [CleanObjective(), FastFGSMObjective(eps=0.05)])
def test_same_seed_gives_identical_weights_and_another_seed_does_not(objective):
    x, y = separable_data()
    config = TrainConfig(epochs=2, batch_size=32, l1=1e-4, objective=objective, seed=7)

    def run(seed: int) -> list[torch.Tensor]:
        model = tiny_mlp(seed)
        train(model, x, y, TrainConfig(**{**config.__dict__, "seed": seed}), progress=False)
        return [p.detach().clone() for p in model.parameters()]

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_training_leaves_the_global_random_state_alone():
    x, y = separable_data()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    train(tiny_mlp(0), x, y, TrainConfig(epochs=1, batch_size=64), progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_init_model_seeds_the_initial_weights():
    first, again, other = tiny_mlp(1), tiny_mlp(1), tiny_mlp(2)
    assert torch.equal(first[2].weight, again[2].weight)
    assert not torch.equal(first[2].weight, other[2].weight)


# ---- learning ----------------------------------------------------------------------------------


def test_training_reduces_the_loss_and_fits_separable_data():
    x, y = separable_data()
    model = tiny_mlp(0, dropout=False)
    history = train(model, x, y, TrainConfig(epochs=5, batch_size=32, lr=1e-2), progress=False).history
    losses = [row["loss"] for row in history]
    assert losses[-1] < 0.5 * losses[0]
    assert history[-1]["accuracy"] > 0.9
    assert not model.training
    assert score(model, x, y).accuracy > 0.95


def test_adversarial_objectives_train_too():
    x, y = separable_data()
    for spec in ("fgsm:eps=0.05", "pgd:eps=0.05,steps=2", "trades:eps=0.05,steps=2"):
        model = tiny_mlp(0)
        config = TrainConfig(epochs=3, batch_size=32, lr=1e-2, objective=parse_objective(spec))
        history = train(model, x, y, config, progress=False).history
        assert history[-1]["loss"] < history[0]["loss"], spec


def test_on_epoch_rows_are_merged_into_the_history():
    x, y = separable_data(64)
    seen = []

    def on_epoch(epoch: int, model: nn.Module) -> dict[str, float]:
        seen.append((epoch, model.training))
        return {"val": float(epoch) * 10}

    history = train(tiny_mlp(0), x, y, TrainConfig(epochs=2, batch_size=32), progress=False, on_epoch=on_epoch).history
    assert seen == [(1, False), (2, False)]
    assert [row["val"] for row in history] == [10.0, 20.0]
    assert set(history[0]) >= {"epoch", "loss", "penalty", "accuracy", "seconds"}


def test_zero_epochs_leaves_the_weights_unchanged():
    model = linear_model()
    before = model[1].weight.detach().clone()
    result = train(model, *data(), TrainConfig(epochs=0), progress=False)
    assert result.history == [] and torch.equal(model[1].weight, before)


def test_a_short_mnist_subset_run_reaches_over_90_percent_test_accuracy():
    train_set, test_set = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    spec = MLPSpec(hidden=100, dropout_input=0.0, dropout_hidden=0.0)
    model = init_model(lambda: build_model(spec), seed=0)
    train(model, train_set.x[:12000], train_set.y[:12000], TrainConfig(epochs=2, lr=3e-3), progress=False)
    # the whole test set: its first 2000 images are the harder half of MNIST's test writers
    assert score(model, test_set.x, test_set.y).accuracy > 0.90


# ---- bad input and the progress bar --------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"l1": -1e-4}, "l1 must be >= 0"),
        ({"l2": float("nan")}, "l2 must be a finite number"),
        ({"epochs": -1}, "epochs must be an integer >= 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"optimizer": "adam"}, "unknown optimizer 'adam'"),
        ({"rho": 1.0}, "rho must be in"),
    ],
)
def test_bad_configs_fail_with_one_line(values, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig(**{"epochs": 1, **values})
    assert "\n" not in str(info.value)


def test_mismatched_or_badly_typed_data_is_refused():
    model = linear_model()
    x, y = data()
    with pytest.raises(ConfigError, match="one label per image"):
        train(model, x, y[:-1], TrainConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="int64"):
        train(model, x, y.to(torch.int32), TrainConfig(epochs=1), progress=False)
    with pytest.raises(ModelError, match="no parameters"):
        train(nn.Flatten(), x, y, TrainConfig(epochs=1), progress=False)


def test_a_diverging_run_stops_with_one_line():
    model = linear_model()
    with torch.no_grad():
        model[1].weight[0, 0] = math.inf
    with pytest.raises(ConfigError, match="lower lr or the penalties"):
        train(model, *data(), TrainConfig(epochs=2, lr=3e-3), progress=False)


def test_progress_bar_is_off_when_output_is_not_a_terminal_and_never_touches_stdout(capsys):
    assert show_progress_by_default() is False  # pytest captures stdout and stderr
    x, y = separable_data(64)
    train(tiny_mlp(0), x, y, TrainConfig(epochs=1, batch_size=8), progress=True)
    train(tiny_mlp(0), x, y, TrainConfig(epochs=1, batch_size=8))
    assert capsys.readouterr().out == ""
