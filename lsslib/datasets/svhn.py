"""SVHN: torchvision's ``SVHN`` (the cropped digits, ``train_32x32.mat``/``test_32x32.mat``).

73,257 training and 26,032 test images, 3 x 32 x 32, 10 classes, digit ``0`` as
label 0 (torchvision maps the files' label 10 to 0) (Netzer et al. 2011). A data
root holds the two ``.mat`` files or an ImageFolder tree; with neither,
torchvision downloads. Mean/std as MTT's ``utils.get_dataset``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from . import register
from .base import Dataset


@register
class SVHN(Dataset):
    name = "svhn"
    title = "SVHN"
    channels, side, num_classes = 3, 32, 10
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    split_sizes = {"train": 73257, "test": 26032}
    download_bytes = 250_000_000
    download_host = "ufldl.stanford.edu"
    offline_files = "train_32x32.mat and test_32x32.mat (torchvision's SVHN)"

    def detect(self, root: Path) -> bool:
        return super().detect(root) or (root / "train_32x32.mat").exists()

    def native_path(self, root: Path, split: str) -> Path:
        return root / f"{split}_32x32.mat"

    def load_native(self, root: Path, split: str) -> tuple[Tensor, Tensor, list[str]]:
        """torchvision's ``SVHN`` (``scipy.io.loadmat`` of the ``.mat`` file after its md5;
        downloaded only when absent).

        Returns:
            ``(images uint8 [N, 3, 32, 32], labels int64 [N], classes "0".."9")``.
        """
        import numpy as np
        import torchvision.datasets as tvd

        download = not self.native_path(root, split).exists()
        ds = tvd.SVHN(str(root), split=split, download=download)
        x = torch.from_numpy(np.asarray(ds.data))
        y = torch.from_numpy(np.asarray(ds.labels)).long()
        return x, y, [str(i) for i in range(10)]
