"""On-disk helpers the dataset units share: the cache folder, fingerprints, archives,
ImageFolder trees, gunzipped copies and the check before torchvision downloads.

These are the pieces a unit's ``load_split`` needs and that must not depend on
:mod:`lsslib.data` (which asks the units, so importing it here would be a cycle);
:mod:`lsslib.data` re-exports :func:`cache_dir` and :func:`source_fingerprint`.
Every writer here is atomic: it fills a temporary folder beside its destination
and renames it into place under a lock, so a kill leaves the old state or the new
one, never a half-written folder that is taken for complete.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..artifacts import check_free_space
from ..locking import file_lock

__all__ = [
    "cache_dir",
    "candidate_roots",
    "download_root",
    "digest",
    "source_fingerprint",
    "is_imagefolder_tree",
    "unpack_archive",
    "decode_imagefolder",
    "gunzip_files",
    "can_reach",
]


def cache_dir() -> Path:
    """The cache folder: ``$LSS_CACHE_DIR`` or ``./data/cache``."""
    return Path(os.environ.get("LSS_CACHE_DIR", Path.cwd() / "data" / "cache"))


def download_root(root: Path | None) -> Path:
    """Where torchvision reads (and, with ``root`` ``None``, downloads): ``root`` or ``./data``."""
    return root if root is not None else Path.cwd() / "data"


def candidate_roots(data_root: str | None, extra: Sequence[str] = ()) -> list[Path]:
    """The lookup order of :func:`lsslib.data.find_data_root`: ``data_root``,
    ``$LSS_DATA_ROOT``, ``./data``, a ``shared/data`` folder beside the current folder and
    beside the repository, then a unit's ``extra`` folders (e.g. where a system
    package installs it)."""
    out: list[Path] = []
    if data_root:
        out.append(Path(data_root))
    if os.environ.get("LSS_DATA_ROOT"):
        out.append(Path(os.environ["LSS_DATA_ROOT"]))
    out.append(Path.cwd() / "data")
    out.append(Path.cwd().parent / "shared" / "data")
    repo = Path(__file__).resolve().parents[2]
    out.append(repo / "data")
    out.append(repo.parent / "shared" / "data")
    out.extend(Path(p) for p in extra)
    return out


def digest(text: str, n: int = 8) -> str:
    """The first ``n`` hex digits of the sha256 of ``text`` (stable across processes:
    ``hash()`` of a str is salted per process)."""
    return hashlib.sha256(text.encode()).hexdigest()[:n]


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


def is_imagefolder_tree(root: Path) -> bool:
    """Whether ``root`` holds ``train/`` and ``test/`` folders (torchvision's ImageFolder layout)."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def _atomic_folder(dest: Path, what: str, fill) -> Path:
    """Create ``dest`` once by ``fill(tmp) -> folder`` and a rename (one process at a
    time; others wait). ``dest/.complete`` marks a finished folder; stale temporary
    folders of killed writers are removed first."""
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.with_name(f".{dest.name}.lock"), what=what, on_wait=print):
        if marker.is_file():  # made by the process we waited for
            return dest
        for stale in dest.parent.glob(f".{dest.name}.partial*"):  # interrupted writers
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial", dir=dest.parent))
        try:
            src = fill(tmp)
            shutil.rmtree(dest, ignore_errors=True)
            src.rename(dest)
            marker.touch()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def unpack_archive(archive: Path) -> Path:
    """Unpack a ``.tar.xz`` of an ImageFolder tree into the cache once.

    The archive holds ``train/`` and ``test/`` at its top or inside one folder; the
    unpacked tree is ``<cache_dir>/<archive name>_<digest of its fingerprint>``.

    Raises:
        DiskFull: the unpacked files (4 KiB blocks each) do not fit in the cache.
    """
    fp = source_fingerprint(archive)
    dest = cache_dir() / f"{archive.name.replace('.tar.xz', '')}_{digest(repr(sorted(fp.items())))}"

    def fill(tmp: Path) -> Path:
        with tarfile.open(archive, "r:xz") as tar:
            members = tar.getmembers()
            need = sum(-(-m.size // 4096) * 4096 + 4096 for m in members)
            check_free_space(dest.parent, need, what=f"unpacked {archive.name}")
            tar.extractall(tmp, members=members, filter="data")
        return tmp if (tmp / "train").is_dir() else next(p for p in tmp.iterdir() if p.is_dir())

    return _atomic_folder(dest, f"the unpacked {archive.name}", fill)


def gunzip_files(files: Sequence[Path], dest: Path, inside: str = "") -> Path:
    """Decompress ``files`` (``.gz``) once into ``dest/inside/`` (names without ``.gz``).

    Atomic (temporary folder and rename, under a lock), for sources whose
    compressed bytes a loader refuses (e.g. recompressed copies failing
    torchvision's checksums of the ``.gz`` files) while their content is the same.

    Returns:
        ``dest``.

    Raises:
        DiskFull: the decompressed files do not fit beside ``dest``.
        OSError: a file is not gzip data.
    """

    def fill(tmp: Path) -> Path:
        # gzip stores the uncompressed size modulo 2**32 in its last 4 bytes
        need = sum(_gzip_size(f) + 4096 for f in files)
        check_free_space(dest.parent, need, what=f"decompressed {files[0].parent}")
        out = tmp / "tree"
        (out / inside).mkdir(parents=True)
        for f in files:
            with gzip.open(f, "rb") as src, open(out / inside / f.name[: -len(".gz")], "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return out

    return _atomic_folder(dest, f"the decompressed {files[0].parent}", fill)


def _gzip_size(path: Path) -> int:
    """The uncompressed size gzip records in its last 4 bytes (modulo 2**32)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def decode_imagefolder(
    root: Path, split: str, channels: int = 3
) -> tuple[Tensor, Tensor, list[str]]:
    """Decode ``root/split/<class>/*`` with Pillow.

    Args:
        root: the tree's top folder.
        split: ``train`` or ``test``.
        channels: 3 (every file converted to RGB) or 1 (to greyscale ``L``).

    Returns:
        ``(images uint8 [N, C, H, W], labels int64 [N], classes)``: classes are the
        sorted folder names, labels their indices, files in torchvision's
        ``make_dataset`` order.

    Raises:
        ValueError: no class folder, or images of different shapes.
    """
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
    mode = "RGB" if channels == 3 else "L"
    images, labels = [], []
    shape = None
    for path, label in samples:
        # Pillow, not torchvision.io (its decoders are deprecated since torchvision
        # 0.29); on the 60,000 JPEGs of the offline copy both give the same pixels.
        with Image.open(path) as im:
            arr = torch.from_numpy(np.array(im.convert(mode)))
        img = arr.permute(2, 0, 1) if arr.ndim == 3 else arr.unsqueeze(0)
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise ValueError(
                f"invalid image {path}: shape {tuple(img.shape)}, all images must share {tuple(shape)}"
            )
        images.append(img)
        labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes


def can_reach(host: str, timeout: float = 4.0, port: int = 443) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds
    (name lookup included: it runs in a thread that is abandoned after the timeout);
    always ``False`` with ``LSS_OFFLINE=1``."""
    if os.environ.get("LSS_OFFLINE") == "1":
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def torchvision_cifar(
    loader: str, root: Path, split: str, folder: str
) -> tuple[Tensor, Tensor, list[str]]:
    """One split through torchvision's own CIFAR loader (``CIFAR10`` or ``CIFAR100``).

    torchvision reads its pickled batches in ``root/folder`` (the upstream format;
    this is its loader, not ours) after checking their md5, downloading them into
    ``root`` only when that folder is absent (callers check the server first).

    Returns:
        ``(images uint8 [N, 3, 32, 32], labels int64 [N], classes)``.
    """
    import numpy as np
    import torchvision.datasets as tvd

    download = not (root / folder).is_dir()
    ds = getattr(tvd, loader)(str(root), train=split == "train", download=download)
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)
