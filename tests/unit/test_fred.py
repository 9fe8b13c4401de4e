"""FReD's unit beyond the contract rows: its DCT, its frequency selection, its images."""

from __future__ import annotations

import math

import numpy as np
import torch

from lsslib.parameterisations import Budget
from lsslib.parameterisations.fred import FreDSynSet, dct_matrix


def _dct2_reference(x: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II from its definition (sums, no matrix), for one image."""
    n = x.shape[0]
    out = np.zeros_like(x, dtype=np.float64)
    for u in range(n):
        for v in range(n):
            s = 0.0
            for i in range(n):
                for j in range(n):
                    s += (
                        x[i, j]
                        * math.cos(math.pi * (2 * i + 1) * u / (2 * n))
                        * math.cos(math.pi * (2 * j + 1) * v / (2 * n))
                    )
            cu = math.sqrt(1 / n) if u == 0 else math.sqrt(2 / n)
            cv = math.sqrt(1 / n) if v == 0 else math.sqrt(2 / n)
            out[u, v] = cu * cv * s
    return out


def test_dct_matrix_is_orthonormal_and_matches_the_definition():
    d = dct_matrix(6, dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(6, dtype=torch.float64), atol=1e-12)
    x = np.random.default_rng(0).normal(size=(6, 6))
    ours = (d @ torch.from_numpy(x) @ d.T).numpy()
    assert np.allclose(ours, _dct2_reference(x), atol=1e-10)


def _budget(ipc: int, m: int, k: int = 2, c: int = 3, side: int = 8) -> Budget:
    return Budget(ipc, 1, 1, c, side, k, False, False, {"coefficients": m})


def test_all_coefficients_reproduce_the_real_images():
    k, c, side = 2, 3, 8
    b = _budget(ipc=2, m=side * side, k=k, c=c, side=side)
    lay = FreDSynSet.solve(b)
    assert lay.images_per_class == 2  # m = H*W stores whole images: ipc of them
    real = torch.randn(k, 2, c, side, side, generator=torch.Generator().manual_seed(0))
    syn = FreDSynSet.from_real(lay, real, b)
    assert torch.allclose(syn.images(), real.reshape(-1, c, side, side), atol=1e-5)


def test_the_mask_keeps_the_frequencies_that_vary_most_within_a_class():
    k, n, c, side, m = 2, 16, 3, 8, 4
    d = dct_matrix(side, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    freq = 1e-3 * torch.randn(k, n, c, side, side, generator=g, dtype=torch.float64)
    wanted = [[(0, 1), (2, 3), (5, 5), (7, 0)], [(1, 1), (3, 6), (4, 2), (6, 7)]]
    for cls, pairs in enumerate(wanted):
        for h, w in pairs:  # large variance across the class's images, every channel
            freq[cls, :, :, h, w] += 5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    real = (d.T @ freq @ d).float()  # images whose spectra are `freq`
    b = _budget(ipc=1, m=m, k=k, c=c, side=side)
    lay = FreDSynSet.solve(b)
    assert lay.images_per_class == side * side // m == 16
    syn = FreDSynSet.from_real(lay, real, b)
    for cls, pairs in enumerate(wanted):
        got = {divmod(int(i), side) for i in syn.freq_index[cls]}
        assert got == set(pairs)
    # the stored coefficients are the real spectra at those frequencies; storage C*m each
    assert syn.coef.shape == (k, n, c, m)
    assert sum(p.numel() for p in syn.parameters()) == k * n * c * m
