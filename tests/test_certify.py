"""Certified bounds (IBP, CROWN), checked against hand-computed bounds, a dense float64 reference
implementation, random sampling of the eps-ball, and attacks that must never beat a certificate."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from redblue.attacks import ATTACKS, fgsm
from redblue.attacks.core import eval_mode, input_gradient, linf_project, linf_random_start
from redblue.bounds import linearize, margin_bounds, outward_box
from redblue.certify import (
    certified_accuracy,
    certify,
    choose_method,
    input_box,
    interval_bounds,
    margin_lower_bounds,
)
from redblue.errors import ConfigError, ModelError
from redblue.models import CNNSmallSpec, build_model

F64 = torch.float64

# random_cnn's even-kernel 'same' convolution makes torch warn about a padded copy; that case is the point
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


# --- models ------------------------------------------------------------------------------------------


def hand_net() -> nn.Sequential:
    """2-3-2 network of the hand-computed case (see test_hand_computed_bounds_on_a_2_3_2_network)."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).to(F64)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, -2.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[2.0, 1.0, 1.0], [0.0, 1.5, -1.0]]))
        net[2].bias.copy_(torch.tensor([1.0, 0.0]))
    return net


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def random_mlp(seed: int = 0, dtype: torch.dtype = F64) -> nn.Sequential:
    """Three hidden layers, so full CROWN's intermediate bounds matter; input (N, 1, 3, 4)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 10),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(10, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    ).to(dtype)


def random_cnn(seed: int = 0, dtype: torch.dtype = F64) -> nn.Sequential:
    """Normalisation, padding, stride, groups, dilation and an asymmetric 'same' pad; input (N, 1, 6, 6)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize(0.3, 0.5),
        nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2),
            nn.ReLU(),
            nn.Conv2d(4, 3, 2, padding="same", bias=False),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 3 * 3, 6),
            nn.ReLU(),
            nn.Linear(6, 3),
        ),
    ).to(dtype)


def random_inputs(shape: tuple[int, ...], n: int, seed: int, dtype: torch.dtype = F64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


# --- an independent reference: dense float64 matrices, one sample at a time, endpoint formulas -------


def dense_stages(model: nn.Sequential, in_shape: tuple[int, ...]) -> list[tuple[Tensor, Tensor]]:
    """(W, b) of each affine stage between ReLUs, read off the modules by pushing basis vectors."""
    layers = [m for m in model.modules() if not isinstance(m, nn.Sequential)]
    segments: list[list[nn.Module]] = [[]]
    for layer in layers:
        if isinstance(layer, nn.ReLU):
            segments.append([])
        else:
            segments[-1].append(layer)
    stages, shape = [], in_shape
    for segment in segments:
        d = torch.Size(shape).numel()
        basis = torch.cat([torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64)]).view(d + 1, *shape)
        out = basis
        with torch.no_grad():
            for layer in segment:
                out = layer.eval()(out)
        shape = tuple(out.shape[1:])
        out = out.flatten(1)
        stages.append(((out[1:] - out[0]).T.contiguous(), out[0].clone()))
    return stages


