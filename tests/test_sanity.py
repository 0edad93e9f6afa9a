"""The gradient-masking sanity checks (`checks`, `probes`), one by one, on hand-made models and hand-made numbers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import redblue.attacks  # noqa: F401  (registers the attacks)
from redblue.attacks.registry import ATTACKS
from redblue.evaluate import checks as sanity
from redblue.evaluate import probes
from redblue.evaluate.checks import StandaloneAccuracy


def _linear(weight: list[list[float]], *, scale: float = 1.0) -> nn.Module:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(scale * torch.tensor(weight, dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), layer)


class Quantise(nn.Module):
    """Rounds pixels to `levels` grey levels: the gradient through round() is exactly zero."""

    def __init__(self, levels: int = 256) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


class Noisy(nn.Module):
    """A randomised defense: fresh noise on the logits at every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return logits + torch.randn_like(logits)


def _checks(findings: list[sanity.Finding]) -> dict[str, str]:
    return {f.check: f.severity for f in findings}


WEIGHT = [[1.0, -2.0, 0.5], [-1.0, 2.0, 0.0], [0.3, 0.3, -1.0]]
X = torch.tensor([[0.2, 0.1, 0.9], [0.9, 0.1, 0.1], [0.1, 0.9, 0.4], [0.5, 0.5, 0.5]], dtype=torch.float64)


def test_tolerance_is_half_a_point_or_three_samples():
    assert sanity.tolerance(10_000) == 0.005
    assert sanity.tolerance(200) == pytest.approx(3 / 200)
    assert sanity.tolerance(0) == 3.0  # no samples: nothing can be told apart


def test_spread_subset_is_even_and_deterministic():
    indices = torch.arange(100, 200)
    picked = sanity.spread_subset(indices, 5)
    assert picked.tolist() == [100, 125, 150, 174, 199]  # linspace(0, 99, 5) = 0, 24.75, 49.5, 74.25, 99, rounded
    assert sanity.spread_subset(indices[:3], 5).tolist() == [100, 101, 102]


def test_probabilities_are_told_apart_from_logits():
    logits = _linear(WEIGHT)(X)
    assert not sanity.looks_like_probabilities(logits)
    assert sanity.looks_like_probabilities(logits.softmax(dim=1))
    assert not sanity.looks_like_probabilities(logits.log_softmax(dim=1))  # log-probabilities are logits
    # sigmoid outputs are in [0, 1] but do not sum to 1: logits of a kind, not a softmax
    assert not sanity.looks_like_probabilities(logits.sigmoid())


def test_check_outputs_flags_softmax_constant_and_random_models():
    model = _linear(WEIGHT)
    assert _checks(sanity.check_outputs(model, X)) == {"logits": "ok", "deterministic": "ok"}
    assert _checks(sanity.check_outputs(nn.Sequential(model, nn.Softmax(dim=1)), X))["logits"] == "fail"
    constant = _linear([[0.0, 0.0, 0.0]] * 3)
    assert _checks(sanity.check_outputs(constant, X))["input-dependent"] == "fail"
    torch.manual_seed(0)
    assert _checks(sanity.check_outputs(Noisy(model), X))["deterministic"] == "warning"


def test_check_gradients_ok_on_a_linear_model():
    y = torch.tensor([0, 0, 1, 2])
    assert _checks(sanity.check_gradients(_linear(WEIGHT), X, y)) == {"gradients": "ok"}


def test_check_gradients_fails_behind_a_quantiser():
    y = torch.tensor([0, 0, 1, 2])
    findings = sanity.check_gradients(nn.Sequential(Quantise(), _linear(WEIGHT)), X, y)
    assert _checks(findings) == {"gradients": "fail"}
    assert "100%" in findings[0].message and "square" in findings[0].message  # says what to do


