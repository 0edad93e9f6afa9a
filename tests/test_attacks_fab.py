"""FAB (Croce & Hein, 2020): its projection onto a hyperplane within the box against scipy's LP and QP
solvers, and the attack on models whose closest adversarial example is known by hand.

The cross-checks against the reference implementation (pyautoattack's FAB and FAB-T on a trained
MLP) are in test_attacks_fab_autoattack.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize  # the `peers` extra, which CI installs
from torch import nn

from redblue.attacks import ATTACKS
from redblue.attacks.core import per_sample_norm
from redblue.attacks.fab import (
    FABL2Params,
    FABParams,
    FABTL2Params,
    FABTParams,
    _random_start,
    fab,
    fab_closest,
    project_onto_hyperplane_in_box,
)
from redblue.errors import ConfigError

# --- the projection, against independent solvers -------------------------------------------------


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A point in [0, 1]^D with pixels pinned at 0 and 1, a hyperplane w . z = b with some w_i = 0;
    b drawn so that about one case in seven lies beyond the box's reach."""
    dims = int(rng.integers(1, 12))
    point = rng.random(dims)
    point[point < 0.2], point[point > 0.8] = 0.0, 1.0
    w = rng.standard_normal(dims)
    w[rng.random(dims) < 0.15] = 0.0
    b = float(w @ rng.random(dims) * rng.random() * 2.5)
    return point, w, b


def _ours(point: np.ndarray, w: np.ndarray, b: float, norm: str) -> np.ndarray:
    as_row = lambda a: torch.tensor(a, dtype=torch.float64)[None]  # noqa: E731
    return project_onto_hyperplane_in_box(as_row(point), as_row(w), torch.tensor([b], dtype=torch.float64), norm=norm)[0].numpy()