def ref_interval(w: Tensor, b: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
    return w_pos @ lo + w_neg @ hi + b, w_pos @ hi + w_neg @ lo + b


def ref_backward(a: Tensor, c: Tensor, stages, k: int, pre_bounds, lo: Tensor, hi: Tensor) -> Tensor:
    """Lower bound of a @ z_k + c over the box, z_k the pre-activation of stage k (CROWN-Ada)."""
    a, c = a.clone(), c.clone()
    for j in range(k, -1, -1):
        w, b = stages[j]
        c, a = c + a @ b, a @ w
        if j == 0:
            break
        l, u = pre_bounds[j - 1]
        unstable = (l < 0) & (u > 0)
        chord = torch.where(unstable, u / torch.where(unstable, u - l, 1.0), 0.0)
        upper_slope = torch.where(l >= 0, 1.0, torch.where(unstable, chord, 0.0))
        upper_icpt = torch.where(unstable, -chord * l, 0.0)
        lower_slope = torch.where(l >= 0, 1.0, torch.where(unstable & (u >= -l), 1.0, 0.0))
        c = c + torch.where(a < 0, a * upper_icpt, 0.0).sum(dim=1)
        a = torch.where(a >= 0, a * lower_slope, a * upper_slope)
    return c + a.clamp(min=0) @ lo + a.clamp(max=0) @ hi


def ref_margins(model: nn.Sequential, x: Tensor, y: Tensor, eps: float, method: str, *, pure: bool = False) -> Tensor:
    """Margin lower bounds; CROWN methods take the larger of CROWN's and IBP's (tail) bound unless pure."""
    stages = dense_stages(model, tuple(x.shape[1:]))
    w_last, b_last = stages[-1]
    classes = len(b_last)
    rows = []
    for xi, yi in zip(x.double(), y.tolist()):
        lo, hi = (xi.flatten() - eps).clamp(min=0), (xi.flatten() + eps).clamp(max=1)
        spec = torch.eye(classes, dtype=F64)[yi] - torch.eye(classes, dtype=F64)  # rows e_y - e_j
        pre_bounds, post_lo, post_hi = [], lo, hi
        for k, (w, b) in enumerate(stages[:-1]):
            l, u = ref_interval(w, b, post_lo, post_hi)
            if method == "crown":  # tighten the IBP-unstable neurons by CROWN back to the input
                unstable = (l < 0) & (u > 0)
                eye = torch.eye(len(l), dtype=F64)
                zero = torch.zeros(len(l), dtype=F64)
                l = torch.where(unstable, torch.maximum(l, ref_backward(eye, zero, stages, k, pre_bounds, lo, hi)), l)
                u = torch.where(unstable, torch.minimum(u, -ref_backward(-eye, zero, stages, k, pre_bounds, lo, hi)), u)
            pre_bounds.append((l, u))
            post_lo, post_hi = l.clamp(min=0), u.clamp(min=0)
        a, c = spec @ w_last, spec @ b_last
        bound = c + a.clamp(min=0) @ post_lo + a.clamp(max=0) @ post_hi
        if method != "ibp":
            crown = ref_backward(spec, torch.zeros(classes, dtype=F64), stages, len(stages) - 1, pre_bounds, lo, hi)
            bound = crown if pure else torch.maximum(bound, crown)
        bound[yi] = float("inf")
        rows.append(bound)
    return torch.stack(rows)


# --- hand-computed bounds ------------------------------------------------------------------------------


def test_hand_computed_bounds_on_a_2_3_2_network():
    # x = (0.5, 0.5), eps = 0.5: the box is [0, 1]^2.
    # Pre-activations: p1 = x1 + x2 in [0, 2] (active), p2 = x1 - x2 in [-1, 1] (unstable, u >= -l:
    # lower slope 1, upper line (p2 + 1) / 2), p3 = x1 - 2 x2 in [-2, 1] (unstable, u < -l: lower
    # slope 0, upper line (p3 + 2) / 3). IBP: h1 in [0, 2], h2 in [0, 1], h3 in [0, 1].
    # Logits z0 = 2 h1 + h2 + h3 + 1 in [1, 7], z1 = 1.5 h2 - h3 in [-1, 1.5].
    # Margin z0 - z1 = 2 h1 - 0.5 h2 + 2 h3 + 1:
    #   IBP (elided): 0 - 0.5 + 0 + 1 = 0.5
    #   CROWN: 2 p1 - 0.5 (p2 + 1) / 2 + 2 * 0 + 1 = 1.75 x1 + 2.25 x2 + 0.75 >= 0.75
    # Margin z1 - z0 = -2 h1 + 0.5 h2 - 2 h3 - 1:
    #   IBP (elided): -4 + 0 - 2 - 1 = -7
    #   CROWN: -2 p1 + 0.5 p2 - 2 (p3 + 2) / 3 - 1 = -13/6 x1 - 7/6 x2 - 7/3 >= -17/3
    net = hand_net()
    box_lo, box_hi = torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64)
    lower_logits, upper_logits = interval_bounds(net, box_lo, box_hi)
    torch.testing.assert_close(lower_logits, torch.tensor([[1.0, -1.0]], dtype=F64))
    torch.testing.assert_close(upper_logits, torch.tensor([[7.0, 1.5]], dtype=F64))

    inf = float("inf")
    expected = {
        "ibp": torch.tensor([[inf, 0.5], [-7.0, inf]], dtype=F64),
        "crown": torch.tensor([[inf, 0.75], [-17 / 3, inf]], dtype=F64),
        "crown-ibp": torch.tensor([[inf, 0.75], [-17 / 3, inf]], dtype=F64),  # one hidden layer: same
    }
    y = torch.tensor([0, 1])
    x = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=F64)
    # the clipped ball of (0.75, 0.5) with eps 0.75 is the same box [0, 1]^2
    x_clipped = torch.tensor([[0.75, 0.5], [0.75, 0.5]], dtype=F64)
    for method, bounds in expected.items():
        torch.testing.assert_close(margin_lower_bounds(net, x, y, eps=0.5, method=method), bounds)
        torch.testing.assert_close(margin_lower_bounds(net, x_clipped, y, eps=0.75, method=method), bounds)
    # the true minimum of z0 - z1 on the box is 1 (at x = 0), of z1 - z0 is -5 (at x = (1, 1))
    assert certify(net, x[:1], y[:1], eps=0.5, method="crown").tolist() == [True]


