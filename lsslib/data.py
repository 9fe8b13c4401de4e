"""Datasets as tensors on a device: CIFAR-10/100, SVHN, ImageFolder trees; ZCA.

The whole (sub)set is decoded once, cached as uint8 safetensors under the cache
folder (``$LSS_CACHE_DIR`` or ``./data/cache``), and held as one float tensor on
the target device, as MTT does. Normalisation (PAPER.md 2.7):

* ``zca`` with ``zca_input="raw"`` (the default) follows MTT's ``--zca`` path:
  kornia's ``ZCAWhitening`` (eps 0.1, unbiased covariance) fitted on the whole
  training set of raw ``ToTensor`` pixels in [0, 1], with no mean/std step before
  it (MTT's ``buffer.py``/``distill.py`` replace ``Normalize`` by ``ToTensor``
  alone when ``--zca`` is set).
* ``zca`` with ``zca_input="meanstd"``: per-channel mean/std first, then the same
  ZCA fit. This was this library's only order before; eps 0.1 then acts on
  pixels about 25x larger in variance, i.e. about 25x more weakly (the whitened
  CIFAR-10 training data's channel std is about 0.48 instead of 0.26).
* ``meanstd``: per-channel mean/std only; ``none``: pixels in [0, 1].

Where the data is looked for (:func:`find_data_root`), first hit wins:

1. the ``data_root`` argument;
2. the environment variable ``LSS_DATA_ROOT``;
3. ``./data`` under the current folder;
4. ``../shared/data`` beside the current folder, then beside the repository.

A ``data_root`` given explicitly must exist and hold the dataset (a misspelled
path is an error, never skipped). A root may hold an ImageFolder tree (``train/<class>/*``, ``test/<class>/*``), a
``cifar10-jpeg.tar.xz`` archive of one (unpacked into the cache on first use), or
torchvision's own files; with none of these, torchvision downloads, after a
quick check that its server can be reached: offline, the load fails at once with
what to do, and leaves no folder behind. Free space is checked before
unpacking an archive, before a download, and before every cache write.

Writers of the cache take a lock per entry (:func:`lsslib.locking.file_lock`):
two processes on a cold cache decode (or unpack) an entry once, the second
waiting for the first and then reading its result.

Cache keys. A decoded split is cached under ``<dataset>_<digest of the source
path>_<split>``, and its metadata keeps the source's fingerprint (resolved path,
size and modification times, :func:`source_fingerprint`): two different folders
of one dataset never share a cache entry, and a source that changed since it was
decoded (an archive replaced, a class folder added to or emptied) is decoded
again. A file rewritten in place under an unchanged name inside a class folder
is not detected; delete the cache folder then. The ZCA cache is keyed by a
digest of the training pixels themselves and by ``zca_input``, so it can never
belong to other data or to the other order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import kornia.enhance as KE
import torch
from torch import Tensor

from .artifacts import ArtifactError, check_free_space, load_artifact, read_metadata, save_artifact
from .config import DataConfig, check_range
from .locking import file_lock

__all__ = [
    "RealData",
    "find_data_root",
    "cache_dir",
    "load_data",
    "load_split_uint8",
    "source_fingerprint",
    "split_cache_stem",
    "class_balanced_indices",
    "class_balanced_split",
    "validation_split",
    "Normaliser",
]

_log = logging.getLogger(__name__)

#: What ZCA is fitted on (``DataConfig.zca_input``): raw [0, 1] pixels (MTT) or after mean/std.
ZCA_INPUTS = ("raw", "meanstd")

_ARCHIVES = {"cifar10": "cifar10-jpeg.tar.xz"}
#: torchvision's own file or folder of each dataset (what its loaders read).
_TORCHVISION = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "svhn": "train_32x32.mat",
}
#: Images per split of the datasets torchvision downloads (for the disk check).
_SPLIT_SIZES = {
    ("cifar10", "train"): 50000,
    ("cifar10", "test"): 10000,
    ("cifar100", "train"): 50000,
    ("cifar100", "test"): 10000,
    ("svhn", "train"): 73257,
    ("svhn", "test"): 26032,
}
#: Bytes torchvision downloads and unpacks per dataset (archive + files, rounded up).
_DOWNLOAD_BYTES = {"cifar10": 350_000_000, "cifar100": 350_000_000, "svhn": 250_000_000}
#: Where torchvision downloads each dataset from (checked before downloading).
_DOWNLOAD_HOSTS = {
    "cifar10": "www.cs.toronto.edu",
    "cifar100": "www.cs.toronto.edu",
    "svhn": "ufldl.stanford.edu",
}
#: The files a data root must hold to be used offline, per dataset (for messages).
_OFFLINE_FILES = {
    "cifar10": "cifar10-jpeg.tar.xz, an ImageFolder train/ and test/, or cifar-10-batches-py/",
    "cifar100": "cifar-100-python/ (torchvision's CIFAR-100) or an ImageFolder train/ and test/",
    "svhn": "train_32x32.mat and test_32x32.mat (torchvision's SVHN)",
}
_MEANS = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
    "svhn": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
}


def cache_dir() -> Path:
    """The cache folder: ``$LSS_CACHE_DIR`` or ``./data/cache``."""
    return Path(os.environ.get("LSS_CACHE_DIR", Path.cwd() / "data" / "cache"))


def _candidates(data_root: str | None) -> list[Path]:
    out: list[Path] = []
    if data_root:
        out.append(Path(data_root))
    if os.environ.get("LSS_DATA_ROOT"):
        out.append(Path(os.environ["LSS_DATA_ROOT"]))
    out.append(Path.cwd() / "data")
    out.append(Path.cwd().parent / "shared" / "data")
    repo = Path(__file__).resolve().parent.parent
    out.append(repo / "data")
    out.append(repo.parent / "shared" / "data")
    return out


def _has_dataset(root: Path, dataset: str) -> bool:
    if (root / "train").is_dir() and (root / "test").is_dir():
        return True
    if dataset in _ARCHIVES and (root / _ARCHIVES[dataset]).is_file():
        return True
    if dataset in _ARCHIVES and (root / "cifar10-jpeg" / "train").is_dir():
        return True
    return dataset in _TORCHVISION and (root / _TORCHVISION[dataset]).exists()


def find_data_root(dataset: str, data_root: str | None = None) -> Path | None:
    """The first folder of the lookup order (module docstring) that holds ``dataset``.

    Returns:
        The folder, or ``None`` when none has it (torchvision will download into
        ``./data``).

    Raises:
        ValueError: ``data_root`` given but not an existing folder, or a folder that
            does not hold ``dataset`` (a misspelled path is never skipped silently).
    """
    if dataset == "imagefolder":
        root = Path(data_root or "")
        if not (root / "train").is_dir():
            raise ValueError(
                f"invalid parameter data_root={data_root!r}: allowed a folder with train/<class>/ "
                "and test/<class>/ image folders"
            )
        return root
    if data_root:
        root = Path(data_root)
        if not root.is_dir():
            raise ValueError(
                f"invalid parameter data_root={data_root!r}: no such folder; allowed an existing "
                f"folder holding {_OFFLINE_FILES.get(dataset, 'the dataset')}, or None to look in "
                "$LSS_DATA_ROOT, ./data and ../shared/data"
            )
        if not _has_dataset(root, dataset):
            raise ValueError(
                f"invalid parameter data_root={data_root!r}: the folder holds no {dataset}; allowed "
                f"a folder holding {_OFFLINE_FILES.get(dataset, 'the dataset')}, or None to look in "
                "$LSS_DATA_ROOT, ./data and ../shared/data (and otherwise download)"
            )
        return root
    for root in _candidates(data_root):
        if root.is_dir() and _has_dataset(root, dataset):
            return root
    return None


def _digest(text: str, n: int = 8) -> str:
    # a stable digest: hash() of a str is salted per process
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _source_path(dataset: str, root: Path | None) -> Path:
    """The file or folder a split of ``dataset`` is read from under ``root``."""
    if root is None:  # torchvision downloads into ./data: name what will be there
        root = Path.cwd() / "data"
        return root / _TORCHVISION[dataset] if dataset in ("cifar10", "cifar100") else root
    if (
        dataset in _ARCHIVES
        and (root / _ARCHIVES[dataset]).is_file()
        and not (root / "train").is_dir()
    ):
        return root / _ARCHIVES[dataset]
    if dataset == "cifar10" and (root / "cifar10-jpeg" / "train").is_dir():
        return root / "cifar10-jpeg"
    if (
        not (root / "train").is_dir()
        and dataset in ("cifar10", "cifar100")
        and (root / _TORCHVISION[dataset]).is_dir()
    ):
        return root / _TORCHVISION[dataset]  # torchvision's pickled batches
    return root  # an ImageFolder tree, or SVHN's two .mat files


def source_fingerprint(path: str | Path) -> dict[str, object]:
    """What identifies a data source on disk, JSON-serialisable.

    For a file (an archive): its resolved path, size in bytes and modification
    time (ns). For a folder: its resolved path and the modification times of the
    folder, of its ``train``/``test`` folders and of every class folder in them
    (a folder's time changes when an entry is added, removed or renamed). A
    source that does not exist yet (torchvision will download) gives its path
    alone.
    """
    p = Path(path).resolve()
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not p.is_dir():
        return {"path": str(p)}
    times = {".": p.stat().st_mtime_ns}
    for split in ("train", "test"):
        folder = p / split
        if folder.is_dir():
            times[split] = folder.stat().st_mtime_ns
            for d in sorted(folder.iterdir()):
                if d.is_dir():
                    times[f"{split}/{d.name}"] = d.stat().st_mtime_ns
    return {"path": str(p), "mtime_ns": times}


def split_cache_stem(dataset: str, split: str, data_root: str | None = None) -> Path:
    """Where :func:`load_split_uint8` caches a split (path without suffix).

    ``<cache_dir>/<dataset>_<digest of the resolved source path>_<split>``.
    """
    return _split_stem(dataset, split, _source_path(dataset, find_data_root(dataset, data_root)))


def _split_stem(dataset: str, split: str, source: Path) -> Path:
    return cache_dir() / f"{dataset}_{_digest(str(source.resolve()))}_{split}"


def _unpack_archive(archive: Path) -> Path:
    """Unpack ``archive`` into the cache once (one process at a time; others wait).

    Raises:
        DiskFull: the unpacked files (4 KiB blocks each) do not fit in the cache.
    """
    fp = source_fingerprint(archive)
    dest = (
        cache_dir() / f"{archive.name.replace('.tar.xz', '')}_{_digest(repr(sorted(fp.items())))}"
    )
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(
        dest.with_name(f".{dest.name}.lock"), what=f"the unpacked {archive.name}", on_wait=print
    ):
        if marker.is_file():  # unpacked by the process we waited for
            return dest
        for stale in dest.parent.glob(f".{dest.name}.partial*"):  # interrupted unpacks
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial", dir=dest.parent))
        try:
            with tarfile.open(archive, "r:xz") as tar:
                members = tar.getmembers()
                need = sum(-(-m.size // 4096) * 4096 + 4096 for m in members)
                check_free_space(dest.parent, need, what=f"unpacked {archive.name}")
                tar.extractall(tmp, members=members, filter="data")
            # the archive holds train/ and test/ either at its top or inside one folder
            src = tmp if (tmp / "train").is_dir() else next(p for p in tmp.iterdir() if p.is_dir())
            shutil.rmtree(dest, ignore_errors=True)
            src.rename(dest)
            marker.touch()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _decode_imagefolder(root: Path, split: str) -> tuple[Tensor, Tensor, list[str]]:
    import numpy as np
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    folder = root / split
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(
            f"invalid parameter data_root={str(root)!r}: {folder} holds no class folders"
        )
    samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS)
    images, labels = [], []
    shape = None
    for path, label in samples:
        # Pillow, not torchvision.io (its decoders are deprecated since torchvision
        # 0.29); on the 60,000 CIFAR-10 JPEGs both give the same pixels, bit for bit.
        with Image.open(path) as im:
            img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise ValueError(
                f"invalid image {path}: shape {tuple(img.shape)}, all images must share {tuple(shape)}"
            )
        images.append(img)
        labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes


def _can_reach(host: str, timeout: float = 4.0) -> bool:
    """Whether a TCP connection to ``host:443`` opens within ``timeout`` seconds
    (name lookup included: it runs in a thread that is abandoned after the timeout)."""
    if os.environ.get("LSS_OFFLINE") == "1":
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _check_download(dataset: str) -> None:
    """Fail fast, before creating anything, when torchvision could not download ``dataset``.

    Raises:
        OSError: saying where to put the files instead.
    """
    host = _DOWNLOAD_HOSTS.get(dataset)
    if host is not None and not _can_reach(host):
        raise OSError(
            f"{dataset} was not found locally and cannot be downloaded: {host} is not reachable "
            f"(offline?). Put {_OFFLINE_FILES[dataset]} under a folder and pass it as data_root "
            "or set LSS_DATA_ROOT to it (or put them under ./data), then rerun. Looked in: "
            + ", ".join(str(p) for p in _candidates(None))
        )


def _torchvision_split(dataset: str, root: Path, split: str) -> tuple[Tensor, Tensor, list[str]]:
    import numpy as np
    import torchvision.datasets as tvd

    have = root / (f"{split}_32x32.mat" if dataset == "svhn" else _TORCHVISION[dataset])
    if not have.exists():  # torchvision will download: refuse before it starts
        _check_download(dataset)
        check_free_space(root, _DOWNLOAD_BYTES.get(dataset, 0), what=f"{dataset} download")
    train = split == "train"
    if dataset == "svhn":
        ds = tvd.SVHN(str(root), split=split, download=True)
        x = torch.from_numpy(np.asarray(ds.data))
        y = torch.from_numpy(np.asarray(ds.labels)).long()
        return x, y, [str(i) for i in range(10)]
    cls = tvd.CIFAR10 if dataset == "cifar10" else tvd.CIFAR100
    ds = cls(str(root), train=train, download=True)
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)


def load_split_uint8(
    dataset: str, split: str, data_root: str | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """Decode one split as uint8, through the safetensors cache.

    Args:
        dataset: ``cifar10``, ``cifar100``, ``svhn`` or ``imagefolder``.
        split: ``train`` or ``test``.
        data_root: see :func:`find_data_root`.

    Returns:
        ``(images, labels, classes)``: uint8 ``[N, C, H, W]``, int64 ``[N]``, class names.

    Raises:
        ValueError: a ``data_root`` that does not exist or lacks the dataset.
        OSError: the dataset is nowhere on disk and its server cannot be reached (at
            once, nothing created); ``DiskFull`` when the cache entry would not fit.
    """
    root = find_data_root(dataset, data_root)
    src = _source_path(dataset, root)
    stem = _split_stem(dataset, split, src)
    cached = _read_cached(stem, source_fingerprint(src))
    if cached is not None:
        return cached
    download = root is None  # torchvision may download into ./data
    dl_root = root or (Path.cwd() / "data")
    created = [p for p in (dl_root, cache_dir()) if not p.exists()]
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(
            stem.with_name(f".{stem.name}.lock"),
            what=f"the cached {dataset} {split}",
            on_wait=print,
        ):
            cached = _read_cached(stem, source_fingerprint(src))  # decoded by the one we waited for
            if cached is not None:
                return cached
            return _decode_split(dataset, split, root, src, stem)
    except BaseException:
        if download:  # a failed download leaves nothing behind
            for p in created:
                shutil.rmtree(p, ignore_errors=True)
        raise


def _read_cached(stem: Path, fingerprint: dict) -> tuple[Tensor, Tensor, list[str]] | None:
    try:
        if read_metadata(stem, kind="dataset").get("fingerprint") == fingerprint:
            tensors, meta = load_artifact(stem, kind="dataset")
            return tensors["images"], tensors["labels"], list(meta["classes"])
    except ArtifactError:
        pass  # missing, stale or damaged: decode again
    return None


def _decode_split(
    dataset: str, split: str, root: Path | None, src: Path, stem: Path
) -> tuple[Tensor, Tensor, list[str]]:
    fingerprint = source_fingerprint(src)
    if dataset in _ARCHIVES and src.name == _ARCHIVES[dataset] and src.is_file():
        x, y, classes = _decode_imagefolder(_unpack_archive(src), split)
        source = str(src)
    elif (src / "train").is_dir():
        x, y, classes = _decode_imagefolder(src, split)
        source = str(src)
    else:  # images of a known count: refuse before downloading or decoding
        n = _SPLIT_SIZES[(dataset, split)]
        check_free_space(stem.parent, n * (3 * 32 * 32 + 8), what=f"cached {dataset} {split}")
        dl_root = root or (Path.cwd() / "data")
        x, y, classes = _torchvision_split(dataset, dl_root, split)
        source = f"torchvision:{dl_root}"
        fingerprint = source_fingerprint(src)  # what a download has just created
    save_artifact(
        stem,
        {"images": x, "labels": y},
        kind="dataset",
        extra={"classes": classes, "source": source, "fingerprint": fingerprint},
    )
    return x, y, classes


def class_balanced_split(
    labels: Tensor, per_class: int, held_out: int, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Two disjoint class-balanced draws from one random order per class: the first
    ``per_class`` examples of each class (exactly :func:`class_balanced_indices` with
    the same seed) and the next ``held_out`` ones.

    This is how the validation split of issue 12 is taken from training images that no
    stage trains on: the training subset is unchanged by holding images out.

    Args:
        labels: int64 ``[N]``.
        per_class: examples per class of the first draw.
        held_out: examples per class of the second draw.
        seed: seed of the draw (a private ``torch.Generator``).

    Returns:
        ``(first int64 [K * per_class], second int64 [K * held_out])``, each grouped by
        class in label order; no index occurs in both.

    Raises:
        ValueError: a class has fewer than ``per_class + held_out`` examples.
    """
    g = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class + held_out:
            raise ValueError(
                f"invalid parameter val_per_class={held_out}: class {c} has {len(idx)} "
                f"examples, fewer than train_per_class + val_per_class = {per_class + held_out}"
            )
        order = idx[torch.randperm(len(idx), generator=g)]
        first.append(order[:per_class])
        second.append(order[per_class : per_class + held_out])
    return torch.cat(first), torch.cat(second)


def validation_split(
    config: DataConfig, per_class: int, normaliser: Normaliser, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor]:
    """A validation split of ``per_class`` training images per class that no stage
    trains on (issue 12: choosing the best distillation iteration without the test set).

    The images come after the training subset in the same per-class random order
    (:func:`class_balanced_split`), so they are disjoint from every image the experts,
    the distillation (its real initial images) and the evaluation networks (the
    random-real baseline, the full training subset) use, and from the test split.

    Args:
        config: the data configuration; ``train_per_class`` must be set (with the whole
            training split in use there is no unused image to hold out: lower
            ``train_per_class`` to pay for a validation split, as the paper profiles do).
        per_class: validation images per class.
        normaliser: the fitted normaliser of the loaded data (:attr:`RealData.normaliser`).
        device: where the tensors go.

    Returns:
        ``(x float32 [K * per_class, C, H, W] normalised, y int64 [K * per_class])``.

    Raises:
        ValueError: ``per_class`` < 1; ``train_per_class`` unset; too few images.
    """
    check_range("val_per_class", per_class, lo=1, integer=True)
    if config.train_per_class is None:
        raise ValueError(
            f"invalid parameter val_per_class={per_class}: allowed only with train_per_class set "
            "(the whole training split is in use, so no image is left to validate on; "
            "set train_per_class below the class size to hold images out)"
        )
    xtr, ytr, _ = load_split_uint8(config.dataset, "train", config.data_root)
    _, val = class_balanced_split(ytr, config.train_per_class, per_class, seed=config.subset_seed)
    return normaliser.to(device)(xtr[val]), ytr[val].to(device)


def class_balanced_indices(labels: Tensor, per_class: int, *, seed: int = 0) -> Tensor:
    """Indices of ``per_class`` examples of each class, drawn without replacement.

    Args:
        labels: int64 ``[N]``.
        per_class: examples per class; a class with fewer raises.
        seed: seed of the draw (a private ``torch.Generator``).

    Returns:
        int64 ``[K * per_class]``, grouped by class in label order.

    Raises:
        ValueError: a class has fewer than ``per_class`` examples.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(
                f"invalid parameter train_per_class/test_per_class={per_class}: class {c} has only {len(idx)} examples"
            )
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(out)


@dataclass
class Normaliser:
    """Mean/std normalisation followed by optional ZCA (kornia), and its inverse.

    For MTT's ZCA on raw pixels (``zca_input="raw"``) ``mean`` is 0 and ``std`` 1,
    so the first step is the identity on the [0, 1] pixels.

    Attributes:
        mean, std: float32 ``[C]``.
        zca_matrix, zca_inverse: float32 ``[D, D]`` with ``D = C*H*W`` (``None`` without ZCA).
        zca_mean: float32 ``[1, D]``.
    """

    mean: Tensor
    std: Tensor
    zca_matrix: Tensor | None = None
    zca_inverse: Tensor | None = None
    zca_mean: Tensor | None = None

    def to(self, device: torch.device | str) -> Normaliser:
        f = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Normaliser(
            f(self.mean), f(self.std), f(self.zca_matrix), f(self.zca_inverse), f(self.zca_mean)
        )

    def __call__(self, x_uint8: Tensor, batch: int = 8192) -> Tensor:
        """uint8 ``[N, C, H, W]`` -> normalised float32 ``[N, C, H, W]`` on ``mean``'s device."""
        out = []
        dev = self.mean.device
        for i in range(0, len(x_uint8), batch):
            x = x_uint8[i : i + batch].to(dev, torch.float32) / 255.0
            x = (x - self.mean[:, None, None]) / self.std[:, None, None]
            if self.zca_matrix is not None:
                shape = x.shape
                x = KE.linear_transform(x.flatten(1), self.zca_matrix, self.zca_mean, dim=0).view(
                    shape
                )
            out.append(x)
        return torch.cat(out) if out else torch.empty(0, device=dev)

    def invert(self, x: Tensor) -> Tensor:
        """Normalised float ``[N, C, H, W]`` -> pixel values in ``[0, 1]`` (clamped)."""
        x = x.detach().float()
        if self.zca_inverse is not None:
            shape = x.shape
            # linear_transform computes (x - mean) @ M; the inverse adds the mean back afterwards.
            x = (x.flatten(1) @ self.zca_inverse.to(x.device) + self.zca_mean.to(x.device)).view(
                shape
            )
        x = x * self.std.to(x.device)[:, None, None] + self.mean.to(x.device)[:, None, None]
        return x.clamp(0, 1)

    def describe(self) -> dict[str, object]:
        """JSON description: mean and std per channel, and whether ZCA follows."""
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "zca": self.zca_matrix is not None,
        }

    def to_tensors(self) -> dict[str, Tensor]:
        d = {"mean": self.mean, "std": self.std}
        if self.zca_matrix is not None:
            d.update(
                zca_matrix=self.zca_matrix, zca_inverse=self.zca_inverse, zca_mean=self.zca_mean
            )
        return d


