"""PGD, BIM, MIM, PGD-CW and targeted PGD against hand computations (NumPy, float64) on linear
models, against each other, and on a trained MLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlp_fixtures import accuracy, sign_pgd, trained_mlp
from torch import nn

from redblue.attacks import fgsm, parse_attack
from redblue.attacks.core import ce_loss, input_gradient, linf_project, linf_random_start, margin_loss
from redblue.attacks.bim import bim, mim, mim_l2
from redblue.attacks.pgd import pgd, pgd_cw, pgd_l2, pgd_last_iterate, pgd_targeted
from redblue.errors import AttackError, ConfigError

# a 3-class linear model on 4 inputs, and an input the model classifies as class 0
W = np.array([[-1.4, 0.9, 2.1, 2.9], [1.0, 1.7, -3.9, -0.5], [0.0, -2.0, 0.0, -0.5]])
B = np.array([-1.2, 0.6, -0.7])
X0 = np.array([0.44, 0.52, 0.63, 0.68])


def linear_model() -> nn.Module:
    model = nn.Linear(4, 3, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W))
        model.bias.copy_(torch.from_numpy(B))
    return model.eval()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def ce_gradient(x: np.ndarray, label: int) -> np.ndarray:
    """d CE(Wx + b, label) / dx = W^T (softmax(Wx + b) - e_label), by hand."""
    onehot = np.eye(3)[label]
    return W.T @ (softmax(W @ x + B) - onehot)


def ce(x: np.ndarray, label: int) -> float:
    z = W @ x + B
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[label])


def clip_ball(x: np.ndarray, center: np.ndarray, eps: float) -> np.ndarray:
    return np.clip(np.clip(x, center - eps, center + eps), 0.0, 1.0)


def as_batch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x)[None]


def pick_worst(iterates: list[np.ndarray], label: int) -> np.ndarray:
    """The documented choice among iterates: a misclassified one first, then the highest CE."""
    fooled = [int(np.argmax(W @ it + B) != label) for it in iterates]
    return max(zip(fooled, [ce(it, label) for it in iterates], range(len(iterates))))[2], iterates


def test_one_pgd_step_is_the_hand_computed_sign_step():
    x, eps, step = X0, 0.3, 0.1
    expected = clip_ball(x + step * np.sign(ce_gradient(x, 0)), x, eps)
    x_adv = pgd(linear_model(), as_batch(x), torch.tensor([0]), eps=eps, steps=1, step_size=step, random_start=False)
    np.testing.assert_allclose(x_adv[0].numpy(), expected, atol=1e-12)


def test_two_pgd_steps_are_projected_and_the_worst_iterate_is_returned():
    x, eps, step = X0, 0.15, 0.1  # the second step leaves the ball and is clipped back
    x1 = clip_ball(x + step * np.sign(ce_gradient(x, 0)), x, eps)
    x2 = clip_ball(x1 + step * np.sign(ce_gradient(x1, 0)), x, eps)
    assert np.abs(x1 + step * np.sign(ce_gradient(x1, 0)) - x).max() > eps  # the projection matters
    index, iterates = pick_worst([x1, x2], 0)
    x_adv = pgd(linear_model(), as_batch(x), torch.tensor([0]), eps=eps, steps=2, step_size=step, random_start=False)
    np.testing.assert_allclose(x_adv[0].numpy(), iterates[index], atol=1e-12)


def test_pixel_box_clips_the_step():
    x = np.array([0.98, 0.02, 0.5, 0.5])
    expected = np.clip(x + 0.1 * np.sign(ce_gradient(x, 0)), 0.0, 1.0)
    x_adv = bim(linear_model(), as_batch(x), torch.tensor([0]), eps=0.1, steps=1, step_size=0.1)
    np.testing.assert_allclose(x_adv[0].numpy(), expected, atol=1e-12)
    assert (x_adv >= 0).all() and (x_adv <= 1).all()


def test_one_l2_step_follows_the_normalised_gradient_and_is_scaled_into_the_ball():
    x, eps = X0, 0.05
    g = ce_gradient(x, 0)
    expected = x + eps * g / np.linalg.norm(g)  # a step of 0.2 is scaled back to the radius 0.05
    x_adv = pgd_l2(linear_model(), as_batch(x), torch.tensor([0]), eps=eps, steps=1, step_size=0.2, random_start=False)
    np.testing.assert_allclose(x_adv[0].numpy(), expected, atol=1e-12)
    assert np.linalg.norm(x_adv[0].numpy() - x) == pytest.approx(eps, rel=1e-9)


def test_pgd_cw_steps_along_the_margin_gradient():
    x = X0
    z = W @ x + B
    runner_up = int(np.argmax(np.where(np.arange(3) == 0, -np.inf, z)))
    expected = clip_ball(x + 0.1 * np.sign(W[runner_up] - W[0]), x, 0.3)  # d(z_j - z_y)/dx = w_j - w_y
    x_adv = pgd_cw(linear_model(), as_batch(x), torch.tensor([0]), eps=0.3, steps=1, step_size=0.1, random_start=False)
    np.testing.assert_allclose(x_adv[0].numpy(), expected, atol=1e-12)


def test_targeted_pgd_descends_the_loss_towards_the_target():
    x = X0
    expected = clip_ball(x - 0.1 * np.sign(ce_gradient(x, 2)), x, 0.3)
    x_adv = pgd_targeted(linear_model(), as_batch(x), torch.tensor([0]), eps=0.3, steps=1, step_size=0.1,
                         random_start=False, target="2")  # fmt: skip
    np.testing.assert_allclose(x_adv[0].numpy(), expected, atol=1e-12)


def test_mim_accumulates_l1_normalised_gradients():
    """Dong et al. (2018): g <- mu g + grad / |grad|_1, x <- clip(x + a sign(g)). The case is chosen
    so that the result differs both from BIM and from momentum without the L1 normalisation."""
    x, eps, step, decay = X0, 0.3, 0.1, 1.0
    g1 = ce_gradient(x, 0)
    m1 = g1 / np.abs(g1).sum()
    x1 = clip_ball(x + step * np.sign(m1), x, eps)
    g2 = ce_gradient(x1, 0)
    m2 = decay * m1 + g2 / np.abs(g2).sum()
    x2 = clip_ball(x1 + step * np.sign(m2), x, eps)
    without_normalisation = clip_ball(x1 + step * np.sign(g1 + g2), x, eps)
    without_momentum = clip_ball(x1 + step * np.sign(g2), x, eps)
    assert not np.allclose(x2, without_normalisation) and not np.allclose(x2, without_momentum)
    index, iterates = pick_worst([x1, x2], 0)
    x_adv = mim(linear_model(), as_batch(x), torch.tensor([0]), eps=eps, steps=2, step_size=step, decay=decay)
    np.testing.assert_allclose(x_adv[0].numpy(), iterates[index], atol=1e-12)


def test_mim_l2_stays_in_the_ball_and_fools_the_linear_model():
    x_adv = mim_l2(linear_model(), as_batch(X0), torch.tensor([0]), eps=2.0, steps=10)
    assert np.linalg.norm(x_adv[0].numpy() - X0) <= 2.0 + 1e-9
    assert int(linear_model()(x_adv).argmax()) != 0


def test_one_pgd_step_of_size_eps_without_random_start_is_fgsm():
    model, x, y = trained_mlp()
    expected = fgsm(model, x, y, eps=0.1)
    torch.testing.assert_close(pgd(model, x, y, eps=0.1, steps=1, step_size=0.1, random_start=False), expected, rtol=0, atol=0)


def test_pgd_last_iterate_equals_a_plain_reference_loop():
    """The training PGD is the attack's step: bitwise the last iterate of a loop written from the
    core pieces (`sign_pgd`, random start from the same generator)."""
    model, x, y = trained_mlp()
    eps, steps, step = 0.1, 7, 0.03
    reference = sign_pgd(model, x, y, eps=eps, steps=steps, step_size=step, generator=torch.Generator().manual_seed(5))
    ours = pgd_last_iterate(model, x, y, eps=eps, step_size=step, steps=steps, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert not ours.requires_grad


def test_pgd_last_iterate_follows_the_given_loss_and_start():
    """A per-sample loss other than CE (here the CW margin) and an explicit start (TRADES starts at
    x + 0.001 * noise), against the same steps taken by hand in float64."""
    model = linear_model()
    x = torch.from_numpy(np.stack([X0, X0[::-1].copy()]))
    y = torch.tensor([0, 1])
    start = x + 0.001 * torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    expected = start.clone()
    for _ in range(3):
        expected = linf_project(expected + 0.05 * input_gradient(model, expected, y, loss=margin_loss).sign(), center=x, eps=0.08)
    ours = pgd_last_iterate(model, x, y, eps=0.08, step_size=0.05, steps=3, loss=margin_loss, x_start=start)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-15)
    # without random start and with one step of eps, it is FGSM
    torch.testing.assert_close(pgd_last_iterate(model, x, y, eps=0.1, step_size=0.1, steps=1, random_start=False),
                               fgsm(model, x, y, eps=0.1), rtol=0, atol=0)  # fmt: skip


class _ModeRecorder(nn.Module):
    """A small MLP with dropout that records the mode of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.net(x)


