"""The training loop: RMSProp steps against the hand formula, penalties in the step, seeding, learning,
the paper's protocol against a plain PyTorch loop, progress reports, and a user-defined module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from redblue.data import load_dataset
from redblue.defenses import CleanObjective, FastFGSMObjective, parse_objective
from redblue.errors import ConfigError, ModelError
from redblue.metrics import score
from redblue.models import MLPSpec, build_model
from redblue.train import NewmuRMSprop, TrainConfig, TrainProgress, init_model, make_optimizer, train

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
    assert config.resolved(len(y)).optimizer == "rmsprop-newmu"  # auto, for clean training: the paper's
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
        ({"epochs": -1}, "epochs must be an integer >= 1"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'; choose one of: auto, sgd, adam"),
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


def test_progress_reports_come_through_the_callback_with_the_running_loss():
    x, y = separable_data(100)  # 100 / 4 = 25 batches: reports after batches 20 and 25, then the epoch
    events: list[TrainProgress] = []
    result = train(tiny_mlp(0), x, y, TrainConfig(epochs=2, batch_size=4), progress=events.append)
    phases = [(e.phase, e.epoch, e.batch) for e in events]
    assert phases == [("batch", 1, 20), ("batch", 1, 25), ("epoch", 1, 25), ("batch", 2, 20), ("batch", 2, 25), ("epoch", 2, 25)]
    # the last batch report of an epoch carries the epoch's mean loss, as the history does
    for epoch in (1, 2):
        last = [e for e in events if e.phase == "batch" and e.epoch == epoch][-1]
        assert last.loss == pytest.approx(result.history[epoch - 1]["loss"], rel=1e-12)
    assert events[2].row == result.history[0] and events[2].lr == 1e-3 and events[2].eps == 0.0


def test_progress_must_be_a_callback():
    x, y = separable_data(16)
    with pytest.raises(ConfigError, match="progress must be a callback"):
        train(tiny_mlp(0), x, y, TrainConfig(epochs=1), progress=True)  # type: ignore[arg-type]


def test_the_history_sums_every_batch_as_trained_including_a_short_last_one(monkeypatch):
    """The running totals folded every 20 batches (and at the end) equal the per-batch values summed
    in float64 by hand: 203 samples in batches of 8 are 25 full batches and one of 3."""
    import redblue.train.loop as train_module

    batches: list[tuple[float, int, int]] = []  # (mean loss, correct, size) of each batch as trained
    real = train_module.make_objective

    def spy(params):
        objective = real(params)

        def wrapped(model, x, y, step):
            loss, logits = objective(model, x, y, step)
            batches.append((loss.item(), (logits.argmax(dim=1) == y).sum().item(), len(y)))
            return loss, logits

        return wrapped

    monkeypatch.setattr(train_module, "make_objective", spy)
    x, y = separable_data(203)
    row = train(tiny_mlp(0), x, y, TrainConfig(epochs=1, batch_size=8), progress=False).history[0]
    assert [n for _, _, n in batches] == [8] * 25 + [3]
    assert row["loss"] == pytest.approx(math.fsum(loss * n for loss, _, n in batches) / 203, rel=1e-12, abs=0)
    assert row["accuracy"] == sum(correct for _, correct, _ in batches) / 203


class ComputingOps(TorchDispatchMode):
    """Counts the aten ops dispatched inside the block that are not views (detach, t, slices) or
    profiler markers: on a GPU, each is a kernel launch."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and not func.overloadpacket.__name__.startswith("_record_function"):
            self.count += 1
        return func(*args, **(kwargs or {}))


def plain_newmu_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    optimizer = NewmuRMSprop(model.parameters(), lr=1e-3, rho=0.9, eps=1e-6)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    model.train()
    for start in range(0, len(x), 8):
        index = order[start : start + 8]
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_a_clean_batch_dispatches_a_plain_loops_ops_and_half_an_op_more():
    """The loop's own per-batch work (running loss and accuracy, lr) costs no op a batch: the totals
    are folded every 20 batches in 9 ops (0.45 a batch); summed per batch they were 6 ops a batch.
    Per batch: the difference between epochs of 40 and 20 batches of 8, over 20."""
    x, y = separable_data(320)
    counts = {}
    for name, epoch in {
        "ours": lambda model, xs, ys: train(model, xs, ys, TrainConfig(epochs=1, batch_size=8, optimizer="rmsprop-newmu"), progress=False),
        "plain": lambda model, xs, ys: plain_newmu_epoch(model, xs, ys, 0),
    }.items():  # fmt: skip
        per_epoch = []
        for n in (160, 320):
            with ComputingOps() as ops:
                epoch(tiny_mlp(0), x[:n], y[:n])
            per_epoch.append(ops.count)
        counts[name] = (per_epoch[1] - per_epoch[0]) / 20
    assert counts["plain"] > 20  # forward, backward, dropout, the optimiser's step
    assert counts["ours"] - counts["plain"] == pytest.approx(9 / 20, abs=1e-12)


# ---- the paper's protocol, bit for bit --------------------------------------------------------------


