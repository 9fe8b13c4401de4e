"""The unit a dataset is: what it is (shape, classes, statistics), where it lives on
disk and how one split of it is read as uint8 tensors.

:mod:`lsslib.data` owns what is common to all datasets (the lookup order of data
roots, the decoded-split cache and its keys, the normaliser and ZCA, the subsets);
a :class:`Dataset` answers the questions that differ between datasets.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from ..artifacts import check_free_space
from .files import (
    cache_dir,
    can_reach,
    candidate_roots,
    decode_imagefolder,
    download_root,
    is_imagefolder_tree,
    source_fingerprint,
    unpack_archive,
)

__all__ = ["Dataset", "SPLITS"]

#: The splits every dataset has.
SPLITS = ("train", "test")


class Dataset:
    """A dataset: its constants as class attributes, its files through the methods.

    A subclass decorated with :func:`lsslib.datasets.register` is registered as one
    instance under :attr:`name`. The base class reads an ImageFolder tree
    (``train/<class>/*``, ``test/<class>/*``) or a ``.tar.xz`` archive of one for
    every dataset; a subclass adds its native files by overriding :meth:`detect`,
    :meth:`source`, :meth:`native_path` and :meth:`load_native`.

    Attributes:
        name: the value of ``DataConfig.dataset``.
        title: how text names it.
        channels, side, num_classes: C, H = W and K; ``None`` when the files decide
            (then :meth:`shape` is ``None`` and checks that need the shape wait for
            the data).
        mean, std: published per-channel statistics of the [0, 1] pixels, as MTT's
            ``utils.get_dataset`` (``None``: computed from the training split).
        split_sizes: images per split of the native files (for the disk check
            before decoding or downloading).
        download_bytes: bytes torchvision downloads and unpacks (rounded up).
        download_host: the server torchvision downloads from (``None``: cannot download).
        download_port: its TCP port (443 for https, 80 for http).
        offline_files: what a data root must hold, in words (for messages).
        extra_roots: folders looked in after the usual lookup order (e.g. where a
            system package installs the files).
        root_required: ``data_root`` must be given (nothing to look for or download).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    channels: ClassVar[int | None] = None
    side: ClassVar[int | None] = None
    num_classes: ClassVar[int | None] = None
    mean: ClassVar[tuple[float, ...] | None] = None
    std: ClassVar[tuple[float, ...] | None] = None
    split_sizes: ClassVar[Mapping[str, int]] = {}
    download_bytes: ClassVar[int] = 0
    download_host: ClassVar[str | None] = None
    download_port: ClassVar[int] = 443
    offline_files: ClassVar[str] = "an ImageFolder train/<class>/ and test/<class>/"
    extra_roots: ClassVar[tuple[str, ...]] = ()
    root_required: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<dataset {self.name!r}>"

    def shape(self) -> tuple[int, int, int] | None:
        """``(C, side, K)``, or ``None`` when the files decide."""
        if self.channels is None or self.side is None or self.num_classes is None:
            return None
        return (self.channels, self.side, self.num_classes)

    def detect(self, root: Path) -> bool:
        """Whether the folder ``root`` holds this dataset (here: an ImageFolder tree)."""
        return is_imagefolder_tree(root)

    def source(self, root: Path | None) -> Path:
        """The file or folder a split is read from under ``root`` (the key of its
        cache entry); with ``root`` ``None``, what a download will create in ``./data``."""
        return download_root(root)

    def fingerprint(self, source: Path) -> dict[str, object]:
        """What identifies ``source`` on disk (:func:`~lsslib.datasets.files.source_fingerprint`)."""
        return source_fingerprint(source)

    def native_path(self, root: Path, split: str) -> Path | None:
        """The file or folder the native loader of ``split`` reads under ``root``
        (absent: it downloads); ``None`` when there is no native loader."""
        return None

    def load_native(self, root: Path, split: str) -> tuple[Tensor, Tensor, list[str]]:
        """Read ``split`` from the native files under ``root``, downloading them when
        absent (torchvision). Same return value as :meth:`load_split`.

        Raises:
            ValueError: this dataset has no native files (only an ImageFolder tree).
        """
        raise ValueError(
            f"invalid parameter data_root={str(root)!r}: allowed a folder holding {self.offline_files}"
        )

    def provenance(self, root: Path | None) -> str:
        """Where a split was read from, in words (kept in the cache entry's metadata)."""
        src = self.source(root)
        if root is not None and (src.is_file() or (src / "train").is_dir()):
            return str(src)
        return f"torchvision:{download_root(root)}"

    def load_split(self, root: Path | None, split: str) -> tuple[Tensor, Tensor, list[str]]:
        """Decode ``split`` of this dataset under ``root`` (``None``: download into ``./data``).

        An ImageFolder tree (or a ``.tar.xz`` of one, unpacked into the cache once)
        is decoded with Pillow; anything else goes to :meth:`load_native` after the
        disk checks and, when the native files are absent, a quick check that the
        download server can be reached.

        Returns:
            ``(images, labels, classes)``: uint8 ``[N, C, H, W]``, int64 ``[N]`` in
            ``[0, K)``, the K class names in label order.

        Raises:
            ValueError: ``split`` not ``train`` or ``test``.
            OSError: the files are absent and cannot be downloaded (at once, before
                anything is written); ``DiskFull`` when the decoded split or the
                download would not fit.
        """
        if split not in SPLITS:
            raise ValueError(
                f"invalid parameter split={split!r}: allowed one of " + ", ".join(map(repr, SPLITS))
            )
        src = self.source(root)
        channels = self.channels or 3
        if root is not None and src.is_file() and src.name.endswith(".tar.xz"):
            return decode_imagefolder(unpack_archive(src), split, channels)
        if root is not None and (src / "train").is_dir():
            return decode_imagefolder(src, split, channels)
        n = self.split_sizes.get(split)
        if n is not None and self.shape() is not None:
            c, side, _ = self.shape()
            need = n * (c * side * side + 8)
            check_free_space(cache_dir(), need, what=f"cached {self.name} {split}")
        dl_root = download_root(root)
        have = self.native_path(dl_root, split)
        if have is not None and not have.exists():  # torchvision will download: refuse first
            self.check_download()
            check_free_space(dl_root, self.download_bytes, what=f"{self.name} download")
        return self.load_native(dl_root, split)

    def check_download(self) -> None:
        """Fail fast, before anything is created, when the files cannot be downloaded.

        Raises:
            OSError: the server is not reachable (or there is none), saying where to
                put the files instead and where they were looked for.
        """
        host = self.download_host
        if host is not None and can_reach(host, port=self.download_port):
            return
        why = f"{host} is not reachable (offline?)" if host else "it has no download"
        raise OSError(
            f"{self.name} was not found locally and cannot be downloaded: {why}. Put "
            f"{self.offline_files} under a folder and pass it as data_root or set "
            "LSS_DATA_ROOT to it (or put them under ./data), then rerun. Looked in: "
            + ", ".join(str(p) for p in candidate_roots(None, self.extra_roots))
        )
