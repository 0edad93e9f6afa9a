"""Optimisers, learning-rate schedules, the lr warm-up, the eps ramp and gradient clipping, each
against a hand formula, and the config's round trip through TOML and JSON."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import tomli_w
import torch
import torch.nn.functional as F
from torch import nn

from redblue.config import from_dict, to_dict, tomllib
from redblue.defenses import PGDObjective, TrainStep, parse_objective
from redblue.errors import ConfigError
from redblue.train import TrainConfig, make_optimizer, train
from redblue.train.optim import (
    ConstantSchedule,
    CosineSchedule,
    OneCycleSchedule,
    PiecewiseSchedule,
    eps_ramp,
    lr_factor,
    parse_schedule,
)

D = torch.float64


def linear_model() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).to(D)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.5, -1.0, 0.0, 0.25], [0.1, 0.2, -0.3, 0.0], [-0.5, 0.5, 1.0, -1.0]]))
        model[1].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return model


def data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 2, 2, generator=g, dtype=D), torch.randint(0, 3, (n,), generator=g)


def ce_gradients(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean-CE / d(W, b) by the closed form (softmax - onehot)^T x / N, in float64."""
    flat = x.flatten(1)
    residual = ((flat @ w.T + b).softmax(dim=1) - F.one_hot(y, 3).to(D)) / len(y)
    return residual.T @ flat, residual.sum(dim=0)


def one_param_optimizer(config: TrainConfig, start: torch.Tensor) -> tuple[torch.optim.Optimizer, nn.Parameter]:
    holder = nn.ParameterList([nn.Parameter(start.clone())])
    return make_optimizer(holder, config), holder[0]


GRADS = [torch.tensor([0.3, -0.001, 2.0], dtype=D), torch.tensor([-0.9, 0.5, 0.02], dtype=D)]
START = torch.tensor([1.0, -2.0, 0.5], dtype=D)


