"""The evaluator: worst case over attacks, re-checked adversarial examples, sanity flags, certified bounds.

References are recomputed here without the evaluator: attacks called directly on every sample,
predictions from the model itself, a plain-PyTorch FGSM.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from mlp_fixtures import MnistMissing, mnist_slices, trained_mlp
from torch import Tensor, nn

import redblue.attacks  # noqa: F401  (registers the attacks)
from redblue.attacks.core import input_gradient
from redblue.attacks.registry import ATTACKS, parse_attack, register
from redblue.errors import ConfigError, ModelError
from redblue.evaluate import PRESETS, auto_certify_method, evaluate, parse_attack_list

N = 200  # samples of the fixture's evaluation set used here


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, Tensor, Tensor]:
    model, x, y = trained_mlp()
    return model, x[:N], y[:N]


@pytest.fixture(scope="module")
def mlp64(mlp) -> tuple[nn.Module, Tensor, Tensor]:
    """The same MLP in float64, so that an attack's result on a sample cannot depend on its batch."""
    model, x, y = mlp
    return copy.deepcopy(model).double(), x.double(), y


def predicted(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def standalone_robust(model: nn.Module, x: Tensor, y: Tensor, spec: str, eps: float) -> Tensor:
    """Robust mask of one attack run alone on every sample, outside the evaluator."""
    entry, params = parse_attack(spec, eps=eps)
    kwargs = {name: value for name, value in vars(params).items()}
    x_adv = entry.fn(model, x, y, **kwargs)
    assert (x_adv - x).abs().max() <= eps + 1e-12 and 0 <= x_adv.min() and x_adv.max() <= 1
    return (predicted(model, x) == y) & (predicted(model, x_adv) == y)


# Deterministic attacks (no random start): a standalone run sees exactly what the cascade sees.
DETERMINISTIC = ["fgsm", "bim:steps=5", "pgd:steps=10,random_start=false", "pgd-cw:steps=10,random_start=false"]


@pytest.mark.parametrize("mode", ["worst-case", "per-attack"])
def test_worst_case_is_the_per_sample_and_of_standalone_attacks(mlp64, mode):
    model, x, y = mlp64
    x, y = x[:120], y[:120]
    eps_list = [0.05, 0.1]
    result = evaluate(model, x, y, ",".join(DETERMINISTIC), eps_list, mode=mode, checks=False, certify_method=None)
    for eps in eps_list:
        masks = {spec: standalone_robust(model, x, y, spec, eps) for spec in DETERMINISTIC}
        expected = torch.stack(list(masks.values())).all(dim=0)
        got = result.result(eps)
        assert torch.equal(got.worst_case_mask, expected)
        assert got.worst_case_accuracy == pytest.approx(expected.double().mean().item())
        standalone = [m.double().mean().item() for m in masks.values()]
        assert got.worst_case_accuracy <= min(standalone)
        if mode == "per-attack":  # each row is that attack's own robust accuracy
            for row, mask in zip(got.attacks, masks.values()):
                assert torch.equal(row.robust_mask, mask)
        else:  # cumulative rows only fall, and end at the worst case
            accuracies = [row.accuracy for row in got.attacks]
            assert accuracies == sorted(accuracies, reverse=True)
            assert accuracies[-1] == got.worst_case_accuracy
            # the cascade attacks only what is still robust: later stages see fewer samples
            assert got.attacks[-1].n_attacked < got.attacks[0].n_attacked
    # the worst case is strictly better than the best single attack somewhere, or this test is weak
    assert result.result(0.05).worst_case_accuracy < min(
        standalone_robust(model, x, y, spec, 0.05).double().mean().item() for spec in DETERMINISTIC
    ) + 1e-12


def test_fgsm_accuracy_matches_plain_pytorch(mlp):
    model, x, y = mlp
    x_var = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_var), y, reduction="sum").backward()
    x_adv = (x + 0.1 * x_var.grad.sign()).clamp(0, 1)
    expected = ((predicted(model, x) == y) & (predicted(model, x_adv) == y)).double().mean().item()
    result = evaluate(model, x, y, "fgsm", [0.1], mode="per-attack", checks=False, certify_method=None)
    row = result.result(0.1).attacks[0]
    assert abs(row.accuracy - expected) <= 0.001
    # the paper's number: accuracy on the FGSM images of every sample
    assert abs(row.adversarial_accuracy - (predicted(model, x_adv) == y).double().mean().item()) <= 0.001