def _farthest_corner(point: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """The step to the box corner that moves w . z furthest towards b (each coordinate to its edge)."""
    towards = -np.sign(w) * np.sign(w @ point - b)
    return np.where(towards > 0, 1.0 - point, -point) * (w != 0)


def _linf_lp(point: np.ndarray, w: np.ndarray, b: float):
    """min s over (d, s): |d_i| <= s, w . d = b - w . point, 0 <= point + d <= 1."""
    dims = len(point)
    ones = np.ones((dims, 1))
    return linprog(
        np.r_[np.zeros(dims), 1.0],
        A_ub=np.block([[np.eye(dims), -ones], [-np.eye(dims), -ones]]), b_ub=np.zeros(2 * dims),
        A_eq=np.r_[w, 0.0][None], b_eq=[b - w @ point],
        bounds=[(-p, 1.0 - p) for p in point] + [(0.0, None)],
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )  # fmt: skip


def test_linf_projection_is_the_linear_programs_optimum():
    rng = np.random.default_rng(0)
    n_feasible = n_infeasible = 0
    for _ in range(300):
        point, w, b = _random_case(rng)
        d = _ours(point, w, b, "linf")
        assert (point + d >= 0).all() and (point + d <= 1).all()
        solved = _linf_lp(point, w, b)
        if solved.status == 2:  # the box does not reach the hyperplane: the farthest corner
            n_infeasible += 1
            np.testing.assert_allclose(d, _farthest_corner(point, w, b), atol=1e-12)
            continue
        assert solved.status == 0, solved.message
        n_feasible += 1
        assert abs(w @ (point + d) - b) <= 1e-12  # on the hyperplane
        assert abs(np.abs(d).max(initial=0.0) - solved.fun) <= 1e-12  # at the smallest L-inf norm
    assert n_feasible > 200 and n_infeasible > 20  # both branches ran


def test_l2_projection_is_the_quadratic_programs_unique_optimum():
    rng = np.random.default_rng(1)
    n_solved = 0
    for _ in range(300):
        point, w, b = _random_case(rng)
        d = _ours(point, w, b, "l2")
        if _linf_lp(point, w, b).status == 2:
            np.testing.assert_allclose(d, _farthest_corner(point, w, b), atol=1e-12)
            continue
        if not w.any():  # every point is on (b = 0) a hyperplane that is not one: nothing moves
            assert not d.any()
            continue
        solved = minimize(lambda v: v @ v, np.zeros(len(point)), jac=lambda v: 2 * v, method="SLSQP",
                          constraints=[{"type": "eq", "fun": lambda v: w @ (point + v) - b, "jac": lambda v: w}],
                          bounds=[(-p, 1.0 - p) for p in point], options={"ftol": 1e-15, "maxiter": 1000})  # fmt: skip
        assert solved.success, solved.message
        n_solved += 1
        np.testing.assert_allclose(d, solved.x, atol=1e-9)  # strictly convex: one minimiser
    assert n_solved > 200


def test_projection_by_hand():
    # from (0.5, 0.5) onto z_1 + z_2 = 1.6: L2 steps along w, L-inf moves both coordinates by 0.3
    point = torch.tensor([[0.5, 0.5], [0.5, 0.95]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.6, 1.6], dtype=torch.float64)
    # the second point must rise by 0.15, but z_2 only by 0.05 before the box stops it: z_1 rises
    # by 0.1, in L-inf and in L2 alike (the KKT point clips z_2 at 1 and moves z_1 the rest of the way)
    expected = torch.tensor([[0.3, 0.3], [0.1, 0.05]], dtype=torch.float64)
    for norm in ("linf", "l2"):
        torch.testing.assert_close(project_onto_hyperplane_in_box(point, w, b, norm=norm), expected)
    # a point already on the hyperplane does not move; a zero w moves nothing
    zero = project_onto_hyperplane_in_box(point[:1], torch.zeros(1, 2, dtype=torch.float64), b[:1], norm="l2")
    assert torch.equal(zero, torch.zeros(1, 2, dtype=torch.float64))
    on = project_onto_hyperplane_in_box(point[:1], w[:1], torch.tensor([1.0], dtype=torch.float64), norm="linf")
    assert torch.equal(on, torch.zeros(1, 2, dtype=torch.float64))


# --- the attack, where the closest adversarial example is known ----------------------------------


def _affine(weight: list[list[float]], bias: list[float]) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(len(weight[0]), len(weight), dtype=torch.float64))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(weight, dtype=torch.float64))
        model[1].bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return model.eval()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_fab_finds_the_closest_boundary_point_of_a_two_class_affine_model(norm: str, targeted: bool):
    # margin z_0 - z_1 = v . x - 0.3 with v = w_0 - w_1 = (-1, 2, -0.5, 3); the box does not bind on
    # the way from these points, so the closest boundary point is at margin / |v|_dual (|v|_1 for
    # L-inf, |v|_2 for L2)
    model = _affine([[0.5, 1.0, -0.5, 2.0], [1.5, -1.0, 0.0, -1.0]], [0.0, 0.3])
    x = torch.tensor([[0.4, 0.3, 0.5, 0.2], [0.5, 0.5, 0.5, 0.45]], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    v = torch.tensor([-1.0, 2.0, -0.5, 3.0], dtype=torch.float64)
    closest = (x @ v - 0.3) / v.norm(p=1 if norm == "linf" else 2)
    params_type = {(False, "linf"): FABParams, (True, "linf"): FABTParams, (False, "l2"): FABL2Params, (True, "l2"): FABTL2Params}
    params = params_type[(targeted, norm)](eps=1.0, n_iter=20)
    x_found, distance, _ = fab_closest(model, x, y, params, None, targeted=targeted)
    with torch.no_grad():
        assert bool((model(x_found).argmax(dim=1) == 1).all())  # across the boundary
    torch.testing.assert_close(distance, per_sample_norm(x_found - x, norm))
    # never closer than the boundary (no adversarial point is), and within 1% of it: the overshoot
    # (eta) and the back-off (beta) leave FAB 0.5% beyond it here (the reference too, to 1e-7)
    assert bool((distance >= closest * (1 - 1e-12)).all()), (distance, closest)
    assert bool((distance <= closest * 1.01).all()), (distance, closest)


def test_fab_keeps_only_what_fits_in_the_ball():
    model = _affine([[0.5, 1.0, -0.5, 2.0], [1.5, -1.0, 0.0, -1.0]], [0.0, 0.3])
    x = torch.tensor([[0.4, 0.3, 0.5, 0.2], [0.5, 0.5, 0.5, 0.45]], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    closest = (x @ torch.tensor([-1.0, 2.0, -0.5, 3.0], dtype=torch.float64) - 0.3) / 6.5  # about 0.04 and 0.2
    eps = 0.1  # the first sample's closest boundary point fits, the second's does not
    x_adv = fab(model, x, y, eps=eps, n_iter=20)
    assert bool((per_sample_norm(x_adv - x, "linf") <= eps + 1e-12).all())
    with torch.no_grad():
        assert (model(x_adv).argmax(dim=1) != y).tolist() == [True, False]
    assert closest[0] < eps < closest[1]


def test_fab_t_attacks_the_top_classes_in_turn():
    # three classes, z = (0.6, x_2 - x_1, 0.3): x is class 0, class 2 scores second, class 1 last.
    # FAB-T with one target attacks class 2 only, whose boundary it cannot reach; with two, class 1
    # too, which overtakes class 0 where x_2 - x_1 > 0.6: at L-inf distance 0.3 from x
    model = _affine([[0.0, 0.0], [-1.0, 1.0], [0.0, 0.0]], [0.6, 0.0, 0.3])
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    _, distance, _ = fab_closest(model, x, y, FABTParams(eps=1.0, n_iter=10, n_target_classes=1), None, targeted=True)
    assert distance.item() == float("inf")
    _, distance, _ = fab_closest(model, x, y, FABTParams(eps=1.0, n_iter=10, n_target_classes=2), None, targeted=True)
    assert 0.3 <= distance.item() <= 0.3 * 1.01


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_restarts_after_the_first_start_half_eps_away_and_one_restart_draws_nothing(norm: str):
    x = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)
    start = _random_start(x, 0.2, norm, torch.Generator().manual_seed(0))
    torch.testing.assert_close(per_sample_norm(start - x, norm), torch.full((3,), 0.1, dtype=torch.float64))
    # the first run starts at x: FAB-T with one restart (the standard preset's) leaves the generator as it was
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64)).eval()
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    fab(model, x, torch.zeros(3, dtype=torch.long), eps=0.2, norm=norm, targeted=True, n_iter=3, generator=generator)
    assert torch.equal(generator.get_state(), before)


def test_registered_in_both_norms_and_listed_by_cost_after_apgd_t():
    from redblue.evaluate import estimated_cost, parse_attack_list

    assert {name: ATTACKS[name].norm for name in ("fab", "fab-t", "fab-l2", "fab-t-l2")} == {
        "fab": "linf", "fab-t": "linf", "fab-l2": "l2", "fab-t-l2": "l2"
    }  # fmt: skip
    plan, _ = parse_attack_list("standard", eps=0.1)
    costs = {entry.name: estimated_cost(entry, params) for entry, params in plan}
    # one forward + backward and one forward per iteration, 9 targets: 4/3 of APGD-T's 900
    assert costs["fab-t"] == pytest.approx(1200.0)
    assert costs["apgd-t"] < costs["fab-t"] < costs["square"]


def test_bad_settings_are_config_errors():
    for values in ({"alpha_max": 1.5}, {"beta": 0.0 - 0.1}, {"eta": 0.0}, {"n_iter": 0}, {"restarts": 0}):
        with pytest.raises(ConfigError):
            FABParams(eps=0.1, **values)
    with pytest.raises(ConfigError):
        FABTParams(eps=0.1, n_target_classes=0)