def run_steps(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> torch.Tensor:
    for grad in GRADS:
        param.grad = grad.clone()
        optimizer.step()
    return param.detach()


def test_sgd_with_nesterov_momentum_and_weight_decay_matches_the_formula():
    lr, mu, wd = 0.1, 0.9, 0.01
    config = TrainConfig(epochs=1, optimizer="sgd", lr=lr, momentum=mu, nesterov=True, weight_decay=wd)
    optimizer, param = one_param_optimizer(config, START)
    w, buf = START.clone(), None
    for grad in GRADS:  # torch's documented SGD: g += wd w; b = mu b + g (b = g first); step g + mu b
        g = grad + wd * w
        buf = g if buf is None else mu * buf + g
        w = w - lr * (g + mu * buf)
    torch.testing.assert_close(run_steps(optimizer, param), w, rtol=0, atol=1e-15)


def test_sgd_defaults_to_momentum_0_9_without_nesterov_or_decay():
    resolved = TrainConfig(epochs=1, optimizer="sgd").resolved(100)
    assert (resolved.momentum, resolved.nesterov, resolved.weight_decay) == (0.9, False, 0.0)


@pytest.mark.parametrize("name, decoupled", [("adam", False), ("adamw", True)])
def test_adam_and_adamw_match_the_formula(name, decoupled):
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    optimizer, param = one_param_optimizer(TrainConfig(epochs=1, optimizer=name, lr=lr, weight_decay=wd), START)
    w, m, v = START.clone(), torch.zeros(3, dtype=D), torch.zeros(3, dtype=D)
    for t, grad in enumerate(GRADS, start=1):
        g = grad if decoupled else grad + wd * w  # Adam: L2 in the gradient; AdamW: decay the weights
        if decoupled:
            w = w * (1 - lr * wd)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    torch.testing.assert_close(run_steps(optimizer, param), w, rtol=0, atol=1e-14)


def test_adamw_defaults_to_weight_decay_0_01_and_auto_picks_adam_for_adversarial_objectives():
    assert TrainConfig(epochs=1, optimizer="adamw").resolved(10).weight_decay == 0.01
    adversarial = TrainConfig(epochs=10, objective=PGDObjective(eps=0.3)).resolved(60000)
    assert adversarial.optimizer == "adam" and adversarial.schedule == OneCycleSchedule()
    assert adversarial.eps_warmup_epochs == pytest.approx(3.0) and adversarial.val_size == 5000
    assert adversarial.keep == "best" and adversarial.overfit_guard is False  # PGD is multi-step
    clean = TrainConfig(epochs=10).resolved(60000)
    assert clean.optimizer == "rmsprop-newmu" and clean.schedule == ConstantSchedule()
    assert (clean.val_size, clean.keep, clean.eps_warmup_epochs) == (0, "last", 0.0)
    assert TrainConfig(epochs=4, objective=parse_objective("fast-fgsm:eps=0.3")).resolved(600).overfit_guard is True
    assert TrainConfig(epochs=4, objective=parse_objective("fgsm")).resolved(600).val_size == 60  # a tenth of a small set


# ---- schedules ---------------------------------------------------------------------------------


def test_piecewise_drops_at_the_first_batch_after_each_milestone():
    schedule = parse_schedule("piecewise:milestones=2/3,factor=0.1")
    assert schedule == PiecewiseSchedule(milestones=(2.0, 3.0), factor=0.1)
    factors = [schedule.multiplier(step, 20, 4) for step in range(16)]
    assert factors[:8] == [1.0] * 8 and factors[8:12] == [0.1] * 4
    assert factors[12:] == pytest.approx([0.01] * 4, rel=1e-15)


def test_cosine_follows_half_a_cosine_down_to_its_final_fraction():
    schedule = parse_schedule("cosine:final=0.1")
    total = 40
    for step in (0, 10, 20, 39):
        assert schedule.multiplier(step, total, 4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
    assert schedule.multiplier(20, total, 4) == pytest.approx(0.55)


def test_one_cycle_is_wong_et_al_s_triangle():
    """np.interp([t], [0, 2/5 epochs, epochs], [0, lr_max, 0]) at t = epoch + (i + 1) / batches, as in
    the fast adversarial training code (Wong et al., 2020)."""
    epochs, batches = 5, 7
    schedule = OneCycleSchedule()
    for step in range(epochs * batches):
        t = (step + 1) / batches
        expected = np.interp([t], [0, epochs * 2 / 5, epochs], [0, 1.0, 0])[0]
        assert schedule.multiplier(step, epochs * batches, batches) == pytest.approx(expected, abs=1e-12)


def test_warm_up_multiplies_the_schedule_linearly_over_its_batches():
    cosine = CosineSchedule()
    factors = [lr_factor(cosine, s, total_steps=100, steps_per_epoch=10, warmup_steps=4) for s in range(6)]
    expected = [(s + 1) / 4 * cosine.multiplier(s, 100, 10) for s in range(4)] + [cosine.multiplier(s, 100, 10) for s in (4, 5)]
    assert factors == pytest.approx(expected, rel=1e-15)


def test_the_loop_steps_the_lr_per_batch_with_its_warm_up():
    """Full-batch SGD without momentum on a linear model: three epochs of one batch each, warm-up
    over the first two batches and a piecewise drop after epoch 2, by hand in float64."""
    model = linear_model()
    x, y = data()
    w, b = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    config = TrainConfig(
        epochs=3, batch_size=len(y), optimizer="sgd", momentum=0.0, lr=0.5,
        schedule=parse_schedule("piecewise:milestones=2,factor=0.1"), warmup_epochs=2,
    )  # fmt: skip
    history = train(model, x, y, config, progress=False).history
    lrs = [0.5 * 0.5, 0.5 * 1.0, 0.5 * 0.1]
    for lr in lrs:
        grad_w, grad_b = ce_gradients(w, b, x, y)
        w, b = w - lr * grad_w, b - lr * grad_b
    torch.testing.assert_close(model[1].weight.detach(), w, rtol=0, atol=1e-14)
    torch.testing.assert_close(model[1].bias.detach(), b, rtol=0, atol=1e-14)
    assert [row["lr"] for row in history] == pytest.approx(lrs, rel=1e-15)


def test_eps_ramps_per_batch_and_the_objective_sees_it(monkeypatch):
    import redblue.train.loop as train_module

    seen: list[TrainStep] = []
    real = train_module.make_objective

    def spy(params):
        objective = real(params)

        def wrapped(model, x, y, step):
            seen.append(step)
            return objective(model, x, y, step)

        return wrapped

    monkeypatch.setattr(train_module, "make_objective", spy)
    x, y = data(16)
    config = TrainConfig(
        epochs=3, batch_size=4, objective=parse_objective("pgd:eps=0.2,steps=1"), eps_warmup_epochs=1.5, val_size=0,
    )  # fmt: skip
    history = train(linear_model(), x, y, config, progress=False).history
    total = 12  # 3 epochs x 4 batches; the ramp spans 1.5 x 4 = 6 batches
    assert [s.ramp for s in seen] == pytest.approx([(i + 1) / 6 for i in range(6)] + [1.0] * 6, rel=1e-15)
    assert [s.progress for s in seen] == pytest.approx([i / total for i in range(total)], rel=1e-15)
    assert [row["eps"] for row in history] == pytest.approx([0.2 * 4 / 6, 0.2, 0.2], rel=1e-12)
    assert eps_ramp(0, ramp_steps=0) == 1.0


def test_gradient_clipping_caps_the_step_of_plain_sgd():
    model = linear_model()
    x, y = data()
    w, b = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    grad_w, grad_b = ce_gradients(w, b, x, y)
    norm = torch.cat([grad_w.flatten(), grad_b]).norm()
    clip = 0.25 * norm.item()
    config = TrainConfig(epochs=1, batch_size=len(y), optimizer="sgd", momentum=0.0, lr=0.1, grad_clip=clip)
    train(model, x, y, config, progress=False)
    scale = clip / (norm + 1e-6)  # torch's clip_grad_norm_: max_norm / (total_norm + 1e-6)
    torch.testing.assert_close(model[1].weight.detach(), w - 0.1 * scale * grad_w, rtol=0, atol=1e-14)
    torch.testing.assert_close(model[1].bias.detach(), b - 0.1 * scale * grad_b, rtol=0, atol=1e-14)


# ---- bad input and the round trip ----------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"optimizer": "adam", "momentum": 0.9}, "momentum applies to sgd, rmsprop, not to the optimizer adam"),
        ({"momentum": 0.9}, "not to rmsprop-newmu, the default optimizer for this objective"),
        ({"optimizer": "rmsprop-newmu", "weight_decay": 1e-4}, "weight_decay applies to"),
        ({"optimizer": "sgd", "nesterov": True, "momentum": 0.0}, None),  # refused when the optimizer is built
        ({"eps_warmup_epochs": 6, "objective": PGDObjective()}, "eps_warmup_epochs (6) is longer than the run (5 epochs)"),
        ({"warmup_epochs": 5.5}, "warmup_epochs (5.5) is longer than the run"),
        ({"eps_warmup_epochs": 1}, "eps_warmup_epochs needs an adversarial objective"),
        ({"grad_clip": 0.0}, "grad_clip must be > 0"),
        ({"val_size": -1}, "val_size must be an integer >= 0"),
        ({"keep": "first"}, "keep must be one of best, last"),
        ({"keep": "best", "val_size": 0}, "keep=best needs a validation split"),
        ({"overfit_guard": True}, "overfit_guard needs an adversarial objective"),
        ({"overfit_guard": True, "objective": PGDObjective(), "val_size": 0}, "overfit_guard needs a validation split"),
    ],
)
def test_bad_knobs_fail_with_one_line(values, message):
    if message is None:
        config = TrainConfig(**{"epochs": 5, **values})
        with pytest.raises(ConfigError, match="nesterov needs momentum > 0"):
            make_optimizer(linear_model(), config)
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        TrainConfig(**{"epochs": 5, **values})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("warm", "unknown schedule 'warm'; choose one of: constant, piecewise, cosine, one-cycle"),
        ("piecewise:milestones=15/10", "milestones must be increasing"),
        ("cosine:peak=0.3", "schedule 'cosine' has no parameter peak; valid: final"),
        ("one-cycle:peak=1", "peak must be strictly between 0 and 1"),
    ],
)
def test_bad_schedules_fail_with_one_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_schedule(text)


