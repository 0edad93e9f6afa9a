"""Square Attack (Andriushchenko et al., ECCV 2020): score-based black-box random search, L-inf and L2.

"Square Attack: a query-efficient black-box adversarial attack via random search". Only the
logits are queried, under torch.no_grad; each iteration changes one random square window of
each image (L-inf: the window is set to +-eps per channel; L2: mass is moved between two
windows with the paper's "two concentric-rectangle halves" pattern), and keeps the change if
it lowers the margin z_y - max_{j != y} z_j. The window side follows the paper's schedule of p,
rescaled to the query budget as the reference implementation does; as there, an L-inf proposal
that would not change the image is redrawn instead of spending a query on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Generator, Tensor, nn

from redblue.attacks.core import (
    NORMS,
    LaggedCount,
    all_finite,
    check_eps,
    eval_mode,
    l2_normalize,
    margin_loss,
    true_rows,
)
from redblue.attacks.registry import register, run_attack
from redblue.errors import ConfigError, require_choice, require_in_range, require_positive

# p is halved after each of these iterations, counted on a budget of 10,000 queries
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(iteration: int, n_queries: int, p_init: float, *, rescale: bool = True) -> float:
    """Fraction of pixels changed at `iteration` (from 0): the paper's piecewise-constant schedule,
    with the iteration rescaled to a 10,000-query budget when `rescale` (the reference
    SquareAttack's default; AutoAttack's standard version turns it off)."""
    counted = int(iteration / n_queries * 10000) if rescale else iteration
    return p_init / 2 ** sum(counted > threshold for threshold in _P_HALVINGS)


def _as_images(x: Tensor) -> Tensor:
    """View x as (N, C, H, W): (N, D) -> (N, 1, 1, D), (N, H, W) -> (N, 1, H, W)."""
    if x.dim() == 2:
        return x.view(len(x), 1, 1, -1)
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        return x
    raise ConfigError(f"the Square attack takes images of shape (N, C, H, W), got {tuple(x.shape)}")


def _window_mask(rows: Tensor, cols: Tensor, size: int, height: int, width: int) -> Tensor:
    """(N, 1, H, W) bool: the size x size window at (rows[i], cols[i]) of each sample."""
    r = torch.arange(height, device=rows.device)
    c = torch.arange(width, device=rows.device)
    in_rows = (r >= rows[:, None]) & (r < rows[:, None] + size)  # (N, H)
    in_cols = (c >= cols[:, None]) & (c < cols[:, None] + size)  # (N, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _window_index(rows: Tensor, cols: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Advanced indices that select each sample's window: t[i, :, r, c] -> (N, size, size, C)."""
    offsets = torch.arange(size, device=rows.device)
    batch = torch.arange(len(rows), device=rows.device)[:, None, None]
    return batch, (rows[:, None] + offsets)[:, :, None], (cols[:, None] + offsets)[:, None, :]


