"""The benchmarks' plain PyTorch reference computes what lsslib computes.

The speed ratios of ``benchmarks/`` are only meaningful if the reference runs
the same protocol; these tests check it on tiny shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lsslib.augment import apply_dsa, sample_dsa
from lsslib.config import EvalConfig
from lsslib.evaluate import evaluate_images
from lsslib.matching import matching_loss
from lsslib.models import ConvNetSpec, convnet_forward, init_flat
from lsslib.plan import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _reference as ref  # noqa: E402

DSA = "color_crop_cutout_flip_scale_rotate"
SPEC = ConvNetSpec(3, 8, 4, depth=2, width=4)


@pytest.mark.parametrize("family", DSA.split("_"))
def test_reference_dsa_equals_lsslib(family):
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    p = sample_dsa(family, 6, 8, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ref.ref_dsa(x, p), apply_dsa(x, p), rtol=1e-6, atol=1e-6)


def test_reference_module_equals_flat_forward():
    flat = init_flat(SPEC, torch.Generator().manual_seed(0))
    net = ref._net_from_flat(SPEC, flat)
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(net(x), convnet_forward(SPEC, flat, x), rtol=1e-5, atol=1e-6)


def test_reference_evaluation_equals_evaluate_images(lss_tiny_data):
    d = lss_tiny_data
    cfg = EvalConfig(num_eval=2, eval_epochs=4, batch_eval=16, eval_seed=3)
    res = evaluate_images(SPEC, d.x_train, d.y_train, d, cfg, lr=0.02, progress=False)
    accs = ref.ref_evaluate(
        SPEC,
        d.x_train,
        d.y_train,
        d.x_test,
        d.y_test,
        nets=2,
        seed=3,
        epochs=4,
        lr=0.02,
        batch=16,
        dsa=DSA,
    )
    assert accs == pytest.approx(res.accuracies, abs=1 / len(d.y_test) + 1e-9)


def test_reference_unrolled_iteration_equals_matching_loss():
    g = torch.Generator().manual_seed(0)
    start = init_flat(SPEC, g)
    target = start + 0.05 * torch.randn(start.shape, generator=g)
    plan = make_plan(8, 3, 4, 8, DSA, g)
    grads = []
    for use_ref in (True, False):
        x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        lr = torch.tensor(0.05, requires_grad=True)
        y = torch.softmax(logits, -1)
        if use_ref:
            loss = ref.ref_unrolled_iteration(
                SPEC, ref.RefConvNet(SPEC), start, target, x, y, lr, plan.indices, plan.augment
            )
        else:
            loss = matching_loss(SPEC, start, target, x, y, lr, plan, "unrolled")
            loss.backward()
        grads.append((loss.detach(), x.grad, logits.grad, lr.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_op_profile_splits_convolutions_from_the_rest():
    import _common

    x = torch.randn(4, 3, 16, 16)
    w = torch.randn(8, 3, 3, 3)

    def conv_only():
        return torch.nn.functional.conv2d(x, w, padding=1)

    def conv_and_elementwise():
        h = torch.nn.functional.conv2d(x, w, padding=1)
        for _ in range(50):
            h = (h * 1.0001).add_(1e-4).relu()
        return h

    only = _common.op_profile(conv_only, torch.device("cpu"))
    mixed = _common.op_profile(conv_and_elementwise, torch.device("cpu"))
    assert only["conv_share"] > 0.9  # nothing but the convolution's own operators
    assert 0 < mixed["conv_share"] < only["conv_share"]
    assert mixed["conv_ms"] <= mixed["total_ms"]
    assert any(op == "aten::mul" for op, _ in mixed["top"])
    assert _common.op_profile(conv_only, torch.device("meta")) is None  # CPU only


def test_convolution_floor_is_reference_time_over_convolution_time():
    import _common

    results = {"reference": {"best_s": 3.0}, "unrolled": {"best_s": 2.0}}
    profiles = {"reference": {"conv_share": 0.5}, "unrolled": {"conv_share": 0.75}}
    # 3 s / (0.75 x 2 s): the variant's convolutions alone take 1.5 s
    assert _common.convolution_floor(results, profiles) == {"unrolled": 2.0}
    assert _common.convolution_floor({"unrolled": {"best_s": 2.0}}, profiles) == {}
