"""The CIFAR-scale models (preact-resnet18, cnn-7): their parameter counts against the papers' code
worked out by hand, their shapes on any input, certification of cnn-7 in eval mode against the same
network with its BatchNorms folded by hand, Normalize, and training with every objective kind on
3-channel data (certified objectives refuse BatchNorm in one line)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from redblue.certify import margin_lower_bounds
from redblue.defenses import parse_objective
from redblue.errors import ConfigError, ModelError
from redblue.models import (
    CNN7Spec,
    Normalize,
    PreActResNet18Spec,
    build_model,
    fit_spec,
    parameter_count,
    parse_model,
)
from redblue.train import TrainConfig, init_model, train

F64 = torch.float64


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def test_preact_resnet18_has_wong_et_al_s_parameter_count():
    """fast_adversarial's PreActResNet18 (Wong et al., 2020): kuangliu's PreActResNet18 (11,171,146)
    plus the final BatchNorm2d(512) before the pool (1,024), all convolutions bias-free."""
    def block(c_in: int, c_out: int) -> int:
        shortcut = conv(c_in, c_out, 1, bias=False) if c_in != c_out else 0
        return 2 * c_in + conv(c_in, c_out, 3, False) + 2 * c_out + conv(c_out, c_out, 3, False) + shortcut

    stages = sum(block(a, b) + block(b, b) for a, b in ((64, 64), (64, 128), (128, 256), (256, 512)))
    kuangliu = conv(3, 64, 3, bias=False) + stages + 512 * 10 + 10
    assert kuangliu == 11_171_146
    assert parameter_count(build_model(PreActResNet18Spec())) == kuangliu + 2 * 512 == 11_172_170
    assert parameter_count(build_model(PreActResNet18Spec(classes=100))) == 11_172_170 + 90 * 513


def test_cnn7_has_the_layers_and_parameter_count_of_shi_et_al_s_cnn_7layer_bn2():
    model = build_model(CNN7Spec())
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 5 + ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [(3, 64, 1), (64, 64, 1), (64, 128, 2),
                                                                          (128, 128, 1), (128, 128, 1)]
    expected = (conv(3, 64, 3) + conv(64, 64, 3) + conv(64, 128, 3) + 2 * conv(128, 128, 3)
                + 2 * (2 * 64 + 3 * 128)  # BatchNorm2d weight and bias
                + 128 * 16 * 16 * 512 + 512 + 2 * 512 + 512 * 10 + 10)
    assert parameter_count(model) == expected == 17_192_650
    assert parameter_count(build_model(CNN7Spec(batch_norm=False))) == expected - 2 * (2 * 64 + 3 * 128) - 2 * 512


@pytest.mark.parametrize("text, shape", [("cnn-7:width=4,linear_size=8", (3, 17, 17)),
                                         ("preact-resnet18:width=4", (3, 17, 17)),
                                         ("cnn-7:width=4,linear_size=8", (1, 9, 9)),
                                         ("preact-resnet18:width=4", (1, 28, 28))])
def test_fitted_to_any_square_shape_they_map_images_to_logits(text, shape):
    spec = fit_spec(text, image_shape=shape, classes=7)
    model = build_model(spec).eval()
    assert model(torch.rand(2, *shape)).shape == (2, 7)


def test_non_square_images_are_refused_in_one_line():
    with pytest.raises(ModelError, match=r"^cnn-7 reads square images \(image_size\) but the data has 17x23 images"):
        fit_spec("cnn-7", image_shape=(1, 17, 23), classes=10)


def test_normalize_needs_three_channels_and_computes_per_channel_statistics():
    with pytest.raises(ConfigError, match="normalize=cifar10 holds 3 channels' statistics but in_channels is 1"):
        parse_model("cnn-7:normalize=cifar10,in_channels=1")
    layer = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.tensor([1.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(layer(x)[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.5]))
    model = build_model(parse_model("cnn-7:width=2,linear_size=4,normalize=cifar10"))
    assert isinstance(model[0], Normalize) and "mean" not in model.state_dict()  # rebuilt from the spec


def _calibrated(model: nn.Module, seed: int) -> nn.Module:
    """Running statistics of one batch of random images (momentum 1), then random BatchNorm scales
    (a negative one among them) and shifts; in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in batch_norms:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.rand(64, 3, 7, 7, generator=gen, dtype=F64))
        for m in batch_norms:
            m.weight.copy_(torch.rand(m.num_features, generator=gen, dtype=F64) * 2 - 0.5)
            m.bias.copy_(0.2 + 0.1 * torch.randn(m.num_features, generator=gen, dtype=F64))
    return model.eval()