def test_input_box_is_the_eps_ball_clipped_to_pixels():
    x = torch.tensor([[0.05, 0.5, 0.97]])
    lower, upper = input_box(x, 0.1)
    torch.testing.assert_close(lower, torch.tensor([[0.0, 0.4, 0.87]]))
    torch.testing.assert_close(upper, torch.tensor([[0.15, 0.6, 1.0]]))


# --- the dense reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_margins_match_the_dense_float64_reference(arch, method):
    model, shape = (random_mlp(1), (1, 3, 4)) if arch == "mlp" else (random_cnn(1), (1, 6, 6))
    x, y = random_inputs(shape, 6, seed=2)
    for eps in (0.03, 0.15):
        got = margin_lower_bounds(model, x, y, eps=eps, method=method, batch_size=4)
        torch.testing.assert_close(got, ref_margins(model, x, y, eps, method), rtol=1e-9, atol=1e-9)
        if method != "ibp":  # the CROWN part decides most margins here, so it is what gets checked
            finite = ~torch.isinf(got)
            crown_decides = ref_margins(model, x, y, eps, method, pure=True)[finite] >= got[finite] - 1e-12
            assert crown_decides.float().mean() > 0.5


def test_interval_bounds_match_the_dense_reference_on_a_conv_net():
    model = random_cnn(3)
    x, _ = random_inputs((1, 6, 6), 3, seed=4)
    lower, upper = input_box(x, 0.1)
    got_lower, got_upper = interval_bounds(model, lower, upper)
    stages = dense_stages(model, (1, 6, 6))
    for i in range(len(x)):
        lo, hi = lower[i].flatten(), upper[i].flatten()
        for k, (w, b) in enumerate(stages):
            if k > 0:
                lo, hi = lo.clamp(min=0), hi.clamp(min=0)
            lo, hi = ref_interval(w, b, lo, hi)
        torch.testing.assert_close(got_lower[i], lo, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_upper[i], hi, rtol=1e-9, atol=1e-9)


def test_normalisation_layer_equals_folding_it_into_the_first_linear():
    torch.manual_seed(5)
    linear = nn.Linear(12, 6).to(F64)
    head = nn.Sequential(nn.ReLU(), nn.Linear(6, 3)).to(F64)
    normalised = nn.Sequential(nn.Flatten(), Normalize(0.2, 0.4), linear, *head)
    folded = nn.Linear(12, 6).to(F64)
    with torch.no_grad():  # W ((x - m) / s) + b = (W / s) x + (b - W m / s)
        folded.weight.copy_(linear.weight / 0.4)
        folded.bias.copy_(linear.bias - linear.weight.sum(dim=1) * 0.2 / 0.4)
    plain = nn.Sequential(nn.Flatten(), folded, *head)
    x, y = random_inputs((1, 3, 4), 5, seed=6)
    for method in ("ibp", "crown"):
        torch.testing.assert_close(
            margin_lower_bounds(normalised, x, y, eps=0.1, method=method),
            margin_lower_bounds(plain, x, y, eps=0.1, method=method),
        )