@pytest.mark.parametrize("training", [True, False])
def test_pgd_last_iterate_keeps_the_callers_mode_and_computes_no_weight_gradients(training: bool):
    torch.manual_seed(0)
    model = _ModeRecorder().train(training)
    model.net[1].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    x_adv = pgd_last_iterate(model, x, y, eps=0.1, step_size=0.05, steps=4, generator=torch.Generator().manual_seed(0))
    assert model.modes == [training] * 4  # one forward per step, in the caller's mode
    assert model.training is training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert (x_adv - x).abs().max() <= 0.1 + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_40_is_much_stronger_than_fgsm_on_a_trained_mlp():
    model, x, y = trained_mlp()
    clean = accuracy(model, x, y)
    fgsm_accuracy = accuracy(model, fgsm(model, x, y, eps=0.1), y)
    x_pgd = pgd(model, x, y, eps=0.1, steps=40, generator=torch.Generator().manual_seed(0))
    pgd_accuracy = accuracy(model, x_pgd, y)
    assert clean > 0.8
    assert pgd_accuracy <= 0.6 * fgsm_accuracy, (fgsm_accuracy, pgd_accuracy)
    # and it reaches at least FGSM's loss, on average over the images
    with torch.no_grad():
        assert ce_loss(model(x_pgd), y).mean() >= ce_loss(model(fgsm(model, x, y, eps=0.1)), y).mean()