def test_pgd40_is_well_below_fgsm_on_a_clean_mlp(mlp):
    model, x, y = mlp
    result = evaluate(model, x, y, "fgsm,pgd:steps=40", [0.1], mode="per-attack", checks=False, certify_method=None,
                      generator=torch.Generator().manual_seed(0))
    fgsm_row, pgd_row = result.result(0.1).attacks
    assert (fgsm_row.label, pgd_row.label) == ("fgsm", "pgd")
    # measured: clean 93.5%, FGSM 22.5%, PGD-40 12.5% on these 200 MNIST images
    assert pgd_row.accuracy <= fgsm_row.accuracy - 0.03
    assert pgd_row.accuracy <= 0.75 * fgsm_row.accuracy


# --- the evaluator re-checks every image ----------------------------------------------------------


@dataclass(frozen=True)
class BrokenParams:
    eps: float


def _leaves_ball(model, x, y, *, eps):
    """A buggy attack: FGSM with three times the budget (fools more, outside the ball)."""
    return (x + 3 * eps * input_gradient(model, x, y).sign()).clamp(0, 1).detach()


def _leaves_box(model, x, y, *, eps):
    """A buggy attack: FGSM that forgets to clip to [0, 1]."""
    return (x + eps * input_gradient(model, x, y).sign()).detach()


def _half_broken(model, x, y, *, eps):
    """Leaves the ball on every even sample of its batch, behaves like FGSM on odd ones."""
    sign = input_gradient(model, x, y).sign()
    scale = torch.full((len(x), 1, 1, 1), eps, dtype=x.dtype)
    scale[::2] = 3 * eps
    return (x + scale * sign).clamp(0, 1).detach()


BROKEN = {"test-leaves-ball": _leaves_ball, "test-leaves-box": _leaves_box, "test-half-broken": _half_broken}


@contextmanager
def registered(attacks: dict):
    """Register test-only attacks for the duration of a block; they are removed however it ends."""
    for name, fn in attacks.items():
        register(name, BrokenParams, norm="linf", iterative=False)(fn)
    try:
        yield list(attacks)
    finally:
        for name in attacks:
            ATTACKS.pop(name)


@pytest.fixture
def broken_attacks():
    with registered(BROKEN) as names:
        yield names


def test_images_outside_the_ball_or_box_count_as_not_fooled(mlp, broken_attacks):
    model, x, y = mlp
    clean_correct = predicted(model, x) == y
    result = evaluate(model, x, y, ",".join(broken_attacks), [0.1], mode="per-attack", checks=False,
                      certify_method=None)
    rows = {row.label: row for row in result.result(0.1).attacks}
    n_correct = int(clean_correct.sum())
    for name in ("test-leaves-ball", "test-leaves-box"):
        row = rows[name]
        assert row.n_attacked == N and row.n_invalid == N and row.n_fooled == 0
        assert row.accuracy == pytest.approx(result.clean_accuracy)
        assert row.adversarial_accuracy == pytest.approx(result.clean_accuracy)
    # the buggy attacks really would fool samples if they were believed
    assert (predicted(model, _leaves_ball(model, x, y, eps=0.1)) != y)[clean_correct].any()
    # half broken: the odd samples of its one batch count, re-predicted here independently
    adv_correct = predicted(model, _half_broken(model, x, y, eps=0.1)) == y
    odd = torch.arange(N) % 2 == 1
    expected_fooled = int((clean_correct & ~adv_correct & odd).sum())
    row = rows["test-half-broken"]
    assert row.n_invalid == (N + 1) // 2 and row.n_fooled == expected_fooled > 0
    assert row.accuracy == pytest.approx((n_correct - expected_fooled) / N)
    expected_adversarial = torch.where(odd, adv_correct, clean_correct).double().mean().item()
    assert row.adversarial_accuracy == pytest.approx(expected_adversarial)
    validity = [f for f in result.findings if f.check == "attack-validity"]
    assert {f.severity for f in validity} == {"fail"}
    messages = " ".join(f.message for f in validity)
    for name in broken_attacks:
        assert name in messages
    assert "outside the eps-ball" in messages and "outside [0, 1]" in messages


