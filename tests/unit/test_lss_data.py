"""Data: class-balanced subsets, the normaliser and its ZCA round trip, the cache folder."""

from __future__ import annotations

import pytest
import torch

from lsslib import data as lssdata
from lsslib import datasets
from lsslib.config import DataConfig
from lsslib.data import Normaliser, class_balanced_indices


def test_class_balanced_indices_exactly_n_per_class():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (300,), generator=g)
    labels[:5] = torch.arange(5)  # every class present
    counts = torch.bincount(labels, minlength=5)
    n = int(counts.min())
    idx = class_balanced_indices(labels, n, seed=1)
    assert idx.dtype == torch.int64 and idx.shape == (5 * n,)
    assert len(set(idx.tolist())) == 5 * n  # without replacement
    assert torch.equal(torch.bincount(labels[idx], minlength=5), torch.full((5,), n))
    # grouped by class in label order
    assert torch.equal(labels[idx], torch.arange(5).repeat_interleave(n))
    assert torch.equal(idx, class_balanced_indices(labels, n, seed=1))
    assert not torch.equal(idx, class_balanced_indices(labels, n, seed=2))
    with pytest.raises(ValueError, match=rf"per_class={n + 1}.*only {n}"):
        class_balanced_indices(labels, n + 1)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "c"))
    assert lssdata.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LSS_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    assert lssdata.cache_dir() == tmp_path / "data" / "cache"


def test_fit_zca_round_trip_and_cache(tmp_path, monkeypatch):
    """kornia ZCA fitted through lsslib (the mean/std-first order): invert(normalise(x)) == x / 255; cached on disk."""
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    # correlated pixels so that the whitening does something
    base = torch.rand(300, 3, 1, 1, generator=g) * 200
    x = (base + torch.rand(300, 3, 4, 4, generator=g) * 55).to(torch.uint8)
    norm = lssdata._fit_normaliser("tinyset", x, "zca", 0.1, "meanstd")
    assert norm.zca_matrix is not None and norm.zca_matrix.shape == (48, 48)
    # mean/std computed from the data for a dataset without published statistics
    xf = x.float() / 255
    torch.testing.assert_close(norm.mean, xf.mean(dim=(0, 2, 3)))
    eye = norm.zca_matrix.double() @ norm.zca_inverse.double()
    torch.testing.assert_close(eye, torch.eye(48, dtype=torch.float64), rtol=0, atol=1e-3)
    z = norm(x)
    assert z.dtype == torch.float32 and z.shape == x.shape
    # whitening decorrelates: off-diagonal covariance shrinks a lot
    flat = ((xf - norm.mean[:, None, None]) / norm.std[:, None, None]).flatten(1)
    cov_in, cov_out = torch.cov(flat.T), torch.cov(z.flatten(1).T)
    off = ~torch.eye(48, dtype=torch.bool)
    assert cov_out[off].abs().mean() < 0.2 * cov_in[off].abs().mean()
    torch.testing.assert_close(norm.invert(z), xf, rtol=0, atol=1e-4)
    # written to the monkeypatched cache and read back identically
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2
    assert all(f.startswith("tinyset_") and "_zca_eps0.1_n300." in f for f in files)
    again = lssdata._fit_normaliser("tinyset", x, "zca", 0.1, "meanstd")
    assert torch.equal(again.zca_matrix, norm.zca_matrix)
    assert torch.equal(again.zca_inverse, norm.zca_inverse)


def _reference_zca(flat: torch.Tensor, eps: float) -> torch.Tensor:
    """Whitening computed here, independently of kornia, as in the MTT/KIP code.

    ``flat`` float64 ``[N, D]``: centre by the feature means, unbiased covariance,
    its eigendecomposition ``V diag(l) V^T``, ``W = V diag((l + eps)^-1/2) V^T``;
    returns ``(flat - mean) @ W``.
    """
    import numpy as np

    a = flat.numpy()
    centred = a - a.mean(axis=0, keepdims=True)
    cov = centred.T @ centred / (len(a) - 1)
    evals, evecs = np.linalg.eigh(cov)
    w = evecs @ np.diag(1.0 / np.sqrt(evals + eps)) @ evecs.T
    return torch.from_numpy(centred @ w)


def _zca_fixture(n: int = 400, side: int = 4) -> torch.Tensor:
    """uint8 ``[n, 3, side, side]`` with correlated channels of unequal spread."""
    g = torch.Generator().manual_seed(3)
    base = torch.rand(n, 1, 1, 1, generator=g) * 150
    scale = torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)  # channel std differs
    x = base * scale + torch.rand(n, 3, side, side, generator=g) * 100
    return x.round().clamp(0, 255).to(torch.uint8)


