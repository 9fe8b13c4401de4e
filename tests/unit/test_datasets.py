"""The dataset registry: a fixture row per on-disk layout, contract tests over all units.

Each row of ``FIXTURES`` writes a few fake images in one dataset's real on-disk
layout (the offline archive, torchvision's CIFAR pickles and SVHN ``.mat`` files,
Fashion-MNIST's idx ``.gz`` files as Debian installs them, ...) and returns what a
loader must read back. The contract tests check every registered dataset against
its rows: constants, detection under a root, the exact uint8 pixels and int64
labels through :func:`lsslib.data.load_split_uint8`, the cache, and the normaliser.
A dataset without a row fails :func:`test_every_registered_dataset_has_a_fixture_row`.

torchvision verifies the md5 of the files it knows (CIFAR pickles, SVHN ``.mat``);
the fixtures cannot match those checksums, so those rows replace torchvision's
``check_integrity`` (and only it): the reading code that runs is torchvision's.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lsslib import config, data, datasets
from lsslib.config import DataConfig, ModelConfig
from lsslib.models import ConvNetSpec, convnet_forward, init_flat

Split = tuple[torch.Tensor, torch.Tensor, list[str]]

Expected = dict[str, Split]

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _tree(root: Path, classes: list[str], per_class: int, shape: tuple[int, ...], seed: int):
    """``root/{train,test}/<class>/<i>.png`` of random pixels; returns the expected splits."""
    from PIL import Image

    rng = _rng(seed)
    out: Expected = {}
    for split in datasets.SPLITS:
        xs, ys = [], []
        for label, cls in enumerate(sorted(classes)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, shape, dtype=np.uint8)  # H, W[, C]
                Image.fromarray(img).save(folder / f"{i}.png")
                t = torch.from_numpy(img)
                xs.append(t.permute(2, 0, 1) if t.ndim == 3 else t.unsqueeze(0))
                ys.append(label)
        out[split] = (torch.stack(xs), torch.tensor(ys), sorted(classes))
    return out


def cifar10_archive(root: Path) -> Expected:
    """The offline copy: ``cifar10-jpeg.tar.xz`` holding ``cifar10-jpeg/{train,test}/<class>/``."""
    expected = _tree(root / "staging" / "cifar10-jpeg", CIFAR10_CLASSES, 1, (32, 32, 3), 0)
    with tarfile.open(root / "cifar10-jpeg.tar.xz", "w:xz") as tar:
        tar.add(root / "staging" / "cifar10-jpeg", arcname="cifar10-jpeg")
    import shutil

    shutil.rmtree(root / "staging")
    return expected


def _cifar_pickles(
    folder: Path,
    train: list[str],
    test: str,
    meta: str,
    meta_key: str,
    label_key: str,
    classes: list[str],
    seed: int,
) -> Expected:
    """torchvision's CIFAR layout: pickled dicts of ``data`` uint8 ``[n, 3072]`` and labels."""
    rng = _rng(seed)
    folder.mkdir(parents=True)
    k = len(classes)
    out: Expected = {}
    for split, names in (("train", train), ("test", [test])):
        xs, ys = [], []
        for name in names:
            n = 3
            x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, k, n)]
            with open(folder / name, "wb") as f:
                pickle.dump({"data": x, label_key: y}, f)
            xs.append(torch.from_numpy(x).view(n, 3, 32, 32))
            ys += y
        out[split] = (torch.cat(xs), torch.tensor(ys), classes)
    with open(folder / meta, "wb") as f:
        pickle.dump({meta_key: classes}, f)
    return out


def cifar10_torchvision(root: Path) -> Expected:
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar_pickles(
        root / "cifar-10-batches-py",
        batches,
        "test_batch",
        "batches.meta",
        "label_names",
        "labels",
        CIFAR10_CLASSES,
        1,
    )


