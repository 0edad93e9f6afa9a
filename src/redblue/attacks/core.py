"""Pieces every attack and every adversarial training objective share: losses, the input
gradient, steps, projections and random starts per norm, and the eps checks.

Training objectives call these same functions, so training and evaluation cannot drift apart.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

from redblue.errors import AttackError, ConfigError, require_in_range, require_non_negative

LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits (N, C), y (N,)) -> per-sample loss (N,)

NORMS = ("linf", "l2")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode (dropout off, batch-norm frozen); restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample softmax cross-entropy; larger is more adversarial."""
    return F.cross_entropy(logits, y, reduction="none")


def _true_and_best_other(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true_logit, others.amax(dim=1)


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini-Wagner margin `max_{j != y} z_j - z_y`; positive exactly when misclassified."""
    true_logit, best_other = _true_and_best_other(logits, y)
    return best_other - true_logit


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein, 2020), scale- and shift-invariant.

    -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), with z_pi sorted descending.
    """
    sorted_logits = logits.sort(dim=1, descending=True).values
    true_logit, best_other = _true_and_best_other(logits, y)
    return -(true_logit - best_other) / (sorted_logits[:, 0] - sorted_logits[:, 2] + 1e-12)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein, 2020): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)."""
    sorted_logits = logits.sort(dim=1, descending=True).values
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    scale = sorted_logits[:, 0] - 0.5 * (sorted_logits[:, 2] + sorted_logits[:, 3]) + 1e-12
    return -(true_logit - target_logit) / scale


def all_finite(t: Tensor) -> Tensor:
    """0-dim bool tensor: True when t has no NaN or infinity; no device sync.

    One min/max reduction (NaN propagates into both): on CPU several times cheaper than
    `torch.isfinite(t).all()`, which allocates a mask of t's size.
    """
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    low, high = torch.aminmax(t)
    return torch.isfinite(low) & torch.isfinite(high)


class LaggedCount:
    """The number of true entries of a bool mask (N,), brought to the host without waiting for the device.

    How the loops that drop finished samples (Square, DeepFool) stay free of host synchronisation on
    an accelerator: on CUDA the count is copied into pinned host memory behind the work already
    queued, and `value()` is None until that copy has landed (`torch.cuda.Event.query` never
    blocks), so the loop keeps queueing work and compacts a few iterations later, with `mask` (the
    mask as it was when counted). Elsewhere the count is read at once: on a CPU reading a tensor
    waits for nothing.
    """

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask
        count = mask.sum()
        self._event: torch.cuda.Event | None = None
        if mask.device.type == "cuda":
            self._host = torch.empty((), dtype=count.dtype, pin_memory=True)
            self._host.copy_(count, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(mask.device))  # the copy's stream, on mask's GPU
        else:
            self._host = count

    def value(self) -> int | None:
        """The count, or None while the device has not got that far."""
        if self._event is not None and not self._event.query():
            return None
        return int(self._host)


def true_rows(mask: Tensor, count: int) -> Tensor:
    """The indices of mask's true entries (N,) in order, given how many there are: no synchronisation
    on an accelerator (a stable sort puts them first; `nonzero` would wait for the device to learn
    its output's size). On a CPU `nonzero` itself (the same indices)."""
    if mask.device.type == "cpu":
        return mask.nonzero().squeeze(1)
    return sorted_true_rows(mask, count)


def sorted_true_rows(mask: Tensor, count: int) -> Tensor:
    """`true_rows` by a stable sort (what an accelerator runs; a function of its own to be tested on a CPU)."""
    return torch.sort((~mask).to(torch.uint8), stable=True).indices[:count]


def loss_logits_and_gradient(model: nn.Module, x: Tensor, y: Tensor, *, loss: LossFn = ce_loss) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample loss (N,), logits (N, C) and d(sum of losses)/dx, all detached, in the model's
    current mode and without any check or device sync: the inner step of every gradient attack.

    Only the input gradient is computed: autograd skips the weight gradients, and no parameter's
    `.grad` or `requires_grad` changes.
    """
    with torch.enable_grad():
        x_var = x.detach().requires_grad_(True)
        logits = model(x_var)
        losses = loss(logits, y)
        (grad,) = torch.autograd.grad(losses.sum(), x_var)
    return losses.detach(), logits.detach(), grad


def logit_differences_and_gradients(
    model: nn.Module, x: Tensor, y: Tensor, others: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (N, C); f_k = z_k - z_y for the classes `others` (N, K); their input gradients (N, K, D).

    The linearised decision boundaries that DeepFool and FAB step to. One forward pass and K
    backward passes through the same graph, in the model's current mode; no weight gradients.
    """
    with torch.enable_grad():
        x_var = x.detach().requires_grad_(True)
        logits = model(x_var)  # (N, C)
        differences = logits.gather(1, others) - logits.gather(1, y[:, None])  # (N, K)
        gradients = [
            torch.autograd.grad(differences[:, k].sum(), x_var, retain_graph=k + 1 < others.shape[1])[0].flatten(1)
            for k in range(others.shape[1])
        ]
    return logits.detach(), differences.detach(), torch.stack(gradients, dim=1)


def loss_and_input_gradient(
    model: nn.Module, x: Tensor, y: Tensor, *, loss: LossFn = ce_loss, check_finite: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """`loss_logits_and_gradient` with the model in eval mode (restored afterwards).

    A NaN or infinite gradient raises AttackError instead of becoming a silent zero step.
    check_finite=False skips that check (a device sync): for hot loops that check once at the end.
    """
    with eval_mode(model):
        losses, logits, grad = loss_logits_and_gradient(model, x, y, loss=loss)
    if check_finite and not bool(all_finite(grad)):
        raise AttackError(
            "the model's input gradient is NaN or infinite; check the model for log(0), "
            "division by zero or overflow before attacking it"
        )
    return losses, logits, grad


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, *, loss: LossFn = ce_loss) -> Tensor:
    """d(sum of per-sample losses)/dx, shape of x; see `loss_and_input_gradient`."""
    return loss_and_input_gradient(model, x, y, loss=loss)[2]


def per_sample_norm(t: Tensor, norm: str) -> Tensor:
    """L-inf or L2 norm of each sample of `t` (N, ...) -> (N,)."""
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """values (N,) viewed as (N, 1, ..., 1), to broadcast against `like` (N, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def linf_project(x_adv: Tensor, *, center: Tensor, eps: float) -> Tensor:
    """Clip `x_adv` into the L-inf ball of radius eps around `center`, then into [0, 1]."""
    return torch.minimum(torch.maximum(x_adv, center - eps), center + eps).clamp(0.0, 1.0)


def l2_project(x_adv: Tensor, *, center: Tensor, eps: float) -> Tensor:
    """Scale `x_adv - center` into the L2 ball of radius eps, then clip into [0, 1].

    Clipping after the scaling moves every pixel towards `center` (itself in [0, 1]), so the
    result stays inside the ball.
    """
    delta = x_adv - center
    norms = per_sample_norm(delta, "l2")
    factor = torch.clamp(eps / (norms + 1e-12), max=1.0)
    return (center + delta * per_sample(factor, delta)).clamp(0.0, 1.0)


def project(x_adv: Tensor, *, center: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return linf_project(x_adv, center=center, eps=eps)
    return l2_project(x_adv, center=center, eps=eps)


def l2_normalize(t: Tensor) -> Tensor:
    """Each sample divided by its L2 norm (zero samples stay zero)."""
    norms = per_sample_norm(t, "l2")
    return t / per_sample(norms.clamp_min(1e-12), t)


def ascent_step(x_adv: Tensor, grad: Tensor, *, step_size: float, norm: str) -> Tensor:
    """One steepest-ascent step of length step_size in `norm`: sign for L-inf, unit vector for L2."""
    if norm == "linf":
        return x_adv + step_size * grad.sign()
    return x_adv + step_size * l2_normalize(grad)


def linf_random_start(x: Tensor, eps: float, generator: Generator | None = None, *, clip: bool = True) -> Tensor:
    """A uniform random point of the L-inf ball around x, clipped to [0, 1] (clip=False: not, as
    Wong et al.'s fast FGSM starts; the step after it projects into [0, 1] all the same)."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    start = x + eps * (2.0 * noise - 1.0)
    return start.clamp(0.0, 1.0) if clip else start


def l2_random_start(x: Tensor, eps: float, generator: Generator | None = None) -> Tensor:
    """A uniform random point of the L2 ball around x (direction Gaussian, radius eps*U^(1/d))."""
    direction = l2_normalize(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    dims = x[0].numel()
    radius = eps * torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dims)
    return (x + direction * per_sample(radius, x)).clamp(0.0, 1.0)


def random_start(x: Tensor, eps: float, *, norm: str, generator: Generator | None = None) -> Tensor:
    if norm == "linf":
        return linf_random_start(x, eps, generator)
    return l2_random_start(x, eps, generator)


def check_eps(eps: float, norm: str) -> None:
    """eps is in pixel units: [0, 1] for L-inf; for L2 any finite non-negative radius."""
    if norm == "linf":
        require_in_range("eps", eps, 0.0, 1.0)
    elif norm == "l2":
        require_non_negative("eps", eps)
    else:
        raise ConfigError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")


def check_shapes(x: Tensor, y: Tensor) -> None:
    """A batch of images (N, ...) with one label each; shapes only, no device sync."""
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ConfigError(
            f"x {tuple(x.shape)} and y {tuple(y.shape)} do not match; pass a batch x (N, ...) and one label per image, y (N,)"
        )


def check_run(x: Tensor, finite: Tensor, *, what: str) -> None:
    """The one device sync of an attack call, after the run: the input's pixel range and the run's
    finiteness (`finite`, a 0-dim bool) read together. Raises AttackError for NaN or infinite
    pixels, pixels outside [0, 1], or a NaN or infinite loss or gradient met by `what`, in that
    order (bad pixels make bad gradients: the first cause is named)."""
    if x.numel() == 0:
        flags = [0.0, 1.0, float(finite)]
    else:
        low, high = torch.aminmax(x)  # one pass; NaN propagates into both
        flags = torch.stack([low, high, finite.to(low.dtype)]).tolist()
    low_value, high_value, run_finite = flags
    if not (math.isfinite(low_value) and math.isfinite(high_value)):
        raise AttackError("the input images contain NaN or infinite pixels; clean the data before attacking")
    if low_value < 0 or high_value > 1:
        raise AttackError("pixels must be in [0, 1]; rescale the images (and put any normalisation inside the model)")
    if not run_finite:
        raise AttackError(
            f"{what} met a NaN or infinite loss or gradient; check the model for log(0), division by zero "
            "or overflow before attacking it"
        )


def check_inputs(x: Tensor, y: Tensor) -> None:
    """Validate evaluation inputs at the public boundary: finite pixels in [0, 1], one label each."""
    check_shapes(x, y)
    if x.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(x)).tolist()  # one pass, one sync; NaN propagates into both
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError("the input images contain NaN or infinite pixels; clean the data before attacking")
    if low < 0 or high > 1:
        raise ConfigError("pixels must be in [0, 1]; rescale the images (and put any normalisation inside the model)")


TARGET_MODES = ("none", "random", "least-likely")


def check_target(target: str) -> None:
    """A target is "none" (untargeted), "random", "least-likely", or a class index such as "3"."""
    if target not in TARGET_MODES and not (target.isascii() and target.isdigit()):
        raise ConfigError(
            f"target must be one of {', '.join(TARGET_MODES)} or a class index such as 3, got {target!r}"
        )


def pick_targets(
    model: nn.Module, x: Tensor, y: Tensor, target: str, generator: Generator | None = None
) -> Tensor | None:
    """The target class of each sample (N,), or None for "none" (untargeted).

    "random": uniform over the classes other than y (drawn from `generator`); "least-likely":
    the class the model scores lowest on the clean x, y excluded (Kurakin et al., 2017); a class
    index: that class for every sample (a sample whose label it is cannot be attacked towards it).
    Costs one forward pass, to learn the number of classes and the clean logits.
    """
    if target == "none":
        return None
    with eval_mode(model), torch.no_grad():
        logits = model(x)  # (N, C)
    n_classes = logits.shape[1]
    if target == "random":
        shift = torch.randint(1, n_classes, (len(y),), generator=generator, device=x.device)
        return (y + shift) % n_classes
    if target == "least-likely":
        return logits.scatter(1, y[:, None], float("inf")).argmin(dim=1)
    check_target(target)
    if int(target) >= n_classes:
        raise ConfigError(f"target class {target} does not exist: the model has {n_classes} classes (0..{n_classes - 1})")
    return torch.full_like(y, int(target))