def _folded(model: nn.Sequential) -> nn.Sequential:
    """The same network with each BatchNorm folded into the conv or linear layer before it, by hand."""
    layers: list[nn.Module] = []
    for layer in model:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            previous = layers[-1]
            scale = layer.weight / (layer.running_var + layer.eps).sqrt()
            folded = type(previous)(*_shape_args(previous)).to(F64)
            with torch.no_grad():
                view = (-1,) + (1,) * (previous.weight.dim() - 1)
                folded.weight.copy_(previous.weight * scale.view(view))
                folded.bias.copy_((previous.bias - layer.running_mean) * scale + layer.bias)
            layers[-1] = folded
        else:
            layers.append(layer)
    return nn.Sequential(*layers)


def _shape_args(layer: nn.Module) -> tuple:
    if isinstance(layer, nn.Linear):
        return (layer.in_features, layer.out_features)
    return (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)


@pytest.mark.parametrize("normalize", ["none", "cifar10"])
def test_cnn7_certifies_in_eval_mode_exactly_as_its_hand_folded_twin(normalize):
    spec = parse_model(f"cnn-7:width=2,linear_size=6,image_size=7,classes=4,normalize={normalize}")
    model = _calibrated(init_model(lambda: build_model(spec), seed=0).to(F64), seed=1)
    twin = _folded(model)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 7, 7, generator=gen, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x))
        y = model(x).argmax(dim=1)
    for method in ("ibp", "crown-ibp", "crown"):
        ours = margin_lower_bounds(model, x, y, eps=0.01, method=method)
        torch.testing.assert_close(ours, margin_lower_bounds(twin, x, y, eps=0.01, method=method), rtol=1e-9, atol=1e-9)
    # sound: no point of the eps-box has a smaller margin than the certified bound
    bound = margin_lower_bounds(model, x, y, eps=0.01, method="crown")
    corners = (x + 0.01 * (2 * torch.randint(0, 2, (200, *x.shape), generator=gen, dtype=F64) - 1)).clamp(0, 1)
    with torch.no_grad():
        logits = model(corners.flatten(0, 1)).view(200, 5, 4)
    margins = logits.gather(2, y.view(1, 5, 1).expand(200, 5, 1)) - logits  # (200, N, classes)
    others = torch.ones_like(bound, dtype=torch.bool).scatter_(1, y.view(-1, 1), False)
    assert bool((margins.amin(dim=0)[others] >= bound[others] - 1e-9).all())
    # not degenerate: the logits depend on x, and the bound is below the sampled minimum somewhere
    assert float(logits.std(dim=(0, 1)).max()) > 1e-3 and float((margins.amin(dim=0) - bound)[others].max()) > 1e-6


@pytest.mark.parametrize("training", [False, True])
def test_preact_resnet18_is_refused_by_the_bounds_in_one_line_without_running_its_blocks(training):
    model = build_model(parse_model("preact-resnet18:width=2")).train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match="certified bounds cannot pass layer '1', a PreActBlock") as caught:
        margin_lower_bounds(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), eps=0.01, method="ibp")
    assert "\n" not in str(caught.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no running statistic moved


def _rgb_data(n: int = 32, side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """3-channel images whose class (of 3) brightens its own channel."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = 0.4 * torch.rand(n, 3, side, side, generator=gen)
    x[torch.arange(n), y] += 0.5
    return x, y


@pytest.mark.parametrize("objective", ["pgd:eps=0.03,steps=2", "trades:eps=0.03,steps=2", "fast-fgsm:eps=0.03",
                                       "ibp:eps=0.01", "crown-ibp:eps=0.01"])
@pytest.mark.parametrize("model_text", ["cnn-7:width=2,linear_size=8", "preact-resnet18:width=2"])
def test_every_objective_kind_trains_the_cifar_models_on_rgb_data(model_text, objective):
    x, y = _rgb_data()
    spec = fit_spec(model_text, image_shape=(3, 8, 8), classes=3)
    model = init_model(lambda: build_model(spec), seed=0)
    config = TrainConfig(epochs=2, batch_size=8, objective=parse_objective(objective), optimizer="adam", lr=1e-2,
                         val_size=0)
    certified = objective.startswith(("ibp", "crown-ibp"))
    if certified and "batch_norm" not in model_text:
        # BatchNorm in train mode normalises with the batch's statistics, which the bounds do not model
        match = "BatchNorm layer '1': in train mode" if model_text.startswith("cnn-7") else "cannot pass layer"
        with pytest.raises(ModelError, match=match) as caught:
            train(model, x, y, config, progress=False)
        assert "\n" not in str(caught.value)
        return
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, x, y, config, progress=False)
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("objective", ["ibp:eps=0.01", "crown-ibp:eps=0.01"])
def test_cnn7_without_batch_norm_trains_with_certified_objectives(objective):
    x, y = _rgb_data()
    spec = fit_spec("cnn-7:width=2,linear_size=8,batch_norm=false", image_shape=(3, 8, 8), classes=3)
    model = init_model(lambda: build_model(spec), seed=0)
    config = TrainConfig(epochs=3, batch_size=8, objective=parse_objective(objective), optimizer="adam", lr=1e-2,
                         val_size=0)
    result = train(model, x, y, config, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
