"""The registry of datasets: one module per dataset.

Every module of this package (except ``base`` and ``files``, the shared code)
defines a :class:`~lsslib.datasets.base.Dataset` subclass decorated with
:func:`register`; the package imports each of its modules once, so the registry is
complete after ``import lsslib.datasets``. Configuration (``DataConfig``) and
:mod:`lsslib.data` ask :func:`get` and :func:`names`; nothing else in the library
names a dataset (``tests/unit/test_package_structure.py`` checks it).

Add a dataset
-------------
1. One module here, ``lsslib/datasets/<name>.py``: a ``Dataset`` subclass with
   ``@register`` and its constants (``name``, ``title``, ``channels``, ``side``,
   ``num_classes``, ``mean``/``std`` as MTT's ``utils.get_dataset`` has them,
   ``split_sizes``, ``download_bytes``/``download_host`` when torchvision can
   download it, ``offline_files`` for messages, ``extra_roots`` for system-wide
   copies), and its files: ``detect(root)`` (does a folder hold it),
   ``source(root)`` (the file or folder read, which keys the cache),
   ``native_path(root, split)`` (what torchvision reads; absent = download) and
   ``load_native(root, split)`` returning uint8 ``[N, C, H, W]``, int64 ``[N]`` and
   the class names. ImageFolder trees and ``.tar.xz`` archives of one are read by
   the base class for every dataset.
2. One row in ``FIXTURES`` of ``tests/unit/test_datasets.py``: a function that
   writes a few fake images in the dataset's real on-disk layout under a folder.
   The contract tests then check its shape, classes, loader output and detection.

It is then usable as ``DataConfig(dataset="<name>")`` and in a profile's ``data``
block; the cache, normaliser, ZCA and subsets need nothing more.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import SPLITS, Dataset

__all__ = ["Dataset", "SPLITS", "register", "get", "names", "DEFAULT"]

_REGISTRY: dict[str, Dataset] = {}

#: The dataset of ``DataConfig`` when none is given (the paper's main benchmark).
DEFAULT = "cifar10"


def register(cls: type[Dataset]) -> type[Dataset]:
    """Class decorator: make one instance of ``cls`` available as ``dataset=cls.name``.

    Raises:
        ValueError: the name is empty or taken by another class.
    """
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no dataset name")
    other = _REGISTRY.get(cls.name)
    if other is not None and type(other) is not cls:
        raise ValueError(f"dataset {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    """The registered dataset names, in registration (module name) order."""
    return tuple(_REGISTRY)


def get(name: str) -> Dataset:
    """The registered dataset ``name``.

    Raises:
        ValueError: unknown name: ``invalid parameter dataset=NAME: allowed one of ...``.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"invalid parameter dataset={name!r}: allowed one of "
            + ", ".join(repr(n) for n in _REGISTRY)
        ) from None


# Discovery: every module of this package but the shared code registers its dataset.
for _mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _mod.name not in ("base", "files"):
        importlib.import_module(f"{__name__}.{_mod.name}")
