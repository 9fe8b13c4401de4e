"""CIFAR-10: the offline JPEG copy (an ImageFolder archive) or torchvision's ``CIFAR10``.

50,000 training and 10,000 test images, 3 x 32 x 32, 10 classes (Krizhevsky 2009).
A data root may hold, in this order of preference, ``cifar10-jpeg.tar.xz`` (the
offline copy: an ImageFolder tree re-encoded as JPEG quality 75, unpacked into the
cache on first use), that tree unpacked as ``cifar10-jpeg/``, an ImageFolder tree
at its top, or torchvision's ``cifar-10-batches-py/``; with none of these,
torchvision downloads. Mean/std as MTT's ``utils.get_dataset``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from . import register
from .base import Dataset
from .files import torchvision_cifar

ARCHIVE = "cifar10-jpeg.tar.xz"
UNPACKED = "cifar10-jpeg"
TORCHVISION = "cifar-10-batches-py"


@register
class Cifar10(Dataset):
    name = "cifar10"
    title = "CIFAR-10"
    channels, side, num_classes = 3, 32, 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)
    split_sizes = {"train": 50000, "test": 10000}
    download_bytes = 350_000_000
    download_host = "www.cs.toronto.edu"
    offline_files = f"{ARCHIVE}, an ImageFolder train/ and test/, or {TORCHVISION}/"

    def detect(self, root: Path) -> bool:
        return (
            super().detect(root)
            or (root / ARCHIVE).is_file()
            or (root / UNPACKED / "train").is_dir()
            or (root / TORCHVISION).exists()
        )

    def source(self, root: Path | None) -> Path:
        if root is None:  # torchvision downloads into ./data: name what will be there
            return super().source(root) / TORCHVISION
        if (root / ARCHIVE).is_file() and not (root / "train").is_dir():
            return root / ARCHIVE
        if (root / UNPACKED / "train").is_dir():
            return root / UNPACKED
        if not (root / "train").is_dir() and (root / TORCHVISION).is_dir():
            return root / TORCHVISION  # torchvision's pickled batches
        return root  # an ImageFolder tree

    def native_path(self, root: Path, split: str) -> Path:
        return root / TORCHVISION

    def load_native(self, root: Path, split: str) -> tuple[Tensor, Tensor, list[str]]:
        return torchvision_cifar("CIFAR10", root, split, TORCHVISION)