def _fit_normaliser(
    dataset: str, x_train: Tensor, normalisation: str, eps: float, zca_input: str = "raw"
) -> Normaliser:
    """Fit the normaliser of ``normalisation`` on uint8 ``[N, C, H, W]`` training pixels.

    ``zca_input`` (ZCA only): ``raw`` fits ZCA on the [0, 1] pixels (MTT), with the
    mean/std step the identity; ``meanstd`` fits it after per-channel mean/std.

    Raises:
        ValueError: ``zca_input`` not one of ``raw``, ``meanstd``.
    """
    if zca_input not in ZCA_INPUTS:
        raise ValueError(
            f"invalid parameter zca_input={zca_input!r}: allowed {', '.join(map(repr, ZCA_INPUTS))}"
        )
    c = x_train.shape[1]
    if normalisation == "none" or (normalisation == "zca" and zca_input == "raw"):
        mean, std = torch.zeros(c), torch.ones(c)
        if normalisation == "none":
            return Normaliser(mean, std)
    elif dataset in _MEANS:
        mean, std = (torch.tensor(v) for v in _MEANS[dataset])
    else:
        xf = x_train.float() / 255.0
        mean, std = xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3))
    norm = Normaliser(mean, std)
    if normalisation != "zca":
        return norm
    # keyed by the pixels: neither the dataset name nor the folder identifies them
    buf = memoryview(x_train.contiguous().cpu().numpy()).cast("B")  # no copy
    pixels = hashlib.sha256(buf).hexdigest()[:12]
    key = f"{dataset}_{pixels}"
    # the order is part of the key ("raw" entries are new; the old files were "meanstd")
    order = "" if zca_input == "meanstd" else "_raw"
    stem = cache_dir() / f"{key}_zca{order}_eps{eps:g}_n{len(x_train)}"
    try:
        t, _ = load_artifact(stem, kind="zca")
        return Normaliser(mean, std, t["zca_matrix"], t["zca_inverse"], t["zca_mean"])
    except ArtifactError:
        pass
    _log.info("fitting ZCA (eps %g, %s input) on %d training images", eps, zca_input, len(x_train))
    flat = norm(x_train).flatten(1).double()
    matrix, zmean, inverse = KE.zca_mean(flat, dim=0, unbiased=True, eps=eps, return_inverse=True)
    norm = Normaliser(mean, std, matrix.float(), inverse.float(), zmean.float())
    save_artifact(
        stem,
        {k: v for k, v in norm.to_tensors().items()},
        kind="zca",
        extra={"eps": eps, "zca_input": zca_input},
    )
    return norm


