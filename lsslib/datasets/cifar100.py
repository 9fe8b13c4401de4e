"""CIFAR-100: torchvision's ``CIFAR100`` (or an ImageFolder tree of it).

50,000 training and 10,000 test images, 3 x 32 x 32, 100 (fine) classes
(Krizhevsky 2009). A data root holds torchvision's ``cifar-100-python/`` (the
pickled ``train``, ``test`` and ``meta`` files) or an ImageFolder tree; with
neither, torchvision downloads. Mean/std as MTT's ``utils.get_dataset``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from . import register
from .base import Dataset
from .files import torchvision_cifar

TORCHVISION = "cifar-100-python"


@register
class Cifar100(Dataset):
    name = "cifar100"
    title = "CIFAR-100"
    channels, side, num_classes = 3, 32, 100
    mean = (0.5071, 0.4866, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    split_sizes = {"train": 50000, "test": 10000}
    download_bytes = 350_000_000
    download_host = "www.cs.toronto.edu"
    offline_files = f"{TORCHVISION}/ (torchvision's CIFAR-100) or an ImageFolder train/ and test/"

    def detect(self, root: Path) -> bool:
        return super().detect(root) or (root / TORCHVISION).exists()

    def source(self, root: Path | None) -> Path:
        if root is None:
            return super().source(root) / TORCHVISION
        if not (root / "train").is_dir() and (root / TORCHVISION).is_dir():
            return root / TORCHVISION
        return root

    def native_path(self, root: Path, split: str) -> Path:
        return root / TORCHVISION

    def load_native(self, root: Path, split: str) -> tuple[Tensor, Tensor, list[str]]:
        return torchvision_cifar("CIFAR100", root, split, TORCHVISION)