def _rectangles(height: int, width: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Concentric rectangles around the centre, ring k weighted 1/(k+1)^2, unit L2 norm."""
    pattern = torch.zeros(height, width, dtype=dtype, device=device)
    top, left = height // 2, width // 2
    for ring in range(max(height // 2 + 1, width // 2 + 1)):
        pattern[max(top, 0) : min(top + 2 * ring + 1, height), max(left, 0) : min(left + 2 * ring + 1, width)] += (
            1.0 / (ring + 1) ** 2
        )
        top, left = top - 1, left - 1
    return pattern / pattern.norm()


def square_pattern(size: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The paper's L2 window (size, size): rectangles in the top half, minus rectangles in the bottom
    half, unit L2 norm (reference implementation's `eta`, without its random transpose)."""
    device = torch.device(device)
    pattern = torch.zeros(size, size, dtype=dtype, device=device)
    pattern[: size // 2] = _rectangles(size // 2, size, dtype=dtype, device=device) if size // 2 else 0.0
    pattern[size // 2 :] = -_rectangles(size - size // 2, size, dtype=dtype, device=device)
    return pattern / pattern.norm()


def _random_signs(shape: tuple[int, ...], like: Tensor, generator: Generator | None) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def _patterns(pattern: Tensor, n: int, like: Tensor, generator: Generator | None) -> Tensor:
    """(n, C, s, s): the L2 window pattern, transposed at random per sample, with a random sign per channel."""
    transpose = torch.randint(0, 2, (n, 1, 1, 1), generator=generator, device=like.device).bool()
    oriented = torch.where(transpose, pattern.T, pattern)  # (n, 1, s, s)
    return oriented * _random_signs((n, like.shape[1], 1, 1), like, generator)


def _linf_init(x: Tensor, eps: float, generator: Generator | None) -> Tensor:
    """Vertical stripes: each column of each channel moved by +-eps at random."""
    n, channels, _, width = x.shape
    return (x + eps * _random_signs((n, channels, 1, width), x, generator)).clamp(0.0, 1.0)


def _l2_init(x: Tensor, eps: float, generator: Generator | None) -> Tensor:
    """A grid of windows of side H // 5, each the L2 pattern with a random sign, scaled to norm eps."""
    n, _, height, width = x.shape
    side = max(height // 5, 1)
    pattern = square_pattern(side, dtype=x.dtype, device=x.device)
    delta = torch.zeros_like(x)
    n_rows, n_cols = height // side, width // side
    top, left = (height - n_rows * side) // 2, (width - n_cols * side) // 2
    for i in range(n_rows):
        for j in range(n_cols):
            r, c = top + i * side, left + j * side
            delta[:, :, r : r + side, c : c + side] = _patterns(pattern, n, x, generator)
    return (x + eps * l2_normalize(delta)).clamp(0.0, 1.0)


def _window_side(p: float, height: int, width: int, *, norm: str) -> int:
    """Side of the square holding a fraction p of the pixels; at least 3 and odd for L2, as in the
    reference implementation; never larger than the image."""
    side = round(math.sqrt(p * height * width))
    side = max(side, 1) if norm == "linf" else max(side, 3) | 1
    return min(side, height, width)


def _draw(n: int, like: Tensor, norm: str, generator: Generator | None) -> tuple[Tensor, ...]:
    """One iteration's random numbers for n samples: window corners as fractions, signs, and
    (L-inf) a second sign pattern, (L2) transposes."""
    n_windows = 1 if norm == "linf" else 2
    channels = like.shape[1]
    corners = torch.rand((n, 2 * n_windows), generator=generator, device=like.device)
    signs = _random_signs((n, channels, 1, 1), like, generator)
    if norm == "linf":
        # the signs flipped by a uniform non-empty subset of channels: uniform over the other patterns
        flip_bits = torch.randint(1, 2 ** min(channels, 62), (n, 1), generator=generator, device=like.device)
        flipped = (flip_bits >> torch.arange(channels, device=like.device)) & 1  # (n, C)
        return corners, signs, signs * (1 - 2 * flipped).to(like.dtype)[:, :, None, None]
    transpose = torch.randint(0, 2, (n, 1, 1, 1), generator=generator, device=like.device).bool()
    return corners, signs, transpose


def _corner(fraction: Tensor, side: int, limit: int) -> Tensor:
    """Uniform integer in [0, limit - side] from a uniform fraction in [0, 1)."""
    return (fraction * (limit - side + 1)).long().clamp_max(limit - side)


def _flat_window_index(rows: Tensor, cols: Tensor, size: int, width: int, channels: int) -> Tensor:
    """(N, C, size * size) positions of each sample's window in its (C, H * W) flattened image."""
    offsets = torch.arange(size, device=rows.device)
    flat = (rows[:, None, None] + offsets[:, None]) * width + cols[:, None, None] + offsets  # (N, s, s)
    return flat.view(len(rows), 1, size * size).expand(-1, channels, -1)


def _linf_window(
    x: Tensor, x_best: Tensor, side: int, draws: tuple[Tensor, ...], *, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The L-inf proposal as a window edit of the (N, C, H * W) flattened images:
    (positions, old window, new window), all (N, C, side * side).

    The proposal sets one random window per sample to x +- eps (one sign per channel). Where that
    would leave x_best unchanged (a wasted query), the other signs are used: the reference
    implementation redraws the signs until the window changes, and since x + eps and x - eps
    differ after clipping for every pixel, any other sign pattern changes it.
    """
    corners, signs, other_signs = draws
    n, channels, height, width = x.shape
    rows, cols = _corner(corners[:, 0], side, height), _corner(corners[:, 1], side, width)
    positions = _flat_window_index(rows, cols, side, width, channels)
    x_window = x.reshape(n, channels, -1).gather(2, positions)
    old = x_best.view(n, channels, -1).gather(2, positions)
    new = (x_window + eps * signs.view(n, channels, 1)).clamp(0.0, 1.0)
    unchanged = (new == old).flatten(1).all(dim=1)
    other = (x_window + eps * other_signs.view(n, channels, 1)).clamp(0.0, 1.0)
    return positions, old, torch.where(unchanged[:, None, None], other, new)


def _l2_proposal(x: Tensor, x_best: Tensor, side: int, draws: tuple[Tensor, ...], *, eps: float) -> Tensor:
    """Move the perturbation's mass from a second random window into the first (paper's Alg. 3)."""
    corners, signs, transpose = draws
    _, channels, height, width = x.shape
    rows, cols = _corner(corners[:, 0], side, height), _corner(corners[:, 1], side, width)
    rows2, cols2 = _corner(corners[:, 2], side, height), _corner(corners[:, 3], side, width)
    pattern = square_pattern(side, dtype=x.dtype, device=x.device)
    new = torch.where(transpose, pattern.T, pattern) * signs  # (n, C, s, s)

    delta = x_best - x
    batch, window_rows, window_cols = _window_index(rows, cols, side)
    old = delta[batch, :, window_rows, window_cols].permute(0, 3, 1, 2)  # (n, C, s, s)
    second_window = _window_mask(rows2, cols2, side, height, width)
    both_windows = _window_mask(rows, cols, side, height, width) | second_window
    norm_image = delta.flatten(1).norm(dim=1)
    norm_windows = (delta * both_windows).flatten(1).norm(dim=1)
    new = new + old / (old.flatten(2).norm(dim=2)[:, :, None, None] + 1e-12)
    # the budget left in the ball, shared by the channels, plus the mass taken from both windows
    mass = ((eps**2 - norm_image**2).clamp_min(0.0) / channels + norm_windows**2).sqrt()
    new = new / (new.flatten(2).norm(dim=2)[:, :, None, None] + 1e-12) * mass[:, None, None, None]

    delta = delta.masked_fill(second_window, 0.0)
    delta[batch, :, window_rows, window_cols] = new.permute(0, 2, 3, 1)
    return (x + eps * l2_normalize(delta)).clamp(0.0, 1.0)


def _square_run(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, n_queries: int, p_init: float, rescale: bool,
    generator: Generator | None, input_shape: tuple[int, ...],
) -> tuple[Tensor, Tensor, Tensor]:
    """One run: n_queries forwards per sample at most (the start counts); returns (x_best, margin, is_adv).

    The loop works on compact copies of the samples not yet fooled. Fooled samples are frozen at
    once and dropped from the batch (written back) at the next compaction: on CPU after every
    query, so no sample is queried after its success; on an accelerator as soon as the number of
    samples left has reached the host without waiting for the device (`LaggedCount`: a few queries
    later, and no host synchronisation in the loop). Random draws are made for the whole run batch
    and then selected, so the result does not depend on when the batch is compacted.
    """

    def query(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(images.reshape(len(images), *input_shape))
        return margin_loss(logits, labels), logits.argmax(dim=1) != labels

    x_best = (_linf_init if norm == "linf" else _l2_init)(x, eps, generator)
    best_margin, is_adv = query(x_best, y)  # margin_loss: max_{j!=y} z_j - z_y, to maximise
    height, width = x.shape[2:]
    active = torch.arange(len(x), device=x.device)  # run-batch index of each row of the compact copies
    x_act, y_act, best_act, margin_act, adv_act = x, y, x_best.clone(), best_margin.clone(), is_adv.clone()
    left: LaggedCount | None = None  # the samples not yet fooled, counted on the way to the host
    for iteration in range(n_queries - 1):
        if left is None:
            left = LaggedCount(~adv_act)
        count = left.value()
        if count is not None:  # compact to the rows `left` counted (rows fooled since stay, frozen)
            if count < len(active):
                x_best[active], best_margin[active], is_adv[active] = best_act, margin_act, adv_act
                rows = true_rows(left.mask, count)
                active, x_act, y_act, best_act, margin_act, adv_act = (
                    t[rows] for t in (active, x_act, y_act, best_act, margin_act, adv_act)
                )
            left = None
        if len(active) == 0:
            break
        side = _window_side(p_schedule(iteration, n_queries, p_init, rescale=rescale), height, width, norm=norm)
        draws = [d[active] for d in _draw(len(x), x, norm, generator)]
        if norm == "linf":  # the proposal differs from x_best in one window: edit it in place
            positions, old_window, new_window = _linf_window(x_act, best_act, side, draws, eps=eps)
            best_flat = best_act.view(len(best_act), best_act.shape[1], -1)
            best_flat.scatter_(2, positions, new_window)
            margin, fooled = query(best_act, y_act)
            improved = ((margin > margin_act) | fooled) & ~adv_act
            best_flat.scatter_(2, positions, torch.where(improved[:, None, None], new_window, old_window))
        else:
            x_new = _l2_proposal(x_act, best_act, side, draws, eps=eps)
            margin, fooled = query(x_new, y_act)
            improved = ((margin > margin_act) | fooled) & ~adv_act
            best_act = torch.where(improved[:, None, None, None], x_new, best_act)
        margin_act = torch.where(improved, margin, margin_act)
        adv_act = adv_act | (improved & fooled)
    x_best[active], best_margin[active], is_adv[active] = best_act, margin_act, adv_act
    return x_best, best_margin, is_adv


@dataclass(frozen=True)
class SquareParams:
    eps: float
    n_queries: int = 5000  # AutoAttack's standard budget
    p_init: float = 0.8  # AutoAttack's standard version, for L-inf and L2 alike
    restarts: int = 1
    # p's schedule rescaled to n_queries (pyautoattack's SquareAttack default); AutoAttack's
    # standard version runs Square with rescale off (its schedule is counted on 10,000 queries)
    rescale: bool = True

    norm: ClassVar[str] = "linf"

    def __post_init__(self) -> None:
        check_eps(self.eps, self.norm)
        require_positive("n_queries", self.n_queries)
        require_in_range("p_init", self.p_init, 0.0, 1.0)
        require_positive("p_init", self.p_init)
        require_positive("restarts", self.restarts)


@dataclass(frozen=True)
class SquareL2Params(SquareParams):
    norm: ClassVar[str] = "l2"


def run_square(
    model: nn.Module, x: Tensor, y: Tensor, params: SquareParams, generator: Generator | None
) -> tuple[Tensor, Tensor]:
    """Square's runner (see `registry`): each restart attacks the samples not yet fooled.

    Returns (x_adv, finite): for a fooled sample the first point found that the model
    misclassifies, for a robust one the lowest-margin point, x itself where the model already
    errs; finite is whether every margin the model returned was finite.
    """
    x = x.detach()
    images = _as_images(x)
    with torch.no_grad(), eval_mode(model):
        is_adv = model(x).argmax(dim=1) != y
        x_adv = images.clone()
        best_margin = torch.full((len(x),), -math.inf, dtype=x.dtype, device=x.device)
        finite = torch.ones((), dtype=torch.bool, device=x.device)
        for _ in range(params.restarts):
            todo = (~is_adv).nonzero().squeeze(1)  # one sync per restart
            if len(todo) == 0:
                break
            x_run, margin, fooled = _square_run(
                model, images[todo], y[todo], eps=params.eps, norm=params.norm, n_queries=params.n_queries,
                p_init=params.p_init, rescale=params.rescale, generator=generator, input_shape=tuple(x.shape[1:]),
            )  # fmt: skip
            finite &= all_finite(margin)
            better = (margin > best_margin[todo]) | fooled
            x_adv[todo] = torch.where(better[:, None, None, None], x_run, x_adv[todo])
            best_margin[todo] = torch.where(better, margin, best_margin[todo])
            is_adv[todo] = fooled
    return x_adv.view_as(x), finite


def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    n_queries: int = SquareParams.n_queries,
    p_init: float = SquareParams.p_init,
    restarts: int = SquareParams.restarts,
    rescale: bool = SquareParams.rescale,
    generator: Generator | None = None,
) -> Tensor:
    """Square Attack (Andriushchenko et al., 2020): black-box random search on the margin loss.

    x: (N, C, H, W) (or (N, H, W), (N, D)) pixels in [0, 1]; y: (N,) labels. Queries only the
    model's logits, without gradients: at most n_queries forwards per sample and run, plus one
    clean forward. Returns x_adv (detached, in [0, 1], within eps of x in `norm`); see
    `run_square`.
    """
    require_choice("norm", norm, NORMS)
    params_type = SquareParams if norm == "linf" else SquareL2Params
    params = params_type(eps=eps, n_queries=n_queries, p_init=p_init, restarts=restarts, rescale=rescale)
    return run_attack(f"square ({norm})", run_square, model, x, y, params, generator)


for _name, _params_type in (("square", SquareParams), ("square-l2", SquareL2Params)):
    register(
        _name, _params_type, run=run_square, norm=_params_type.norm, threat="black-box",
        summary=f"Square Attack, {'L-inf' if _params_type.norm == 'linf' else 'L2'}: score-based black-box "
        "random search (Andriushchenko et al., 2020).",
    )(partial(square, norm=_params_type.norm))  # fmt: skip