def test_val_size_as_large_as_the_training_set_is_refused():
    with pytest.raises(ConfigError, match="val_size 100 leaves nothing to train on: the training set has 100 images"):
        TrainConfig(epochs=1, val_size=100).resolved(100)


def test_unset_knobs_stay_out_of_the_record_so_old_configs_read_back_equal():
    assert set(to_dict(TrainConfig(epochs=3, optimizer="rmsprop-newmu"))) == {
        "epochs", "batch_size", "lr", "rho", "rms_eps", "l1", "l2", "penalize_bias", "objective", "seed", "optimizer",
    }  # fmt: skip


def test_a_full_config_round_trips_through_toml_and_json():
    config = TrainConfig(
        epochs=12, optimizer="sgd", momentum=0.8, nesterov=True, weight_decay=5e-4, lr=0.05,
        schedule=parse_schedule("piecewise:milestones=6/9.5,factor=0.2"), warmup_epochs=0.5,
        objective=parse_objective("fast-fgsm:eps=0.3,step_size=0.375"), eps_warmup_epochs=2, grad_clip=10.0,
        val_size=1000, keep="last", overfit_guard=True, seed=4,
    )  # fmt: skip
    as_toml = tomllib.loads(tomli_w.dumps(to_dict(config)))
    as_json = json.loads(json.dumps(to_dict(config)))
    assert from_dict(TrainConfig, as_toml) == config == from_dict(TrainConfig, as_json)
    resolved = config.resolved(60000)
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(resolved)))) == resolved
    assert dataclasses.replace(config, schedule=None).resolved(60000).schedule == OneCycleSchedule()