def cifar100_torchvision(root: Path) -> Expected:
    classes = [f"class{i:02d}" for i in range(100)]
    return _cifar_pickles(
        root / "cifar-100-python",
        ["train"],
        "test",
        "meta",
        "fine_label_names",
        "fine_labels",
        classes,
        2,
    )


def svhn_torchvision(root: Path) -> Expected:
    """``{train,test}_32x32.mat``: ``X`` uint8 ``[32, 32, 3, N]``, ``y`` ``[N, 1]`` in 1..10 (10 = digit 0)."""
    import scipy.io

    rng = _rng(3)
    root.mkdir(parents=True, exist_ok=True)
    out: Expected = {}
    for split, n in (("train", 5), ("test", 4)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        labels = torch.from_numpy(y[:, 0].astype(np.int64)) % 10
        out[split] = (torch.from_numpy(x).permute(3, 2, 0, 1), labels, [str(i) for i in range(10)])
    return out


def imagefolder_tree(root: Path) -> Expected:
    return _tree(root, ["cat", "ant"], 2, (6, 6, 3), 6)


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _idx(images: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    """The idx format: big-endian magic (0x0803 images, 0x0801 labels), the sizes, the bytes."""
    a = images if images is not None else labels
    magic = 0x0803 if images is not None else 0x0801
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
    return head + a.tobytes()


def _fashion(folder: Path, compress: bool, seed: int) -> Expected:
    rng = _rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out: Expected = {}
    for split, prefix, n in (("train", "train", 6), ("test", "t10k", 4)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for name, blob in (
            (f"{prefix}-images-idx3-ubyte", _idx(images=x)),
            (f"{prefix}-labels-idx1-ubyte", _idx(labels=y)),
        ):
            if compress:  # recompressed, as Debian's package: torchvision's md5 would fail
                with gzip.open(folder / f"{name}.gz", "wb", compresslevel=1) as f:
                    f.write(blob)
            else:
                (folder / name).write_bytes(blob)
        out[split] = (
            torch.from_numpy(x).unsqueeze(1),
            torch.from_numpy(y.astype(np.int64)),
            FASHION_CLASSES,
        )
    return out


def fashion_mnist_debian(root: Path) -> Expected:
    """Debian's ``dataset-fashion-mnist``: the four idx ``.gz`` files side by side."""
    return _fashion(root, compress=True, seed=4)


def fashion_mnist_torchvision(root: Path) -> Expected:
    """torchvision's layout after its download: ``FashionMNIST/raw/`` decompressed."""
    return _fashion(root / "FashionMNIST" / "raw", compress=False, seed=5)


def fashion_mnist_imagefolder(root: Path) -> Expected:
    """An ImageFolder tree of a one-channel dataset decodes as greyscale."""
    return _tree(root, ["b", "a"], 2, (28, 28), 7)


#: (dataset, layout, writer): the writer makes the layout under a folder and returns
#: ``{split: (uint8 [N, C, H, W], int64 [N], classes)}`` as the loader must read them.
FIXTURES: list[tuple[str, str, Callable[[Path], Expected]]] = [
    ("cifar10", "offline archive", cifar10_archive),
    ("cifar10", "torchvision", cifar10_torchvision),
    ("cifar100", "torchvision", cifar100_torchvision),
    ("svhn", "torchvision", svhn_torchvision),
    ("fashion_mnist", "debian gz", fashion_mnist_debian),
    ("fashion_mnist", "torchvision raw", fashion_mnist_torchvision),
    ("fashion_mnist", "imagefolder", fashion_mnist_imagefolder),
    ("imagefolder", "tree", imagefolder_tree),
]

IDS = [f"{d}-{layout.replace(' ', '_')}" for d, layout, _ in FIXTURES]


@pytest.fixture
def fake_checksums(monkeypatch):
    """torchvision's md5 checks of its CIFAR and SVHN files pass (the fixtures are fake)."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.svhn as tv_svhn

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *a, **k: True)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A cache under tmp_path, no LSS_DATA_ROOT, the current folder empty, offline."""
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LSS_DATA_ROOT", raising=False)
    monkeypatch.setenv("LSS_OFFLINE", "1")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def test_every_registered_dataset_has_a_fixture_row():
    assert set(datasets.names()) == {d for d, _, _ in FIXTURES}


@pytest.mark.parametrize("name", datasets.names())
def test_constants_of_every_dataset(name):
    ds = datasets.get(name)
    assert ds.name == name and ds.title and ds.offline_files
    assert datasets.get(name) is ds  # one instance per name
    shape = ds.shape()
    if shape is None:  # the files decide: nothing published, data_root required
        assert ds.mean is None and ds.root_required
        return
    c, side, k = shape
    assert all(isinstance(v, int) and v >= 1 for v in shape)
    assert config.DATASETS[name] == shape
    assert len(ds.mean) == len(ds.std) == c
    assert all(0 < m < 1 for m in ds.mean) and all(0 < s < 1 for s in ds.std)
    assert set(ds.split_sizes) == set(datasets.SPLITS) and min(ds.split_sizes.values()) > 0
    assert ds.download_host and ds.download_bytes > 0
    DataConfig(dataset=name)  # a valid configuration without a root


@pytest.mark.usefixtures("fake_checksums")
@pytest.mark.parametrize(("name", "layout", "write"), FIXTURES, ids=IDS)
def test_contract_loader_reads_each_layout(name, layout, write, isolated, monkeypatch):
    """Found under its root, read back pixel for pixel, cached, and normalised."""
    ds = datasets.get(name)
    root = isolated / "root"
    root.mkdir()
    expected = write(root)
    empty = isolated / "empty"
    empty.mkdir()
    assert ds.detect(root) and not ds.detect(empty)
    assert data.find_data_root(name, str(root)) == root
    if not ds.root_required:
        monkeypatch.setenv("LSS_DATA_ROOT", str(root))
        assert data.find_data_root(name) == root  # through the lookup order
    for split in datasets.SPLITS:
        x, y, classes = data.load_split_uint8(name, split, str(root))
        ex, ey, eclasses = expected[split]
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.ndim == 4 and x.shape[0] == y.shape[0] > 0
        if ds.shape() is not None:
            c, side, k = ds.shape()
            assert tuple(x.shape[1:]) == (c, side, side)
        k = len(classes)
        assert int(y.min()) >= 0 and int(y.max()) < k
        assert torch.equal(x, ex) and torch.equal(y, ey) and classes == eclasses
    stems = sorted(p.name for p in (isolated / "cache").glob(f"{name}_*_*.json"))
    assert len(stems) == 2  # one entry per split ...
    with monkeypatch.context() as m:
        m.setattr(ds, "load_split", lambda *a: pytest.fail("decoded again"))
        x2, _, _ = data.load_split_uint8(name, "train", str(root))  # ... read back from it
    assert torch.equal(x2, expected["train"][0])
    d = data.load_data(
        DataConfig(dataset=name, data_root=str(root), normalisation="meanstd"), progress=False
    )
    assert d.channels == expected["train"][0].shape[1] and d.num_classes == len(classes)
    if ds.mean is not None:  # the published statistics, not the fixture's
        torch.testing.assert_close(d.normaliser.mean, torch.tensor(list(ds.mean)))


@pytest.mark.parametrize("name", [n for n in datasets.names() if not datasets.get(n).root_required])
def test_an_empty_root_is_refused_and_an_offline_download_fails_fast(name, isolated, monkeypatch):
    (isolated / "empty").mkdir()
    with pytest.raises(ValueError, match=rf"data_root=.*holds no {name}; allowed a folder"):
        data.find_data_root(name, str(isolated / "empty"))
    with pytest.raises(ValueError, match=r"data_root=.*no such folder"):
        data.load_split_uint8(name, "train", str(isolated / "missing"))
    ds = datasets.get(name)
    # nowhere on disk: not in ./data, nor in the shared copy or a system package
    monkeypatch.setattr(data, "_candidates", lambda _root: [isolated / "cwd" / "data"])
    monkeypatch.setattr(ds, "extra_roots", ())
    assert data.find_data_root(name) is None
    with pytest.raises(OSError, match=rf"{name} was not found locally and cannot be downloaded"):
        data.load_split_uint8(name, "train")
    assert list((isolated / "cwd").iterdir()) == []  # no ./data left behind
    assert ds.download_host is not None


def test_unknown_dataset_and_split_are_refused_before_any_work(isolated):
    with pytest.raises(
        ValueError, match=r"invalid parameter dataset='mnist': allowed one of 'cifar10'"
    ):
        datasets.get("mnist")
    with pytest.raises(ValueError, match=r"dataset='mnist'.*'svhn'"):
        DataConfig(dataset="mnist")
    with pytest.raises(ValueError, match=r"dataset='mnist'"):
        data.load_split_uint8("mnist", "train")
    with pytest.raises(
        ValueError, match=r"invalid parameter split='val': allowed one of 'train', 'test'"
    ):
        data.load_split_uint8(datasets.DEFAULT, "val")
    with pytest.raises(ValueError, match=r"data_root=None: allowed a folder"):
        data.find_data_root("imagefolder")
    with pytest.raises(ValueError, match=r"data_root=None.*dataset='imagefolder'"):
        DataConfig(dataset="imagefolder")
    assert not (isolated / "cache").exists()


def test_register_refuses_a_nameless_or_duplicate_dataset():
    class Nameless(datasets.Dataset):
        pass

    with pytest.raises(ValueError, match="no dataset name"):
        datasets.register(Nameless)

    class Twice(datasets.Dataset):
        name = datasets.DEFAULT

    with pytest.raises(ValueError, match="registered twice"):
        datasets.register(Twice)
    assert type(datasets.get(datasets.DEFAULT)).__name__ != "Twice"


def _reference_convnet(channels: int, side: int, k: int, width: int, depth: int) -> torch.nn.Module:
    """The reference ``ConvNet`` (DC/DSA/MTT ``networks.py``): 28x28 treated as 32x32, and
    ``padding=3 if channel == 1 and d == 0 else 1``; instance norm, ReLU, average pooling."""
    layers: list[torch.nn.Module] = []
    cin, feat = channels, 32 if side == 28 else side
    for d in range(depth):
        layers += [
            torch.nn.Conv2d(cin, width, 3, padding=3 if channels == 1 and d == 0 else 1),
            torch.nn.GroupNorm(width, width, affine=True),
            torch.nn.ReLU(),
            torch.nn.AvgPool2d(2, 2),
        ]
        cin, feat = width, feat // 2
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(width * feat * feat, k))


@pytest.mark.parametrize(("channels", "side"), [(1, 28), (3, 32)])
def test_convnet_matches_the_reference_at_each_dataset_shape(channels, side):
    """1 x 28 x 28 (Fashion-MNIST) and 3 x 32 x 32: same parameter count and logits as the
    reference module loaded with the same flat vector."""
    spec = ConvNetSpec.from_config(
        ModelConfig(net_width=8), channels=channels, side=side, num_classes=10
    )
    ref = _reference_convnet(channels, side, 10, 8, 3)
    assert spec.num_params == sum(p.numel() for p in ref.parameters())
    assert spec.feature_side == 4
    flat = init_flat(spec, torch.Generator().manual_seed(0))
    torch.nn.utils.vector_to_parameters(flat, ref.parameters())
    x = torch.randn(5, channels, side, side, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(convnet_forward(spec, flat, x), ref(x), rtol=1e-5, atol=1e-5)


def test_fashion_mnist_is_decompressed_once_and_atomically(isolated, monkeypatch):
    """A failure half-way leaves no folder taken for complete; the next load redoes it."""
    import shutil

    root = isolated / "root"
    expected = fashion_mnist_debian(root)
    real = shutil.copyfileobj
    calls = []

    def dies_on_third(src, dst, *a):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("killed (test)")
        return real(src, dst, *a)

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "copyfileobj", dies_on_third)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # killed: no clean-up runs
    with pytest.raises(OSError, match="killed"):
        data.load_split_uint8("fashion_mnist", "train", str(root))
    cache = isolated / "cache"
    assert not list(cache.glob("fashion_mnist-raw_*"))  # no folder taken for complete
    assert not list(cache.glob("fashion_mnist_*_train.json"))
    (partial,) = cache.glob(".fashion_mnist-raw_*.partial*")  # what the killed writer left
    monkeypatch.setattr(shutil, "copyfileobj", real)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    x, y, _ = data.load_split_uint8("fashion_mnist", "train", str(root))
    assert not partial.exists()  # cleaned up by the next writer, never used
    assert torch.equal(x, expected["train"][0]) and torch.equal(y, expected["train"][1])
    (raw,) = cache.glob("fashion_mnist-raw_*")
    assert (raw / ".complete").is_file()
    assert sorted(p.name for p in (raw / "FashionMNIST" / "raw").iterdir()) == sorted(
        f.name[:-3] for f in root.glob("*.gz")
    )
    # the test split reuses the decompressed folder
    monkeypatch.setattr(shutil, "copyfileobj", lambda *a: pytest.fail("decompressed again"))
    xt, _, _ = data.load_split_uint8("fashion_mnist", "test", str(root))
    assert torch.equal(xt, expected["test"][0])


def test_fashion_mnist_source_change_is_decoded_again(isolated):
    root = isolated / "root"
    fashion_mnist_debian(root)
    x1, _, _ = data.load_split_uint8("fashion_mnist", "test", str(root))
    new = _fashion(isolated / "other", compress=True, seed=9)
    target = root / "t10k-images-idx3-ubyte.gz"
    target.write_bytes((isolated / "other" / target.name).read_bytes())
    os.utime(target, ns=(1, 1))  # a rewrite under the same name, the folder's time unchanged
    x2, _, _ = data.load_split_uint8("fashion_mnist", "test", str(root))
    assert torch.equal(x2, new["test"][0]) and not torch.equal(x1, x2)


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_debian_package(isolated):
    """Found with no data_root, 60,000 + 10,000 images, 6,000 / 1,000 per class, the mean
    of MTT's statistics; loaded with torchvision's FashionMNIST(download=False)."""
    assert data.find_data_root("fashion_mnist") == DEBIAN_FASHION
    x, y, classes = data.load_split_uint8("fashion_mnist", "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert classes == FASHION_CLASSES
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    assert abs(float(x.float().mean()) / 255 - 0.2861) < 5e-4
    assert abs(float((x.float() / 255).std()) - 0.3530) < 5e-4
    xt, yt, _ = data.load_split_uint8("fashion_mnist", "test")
    assert xt.shape == (10000, 1, 28, 28) and torch.equal(
        torch.bincount(yt), torch.full((10,), 1000)
    )
    assert list((isolated / "cwd").iterdir()) == []  # nothing written beside the run


def test_fashion_mnist_budgets_for_one_channel():
    """IPC 1 at 1 x 28 x 28: pixels store 1 image per class; low-rank r = 4 stores
    (784 - 28*4) // (4*28) = 6 (mapper 1 x 28 x 4, bases 1 x 4 x 28)."""
    params = {"dataset": "fashion_mnist", "ipc": 1, "rank": 4, "soft_labels": False}
    for kind, n in (("pixels", 1), ("lowrank", 6)):
        _, _, cfg = config.parse_stage("distill", {**params, "parameterisation": kind})
        lay = cfg.check_against(channels=1, side=28, num_classes=10)
        assert lay.images_per_class == n
        assert lay.image_floats <= lay.budget_floats == 10 * 784
    with pytest.raises(ValueError, match=r"rank=28"):
        config.parse_stage("distill", {**params, "rank": 28})