# --- soundness by sampling the clipped eps-ball -------------------------------------------------------


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_bounds_hold_on_thousands_of_points_and_corners_of_the_ball(arch):
    dtype = torch.float32
    model, shape = (random_mlp(7, dtype), (1, 3, 4)) if arch == "mlp" else (random_cnn(7, dtype), (1, 6, 6))
    x, y = random_inputs(shape, 4, seed=8, dtype=dtype)
    eps = 0.1
    lower, upper = input_box(x, eps)
    lower_logits, upper_logits = interval_bounds(model, lower, upper)
    margins = {m: margin_lower_bounds(model, x, y, eps=eps, method=m) for m in ("ibp", "crown", "crown-ibp")}
    g = torch.Generator().manual_seed(9)
    for i in range(len(x)):
        inside = torch.rand((3000, *shape), generator=g, dtype=dtype)
        corners = torch.randint(0, 2, (1000, *shape), generator=g).to(dtype)
        points = lower[i] + (upper[i] - lower[i]) * torch.cat([inside, corners])
        with torch.no_grad():
            logits = model.eval()(points)
        assert bool((logits >= lower_logits[i] - 1e-5).all()) and bool((logits <= upper_logits[i] + 1e-5).all())
        others = torch.arange(logits.shape[1]) != y[i]
        true_margins = (logits[:, y[i] : y[i] + 1] - logits)[:, others]  # (points, classes - 1)
        for method, bound in margins.items():
            assert bool((true_margins >= bound[i, others] - 1e-5).all()), method
            assert bool(torch.isinf(bound[i, y[i]]))


def test_float64_and_float32_bounds_agree():
    for build, shape in ((random_mlp, (1, 3, 4)), (random_cnn, (1, 6, 6))):
        x, y = random_inputs(shape, 5, seed=10)
        for method in ("ibp", "crown", "crown-ibp"):
            exact = margin_lower_bounds(build(11, F64), x, y, eps=0.1, method=method)
            single = margin_lower_bounds(build(11, torch.float32), x.float(), y, eps=0.1, method=method)
            torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=1e-4)


def test_bounds_do_not_depend_on_the_batch_size():
    model = random_cnn(12)
    x, y = random_inputs((1, 6, 6), 7, seed=13)
    whole = margin_lower_bounds(model, x, y, eps=0.1, method="crown", batch_size=7)
    pieces = margin_lower_bounds(model, x, y, eps=0.1, method="crown", batch_size=2)
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=1e-12)


# --- soundness against attacks that aim at each bound --------------------------------------------------


def pgd_minima(model: nn.Module, x: Tensor, y: Tensor, eps: float, objective, *, steps: int = 40) -> Tensor:
    """Smallest value PGD finds for each column of objective(logits, y) (N, K) in the clipped eps-ball.

    One sign-gradient descent per (sample, column), started from x and from a random point of
    the box; returns (N, K). Every iterate is clipped to the box, so every value is attained there.
    """
    lower, upper = input_box(x, eps)
    n, k = len(x), objective(model(x), y).shape[1]
    column = torch.arange(k).repeat_interleave(n)  # copy c of the batch descends on column c // n
    copies = (k, *[1] * (x.dim() - 1))
    box_lo, box_hi, labels = lower.repeat(copies), upper.repeat(copies), y.repeat(k)
    g = torch.Generator().manual_seed(0)
    best = torch.full((k * n,), float("inf"), dtype=x.dtype)
    inside = box_lo + (box_hi - box_lo) * torch.rand(box_lo.shape, generator=g, dtype=x.dtype)
    for start in (x.repeat(copies), inside):
        points = start
        for _ in range(steps + 1):
            points = points.detach().requires_grad_(True)
            values = objective(model(points), labels).gather(1, column[:, None]).squeeze(1)
            best = torch.minimum(best, values.detach())
            (grad,) = torch.autograd.grad(values.sum(), points)
            points = torch.minimum(torch.maximum(points - 2.5 * eps / steps * grad.sign(), box_lo), box_hi)
    return best.view(k, n).T


def margins_of(logits: Tensor, y: Tensor) -> Tensor:
    return logits.gather(1, y[:, None]) - logits  # (N, classes): z_y - z_j


def redblue_cnn() -> nn.Sequential:
    """redblue's own CNN layout (kernel 4, stride 2, padding 1, on 28 x 28), narrowed to stay fast."""
    torch.manual_seed(24)
    return build_model(CNNSmallSpec(channels1=2, channels2=4, hidden=8)).to(F64).eval()


