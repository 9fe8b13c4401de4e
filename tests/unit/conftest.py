"""Shared fixtures of the lsslib unit tests (``test_lss_*.py``).

Everything here is tiny and synthetic (a few classes of 8x8 images, ConvNets of
width 4) except :func:`lss_cifar_cache`, which points at a decoded CIFAR-10
cache. Nothing is written outside pytest's temporary folders.

Two process-wide settings:

* the ``lsslib`` under test is the one of this checkout (the repository root goes
  first on ``sys.path``), whatever an editable install of the shared venv points at;
* torch runs on one thread: the tensors are tiny, and on a busy 2-core machine
  several threads per op are many times slower than one.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session", autouse=True)
def _lss_one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def lss_repo() -> Path:
    """The repository root (whose ``lsslib`` the tests import)."""
    import lsslib

    assert Path(lsslib.__file__).resolve().parent == REPO / "lsslib", lsslib.__file__
    return REPO


def _make_tiny_data(
    num_classes: int = 4,
    per_class: int = 12,
    test_per_class: int = 4,
    channels: int = 3,
    side: int = 8,
    seed: int = 0,
):
    """A separable toy dataset as a :class:`lsslib.data.RealData` (no files touched).

    Every class is a random prototype image plus Gaussian noise, so a ConvNet
    learns it within a few epochs.
    """
    from lsslib.config import DataConfig
    from lsslib.data import Normaliser, RealData

    g = torch.Generator().manual_seed(seed)
    proto = 1.5 * torch.randn(num_classes, channels, side, side, generator=g)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(num_classes).repeat_interleave(m)
        x = proto[y] + 0.5 * torch.randn(num_classes * m, channels, side, side, generator=g)
        return x, y

    xtr, ytr = draw(per_class)
    xte, yte = draw(test_per_class)
    return RealData(
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        classes=[f"c{i}" for i in range(num_classes)],
        normaliser=Normaliser(torch.zeros(channels), torch.ones(channels)),
        config=DataConfig(dataset="cifar10", normalisation="none"),
    )


@pytest.fixture(scope="session")
def lss_make_data() -> Callable:
    """Factory of tiny synthetic :class:`~lsslib.data.RealData` (see ``_make_tiny_data``)."""
    return _make_tiny_data


@pytest.fixture(scope="session")
def lss_tiny_data():
    """4 classes x 12 training / 4 test images of 3x8x8."""
    return _make_tiny_data()


#: The model and buffer of :func:`lss_tiny_buffer`.
TINY_MODEL = {"net_depth": 2, "net_width": 4}
TINY_BUFFER = {
    "num_experts": 2,
    "train_epochs": 4,
    "batch_train": 16,
    "lr_teacher": 0.05,
    "experts_per_group": 2,
}


@pytest.fixture(scope="session")
def lss_tiny_buffer(tmp_path_factory, lss_tiny_data):
    """Two tiny experts (ConvNet depth 2, width 4) trained 4 epochs on :func:`lss_tiny_data`."""
    from lsslib.config import BufferConfig, ModelConfig
    from lsslib.experts import train_experts

    folder = tmp_path_factory.mktemp("lss_buffer")
    return train_experts(
        lss_tiny_data,
        ModelConfig(**TINY_MODEL),
        BufferConfig(**TINY_BUFFER),
        folder,
        log=lambda _line: None,
    )


#: Globs of a decoded CIFAR-10 cache that make load_data(cifar10, zca) read only (the
#: split files are also checked by name, below, for the archive the tests would use).
CIFAR_CACHE_GLOBS = (
    "cifar10_*_train.json",
    "cifar10_*_test.json",
    "cifar10_*_zca_raw_eps0.1_n50000.json",  # MTT order (DataConfig.zca_input="raw")
)


def _cifar_cache_complete(folder: Path) -> bool:
    from lsslib.data import split_cache_stem

    if not all(any(folder.glob(g)) for g in CIFAR_CACHE_GLOBS):
        return False
    names = [split_cache_stem("cifar10", split).name + ".json" for split in ("train", "test")]
    return all((folder / name).is_file() for name in names)


@pytest.fixture(scope="session")
def lss_cifar_cache(tmp_path_factory) -> Path:
    """A cache folder holding the decoded CIFAR-10 and its ZCA (eps 0.1).

    Reuses an existing cache (``$LSS_CACHE_DIR`` or the repository's ``data/cache``)
    read-only: with every file present nothing is written to it. Without one the
    test is skipped, because decoding the archive and fitting ZCA on 50,000 images
    takes minutes on two cores; set ``LSS_TEST_DECODE=1`` to decode into a temporary
    cache instead.
    """
    for cand in (os.environ.get("LSS_CACHE_DIR"), REPO / "data" / "cache"):
        if cand and Path(cand).is_dir() and _cifar_cache_complete(Path(cand)):
            return Path(cand)
    from lsslib.data import find_data_root

    if os.environ.get("LSS_TEST_DECODE") == "1" and find_data_root("cifar10") is not None:
        return tmp_path_factory.mktemp("lss_cifar_cache")
    if os.environ.get("LSS_REQUIRE_CIFAR_CACHE") == "1":  # make test, after the smoke run
        pytest.fail("no decoded CIFAR-10 cache although the smoke pipeline ran before")
    pytest.skip("no decoded CIFAR-10 cache (run the data stage, or set LSS_TEST_DECODE=1)")


@pytest.fixture
def lss_float64():
    """Context manager factory: run a block with float64 as the default dtype."""

    @contextlib.contextmanager
    def ctx():
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(old)

    return ctx