def test_zca_raw_matches_reference_whitening(tmp_path, monkeypatch):
    """Default ZCA = MTT's: kornia eps 0.1 on the raw [0, 1] pixels (no mean/std before).

    Compared with a whitening computed in the test; the old order (mean/std first)
    gives clearly different pixels on this fixture, so this test fails on it.
    """
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path))
    x = _zca_fixture()
    raw = (x.double() / 255).flatten(1)
    ref = _reference_zca(raw, 0.1)
    norm = lssdata._fit_normaliser("tinyset", x, "zca", 0.1)  # default zca_input="raw"
    assert torch.equal(norm.mean, torch.zeros(3)) and torch.equal(norm.std, torch.ones(3))
    got = norm(x).flatten(1).double()
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-4)
    # the other order, fitted on mean/std-normalised pixels, is its own reference ...
    ms = lssdata._fit_normaliser("tinyset", x, "zca", 0.1, "meanstd")
    xf = x.double() / 255
    normed = ((xf - ms.mean.double()[:, None, None]) / ms.std.double()[:, None, None]).flatten(1)
    torch.testing.assert_close(
        ms(x).flatten(1).double(), _reference_zca(normed, 0.1), rtol=0, atol=2e-4
    )
    # ... and differs from MTT's by far more than the tolerance
    assert (ms(x).flatten(1).double() - ref).abs().max() > 0.1
    # the choice is part of the cache key: two entries, each read back as itself
    assert len(list(tmp_path.glob("tinyset_*_zca_raw_eps0.1_n400.json"))) == 1
    assert len(list(tmp_path.glob("tinyset_*_zca_eps0.1_n400.json"))) == 1
    again = lssdata._fit_normaliser("tinyset", x, "zca", 0.1, "raw")
    assert torch.equal(again.zca_matrix, norm.zca_matrix)
    torch.testing.assert_close(norm.invert(norm(x)), x.float() / 255, rtol=0, atol=1e-4)


def test_zca_input_is_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"zca_input='whitened'.*'raw'.*'meanstd'"):
        DataConfig(zca_input="whitened")
    with pytest.raises(ValueError, match=r"zca_input='x'"):
        lssdata._fit_normaliser("tinyset", _zca_fixture(8), "zca", 0.1, "x")
    assert DataConfig().zca_input == "raw"
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_load_data_zca_input_end_to_end(tmp_path, monkeypatch):
    """load_data passes DataConfig.zca_input through: an ImageFolder fixture, both orders."""
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    _write_imagefolder(tmp_path / "imgs", seed=2, per_class=20, side=2)
    xu, _, _ = lssdata.load_split_uint8("imagefolder", "train", str(tmp_path / "imgs"))
    ref = _reference_zca((xu.double() / 255).flatten(1), 0.1)
    out = {}
    for order in ("raw", "meanstd"):
        cfg = DataConfig(dataset="imagefolder", data_root=str(tmp_path / "imgs"), zca_input=order)
        out[order] = lssdata.load_data(cfg, progress=False).x_train.flatten(1).double()
    torch.testing.assert_close(out["raw"], ref, rtol=0, atol=2e-4)
    assert (out["meanstd"] - ref).abs().max() > 0.1


@pytest.mark.parametrize("normalisation", ["meanstd", "none"])
def test_normaliser_without_zca_round_trip(normalisation, tmp_path, monkeypatch):
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path))
    x = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8)
    norm = lssdata._fit_normaliser("cifar10", x, normalisation, 0.1)
    assert norm.zca_matrix is None
    z = norm(x)
    torch.testing.assert_close(norm.invert(z), x.float() / 255, rtol=0, atol=1e-6)
    if normalisation == "meanstd":  # CIFAR-10's published statistics
        torch.testing.assert_close(norm.mean, torch.tensor([0.4914, 0.4822, 0.4465]))
    assert list(tmp_path.iterdir()) == []  # nothing cached without ZCA


def test_normaliser_batches_like_one_call():
    norm = Normaliser(torch.tensor([0.5, 0.4]), torch.tensor([0.2, 0.3]))
    x = torch.randint(0, 256, (10, 2, 3, 3), dtype=torch.uint8)
    torch.testing.assert_close(norm(x, batch=3), norm(x, batch=100), rtol=0, atol=0)
    assert norm(x[:0]).numel() == 0