@pytest.mark.parametrize("arch", ["mlp", "cnn", "redblue-cnn"])
def test_bounds_hold_at_the_points_pgd_finds_for_each_logit_and_margin(arch):
    # float64, so a violation of even 1e-9 is a bug, not rounding
    model, shape, n = {
        "mlp": (random_mlp(17).eval(), (1, 3, 4), 5),
        "cnn": (random_cnn(17).eval(), (1, 6, 6), 5),
        "redblue-cnn": (redblue_cnn(), (1, 28, 28), 2),
    }[arch]
    x, y = random_inputs(shape, n, seed=18)
    classes = {"mlp": 4, "cnn": 3, "redblue-cnn": 10}[arch]
    for eps in (0.01, 0.05) if arch == "redblue-cnn" else (0.05, 0.2):
        lower_logits, upper_logits = interval_bounds(model, *input_box(x, eps))
        # one PGD run per column: minimise each logit, maximise each logit, minimise each margin
        objectives = lambda z, labels: torch.cat([z, -z, margins_of(z, labels)], dim=1)  # noqa: E731
        lowest = pgd_minima(model, x, y, eps, objectives, steps=20)
        assert bool((lowest[:, :classes] >= lower_logits - 1e-9).all())
        assert bool((-lowest[:, classes : 2 * classes] <= upper_logits + 1e-9).all())
        worst_margins = lowest[:, 2 * classes :].scatter(1, y[:, None], float("inf"))
        for method in ("ibp", "crown-ibp", "crown"):
            bounds = margin_lower_bounds(model, x, y, eps=eps, method=method)
            assert bool((worst_margins >= bounds - 1e-9).all()), (method, eps)