def test_check_gradients_warns_when_only_cross_entropy_saturates():
    # logits scaled by 1e4: the softmax is exactly one-hot in float64, so the CE gradient is exactly
    # zero, while the margin (a difference of logits) still has the gradient w_j - w_y
    model = _linear(WEIGHT, scale=1e4)
    logits = model(X)
    y = logits.argmax(dim=1)
    assert bool((logits.softmax(dim=1).amax(dim=1) == 1.0).all())
    findings = sanity.check_gradients(model, X, y)
    assert _checks(findings) == {"gradients": "warning"}
    assert "apgd-dlr" in findings[0].message


def test_check_gradients_fails_on_nan_gradients():
    class Sqrt(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.sqrt(x)  # d/dx sqrt at 0 is infinite

    x = X.clone()
    x[0, 0] = 0.0
    findings = sanity.check_gradients(nn.Sequential(Sqrt(), _linear(WEIGHT)), x, torch.tensor([0, 0, 1, 2]))
    assert _checks(findings) == {"gradients": "fail"} and "NaN or infinite" in findings[0].message


def test_check_monotonic_tolerates_noise_and_flags_rises():
    n = 1000  # tolerance 0.5 point
    ok = sanity.check_monotonic({"pgd": [(0.1, 0.50), (0.2, 0.504), (0.3, 0.1)]}, n=n, what="standalone")
    assert _checks(ok) == {"monotonic-eps": "ok"}
    # points come in any order: 0.30 at eps 0.1, then 0.31 at eps 0.2 is a rise of 1 point
    rise = sanity.check_monotonic({"pgd": [(0.2, 0.31), (0.1, 0.30)]}, n=n, what="standalone")
    assert [f.severity for f in rise] == ["warning"]
    big = sanity.check_monotonic({"pgd": [(0.1, 0.30), (0.2, 0.29), (0.3, 0.40)]}, n=n, what="cumulative")
    assert [f.severity for f in big] == ["fail"] and "eps=0.3" in big[0].message


def test_attack_strength_compares_iterative_single_step_white_and_black_box():
    fgsm, pgd, square = ATTACKS["fgsm"], ATTACKS["apgd-ce"], ATTACKS["square"]
    good = [
        StandaloneAccuracy("fgsm", fgsm, 0.1, 0.40),
        StandaloneAccuracy("apgd-ce", pgd, 0.1, 0.20),
        StandaloneAccuracy("square", square, 0.1, 0.21),  # within tolerance of the white-box best
    ]
    (ok,) = sanity.check_attack_strength(good, n=1000, scope="all samples")
    assert (ok.check, ok.severity) == ("attack-strength", "ok")
    assert ok.message == (
        "iterative attacks beat single-step ones and white-box attacks beat black-box/transfer ones (all samples)"
    )
    (only_white,) = sanity.check_attack_strength(good[:2], n=1000, scope="a subset")
    assert "black-box" not in only_white.message
    bad = [
        StandaloneAccuracy("fgsm", fgsm, 0.1, 0.40),
        StandaloneAccuracy("apgd-ce", pgd, 0.1, 0.43),  # 3 points weaker than one step: a warning
        StandaloneAccuracy("square", square, 0.1, 0.10),  # 30 points stronger than gradients: a failure
        StandaloneAccuracy("apgd-ce", pgd, 0.2, 0.05),  # another eps, compared only with itself
    ]
    findings = sanity.check_attack_strength(bad, n=1000, scope="all samples")
    assert sorted((f.check, f.severity) for f in findings) == [
        ("iterative-vs-single-step", "warning"),
        ("white-box-vs-black-box", "fail"),
    ]
    assert sanity.check_attack_strength([StandaloneAccuracy("fgsm", fgsm, 0.1, 0.4)], n=10, scope="x") == []
    # an attack towards one random class is weaker than one step towards any wrong class, by design
    targeted = [StandaloneAccuracy("fgsm", fgsm, 0.1, 0.40), StandaloneAccuracy("pgd-t", ATTACKS["pgd-t"], 0.1, 0.8, targeted=True)]
    assert sanity.check_attack_strength(targeted, n=1000, scope="x") == []
    assert sanity.is_targeted(ATTACKS["pgd-t"], ATTACKS["pgd-t"].params(eps=0.1))
    assert sanity.is_targeted(ATTACKS["pgd"], ATTACKS["pgd"].params(eps=0.1, target="random"))
    assert not sanity.is_targeted(ATTACKS["pgd"], ATTACKS["pgd"].params(eps=0.1))


def test_cascade_gain_only_counts_black_box_and_transfer():
    square, pgd = ATTACKS["square"], ATTACKS["apgd-ce"]
    assert sanity.check_cascade_gain(pgd, "apgd-ce", eps=0.1, n_new=500, n=1000) == []
    assert sanity.check_cascade_gain(square, "square", eps=0.1, n_new=5, n=1000) == []  # 0.5 point: noise
    assert _checks(sanity.check_cascade_gain(square, "square", eps=0.1, n_new=20, n=1000)) == {
        "white-box-vs-black-box": "warning"
    }
    assert _checks(sanity.check_cascade_gain(square, "square", eps=0.1, n_new=60, n=1000)) == {
        "white-box-vs-black-box": "fail"
    }


class RecordingRunner:
    """A stand-in for the evaluator's runner: records what it was asked and fools the given samples."""

    def __init__(self, fooled: Tensor) -> None:
        self.fooled = fooled
        self.calls: list[tuple[str, object, Tensor]] = []

    def __call__(self, entry, params, indices: Tensor) -> Tensor:
        self.calls.append((entry.name, params, indices))
        return self.fooled[indices]


def test_eps_zero_check_runs_at_eps_zero():
    pgd = ATTACKS["apgd-ce"]
    params = pgd.params(eps=0.3)
    runner = RecordingRunner(torch.zeros(10, dtype=torch.bool))
    assert _checks(probes.check_eps_zero(runner, pgd, params, torch.arange(10), label="apgd-ce")) == {"eps-zero": "ok"}
    assert runner.calls[0][1].eps == 0.0 and runner.calls[0][1].n_iter == params.n_iter
    fooled = torch.zeros(10, dtype=torch.bool)
    fooled[3] = True
    findings = probes.check_eps_zero(RecordingRunner(fooled), pgd, params, torch.arange(10), label="apgd-ce")
    assert _checks(findings) == {"eps-zero": "fail"} and "1 of 10" in findings[0].message


def test_unbounded_check_runs_at_eps_one_without_random_start():
    pgd = ATTACKS["pgd"]
    runner = RecordingRunner(torch.ones(100, dtype=torch.bool))
    findings = probes.check_unbounded(runner, pgd, pgd.params(eps=0.1), torch.arange(100), label="pgd")
    assert _checks(findings) == {"unbounded-eps": "ok"}
    params = runner.calls[0][1]
    assert params.eps == 1.0 and params.random_start is False
    # 5 of 100 left: a warning (above 2%); 50 of 100: a failure (above 10%)
    for n_left, severity in ((5, "warning"), (50, "fail")):
        fooled = torch.ones(100, dtype=torch.bool)
        fooled[:n_left] = False
        found = probes.check_unbounded(RecordingRunner(fooled), pgd, pgd.params(eps=0.1), torch.arange(100), label="pgd")
        assert _checks(found) == {"unbounded-eps": severity}


def test_stronger_params_raise_steps_and_restarts():
    pgd = ATTACKS["pgd"].params(eps=0.1, steps=40, restarts=1)
    stronger = probes.stronger_params(pgd)
    assert (stronger.steps, stronger.restarts, stronger.eps) == (120, 2, 0.1)
    apgd = probes.stronger_params(ATTACKS["apgd-t"].params(eps=0.1))
    assert (apgd.n_iter, apgd.restarts, apgd.n_target_classes) == (300, 2, 9)
    assert probes.stronger_params(ATTACKS["fgsm"].params(eps=0.1)) is None


def test_more_steps_scales_subset_to_all_survivors():
    pgd = ATTACKS["pgd"]
    fooled = torch.zeros(50, dtype=torch.bool)
    fooled[:5] = True  # 10% of the re-attacked subset falls
    runner = RecordingRunner(fooled)
    # 400 survivors of 1000 samples, 50 re-attacked: about 0.1 * 400 / 1000 = 4 points overstated
    findings = probes.check_more_steps(
        runner, pgd, pgd.params(eps=0.1), torch.arange(50), n_survivors=400, n=1000, label="pgd"
    )
    assert _checks(findings) == {"more-steps": "warning"}
    assert "-4.00%" in findings[0].message and runner.calls[0][1].steps == 120
    none = probes.check_more_steps(
        RecordingRunner(torch.zeros(50, dtype=torch.bool)), pgd, pgd.params(eps=0.1), torch.arange(50),
        n_survivors=400, n=1000, label="pgd",
    )
    assert _checks(none) == {"more-steps": "ok"}
    assert probes.check_more_steps(runner, ATTACKS["fgsm"], ATTACKS["fgsm"].params(eps=0.1), torch.arange(5),
                                   n_survivors=5, n=10, label="fgsm") == []


def test_masking_margin_is_three_standard_errors_of_an_accuracy_at_one_half():
    assert probes.masking_margin(200) == pytest.approx(3 * 0.5 / 200**0.5)  # 10.6 points
    assert probes.masking_margin(50) == pytest.approx(0.2121, abs=1e-4)
    assert probes.masking_margin(10_000) == pytest.approx(0.015)


def test_masking_probe_warns_only_past_the_margin_and_at_each_eps():
    pgd = ATTACKS["pgd"]
    sample = torch.arange(200)
    listed_robust = torch.ones(200, dtype=torch.bool)  # the listed attacks fooled none of the sample
    for n_fooled, expected in ((21, "ok"), (22, "warning")):  # gap 10.5 points: inside 10.6; 11.0: past it
        fooled = torch.zeros(200, dtype=torch.bool)
        fooled[:n_fooled] = True
        runner = RecordingRunner(fooled)
        findings = probes.check_masking_probe(
            runner, pgd, pgd.params(eps=0.0), sample, [(0.1, listed_robust), (0.3, listed_robust)], label="pgd", listed="fgsm"
        )
        assert [call[1].eps for call in runner.calls] == [0.1, 0.3]
        if expected == "ok":
            assert _checks(findings) == {"masking-probe": "ok"} and len(findings) == 1
        else:  # one warning per eps, each naming masking and the numbers behind it
            assert [f.severity for f in findings] == ["warning", "warning"]
            assert "eps=0.1" in findings[0].message and "eps=0.3" in findings[1].message
            assert "gradient masking" in findings[0].message and "89.0%" in findings[0].message
    # the listed attacks already fooled what the probe fools: no gap, whatever the probe finds
    fooled = torch.zeros(200, dtype=torch.bool)
    fooled[:100] = True
    findings = probes.check_masking_probe(RecordingRunner(fooled), pgd, pgd.params(eps=0.0), sample,
                                          [(0.3, ~fooled)], label="pgd", listed="fgsm")
    assert _checks(findings) == {"masking-probe": "ok"}


def test_chance_level_is_three_standard_errors_above_the_best_blind_rate():
    # n = 1000, majority class 11.35%: threshold 0.1135 + 3 * sqrt(0.1135 * 0.8865 / 1000) = 0.1436
    assert _checks(sanity.check_chance_level(0.143, n=1000, classes=10, majority=0.1135)) == {"chance-level": "fail"}
    assert _checks(sanity.check_chance_level(0.145, n=1000, classes=10, majority=0.1135)) == {"chance-level": "ok"}
    # a balanced two-class set: chance 50%, threshold 0.5 + 3 * 0.5 / 10 = 0.65 on 100 samples
    assert _checks(sanity.check_chance_level(0.64, n=100, classes=2, majority=0.5)) == {"chance-level": "fail"}
    (ok,) = sanity.check_chance_level(0.66, n=100, classes=2, majority=0.5)
    assert ok.severity == "ok" and "50.0% for 2 classes" in ok.message