def plain_paper_loop(model: nn.Module, x, y, *, epochs: int, seed: int, l1: float, l2: float, batch_size: int) -> None:
    """The paper's protocol written out in plain PyTorch: Newmu's RMSProp (lr 1e-3, decay 0.9, eps 1e-6),
    fixed lr, a seeded shuffle per epoch, dropout seeded with seed + 2, the penalty's gradient
    l1 sign(w) + 2 l2 w added to the weights' (not the biases') gradients."""
    optimizer = NewmuRMSprop(model.parameters(), lr=1e-3, rho=0.9, eps=1e-6)
    weights = [p for p in model.parameters() if p.dim() >= 2]
    shuffle = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=shuffle)
            model.train()
            for start in range(0, len(x), batch_size):
                index = order[start : start + batch_size]
                loss = F.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    for w in weights:
                        w.grad.add_(w.sign(), alpha=l1).add_(w, alpha=2 * l2)
                optimizer.step()


def test_the_papers_protocol_gives_the_same_weights_as_the_plain_loop_bit_for_bit():
    """paper.toml's [train] (rmsprop-newmu, lr 1e-3, batch 128, fixed lr, clean) must not drift with
    the loop's new knobs: every one of them is off by default for clean training."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(700, 1, 28, 28, generator=g), torch.randint(0, 10, (700,), generator=g)
    spec = MLPSpec(hidden=64, bias=False, init="normal-0.01")  # dropout 0.2 / 0.5, as the paper's
    ours, plain = init_model(lambda: build_model(spec), seed=2), init_model(lambda: build_model(spec), seed=2)
    config = TrainConfig(epochs=2, lr=1e-3, l1=1e-4, l2=1e-5, seed=2, optimizer="rmsprop-newmu")
    train(ours, x, y, config, progress=False)
    plain_paper_loop(plain, x, y, epochs=2, seed=2, l1=1e-4, l2=1e-5, batch_size=128)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), plain.parameters()))


# ---- attacks inside training compute no weight gradients --------------------------------------------


@pytest.mark.parametrize(
    "spec, per_batch",
    [
        ("clean", 1),
        # the FGSM mix has two loss terms: the clean term's weight gradient comes from the very pass
        # that gives the crafting gradient (reused, not recomputed), the adversarial term's from backward
        ("fgsm:eps=0.1", 2),
        ("fgsm:eps=0.1,alpha=0", 1),
        ("fast-fgsm:eps=0.1", 1),
        ("pgd:eps=0.1,steps=3", 1),
        ("trades:eps=0.1,steps=3", 1),
        ("mart:eps=0.1,steps=3", 1),
    ],
)
def test_attack_steps_inside_training_compute_no_weight_gradients(spec, per_batch):
    """A hook on every parameter counts how often autograd computes its gradient: once per loss term
    and batch, never in the attack's input-gradient steps (3 PGD steps would add 3 per batch)."""
    x, y = separable_data(64)
    model = tiny_mlp(0)
    calls = {id(p): 0 for p in model.parameters()}
    for p in model.parameters():
        p.register_hook(lambda grad, key=id(p): calls.__setitem__(key, calls[key] + 1))
    config = TrainConfig(epochs=1, batch_size=16, objective=parse_objective(spec), val_size=0, overfit_guard=False)
    train(model, x, y, config, progress=False)
    assert set(calls.values()) == {4 * per_batch}  # 64 / 16 = 4 batches


# ---- any nn.Module ----------------------------------------------------------------------------------


class SmallConvNet(nn.Module):
    """A user's own module (not from redblue.models): conv + batch norm + linear on 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def stripes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images of three classes: a bright row band, a bright column band, or a bright corner, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.2 * torch.rand(n, 1, 8, 8, generator=g)
    x[y == 0, :, 2:5, :] += 0.6
    x[y == 1, :, :, 2:5] += 0.6
    x[y == 2, :, :4, :4] += 0.6
    return x.clamp(0, 1), y


def test_any_user_module_trains_adversarially_through_the_python_api():
    x, y = stripes(1200)
    model = init_model(SmallConvNet, seed=0)
    config = TrainConfig(epochs=4, batch_size=32, objective=parse_objective("pgd:eps=0.1,steps=3"), val_size=200)
    result = train(model, x, y, config, progress=False)
    assert result.config.optimizer == "adam" and result.kept_epoch in range(1, 5)
    kept = result.history[result.kept_epoch - 1]
    assert kept["val_robust_accuracy"] == max(row["val_robust_accuracy"] for row in result.history)
    assert kept["val_robust_accuracy"] > 0.8  # chance is 1/3
    assert not model.training
    x_test, y_test = stripes(300, seed=1)
    assert score(model, x_test, y_test).accuracy > 0.9


def test_labels_outside_the_models_classes_are_one_line_before_training():
    from redblue.errors import ConfigError
    from redblue.train import TrainConfig, train

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(6, 1, 2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    for labels in ([0, 1, 2, 3, 0, 1], [0, -1, 2, 1, 0, 1]):
        with pytest.raises(ConfigError, match=r"^labels run from -?\d to \d but the model outputs \(3,\) scores per image"):
            train(model, x, torch.tensor(labels), TrainConfig(epochs=1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any step