@dataclass
class RealData:
    """A dataset held as normalised float32 tensors on one device.

    Attributes:
        x_train: float32 ``[N, C, H, W]`` (normalised, ZCA-whitened if configured).
        y_train: int64 ``[N]``.
        x_test: float32 ``[N_test, C, H, W]``.
        y_test: int64 ``[N_test]``.
        classes: class names in label order.
        normaliser: the fitted :class:`Normaliser` (for display and storage of provenance).
        config: the :class:`~lsslib.config.DataConfig` that made it.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[str]
    normaliser: Normaliser
    config: DataConfig
    meta: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def side(self) -> int:
        return self.x_train.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def test_subset(self, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A fixed random subset of at most ``n`` test images (for cheap progress curves;
        the test split is stored class by class, so a prefix would hold few classes)."""
        if n >= len(self.y_test):
            return self.x_test, self.y_test
        idx = torch.randperm(len(self.y_test), generator=torch.Generator().manual_seed(seed))[:n]
        idx = idx.to(self.y_test.device)
        return self.x_test[idx], self.y_test[idx]

    def images_of(self, c: int) -> Tensor:
        """Training images of class ``c``: float32 ``[n_c, C, H, W]``."""
        return self.x_train[self.y_train == c]


def load_data(
    config: DataConfig, device: str | torch.device = "cpu", *, progress: bool = True
) -> RealData:
    """Load, subset and normalise a dataset onto ``device``.

    The normaliser (and ZCA) is fitted on the whole training split, then the
    class-balanced subsets of ``train_per_class`` / ``test_per_class`` are taken.

    Progress goes to the ``lsslib.data`` logger (INFO): each split decoded or read
    from the cache, the ZCA fit, with elapsed seconds; ``progress=True`` (the
    default) also shows a ``tqdm.auto`` bar over these steps (a widget in
    notebooks), ``progress=False`` turns it off.

    Args:
        config: a validated :class:`~lsslib.config.DataConfig`.
        device: target device of the tensors.
        progress: show a tqdm bar over the loading steps (on stderr).

    Returns:
        A :class:`RealData`.
    """
    t0 = time.perf_counter()
    steps = ["train split", "test split", "normaliser", "to device"]
    bar = _progress_bar(len(steps), "load_data", progress)
    xtr, ytr, classes = load_split_uint8(config.dataset, "train", config.data_root)
    _step_done(bar, t0, f"{config.dataset} train split: {len(xtr)} images")
    xte, yte, _ = load_split_uint8(config.dataset, "test", config.data_root)
    _step_done(bar, t0, f"{config.dataset} test split: {len(xte)} images")
    if xtr.shape[2] != xtr.shape[3]:
        bar.close()
        raise ValueError(
            f"invalid dataset {config.dataset!r}: images must be square, got {tuple(xtr.shape[1:])}"
        )
    norm = _fit_normaliser(
        config.dataset, xtr, config.normalisation, config.zca_eps, config.zca_input
    ).to(device)
    _step_done(bar, t0, f"normaliser {config.normalisation!r} ready")
    if config.train_per_class is not None:
        idx = class_balanced_indices(ytr, config.train_per_class, seed=config.subset_seed)
        xtr, ytr = xtr[idx], ytr[idx]
    if config.test_per_class is not None:
        idx = class_balanced_indices(yte, config.test_per_class, seed=config.subset_seed + 1)
        xte, yte = xte[idx], yte[idx]
    out = RealData(
        x_train=norm(xtr),
        y_train=ytr.to(device),
        x_test=norm(xte),
        y_test=yte.to(device),
        classes=classes,
        normaliser=norm,
        config=config,
    )
    _step_done(bar, t0, f"normalised onto {device}")
    bar.close()
    return out


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _step_done(bar, t0: float, what: str) -> None:
    _log.info("load_data: %s (%.1f s)", what, time.perf_counter() - t0)
    bar.set_postfix_str(what, refresh=False)
    bar.update(1)