def test_test_attacks_are_deregistered_however_the_block_ends():
    before = set(ATTACKS)
    with pytest.raises(RuntimeError, match="inside"):
        with registered(BROKEN) as names:
            assert set(ATTACKS) == before | set(names)
            raise RuntimeError("inside")
    assert set(ATTACKS) == before


# --- sanity checks on a masked model --------------------------------------------------------------


class Quantise(nn.Module):
    """Rounds pixels to 256 grey levels, a non-differentiable input step: the gradient is exactly zero."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x * 255) / 255


MASKING_PLAN = "fgsm,pgd:steps=20,square:n_queries=100"


def _severities(result) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in result.findings:
        found.setdefault(f.check, set()).add(f.severity)
    return found


def test_sanity_checks_flag_a_gradient_masked_model_and_not_the_same_mlp(mlp):
    model, x, y = mlp
    x, y = x[:50], y[:50]
    masked = nn.Sequential(Quantise(), model).eval()
    settings = dict(certify_method=None, check_subset=30)
    plain_result = evaluate(model, x, y, MASKING_PLAN, [0.05, 0.1], generator=torch.Generator().manual_seed(0), **settings)
    masked_result = evaluate(masked, x, y, MASKING_PLAN, [0.05, 0.1], generator=torch.Generator().manual_seed(0), **settings)
    plain, flagged = _severities(plain_result), _severities(masked_result)
    assert all(severities == {"ok"} for severities in plain.values()), plain_result.findings
    for check in ("gradients", "unbounded-eps"):
        assert flagged[check] == {"fail"}, masked_result.findings
    # the quantiser barely changes what the model predicts: it is the gradients that differ
    assert abs(masked_result.clean_accuracy - plain_result.clean_accuracy) <= 0.02
    # and the masked model looks far more robust to gradient attacks than it is
    assert masked_result.result(0.1).attacks[1].accuracy > plain_result.result(0.1).attacks[1].accuracy + 0.3
    every_message = " ".join(f.message for f in masked_result.findings if f.severity == "fail")
    assert "square" in every_message  # each failure says what to do


def test_black_box_finding_what_gradients_miss_is_flagged(mlp):
    model, x, y = mlp
    masked = nn.Sequential(Quantise(), model).eval()
    result = evaluate(masked, x[:50], y[:50], "fgsm,square:n_queries=150", [0.15], checks=False,
                      certify_method=None, generator=torch.Generator().manual_seed(0))
    findings = [f for f in result.findings if f.check == "white-box-vs-black-box"]
    assert findings and findings[0].severity == "fail"
    # black-box attacks run after the white-box ones in the cascade, whatever order they were given in
    assert [row.attack for row in result.result(0.15).attacks] == ["fgsm", "square"]
    reordered = evaluate(masked, x[:50], y[:50], "square:n_queries=150,fgsm", [0.15], checks=False,
                         certify_method=None, generator=torch.Generator().manual_seed(0))
    assert [row.attack for row in reordered.result(0.15).attacks] == ["fgsm", "square"]
    # per-attack mode compares sample by sample too: what square fooled and fgsm did not
    each = evaluate(masked, x[:50], y[:50], "fgsm,square:n_queries=150", [0.15], mode="per-attack", checks=False,
                    certify_method=None, generator=torch.Generator().manual_seed(0))
    fgsm_row, square_row = each.result(0.15).attacks
    n_new = int((fgsm_row.robust_mask & ~square_row.robust_mask).sum())
    gain = [f for f in each.findings if f.check == "white-box-vs-black-box"]
    assert n_new > 5 and len(gain) == 1 and f"fooled {n_new} samples" in gain[0].message
    # a black-box attack alone has nothing to be compared with
    alone = evaluate(masked, x[:20], y[:20], "square:n_queries=50", [0.15], checks=False, certify_method=None,
                     generator=torch.Generator().manual_seed(0))
    assert not [f for f in alone.findings if f.check == "white-box-vs-black-box"]


# --- certified beside empirical -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_certified_never_above_empirical_at_any_eps(mlp, method):
    model, x, y = mlp
    eps_list = [0.0, 0.01, 0.03, 0.1]
    result = evaluate(model, x, y, "fgsm,pgd:steps=10", eps_list, certify_method=method, checks=False,
                      generator=torch.Generator().manual_seed(0))
    clean_correct = predicted(model, x) == y
    for r in result.results:
        assert r.certified_mask is not None and r.certified_accuracy is not None
        assert not (r.certified_mask & ~r.worst_case_mask).any()  # per sample, not only on average
        low, high = r.interval
        assert low <= high
    at_zero = result.result(0.0)
    assert torch.equal(at_zero.worst_case_mask, clean_correct)  # eps = 0 gives clean accuracy
    assert at_zero.certified_accuracy == pytest.approx(result.clean_accuracy, abs=1 / N)
    assert result.result(0.01).certified_accuracy > 0  # a bound that says something
    assert not any(f.check == "certified-vs-empirical" for f in result.findings)


def test_auto_certification_is_full_crown_for_mlps_and_crown_ibp_with_convolutions(mlp):
    model, x, y = mlp
    result = evaluate(model, x[:50], y[:50], "fgsm", [0.01], checks=False)
    assert result.certify_method == "crown"
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    assert auto_certify_method(conv) == "crown-ibp"


# --- the standard preset --------------------------------------------------------------------------


def test_standard_preset_is_autoattack_with_fixed_parameters():
    plan, used_preset = parse_attack_list("standard", eps=0.3)
    assert used_preset
    assert [entry.name for entry, _ in plan] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    ce, targeted, fab_t, square = (params for _, params in plan)
    assert (ce.n_iter, ce.restarts, ce.eps) == (100, 1, 0.3)
    assert (targeted.n_iter, targeted.n_target_classes, targeted.restarts) == (100, 9, 1)
    assert (fab_t.n_iter, fab_t.n_target_classes, fab_t.restarts, fab_t.alpha_max, fab_t.eta, fab_t.beta) == (100, 9, 1, 0.1, 1.05, 0.9)
    assert (square.n_queries, square.p_init) == (5000, 0.8)
    assert set(PRESETS) >= {"standard"}
    with pytest.raises(ConfigError, match="takes no parameters"):
        parse_attack_list("standard:n_iter=10", eps=0.3)


@pytest.mark.slow
def test_standard_worst_case_is_at_most_every_single_attack(mlp):
    model, x, y = mlp
    x, y = x[:100], y[:100]
    worst = evaluate(model, x, y, "standard", [0.1], checks=False, certify_method=None,
                     generator=torch.Generator().manual_seed(0)).result(0.1)
    each = evaluate(model, x, y, "standard", [0.1], mode="per-attack", checks=False, certify_method=None,
                    generator=torch.Generator().manual_seed(0)).result(0.1)
    assert worst.worst_case_accuracy <= min(row.accuracy for row in each.attacks)
    assert worst.worst_case_accuracy == each.worst_case_accuracy


# --- bookkeeping and bad input --------------------------------------------------------------------


def test_same_seed_same_numbers_and_model_mode_restored(mlp):
    model, x, y = mlp
    model.train()
    try:
        runs = [
            evaluate(model, x[:64], y[:64], "pgd:steps=5", [0.1], checks=False, certify_method=None,
                     generator=torch.Generator().manual_seed(3)).result(0.1).worst_case_mask
            for _ in range(2)
        ]
        assert model.training
    finally:
        model.eval()
    assert torch.equal(runs[0], runs[1])


def test_confidence_is_mean_top_probability_on_the_adversarial_images(mlp64):
    model, x, y = mlp64
    result = evaluate(model, x, y, "fgsm", [0.1], mode="per-attack", checks=False, certify_method=None)
    x_adv = ATTACKS["fgsm"].fn(model, x, y, eps=0.1)
    with torch.no_grad():
        clean_top = model(x).softmax(dim=1).amax(dim=1)
        adv_top = model(x_adv).softmax(dim=1).amax(dim=1)
    # per-attack mode attacks every sample, misclassified ones included (the paper's protocol)
    assert result.result(0.1).attacks[0].confidence == pytest.approx(adv_top.mean().item(), abs=1e-9)
    adversarial_accuracy = (predicted(model, x_adv) == y).double().mean().item()
    assert result.result(0.1).attacks[0].adversarial_accuracy == pytest.approx(adversarial_accuracy, abs=1e-9)
    # the cascade never attacks misclassified samples: they keep their clean confidence
    cascade = evaluate(model, x, y, "fgsm", [0.1], checks=False, certify_method=None).result(0.1).attacks[0]
    correct = predicted(model, x) == y
    expected = torch.where(correct, adv_top, clean_top).mean().item()
    assert cascade.confidence == pytest.approx(expected, abs=1e-9) and cascade.adversarial_accuracy is None
    assert result.clean_confidence == pytest.approx(clean_top.mean().item(), abs=1e-9)


def test_the_mnist_fixture_fails_loudly_without_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("REDBLUE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(MnistMissing, match=r"need MNIST .*redblue data fetch mnist"):
        mnist_slices.__wrapped__()  # past the cache: MNIST may have been loaded by an earlier test


def test_bad_input_raises_one_line_errors(mlp):
    model, x, y = mlp
    cases = [
        ("nope", [0.1], ConfigError, "unknown attack 'nope'"),
        ("fgsm:steps=3", [0.1], ConfigError, "has no parameter steps"),
        ("fgsm:eps=0.1", [0.1], ConfigError, "give eps values with --eps"),
        ("fgsm", [1.5], ConfigError, r"eps must be in \[0.0, 1.0\]"),
        ("fgsm", [-0.1], ConfigError, "eps must be"),
        ("fgsm", [], ConfigError, "no eps given"),
    ]
    for attacks, eps_list, error, message in cases:
        with pytest.raises(error, match=message) as info:
            evaluate(model, x, y, attacks, eps_list, checks=False)
        assert "\n" not in str(info.value)
    # the wrapper is put in eval mode first: leaving it in train mode, eval_mode's restore would put
    # the shared fixture model into train mode (dropout on) for every later test
    softmaxed = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with pytest.raises(ModelError, match="remove the final softmax"):
        evaluate(softmaxed, x, y, "fgsm", [0.1])
    assert not model.training
    with pytest.raises(ConfigError, match="unknown mode"):
        evaluate(model, x, y, "fgsm", [0.1], mode="best")
    with pytest.raises(ConfigError, match=r"pixels must be in \[0, 1\]"):
        evaluate(model, x * 255, y, "fgsm", [0.1])
    with pytest.raises(ConfigError, match="no samples"):
        evaluate(model, x[:0], y[:0], "fgsm", [0.1])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1, 10], "labels run from 0 to 10 but the model outputs 10 classes (0..9)"),
        ([-1, 1, 2], "labels run from -1 to 2 but the model outputs 10 classes (0..9)"),
    ],
)
def test_labels_outside_the_models_classes_are_one_line_before_any_attack(labels, message):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    x, y = torch.rand(3, 1, 2, 2), torch.tensor(labels)
    with pytest.raises(ConfigError) as caught:
        evaluate(model, x, y, "fgsm", [0.1], checks=False, certify_method=None)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="labels must be int64 class indices, got torch.float32"):
        evaluate(model, x, y.float(), "fgsm", [0.1], checks=False, certify_method=None)