def test_bounds_are_exact_on_an_affine_network():
    # no ReLU: the margin is affine in x, so its minimum over the box is at a corner PGD reaches,
    # and every method must return exactly that minimum (likewise IBP's logit bounds)
    torch.manual_seed(19)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Linear(6, 4)).to(F64).eval()
    x, y = random_inputs((1, 3, 4), 6, seed=20)
    eps = 0.3  # large enough that the box is clipped to [0, 1] on many pixels
    lowest = pgd_minima(model, x, y, eps, margins_of)
    finite = torch.arange(4) != y[:, None]
    for method in ("ibp", "crown-ibp", "crown"):
        bounds = margin_lower_bounds(model, x, y, eps=eps, method=method)
        torch.testing.assert_close(bounds[finite], lowest[finite], rtol=1e-9, atol=1e-9)
    # interval arithmetic is exact through one affine layer (not through two: it forgets correlations)
    first = model[:2]
    lower_logits, upper_logits = interval_bounds(first, *input_box(x, eps))
    extremes = pgd_minima(first, x, y, eps, lambda z, _: torch.cat([z, -z], dim=1))
    torch.testing.assert_close(lower_logits, extremes[:, :6], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(upper_logits, -extremes[:, 6:], rtol=1e-9, atol=1e-9)


def margin_parts(model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str):
    """redblue's sound bounds split into their CROWN and IBP parts, before the larger is taken."""
    return margin_bounds(linearize(model, x, dtype=F64), *outward_box(x, eps), y, method=method, sound=True)


def test_neither_crown_nor_ibp_dominates_so_the_certified_bound_is_the_larger_of_the_two():
    crown_wins = ibp_wins = 0
    for build, shape in ((random_mlp, (1, 3, 4)), (random_cnn, (1, 6, 6))):
        for seed in (14, 15):
            model = build(seed)
            x, y = random_inputs(shape, 20, seed=seed)
            parts = {m: margin_parts(model, x, y, 0.05, m) for m in ("ibp", "crown-ibp", "crown")}
            for method in ("crown-ibp", "crown"):
                # each CROWN method's IBP part is interval arithmetic over its own intermediate bounds
                part = parts[method]
                certified = margin_lower_bounds(model, x, y, eps=0.05, method=method).gather(1, part.others)
                torch.testing.assert_close(certified, torch.maximum(part.crown, part.ibp), rtol=0, atol=0)
                crown_wins += int((part.crown > part.ibp + 1e-6).sum())
                ibp_wins += int((part.crown < part.ibp - 1e-6).sum())
            if build is random_mlp:  # CROWN alone, with either intermediate bounds, beats IBP on average here
                assert parts["crown"].crown.mean() > parts["crown-ibp"].crown.mean() > parts["ibp"].ibp.mean()
    # the premise of taking the larger: each of the two is strictly tighter on some margins
    assert crown_wins > 20 and ibp_wins > 20


# --- certify: properties, and attacks never beat a certificate ----------------------------------------


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[nn.Module, Tensor, Tensor]:
    """A 784-32-10 MLP trained for a second on 3000 MNIST images; 300 other images to certify."""
    from redblue.data import load_dataset

    ds = load_dataset("mnist", "test")  # fails loudly without MNIST: the thresholds below are MNIST's
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_train, y_train = ds.x[:3000], ds.y[:3000]
    for _ in range(4):
        for start in range(0, 3000, 100):
            loss = nn.functional.cross_entropy(model(x_train[start : start + 100]), y_train[start : start + 100])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.train()  # left in training mode: certify must switch to eval and restore it
    return model, ds.x[5000:5300], ds.y[5000:5300]


def self_labelled(build, shape: tuple[int, ...], n: int) -> tuple[nn.Module, Tensor, Tensor]:
    """A random float64 net and random inputs labelled with its own predictions (clean accuracy 1).

    The last bias is shifted so that every class wins somewhere in [0, 1]^d: decision boundaries
    then cross the eps-balls, and both certificates and attacks have something to decide.
    """
    model = build(21).eval()
    last = model[-1] if isinstance(model[-1], nn.Linear) else model[1][-1]
    x, _ = random_inputs(shape, 500 + n, seed=22)
    with torch.no_grad():
        last.bias -= model(x[n:]).mean(dim=0)
        return model, x[:n], model(x[:n]).argmax(dim=1)


def test_certified_samples_are_correct_and_eps_zero_gives_clean_accuracy(trained_mlp):
    model, x, y = trained_mlp
    with torch.no_grad():
        correct = model.eval()(x).argmax(dim=1) == y
    model.train()
    assert 0.85 < correct.float().mean() < 1.0
    for method in ("ibp", "crown", "crown-ibp"):
        assert torch.equal(certify(model, x, y, eps=0.0, method=method), correct)
        certified = certify(model, x, y, eps=0.01, method=method, batch_size=64)
        assert not bool((certified & ~correct).any())
    assert model.training  # mode restored
    cnn, x_cnn, _ = self_labelled(random_cnn, (1, 6, 6), 8)
    wrong = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for method in ("ibp", "crown", "crown-ibp"):
        assert torch.equal(certify(cnn, x_cnn, wrong, eps=0.0, method=method), cnn(x_cnn).argmax(dim=1) == wrong)


def test_certified_set_shrinks_with_eps_and_crown_certifies_more_than_ibp(trained_mlp):
    model, x, y = trained_mlp
    previous = {m: certify(model, x, y, eps=0.0, method=m) for m in ("ibp", "crown")}
    for eps in (0.005, 0.01, 0.02, 0.05):
        ibp, crown = certify(model, x, y, eps=eps, method="ibp"), certify(model, x, y, eps=eps, method="crown")
        assert not bool((ibp & ~previous["ibp"]).any())  # interval bounds are monotone in the box
        previous = {"ibp": ibp, "crown": crown}
    # and CROWN certifies strictly more where IBP is loose (this model, eps 0.01)
    crown_accuracy = certified_accuracy(model, x, y, eps=0.01, method="crown")
    assert crown_accuracy > certified_accuracy(model, x, y, eps=0.01, method="ibp")
    assert certified_accuracy(model, x, y, eps=0.005, method="crown") > 0.3


def robust_under_attacks(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Samples still classified correctly under FGSM, PGD-20 and a per-class margin PGD (bool, N)."""
    g = torch.Generator().manual_seed(0)
    if "pgd" in ATTACKS:
        entry = ATTACKS["pgd"]
        x_pgd = entry(model, x, y, entry.params(eps=eps, steps=20), generator=g)
    else:
        x_pgd = pgd20(model, x, y, eps=eps, generator=g)
    lower, upper = input_box(x, eps)
    robust = torch.ones(len(y), dtype=torch.bool)
    with eval_mode(model):
        for x_adv in (fgsm(model, x, y, eps=eps), x_pgd):
            assert bool((x_adv >= lower - 1e-6).all()) and bool((x_adv <= upper + 1e-6).all())
            with torch.no_grad():
                robust &= model(x_adv).argmax(dim=1) == y
        worst = pgd_minima(model, x, y, eps, margins_of, steps=20)
    return robust & (worst.scatter(1, y[:, None], float("inf")) > 0).all(dim=1)


def pgd20(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, generator: torch.Generator) -> Tensor:
    x_adv = linf_random_start(x, eps, generator)
    for _ in range(20):
        grad = input_gradient(model, x_adv, y)
        x_adv = linf_project(x_adv + 2.5 * eps / 20 * grad.sign(), center=x, eps=eps)
    return x_adv


@pytest.mark.parametrize("case", ["mnist-mlp", "random-mlp", "random-cnn"])
def test_certified_accuracy_is_never_above_robust_accuracy_under_attack(case, request):
    if case == "mnist-mlp":
        model, x, y = request.getfixturevalue("trained_mlp")
        x, y = x[:100], y[:100]
        grid = (0.0, 0.005, 0.02, 0.05, 0.1)
    else:
        build, shape = (random_mlp, (1, 3, 4)) if case == "random-mlp" else (random_cnn, (1, 6, 6))
        model, x, y = self_labelled(build, shape, 40)
        grid = (0.0, 0.01, 0.03, 0.1, 0.3)
    certified_somewhere = False
    for eps in grid:
        robust = robust_under_attacks(model, x, y, eps)
        for method in ("ibp", "crown-ibp", "crown"):
            certified = certify(model, x, y, eps=eps, method=method)
            assert not bool((certified & ~robust).any()), (method, eps)  # a certificate is never broken
            assert certified_accuracy(model, x, y, eps=eps, method=method) <= robust.double().mean().item()
            certified_somewhere |= eps > 0 and bool(certified.any())
    assert certified_somewhere  # the check above was not vacuous
    assert robust.float().mean() < 0.5  # nor were the attacks: at the largest eps they win mostly


# --- max-pooling: IBP passes it, the CROWN methods refuse it -----------------------------------------


def pooled_cnn(seed: int) -> nn.Sequential:
    """Madry et al.'s layout (conv, ReLU, 2x2 max-pool, twice; dense; dense), shrunk to 6 x 6 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3),
    ).to(F64).eval()


def test_ibp_through_max_pooling_is_exact_on_a_hand_computed_case_and_crown_refuses_it():
    # z = (m, -m) with m the max of the four pixels: over a box, m lies exactly in
    # [max(lower), max(upper)], so the margin z0 - z1 = 2 m is bounded below by 2 max(lower), attained
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 2, bias=False)).to(F64)
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.tensor([[[[0.2, 0.5], [0.9, 0.4]]]], dtype=F64)
    y = torch.tensor([0])
    bounds = margin_lower_bounds(model, x, y, eps=0.1, method="ibp")
    torch.testing.assert_close(bounds[0, 1], torch.tensor(2 * 0.8, dtype=F64))
    lower_logits, upper_logits = interval_bounds(model, *input_box(x, 0.1))
    torch.testing.assert_close(lower_logits, torch.tensor([[0.8, -1.0]], dtype=F64))
    torch.testing.assert_close(upper_logits, torch.tensor([[1.0, -0.8]], dtype=F64))
    for method in ("crown", "crown-ibp"):
        with pytest.raises(ModelError, match="max-pooling layer '0'; use method ibp"):
            certify(model, x, y, eps=0.1, method=method)