def test_keeping_the_worst_iterate_is_at_least_as_strong_as_the_last_iterate():
    """Same random start and steps as a plain reference PGD that returns its last iterate: every
    sample that reference fools, ours fools too."""
    model, x, y = trained_mlp()
    eps, steps, step = 0.05, 10, 0.0125
    reference = sign_pgd(model, x, y, eps=eps, steps=steps, step_size=step, generator=torch.Generator().manual_seed(3))
    ours = pgd(model, x, y, eps=eps, steps=steps, step_size=step, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fooled_reference = model(reference).argmax(dim=1) != y
        fooled_ours = model(ours).argmax(dim=1) != y
    assert bool((fooled_ours | ~fooled_reference).all())
    assert int(fooled_ours.sum()) >= int(fooled_reference.sum())


def test_restarts_keep_each_samples_worst_case():
    """The first restart is the single run (same generator); later ones only add fooled samples and,
    for samples never fooled, only raise the loss."""
    model, x, y = trained_mlp()
    one = pgd(model, x, y, eps=0.05, steps=5, generator=torch.Generator().manual_seed(4))
    four = pgd(model, x, y, eps=0.05, steps=5, restarts=4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits_one, logits_four = model(one), model(four)
    fooled_one, fooled_four = logits_one.argmax(1) != y, logits_four.argmax(1) != y
    assert bool((fooled_four | ~fooled_one).all())
    never = ~fooled_four
    assert bool((ce_loss(logits_four, y)[never] >= ce_loss(logits_one, y)[never] - 1e-6).all())
    assert int(fooled_four.sum()) > int(fooled_one.sum())  # at eps 0.05 restarts do find more


def test_random_start_draws_from_the_generator_only_when_asked():
    model, x, y = trained_mlp()
    x, y = x[:20], y[:20]
    a = pgd(model, x, y, eps=0.1, steps=2, generator=torch.Generator().manual_seed(0))
    b = pgd(model, x, y, eps=0.1, steps=2, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    c = bim(model, x, y, eps=0.1, steps=2, generator=torch.Generator().manual_seed(0))
    d = bim(model, x, y, eps=0.1, steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, d)


def test_eps_one_drives_accuracy_to_zero():
    model, x, y = trained_mlp()
    assert accuracy(model, pgd(model, x[:100], y[:100], eps=1.0, steps=10), y[:100]) == 0.0


def test_targeted_pgd_reaches_its_targets_on_a_trained_mlp():
    """At least as often as a plain reference descent that returns its last iterate, and nearly
    always once eps is large."""
    model, x, y = trained_mlp()
    x, y = x[:100], y[:100]
    with torch.no_grad():
        least_likely = model(x).scatter(1, y[:, None], float("inf")).argmin(dim=1)
    reference = x.clone()
    for _ in range(40):
        grad = input_gradient(model, reference, least_likely)
        reference = linf_project(reference - 0.01 * grad.sign(), center=x, eps=0.3)
    ours = pgd_targeted(model, x, y, eps=0.3, steps=40, step_size=0.01, random_start=False, target="least-likely")
    large = pgd_targeted(model, x, y, eps=0.5, steps=40, target="least-likely")
    with torch.no_grad():
        reached_reference = (model(reference).argmax(dim=1) == least_likely).float().mean()
        reached_ours = (model(ours).argmax(dim=1) == least_likely).float().mean()
        reached_large = (model(large).argmax(dim=1) == least_likely).float().mean()
    assert reached_ours >= reached_reference > 0.3
    assert reached_large >= 0.95


def test_text_form_builds_the_parameters():
    entry, params = parse_attack("pgd:eps=0.3,steps=40,restarts=5")
    assert entry.name == "pgd" and (params.eps, params.steps, params.restarts) == (0.3, 40, 5)
    assert parse_attack("pgd-t:eps=0.1,target=3")[1].target == "3"
    assert parse_attack("mim-l2:eps=2,decay=0.5")[1].decay == 0.5


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("pgd:eps=0.3,overshoot=1", "has no parameter overshoot"),
        ("pgd:eps=1.5", "eps must be in [0.0, 1.0]"),
        ("pgd:eps=0.3,steps=0", "steps must be > 0"),
        ("pgd:eps=0.3,restarts=3,random_start=false", "restarts > 1 without random_start"),
        ("pgd:eps=0.3,loss=hinge", "loss must be one of"),
        ("pgd-t:eps=0.3,target=none", "pgd-t is targeted"),
        ("bim:eps=0.3,target=seven", "target must be one of"),
        ("mim:eps=0.3,decay=-1", "decay must be >= 0"),
        ("pgd-l2:eps=-2", "eps must be >= 0"),
    ],
)
def test_bad_parameters_give_one_line(text: str, fragment: str):
    with pytest.raises(ConfigError) as caught:
        parse_attack(text)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_target_class_that_does_not_exist_is_refused():
    with pytest.raises(ConfigError, match="does not exist"):
        pgd(linear_model(), as_batch(X0), torch.tensor([0]), eps=0.1, steps=1, target="7")


def test_nan_gradients_raise_instead_of_silently_stalling():
    class NaNAfterOneStep(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x.flatten(1)[:, :3] - 0.5)  # NaN wherever a pixel drops below 0.5

    x = torch.full((2, 4), 0.55, dtype=torch.float64)
    with pytest.raises(AttackError, match="NaN or infinite"):
        pgd(NaNAfterOneStep(), x, torch.tensor([0, 1]), eps=0.3, steps=3, random_start=False)


@pytest.mark.slow
def test_pgd_40_is_well_below_fgsm_on_the_papers_mlp():
    """The paper's MLP (784-625-10, dropout, RMSProp) trained 5 epochs on MNIST by redblue.train;
    measured: clean 0.975, FGSM 0.505, PGD-40 0.365 at eps 0.1 on the first 1000 test images."""
    from redblue.data import load_dataset
    from redblue.models import MLPSpec, build_model
    from redblue.train import TrainConfig, init_model, train

    train_set, test_set = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    model = init_model(lambda: build_model(MLPSpec()), seed=0)
    train(model, train_set.x, train_set.y, TrainConfig(epochs=5), progress=False)
    x, y = test_set.x[:1000], test_set.y[:1000]
    assert accuracy(model, x, y) > 0.95
    fgsm_accuracy = accuracy(model, fgsm(model, x, y, eps=0.1), y)
    pgd_accuracy = accuracy(model, pgd(model, x, y, eps=0.1, steps=40, generator=torch.Generator().manual_seed(0)), y)
    assert pgd_accuracy <= fgsm_accuracy - 0.10 and pgd_accuracy <= 0.8 * fgsm_accuracy, (fgsm_accuracy, pgd_accuracy)


class _FooledOnlyInside(nn.Module):
    """One pixel, two classes, clean point 0.5: class 1 wins where 0.01 < |x - 0.5| < 0.099, class 0
    everywhere else (the clean point included). Its CE gradient for class 0 points away from 0.5
    inside the ball's edge and towards it on the edge, so PGD steps of 0.1 alternate between the
    edge (|d| = 0.1) and the centre (|d| < 0.01), both class 0: only a random start can fool it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x.flatten(1)[:, :1] - 0.5).abs()
        z1 = 1.0 + 3.0 * distance - 2000.0 * ((distance - 0.099).clamp_min(0.0) + (0.01 - distance).clamp_min(0.0))
        return torch.cat([torch.zeros_like(z1), z1], dim=1)


@pytest.mark.parametrize("steps", [1, 3])
def test_pgd_keeps_a_random_start_that_alone_fools(steps: int):
    model = _FooledOnlyInside()
    x = torch.full((16, 1), 0.5, dtype=torch.float64)
    y = torch.zeros(16, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    start = linf_random_start(x, 0.1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert int((model(x).argmax(1) == 1).sum()) == 0 and int((model(start).argmax(1) == 1).sum()) >= 10
        # every later iterate of a plain PGD from that start is back to class 0
        assert bool((model(sign_pgd(model, x, y, eps=0.1, steps=steps, step_size=0.1, generator=torch.Generator().manual_seed(0))).argmax(1) == 0).all())
    x_adv = pgd(model, x, y, eps=0.1, steps=steps, step_size=0.1, generator=generator)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) == 1
        start_fooled = model(start).argmax(1) == 1
    assert torch.equal(fooled, start_fooled)
    torch.testing.assert_close(x_adv[start_fooled], start[start_fooled], rtol=0, atol=0)
