"""Fashion-MNIST: torchvision's ``FashionMNIST`` on the idx files (Xiao et al. 2017).

60,000 training and 10,000 test images, 1 x 28 x 28 greyscale, 10 classes
(``T-shirt/top`` ... ``Ankle boot``). A data root may hold

* the four ``*-idx?-ubyte.gz`` files side by side, as Debian's package
  ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``
  (looked in after the usual folders). Debian recompressed them, so torchvision's
  md5 of the ``.gz`` files fails although their content is the release's: they are
  decompressed once into the cache (``<cache>/<name>-raw_<digest>/FashionMNIST/raw/``,
  atomically) and read from there with ``download=False``;
* torchvision's own layout, ``FashionMNIST/raw/`` with the decompressed files;
* an ImageFolder tree (decoded as greyscale).

With none of these torchvision downloads into ``./data``. Mean/std as MTT's
``utils.get_dataset`` (0.2861, 0.3530).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from . import register
from .base import Dataset
from .files import cache_dir, digest, gunzip_files

#: The idx files of each split, as torchvision names them (without ``.gz``).
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL = FILES["train"] + FILES["test"]
#: torchvision's folder under a root (``<root>/FashionMNIST/raw``).
RAW = Path("FashionMNIST") / "raw"


def _has_gz(root: Path) -> bool:
    return all((root / f"{f}.gz").is_file() for f in ALL)


def _has_raw(root: Path) -> bool:
    return all((root / RAW / f).is_file() for f in ALL)


@register
class FashionMNIST(Dataset):
    name = "fashion_mnist"
    title = "Fashion-MNIST"
    channels, side, num_classes = 1, 28, 10
    mean = (0.2861,)
    std = (0.3530,)
    split_sizes = {"train": 60000, "test": 10000}
    download_bytes = 100_000_000
    download_host = "fashion-mnist.s3-website.eu-central-1.amazonaws.com"
    download_port = 80  # torchvision's mirror is http only
    offline_files = (
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (e.g. Debian's dataset-fashion-mnist), torchvision's "
        "FashionMNIST/raw/, or an ImageFolder train/ and test/"
    )
    extra_roots = ("/usr/share/datasets/fashion-mnist",)

    def detect(self, root: Path) -> bool:
        return super().detect(root) or _has_gz(root) or _has_raw(root)

    def source(self, root: Path | None) -> Path:
        if root is None:  # what torchvision's download will create
            return super().source(root) / RAW
        if not (root / "train").is_dir() and not _has_gz(root) and _has_raw(root):
            return root / RAW
        return root  # the .gz files, or an ImageFolder tree

    def fingerprint(self, source: Path) -> dict[str, object]:
        """The folder's fingerprint plus size and mtime (ns) of each idx file in it
        (a package upgrade may rewrite the files under the same names)."""
        fp = super().fingerprint(source)
        files = {}
        for f in ALL:
            for p in (source / f, source / f"{f}.gz"):
                if p.is_file():
                    st = p.stat()
                    files[p.name] = [st.st_size, st.st_mtime_ns]
        return {**fp, "files": files} if files else fp

    def native_path(self, root: Path, split: str) -> Path:
        if _has_gz(root):
            return root / f"{FILES[split][0]}.gz"
        return root / RAW / FILES[split][0]

    def load_native(self, root: Path, split: str) -> tuple[Tensor, Tensor, list[str]]:
        """Read ``split`` with ``torchvision.datasets.FashionMNIST``.

        Returns:
            ``(images uint8 [N, 1, 28, 28], labels int64 [N], the 10 class names)``.

        Raises:
            RuntimeError: torchvision's, when an idx file is damaged.
        """
        import torchvision.datasets as tvd

        if _has_gz(root):  # decompress once, then torchvision reads the raw files
            fp = self.fingerprint(root)
            dest = cache_dir() / f"{self.name}-raw_{digest(repr(sorted(fp.items())))}"
            gz = [root / f"{f}.gz" for f in ALL]
            root, download = gunzip_files(gz, dest, inside=str(RAW)), False
        else:
            download = not _has_raw(root)
        ds = tvd.FashionMNIST(str(root), train=split == "train", download=download)
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long(), list(ds.classes)