def test_ibp_bounds_through_max_pooling_hold_at_the_points_pgd_finds():
    model = pooled_cnn(40)
    x, y = random_inputs((1, 6, 6), 5, seed=41)
    for eps in (0.05, 0.2):
        lower_logits, upper_logits = interval_bounds(model, *input_box(x, eps))
        objectives = lambda z, labels: torch.cat([z, -z, margins_of(z, labels)], dim=1)  # noqa: E731
        lowest = pgd_minima(model, x, y, eps, objectives, steps=20)
        assert bool((lowest[:, :3] >= lower_logits - 1e-9).all())
        assert bool((-lowest[:, 3:6] <= upper_logits + 1e-9).all())
        bounds = margin_lower_bounds(model, x, y, eps=eps, method="ibp")
        assert bool((lowest[:, 6:].scatter(1, y[:, None], float("inf")) >= bounds - 1e-9).all())
        # and not vacuous: the bounds are finite and within reach of what PGD finds at the small eps
        if eps == 0.05:
            assert bool(((lowest[:, :3] - lower_logits) < 1.0).all())


def test_choose_method_picks_crown_for_mlps_crown_ibp_for_conv_nets_and_ibp_with_max_pooling():
    assert choose_method(random_mlp(0)) == "crown"
    assert choose_method(random_cnn(0)) == "crown-ibp"
    assert choose_method(pooled_cnn(0)) == "ibp"
    x, y = random_inputs((1, 6, 6), 4, seed=42)
    assert certify(pooled_cnn(0), x, y, eps=0.01, method=choose_method(pooled_cnn(0))).shape == (4,)


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_layer, name", [(nn.Sigmoid(), "Sigmoid"), (nn.GroupNorm(1, 1), "GroupNorm")])
def test_unsupported_layer_is_a_one_line_model_error(bad_layer, name):
    model = nn.Sequential(bad_layer, nn.Flatten(), nn.Linear(36, 3))
    x, y = random_inputs((1, 6, 6), 2, seed=0, dtype=torch.float32)
    with pytest.raises(ModelError, match=f"'0', a {name}.*Linear, Conv2d, ReLU, MaxPool2d") as info:
        certify(model, x, y, eps=0.1)
    assert "\n" not in str(info.value)