@pytest.mark.slow
def test_real_cifar10_zca_round_trip(lss_cifar_cache, monkeypatch, tmp_path):
    """load_data on a small real CIFAR-10 subset: the ZCA normaliser inverts to x / 255."""
    monkeypatch.setenv("LSS_CACHE_DIR", str(lss_cifar_cache))
    monkeypatch.chdir(tmp_path)  # independent of the working directory
    cfg = DataConfig(dataset="cifar10", train_per_class=3, test_per_class=2, subset_seed=4)
    d = lssdata.load_data(cfg)
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert d.num_classes == 10 and len(d.classes) == 10
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 3))
    xu, yu, _ = lssdata.load_split_uint8("cifar10", "train")
    assert xu.dtype == torch.uint8 and xu.shape == (50000, 3, 32, 32)
    idx = class_balanced_indices(yu, 3, seed=4)
    assert torch.equal(d.y_train, yu[idx])
    back = d.normaliser.invert(d.x_train)
    err = (back - xu[idx].float() / 255).abs()
    assert err.max() < 1e-4  # float32 3072x3072 whitening and its inverse
    assert err.mean() < 1e-5
    # ZCA was fitted on the whole training set, not the subset
    assert d.normaliser.zca_matrix.shape == (3072, 3072)
    assert any(lss_cifar_cache.glob("cifar10_*_zca_raw_eps0.1_n50000.json"))
    # MTT's ZCA on raw pixels: the mean/std step is the identity
    assert torch.equal(d.normaliser.mean, torch.zeros(3))
    assert torch.equal(d.normaliser.std, torch.ones(3))


def _write_imagefolder(root, seed: int, per_class: int = 3, side: int = 4):
    """train/ and test/ folders of two classes of random PNG images; returns the pixels."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = {}
    for split in ("train", "test"):
        for cls in ("cat", "ant"):  # folder order differs from creation order
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = torch.randint(0, 256, (side, side, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(img.numpy()).save(folder / f"{i}.png")
                pixels[(split, cls, i)] = img.permute(2, 0, 1)
    return pixels


def test_imagefolder_decode_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    pixels = _write_imagefolder(tmp_path / "imgs", seed=0)
    x, y, classes = lssdata.load_split_uint8("imagefolder", "train", str(tmp_path / "imgs"))
    assert classes == ["ant", "cat"]  # sorted folder names
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 4, 4)
    assert torch.equal(y, torch.tensor([0, 0, 0, 1, 1, 1]))
    for j, cls in enumerate(classes):
        for i in range(3):
            assert torch.equal(x[3 * j + i], pixels[("train", cls, i)])

    # the second call reads the cache and decodes nothing
    def no_decode(*_a, **_k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(datasets.get("imagefolder"), "load_split", no_decode)
    x2, y2, c2 = lssdata.load_split_uint8("imagefolder", "train", str(tmp_path / "imgs"))
    assert torch.equal(x2, x) and torch.equal(y2, y) and c2 == classes


def test_imagefolder_cache_key_is_stable_across_processes(tmp_path, monkeypatch):
    """The cache file of a folder is found again by a later process (no salted hash())."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _write_imagefolder(tmp_path / "imgs", seed=1, per_class=1)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LSS_CACHE_DIR", str(cache))
    lssdata.load_split_uint8("imagefolder", "train", str(tmp_path / "imgs"))
    # another process with another string-hash salt than this one
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    code = (
        "import sys; from lsslib.data import load_split_uint8; "
        "load_split_uint8('imagefolder', 'train', sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "imgs")], env=env, check=True, timeout=120
    )
    assert len(list(cache.glob("imagefolder_*_train.json"))) == 1


def test_zca_cache_not_shared_between_imagefolders_of_equal_size(tmp_path, monkeypatch):
    """Two different image folders with as many images must not share a cached ZCA."""
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    norms = []
    for name, seed in (("one", 2), ("two", 3)):
        _write_imagefolder(tmp_path / name, seed=seed, per_class=8, side=2)
        cfg = DataConfig(dataset="imagefolder", data_root=str(tmp_path / name))
        d = lssdata.load_data(cfg)
        xu, _, _ = lssdata.load_split_uint8("imagefolder", "train", str(tmp_path / name))
        torch.testing.assert_close(
            d.normaliser.invert(d.x_train), xu.float() / 255, atol=1e-4, rtol=0
        )
        norms.append(d.normaliser)
    assert not torch.equal(norms[0].zca_matrix, norms[1].zca_matrix)


