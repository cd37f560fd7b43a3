"""Architectures: each maps a batch of 1x28x28 images to 10 logits; simple_cnn is exactly the tutorial's network."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from fashion_mlops.config import ModelConfig
from fashion_mlops.models import ARCHITECTURES, NUM_CLASSES, SimpleCNN, VggBN, build_model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_maps_images_to_ten_logits(arch):
    torch.manual_seed(0)
    model = build_model(arch)
    x = torch.rand(3, 1, 28, 28)

    model.train()
    assert model(x).shape == (3, NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_accepts_channels_last_input(arch):
    model = build_model(arch).to(memory_format=torch.channels_last).eval()
    x = torch.rand(2, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_build_model_returns_a_fresh_network_each_time(arch):
    first, second = build_model(arch), build_model(arch)
    assert first is not second
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first.parameters(), second.parameters(), strict=True))


def test_simple_cnn_has_exactly_the_tutorial_layers():
    model = build_model("simple_cnn")

    assert isinstance(model, SimpleCNN)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 6, (5, 5)), (6, 12, (5, 5))]
    assert all(c.stride == (1, 1) and c.padding == (0, 0) for c in convs)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(192, 120), (120, 60), (60, 10)]
    assert not any(isinstance(m, nn.BatchNorm2d | nn.Dropout) for m in model.modules())


def test_simple_cnn_parameter_count():
    model = build_model("simple_cnn")
    expected = (
        (1 * 6 * 5 * 5 + 6)  # conv1
        + (6 * 12 * 5 * 5 + 12)  # conv2
        + (192 * 120 + 120)  # fc1
        + (120 * 60 + 60)  # fc2
        + (60 * 10 + 10)  # out
    )

    assert expected == 32998
    assert sum(p.numel() for p in model.parameters()) == 32998
    assert all(p.requires_grad for p in model.parameters())


def test_vgg_variants_use_batch_norm():
    for arch in ("vgg_bn_small", "vgg_bn_lean", "vgg_bn_medium"):
        assert any(isinstance(m, nn.BatchNorm2d) for m in build_model(arch).modules())


def test_lean_vgg_pools_straight_after_each_convolution():
    layers = [type(m) for m in build_model("vgg_bn_lean").features]

    assert layers == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU] * 3
    assert build_model("vgg_bn_lean")(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="one convolution per block"):
        VggBN(blocks=((8,), (16, 16)), dropout=0.0, pool_first=True)


def test_unknown_architecture_raises_value_error_listing_allowed_names():
    with pytest.raises(ValueError, match="nope") as error:
        build_model("nope")

    message = str(error.value)
    for name in ARCHITECTURES:
        assert name in message


def test_params_accept_exactly_the_architectures_models_py_builds():
    for arch in ARCHITECTURES:
        assert ModelConfig(arch=arch).arch == arch
    with pytest.raises(ValidationError, match="unknown architecture 'nope'; allowed: simple_cnn"):
        ModelConfig(arch="nope")


def test_importing_the_cli_and_the_export_process_does_not_import_torch():
    """The sweep command starts its export process (which sets up the store) before it imports torch."""
    code = "import sys, fashion_mlops.cli, fashion_mlops.tracking.exporter; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
