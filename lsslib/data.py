"""Datasets as tensors on a device: any registered dataset (:mod:`lsslib.datasets`); ZCA.

What a dataset is and how its files are read is its unit's business
(:mod:`lsslib.datasets`, one module per dataset); this module holds what is common
to all of them: where the data is looked for, the decoded-split cache, the
normaliser and ZCA, and the class-balanced subsets. No dataset is named here.

The whole (sub)set is decoded once, cached as uint8 safetensors under the cache
folder (``$LSS_CACHE_DIR`` or ``./data/cache``), and held as one float tensor on
the target device, as MTT does. Normalisation (book/choices.md §7):

* ``zca`` with ``zca_input="raw"`` (the default) follows MTT's ``--zca`` path:
  kornia's ``ZCAWhitening`` (eps 0.1, unbiased covariance) fitted on the whole
  training set of raw ``ToTensor`` pixels in [0, 1], with no mean/std step before
  it (MTT's ``buffer.py``/``distill.py`` replace ``Normalize`` by ``ToTensor``
  alone when ``--zca`` is set).
* ``zca`` with ``zca_input="meanstd"``: per-channel mean/std first, then the same
  ZCA fit. This was this library's only order before; eps 0.1 then acts on
  pixels about 25x larger in variance, i.e. about 25x more weakly (the whitened
  CIFAR-10 training data's channel std is about 0.48 instead of 0.26).
* ``meanstd``: per-channel mean/std only (the unit's published statistics, else
  computed from the training split); ``none``: pixels in [0, 1].

Where the data is looked for (:func:`find_data_root`), first hit wins:

1. the ``data_root`` argument;
2. the environment variable ``LSS_DATA_ROOT``;
3. ``./data`` under the current folder;
4. a ``shared/data`` folder beside the current folder, then beside the repository;
5. the unit's own folders (``Dataset.extra_roots``, e.g. a system package's).

A ``data_root`` given explicitly must exist and hold the dataset (a misspelled
path is an error, never skipped). A root may hold an ImageFolder tree
(``train/<class>/*``, ``test/<class>/*``), a ``.tar.xz`` archive of one (unpacked
into the cache on first use; the offline JPEG copy of CIFAR-10 is one), or the
dataset's native files (torchvision's); with none of these, torchvision
downloads, after a quick check that its server can be reached: offline, the load
fails at once with what to do, and leaves no folder behind. Free space is checked
before unpacking an archive, before a download, and before every cache write.

Writers of the cache take a lock per entry (:func:`lsslib.locking.file_lock`):
two processes on a cold cache decode (or unpack) an entry once, the second
waiting for the first and then reading its result.

Cache keys. A decoded split is cached under ``<dataset>_<digest of the source
path>_<split>``, and its metadata keeps the source's fingerprint (resolved path,
size and modification times, :func:`source_fingerprint`, or the unit's own
``Dataset.fingerprint``): two different folders of one dataset never share a
cache entry, and a source that changed since it was decoded (an archive
replaced, a class folder added to or emptied) is decoded again. A file rewritten
in place under an unchanged name inside a class folder is not detected; delete
the cache folder then. The ZCA cache is keyed by a digest of the training pixels
themselves and by ``zca_input``, so it can never belong to other data or to the
other order.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import kornia.enhance as KE
import torch
from torch import Tensor

from . import datasets
from .artifacts import ArtifactError, load_artifact, read_metadata, save_artifact
from .config import DataConfig, check_choice, check_range
from .datasets.files import (
    cache_dir,
    candidate_roots,
    digest,
    download_root,
    source_fingerprint,
    unpack_archive,
)
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

_SPLITS = datasets.SPLITS


def _candidates(data_root: str | None) -> list[Path]:
    """Steps 1-4 of the lookup order (a unit's ``extra_roots`` come after them)."""
    return candidate_roots(data_root)


#: The unpacking of archives lives with the units; the old private name stays for callers.
_unpack_archive = unpack_archive


def find_data_root(dataset: str, data_root: str | None = None) -> Path | None:
    """The first folder of the lookup order (module docstring) that holds ``dataset``.

    Args:
        dataset: a registered dataset name (:func:`lsslib.datasets.names`).
        data_root: a folder to use instead of the lookup order.

    Returns:
        The folder, or ``None`` when none has it (torchvision will download into
        ``./data``).

    Raises:
        ValueError: ``dataset`` not registered; ``data_root`` given but not an
            existing folder, or a folder that does not hold ``dataset`` (a misspelled
            path is never skipped silently); no ``data_root`` for a dataset that
            needs one (an ImageFolder tree of any images).
    """
    ds = datasets.get(dataset)
    if ds.root_required and not data_root:
        raise ValueError(
            f"invalid parameter data_root={data_root!r}: allowed a folder holding "
            f"{ds.offline_files} when dataset={dataset!r}"
        )
    if data_root:
        root = Path(data_root)
        if not root.is_dir():
            raise ValueError(
                f"invalid parameter data_root={data_root!r}: no such folder; allowed an existing "
                f"folder holding {ds.offline_files}, or None to look in "
                "$LSS_DATA_ROOT, ./data and a shared/data folder beside the checkout"
            )
        if not ds.detect(root):
            raise ValueError(
                f"invalid parameter data_root={data_root!r}: the folder holds no {dataset}; allowed "
                f"a folder holding {ds.offline_files}, or None to look in "
                "$LSS_DATA_ROOT, ./data and a shared/data folder beside the checkout (and otherwise download)"
            )
        return root
    for root in [*_candidates(data_root), *map(Path, ds.extra_roots)]:
        if root.is_dir() and ds.detect(root):
            return root
    return None


def split_cache_stem(dataset: str, split: str, data_root: str | None = None) -> Path:
    """Where :func:`load_split_uint8` caches a split (path without suffix).

    ``<cache_dir>/<dataset>_<digest of the resolved source path>_<split>``.
    """
    ds = datasets.get(dataset)
    return _split_stem(dataset, split, ds.source(find_data_root(dataset, data_root)))


def _split_stem(dataset: str, split: str, source: Path) -> Path:
    return cache_dir() / f"{dataset}_{digest(str(source.resolve()))}_{split}"


def load_split_uint8(
    dataset: str, split: str, data_root: str | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """Decode one split as uint8, through the safetensors cache.

    The unit's ``load_split`` (:class:`lsslib.datasets.Dataset`) decodes on a
    cache miss: Pillow for ImageFolder trees and archives of them, torchvision's
    loaders for native files.

    Args:
        dataset: a registered dataset name (:func:`lsslib.datasets.names`).
        split: ``train`` or ``test``.
        data_root: see :func:`find_data_root`.

    Returns:
        ``(images, labels, classes)``: uint8 ``[N, C, H, W]``, int64 ``[N]``, class names.

    Raises:
        ValueError: an unknown ``dataset`` or ``split``; a ``data_root`` that does not
            exist or lacks the dataset.
        OSError: the dataset is nowhere on disk and its server cannot be reached (at
            once, nothing created); ``DiskFull`` when the cache entry would not fit.
    """
    ds = datasets.get(dataset)
    check_choice("split", split, _SPLITS)
    root = find_data_root(dataset, data_root)
    src = ds.source(root)
    stem = _split_stem(dataset, split, src)
    cached = _read_cached(stem, ds.fingerprint(src))
    if cached is not None:
        return cached
    download = root is None  # torchvision may download into ./data
    created = [p for p in (download_root(root), cache_dir()) if not p.exists()]
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(
            stem.with_name(f".{stem.name}.lock"),
            what=f"the cached {dataset} {split}",
            on_wait=print,
        ):
            cached = _read_cached(stem, ds.fingerprint(src))  # decoded by the one we waited for
            if cached is not None:
                return cached
            return _decode_split(ds, split, root, src, stem)
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
    ds: datasets.Dataset, split: str, root: Path | None, src: Path, stem: Path
) -> tuple[Tensor, Tensor, list[str]]:
    fingerprint = ds.fingerprint(src)  # before decoding: a change meanwhile decodes again
    x, y, classes = ds.load_split(root, split)
    if root is None:
        fingerprint = ds.fingerprint(src)  # what a download has just created
    save_artifact(
        stem,
        {"images": x, "labels": y},
        kind="dataset",
        extra={"classes": classes, "source": ds.provenance(root), "fingerprint": fingerprint},
    )
    return x, y, classes


def class_balanced_split(
    labels: Tensor, per_class: int, held_out: int, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Two disjoint class-balanced draws from one random order per class: the first
    ``per_class`` examples of each class (exactly :func:`class_balanced_indices` with
    the same seed) and the next ``held_out`` ones.

    This is how the validation split of the study is taken from training images that no
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
    trains on (choosing the best distillation iteration without the test set).

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
    elif dataset in datasets.names() and datasets.get(dataset).mean is not None:
        unit = datasets.get(dataset)
        mean, std = torch.tensor(list(unit.mean)), torch.tensor(list(unit.std))
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