def test_two_cifar10_folders_do_not_share_a_cache(tmp_path, monkeypatch):
    """The decoded-split cache is keyed by the source: two CIFAR-10 roots, two entries."""
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    pa = _write_imagefolder(tmp_path / "a" / "cifar10-jpeg", seed=5, per_class=2)
    pb = _write_imagefolder(tmp_path / "b" / "cifar10-jpeg", seed=6, per_class=3)
    xa, ya, _ = lssdata.load_split_uint8("cifar10", "train", str(tmp_path / "a"))
    xb, yb, _ = lssdata.load_split_uint8("cifar10", "train", str(tmp_path / "b"))
    assert xa.shape[0] == 4 and xb.shape[0] == 6
    assert torch.equal(xa[0], pa[("train", "ant", 0)])
    assert torch.equal(xb[0], pb[("train", "ant", 0)])
    assert len(list((tmp_path / "cache").glob("cifar10_*_train.json"))) == 2
    # and each is read back from its own entry
    xa2, _, _ = lssdata.load_split_uint8("cifar10", "train", str(tmp_path / "a"))
    assert torch.equal(xa2, xa)


def test_changed_source_is_decoded_again(tmp_path, monkeypatch):
    """A class folder that gained an image invalidates the cached split."""
    from PIL import Image

    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    _write_imagefolder(tmp_path / "imgs", seed=7, per_class=2)
    x1, y1, _ = lssdata.load_split_uint8("imagefolder", "train", str(tmp_path / "imgs"))
    extra = torch.full((4, 4, 3), 9, dtype=torch.uint8)
    Image.fromarray(extra.numpy()).save(tmp_path / "imgs" / "train" / "cat" / "new.png")
    x2, y2, _ = lssdata.load_split_uint8("imagefolder", "train", str(tmp_path / "imgs"))
    assert x1.shape[0] == 4 and x2.shape[0] == 5
    assert int((y2 == 1).sum()) == 3
    assert any(torch.equal(img, extra.permute(2, 0, 1)) for img in x2)
    # one entry per source folder, rewritten in place
    assert len(list((tmp_path / "cache").glob("imagefolder_*_train.json"))) == 1


def test_zca_cache_is_keyed_by_pixels_for_named_datasets(tmp_path, monkeypatch):
    """Two different CIFAR-10-shaped training sets of equal size get their own ZCA."""
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path))
    g = torch.Generator().manual_seed(8)
    xs = [torch.randint(0, 256, (40, 3, 2, 2), generator=g, dtype=torch.uint8) for _ in range(2)]
    n1, n2 = (lssdata._fit_normaliser("cifar10", x, "zca", 0.1) for x in xs)
    assert not torch.equal(n1.zca_matrix, n2.zca_matrix)
    assert len(list(tmp_path.glob("cifar10_*_zca_raw_eps0.1_n40.json"))) == 2


def test_downloaded_dataset_is_decoded_once(tmp_path, monkeypatch):
    """After torchvision downloads, the next load finds the same cache entry (no second decode)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(lssdata, "_candidates", lambda _root: [tmp_path / "data"])
    unit = datasets.get("cifar10")
    monkeypatch.setattr(unit, "check_download", lambda: None)  # the server is reachable
    calls = []

    def fake_download(root, split):  # what torchvision leaves behind
        calls.append((root, split))
        (root / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
        return torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"]

    monkeypatch.setattr(unit, "load_native", fake_download)
    assert lssdata.find_data_root("cifar10") is None
    x1, y1, _ = lssdata.load_split_uint8("cifar10", "train")
    assert lssdata.find_data_root("cifar10") == tmp_path / "data"
    x2, y2, _ = lssdata.load_split_uint8("cifar10", "train")
    assert len(calls) == 1 and calls[0][0] == tmp_path / "data"
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_imagefolder_decodes_any_mode_to_rgb_like_torchvision(tmp_path, monkeypatch):
    """Grey, palette and JPEG files all come out as RGB uint8, equal to torchvision's decoder."""
    import warnings

    from PIL import Image

    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(9)
    rgb = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
    grey = torch.randint(0, 256, (8, 8), generator=g, dtype=torch.uint8).numpy()
    for split in ("train", "test"):
        folder = tmp_path / "imgs" / split / "a"
        folder.mkdir(parents=True)
        Image.fromarray(grey, mode="L").save(folder / "0_grey.png")
        Image.fromarray(rgb).convert("P").save(folder / "1_palette.png")
        Image.fromarray(rgb).save(folder / "2_photo.jpg", quality=75)
    x, _, _ = lssdata.load_split_uint8("imagefolder", "train", str(tmp_path / "imgs"))
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.uint8
    assert all(torch.equal(x[0, c], torch.from_numpy(grey)) for c in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tvio = pytest.importorskip("torchvision.io")
        if not hasattr(tvio, "decode_image"):
            pytest.skip("this torchvision has no image decoder")
        folder = tmp_path / "imgs" / "train" / "a"
        for i, name in enumerate(["0_grey.png", "1_palette.png", "2_photo.jpg"]):
            ref = tvio.decode_image(tvio.read_file(str(folder / name)), mode=tvio.ImageReadMode.RGB)
            assert torch.equal(x[i], ref), name
