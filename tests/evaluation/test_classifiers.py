"""Classifiers of the evaluation protocol: shapes at every input size, instance norm, the registry."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from minimaxdd.errors import UserError
from minimaxdd.evaluation.classifiers import CLASSIFIERS, ConvNet, build_model

K = 7  # an odd class count, so logits and features cannot be confused by shape


def _check_shapes(model: nn.Module, c: int, size: int, n: int) -> None:
    x = torch.randn(n, c, size, size)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
    assert logits.shape == (n, K)
    assert feats.shape == (n, model.feature_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(feats).all()
    # the logits are the linear head applied to `features`
    torch.testing.assert_close(model.classifier(feats), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c,size", [(1, 8), (1, 28), (3, 32), (3, 64)])
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_every_model_small_inputs(name, c, size):
    torch.manual_seed(0)
    _check_shapes(build_model(name, c, K, size), c, size, n=2)


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("name", ["convnet6", "resnetap10", "resnet18"])
def test_large_inputs(name, size):
    torch.manual_seed(0)
    _check_shapes(build_model(name, 3, K, size), 3, size, n=1)


def test_convnet_pads_28px_grey_to_32():
    net = build_model("convnet3", 1, 10, 28)
    first = net.body[0]
    assert isinstance(first, nn.Conv2d) and first.padding == (3, 3)
    assert net.feature_dim == 128 * 4 * 4  # 32 -> 16 -> 8 -> 4
    # only 28 px grey gets the extra padding (DC code); RGB 28 px and grey 32 px do not
    assert build_model("convnet3", 3, 10, 28).body[0].padding == (1, 1)
    assert build_model("convnet3", 1, 10, 32).body[0].padding == (1, 1)
    assert build_model("convnet3", 3, 10, 32).feature_dim == 128 * 4 * 4
    assert build_model("convnet3", 3, 10, 28).feature_dim == 128 * 3 * 3  # 28 -> 14 -> 7 -> 3


def test_convnet_stops_pooling_at_1px():
    net = ConvNet(1, 10, 8, depth=6)
    assert sum(isinstance(m, nn.AvgPool2d) for m in net.body) == 3  # 8 -> 4 -> 2 -> 1
    assert net.feature_dim == 128


def test_unknown_model_lists_choices():
    with pytest.raises(UserError, match="unknown model 'vgg11'") as e:
        build_model("vgg11", 3, 10, 32)
    for name in CLASSIFIERS:
        assert name in str(e.value)


def test_registry_names_the_protocol_networks():
    assert sorted(CLASSIFIERS) == ["convnet3", "convnet4", "convnet5", "convnet6", "resnet18", "resnetap10"]
    assert sum(isinstance(m, nn.Conv2d) for m in build_model("convnet5", 3, K, 32).body) == 5


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_instance_norm_everywhere(name):
    model = build_model(name, 3, 10, 32)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms, "expected instance norm layers"
    for m in norms:
        assert m.num_groups == m.num_channels and m.affine
    banned = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    assert not [m for m in model.modules() if isinstance(m, banned)]


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_instance_norm_makes_samples_independent(name):
    # with instance (not batch) norm, an image's logits do not depend on the rest of the batch,
    # in training mode too
    torch.manual_seed(0)
    size = 64 if name == "convnet6" else 32  # sizes whose last feature map is larger than 1x1
    model = build_model(name, 1, K, size).train()
    x = torch.randn(3, 1, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=1e-4, atol=1e-5)


# (model, channels, size) whose last conv runs on a 1x1 map: instance norm over a single value
# returns its bias, so the features no longer depend on the image.
ONE_PIXEL_NORM = [("convnet4", 1, 8), ("convnet5", 1, 16), ("convnet6", 3, 32), ("convnet6", 1, 28),
                  ("resnet18", 1, 8), ("resnetap10", 1, 8)]


@pytest.mark.parametrize("name,c,size", ONE_PIXEL_NORM)
def test_features_depend_on_input_at_every_accepted_size(name, c, size):
    # These sizes are accepted (a pooling or a stride that would leave a 1x1 map is skipped), so every
    # instance norm must see more than one value per channel and the features must follow the input.
    torch.manual_seed(0)
    model = build_model(name, c, K, size).eval()
    norm_inputs: list[int] = []   # pixels per channel seen by each instance norm
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            m.register_forward_hook(lambda mod, inp, out: norm_inputs.append(inp[0].shape[2:].numel()))
    with torch.no_grad():
        f = model.features(torch.randn(2, c, size, size))
    assert norm_inputs and min(norm_inputs) > 1, f"an instance norm ran on a 1x1 map: {norm_inputs}"
    diff = float((f[0] - f[1]).abs().max())
    assert diff > 1e-3, f"two random images give the same features (max difference {diff:.1e})"
