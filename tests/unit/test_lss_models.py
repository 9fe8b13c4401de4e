"""ConvNet as a function of a flat vector: sizes, equivalence with torch.nn, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lsslib.config import ModelConfig
from lsslib.models import (
    ConvNetSpec,
    batched_forward,
    convnet_forward,
    flops_per_image,
    init_flat,
)


def module_convnet(channels: int, side: int, num_classes: int, width: int, depth: int = 3):
    """The DC/DSA/MTT ConvNet written with torch.nn (instance norm, average pooling)."""
    layers: list[nn.Module] = []
    cin = channels
    for _ in range(depth):
        layers += [
            nn.Conv2d(cin, width, 3, padding=1),
            nn.GroupNorm(width, width, affine=True),
            nn.ReLU(),
            nn.AvgPool2d(2),
        ]
        cin = width
    feat = width * (side // 2**depth) ** 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(feat, num_classes))


@pytest.mark.parametrize(("num_classes", "expected"), [(10, 320_010), (100, 504_420)])
def test_convnetd3_parameter_count(num_classes, expected):
    spec = ConvNetSpec(3, 32, num_classes)
    assert spec.num_params == expected
    # the same count from torch.nn's own bookkeeping
    ref = module_convnet(3, 32, num_classes, 128)
    assert sum(p.numel() for p in ref.parameters()) == expected
    # and the flat layout follows the module's parameter order and shapes
    assert [s for _, s in spec.shapes()] == [tuple(p.shape) for p in ref.parameters()]


def test_flat_forward_equals_torch_module():
    spec = ConvNetSpec(3, 16, 5, depth=3, width=8)
    flat = init_flat(spec, torch.Generator().manual_seed(3))
    ref = module_convnet(3, 16, 5, 8)
    # perturb the norm's affine parameters away from ones/zeros so that they matter
    flat2 = flat + 0.1 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat2, ref.parameters())
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    out = convnet_forward(spec, flat2, x)
    assert out.shape == (6, 5)
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    # gradients through the flat vector equal the module's parameter gradients
    w = flat2.clone().requires_grad_(True)
    convnet_forward(spec, w, x).square().sum().backward()
    ref(x).square().sum().backward()
    ref_grad = torch.cat([p.grad.flatten() for p in ref.parameters()])
    torch.testing.assert_close(w.grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_batched_forward_equals_one_by_one():
    spec = ConvNetSpec(2, 8, 3, depth=2, width=4)
    flats = torch.stack([init_flat(spec, torch.Generator().manual_seed(i)) for i in range(3)])
    x = torch.randn(3, 5, 2, 8, 8, generator=torch.Generator().manual_seed(9))
    out = batched_forward(spec, flats, x)
    ref = torch.stack([convnet_forward(spec, flats[i], x[i]) for i in range(3)])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_init_flat_deterministic_per_generator_and_pytorch_bounds():
    spec = ConvNetSpec(3, 16, 10, depth=2, width=8)
    a = init_flat(spec, torch.Generator().manual_seed(7))
    b = init_flat(spec, torch.Generator().manual_seed(7))
    c = init_flat(spec, torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32 and a.shape == (spec.num_params,)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # PyTorch's default init: U(+-1/sqrt(fan_in)) for conv/linear weight and bias, norm 1/0
    fan_in = None
    for (name, shape), part in zip(spec.shapes(), spec.unflatten(a), strict=True):
        if name.startswith("norm"):
            expect = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
            assert torch.equal(part, expect), name
            continue
        if name.endswith("weight"):
            fan_in = math.prod(shape[1:])
        bound = 1 / math.sqrt(fan_in)
        assert part.abs().max() <= bound, name
        if part.numel() >= 64:  # a uniform sample of that size fills its range
            assert part.abs().max() > 0.8 * bound, name
            assert abs(float(part.mean())) < 0.25 * bound, name


def test_from_config_rejects_depth_pooling_below_one_pixel():
    with pytest.raises(ValueError, match=r"net_depth=4.*at most 3"):
        ConvNetSpec.from_config(ModelConfig(net_depth=4), channels=3, side=8, num_classes=10)
    spec = ConvNetSpec.from_config(ModelConfig(net_depth=3), channels=3, side=8, num_classes=10)
    assert spec.feature_side == 1


def test_flops_counts_conv_and_linear():
    spec = ConvNetSpec(3, 8, 10, depth=1, width=4)
    # conv: 8*8 outputs x 4 channels x 27 MACs; linear: 4*4*4 features x 10; x2 for mul+add
    assert flops_per_image(spec) == 2 * (8 * 8 * 4 * 27 + 4 * 4 * 4 * 10)
