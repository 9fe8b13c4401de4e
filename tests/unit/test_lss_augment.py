"""DSA: differentiable, seeded, every family acts on the images (book/choices.md §10)."""

from __future__ import annotations

import math

import pytest
import torch

from lsslib.augment import DSA_RANGES, apply_dsa, dsa, sample_dsa

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


def images(n: int = 16, c: int = 3, side: int = 12, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, side, side, generator=g).to(dtype)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_differentiable_and_changes_the_image(family):
    x = images().requires_grad_(True)
    p = sample_dsa(family, x.shape[0], x.shape[-1], torch.Generator().manual_seed(1))
    assert p.family == family
    out = apply_dsa(x, p)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((out * w).sum(), x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_passes_gradcheck(family):
    x = images(n=3, c=2, side=6, dtype=torch.float64).requires_grad_(True)
    p = sample_dsa(family, 3, 6, torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(lambda t: apply_dsa(t, p), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("strategy", ["color_crop_cutout_flip_scale_rotate", "scale", "crop"])
def test_reproducible_from_seed(strategy):
    x = images()
    a = dsa(x, strategy, torch.Generator().manual_seed(5))
    b = dsa(x, strategy, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    outs = [dsa(x, strategy, torch.Generator().manual_seed(s)) for s in range(6, 10)]
    assert all(not torch.equal(a, o) for o in outs)


def test_one_family_per_call_and_all_families_drawn():
    g = torch.Generator().manual_seed(0)
    seen = {sample_dsa("_".join(FAMILIES), 4, 12, g).family for _ in range(200)}
    assert seen == set(FAMILIES)


def test_flip_flips_exactly_the_sampled_images():
    x = images(n=64)
    p = sample_dsa("flip", 64, 12, torch.Generator().manual_seed(7))
    mask = p.values["flip"]
    assert 0 < int(mask.sum()) < 64  # p = 0.5 over 64 images
    out = apply_dsa(x, p)
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])


def test_crop_translates_by_integer_pixels_with_zero_padding():
    x = images(n=8, side=8)
    p = sample_dsa("crop", 8, 8, torch.Generator().manual_seed(8))
    m = int(8 * DSA_RANGES["crop"] + 0.5)
    assert p.values["dx"].abs().max() <= m and p.values["dy"].abs().max() <= m
    out = apply_dsa(x, p)
    for i in range(8):
        dx, dy = int(p.values["dx"][i]), int(p.values["dy"][i])
        # out[y, x] = in[y + dy, x + dx], zero outside
        ref = torch.zeros_like(x[i])
        for yy in range(8):
            for xx in range(8):
                sy, sx = yy + dy, xx + dx
                if 0 <= sy < 8 and 0 <= sx < 8:
                    ref[:, yy, xx] = x[i, :, sy, sx]
        assert torch.equal(out[i], ref), i


def test_cutout_zeroes_one_square_per_image():
    x = images(n=8, side=12) + 10.0  # no pixel is zero before the cutout
    p = sample_dsa("cutout", 8, 12, torch.Generator().manual_seed(9))
    out = apply_dsa(x, p)
    size = int(12 * DSA_RANGES["cutout"] + 0.5)
    for i in range(8):
        zero = out[i, 0] == 0
        assert torch.equal(zero, (out[i] == 0).all(0))  # same square on every channel
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 0 < len(rows) <= size and 0 < len(cols) <= size
        assert int(zero.sum()) == len(rows) * len(cols)  # a rectangle (clipped square)
        keep = ~zero
        assert torch.equal(out[i][:, keep], x[i][:, keep])


def test_color_ranges_and_rotation_angle():
    g = torch.Generator().manual_seed(10)
    p = sample_dsa("color", 500, 8, g)
    assert p.values["brightness"].min() >= -0.5 and p.values["brightness"].max() < 0.5
    p = sample_dsa("rotate", 500, 8, g)
    limit = DSA_RANGES["rotate"] / 180 * math.pi
    assert p.values["theta"].abs().max() <= limit
    assert p.values["theta"].abs().max() > 0.9 * limit
    p = sample_dsa("scale", 500, 8, g)
    s = DSA_RANGES["scale"]
    assert p.values["sx"].min() >= 1 / s and p.values["sx"].max() <= s


def test_rotation_by_zero_and_unit_scale_are_identity():
    x = images(n=2, side=8)
    from lsslib.augment import DSAParams

    rot = apply_dsa(x, DSAParams("rotate", {"theta": torch.zeros(2)}))
    scl = apply_dsa(x, DSAParams("scale", {"sx": torch.ones(2), "sy": torch.ones(2)}))
    torch.testing.assert_close(rot, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(scl, x, rtol=0, atol=1e-5)