def test_other_unsupported_models_and_inputs_are_errors():
    x, y = random_inputs((1, 3, 4), 2, seed=0, dtype=torch.float32)

    class NotAffine(nn.Module):  # has mean and std but squares its input
        mean, std = 0.0, 1.0

        def forward(self, t):
            return t * t

    with pytest.raises(ModelError, match="not the elementwise"):
        certify(nn.Sequential(NotAffine(), nn.Flatten(), nn.Linear(12, 3)), x, y, eps=0.1)
    with pytest.raises(ModelError, match="batch dimension"):
        certify(nn.Sequential(nn.Flatten(0), nn.Linear(24, 3)), x, y, eps=0.1)
    with pytest.raises(ModelError, match="padding_mode"):
        circular = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")
        certify(nn.Sequential(circular, nn.Flatten(), nn.Linear(12, 3)), x, y, eps=0.1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ConfigError, match="eps"):
        certify(model, x, y, eps=-0.1)
    with pytest.raises(ConfigError, match="method"):
        certify(model, x, y, eps=0.1, method="deeppoly")
    with pytest.raises(ConfigError, match="labels"):
        certify(model, x, torch.tensor([0, 3]), eps=0.1)


def test_eval_mode_batch_norm_certifies_exactly_as_the_linear_layer_it_folds_into():
    """Linear -> BatchNorm1d (eval) -> ReLU -> Linear has the same bounds as the one Linear with the
    BatchNorm folded in by hand: W' = diag(g / sqrt(var + eps)) W, b' = g (b - mean) / sqrt(var + eps) + beta."""
    torch.manual_seed(3)
    first, batch_norm, last = nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)
    with torch.no_grad():
        batch_norm.running_mean.uniform_(-0.5, 0.5)
        batch_norm.running_var.uniform_(0.2, 3.0)
        batch_norm.weight.uniform_(-2.0, 2.0)
        batch_norm.bias.uniform_(-0.3, 0.3)
    model = nn.Sequential(first, batch_norm, nn.ReLU(), last).to(F64).eval()
    scale = batch_norm.weight / (batch_norm.running_var + batch_norm.eps).sqrt()
    folded_first = nn.Linear(6, 5).to(F64)
    with torch.no_grad():
        folded_first.weight.copy_(scale[:, None] * first.weight)
        folded_first.bias.copy_(scale * (first.bias - batch_norm.running_mean) + batch_norm.bias)
    folded = nn.Sequential(folded_first, nn.ReLU(), last)
    x, y = random_inputs((6,), 8, seed=4)
    for method in ("ibp", "crown"):
        ours = margin_lower_bounds(model, x, y, eps=0.1, method=method)
        torch.testing.assert_close(ours, margin_lower_bounds(folded, x, y, eps=0.1, method=method), rtol=1e-9, atol=1e-9)
