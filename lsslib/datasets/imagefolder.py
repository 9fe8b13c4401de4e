"""Any ImageFolder tree: ``data_root/train/<class>/*`` and ``data_root/test/<class>/*``.

The shape and the classes come from the files (sorted class folder names; every
image converted to RGB; all images of a split must share one size, and
:func:`lsslib.data.load_data` requires them square). ``data_root`` is required;
mean/std are computed from the training split.
"""

from __future__ import annotations

from . import register
from .base import Dataset


@register
class ImageFolder(Dataset):
    name = "imagefolder"
    title = "ImageFolder"
    offline_files = "train/<class>/ and test/<class>/ image folders"
    root_required = True
