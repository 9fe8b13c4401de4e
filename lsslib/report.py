"""Small I/O helpers of the stage notebooks: devices, tables, figures, metrics.

Everything here writes atomically (temporary file + rename) so that an
interrupted stage never leaves a half-written table or figure that a later stage
or the book would pick up.
"""

from __future__ import annotations

import io
import platform
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from .plots import min_font_pt, plt
from .training import enable_tf32, tune_cpu_malloc

__all__ = [
    "pick_device",
    "colab_device",
    "describe_device",
    "save_figure",
    "write_table",
    "markdown_table",
    "write_metrics",
    "fmt_acc",
]


def pick_device(device: str, *, tf32: bool = True, tune_malloc: bool = True) -> torch.device:
    """Validate a device string (``cpu``, ``cuda``, ``cuda:N``, ``mps``) and set it up.

    Args:
        device: the device string.
        tf32: on CUDA, allow TF32 tensor cores (:func:`lsslib.training.enable_tf32`);
            the distillation stage passes ``False`` to keep the unrolled loop in strict
            fp32 (book/choices.md §6).
        tune_malloc: on CPU, keep freed tensor memory in the heap
            (:func:`lsslib.training.tune_cpu_malloc`; same results, faster, the process
            keeps its peak memory).

    Raises:
        ValueError: unknown device, or a CUDA/MPS device that is not available here.
    """
    dev = str(device)
    if not (
        dev == "cpu"
        or dev == "mps"
        or dev == "cuda"
        or (dev.startswith("cuda:") and dev[5:].isdigit())
    ):
        raise ValueError(
            f"invalid parameter device={device!r}: allowed 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"invalid parameter device={device!r}: no CUDA device is available here; use 'cpu'"
            )
        enable_tf32(tf32)
    if dev == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"invalid parameter device={device!r}: MPS is not available here; use 'cpu'"
        )
    if dev == "cpu" and tune_malloc:
        tune_cpu_malloc()
    return torch.device(dev)


def colab_device(device: str) -> str:
    """``cuda`` inside a Colab runtime with a GPU attached, else ``device`` unchanged."""
    if "google.colab" in sys.modules and torch.cuda.is_available():
        return "cuda"
    return device


def describe_device(device: torch.device | str) -> str:
    """A human-readable hardware line: GPU name, or CPU model and thread count."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = torch.get_num_threads()
    return f"{cpu}, {n} thread{'s' if n != 1 else ''}"


def save_figure(fig, path: str | Path, dpi: int = 130, close: bool = False) -> Path:
    """Save a matplotlib figure as PNG atomically (left open, so a notebook shows it).

    The PNG records its smallest font (``lss:min_font_pt``, from
    :func:`lsslib.plots.min_font_pt`) and its ``lss:dpi``, so that a reader of the
    file (the book's browser tests) can compute how large its text renders on a page:
    px = pt * dpi / 72 * rendered width / PNG width.
    """
    meta = {"lss:min_font_pt": f"{min_font_pt(fig):.2f}", "lss:dpi": str(dpi)}
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata=meta)
    if close:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (MyST/CommonMark) of ``df`` without its index."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = [_cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def write_table(df: pd.DataFrame, stem: str | Path) -> tuple[Path, Path]:
    """Write ``stem.csv`` and ``stem.md`` (a pipe table) atomically."""
    stem = Path(stem)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(md_path, markdown_table(df))
    return csv_path, md_path


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write a metrics JSON atomically."""
    atomic_write_json(path, metrics)
    return Path(path)


def fmt_acc(mean: float, std: float) -> str:
    """``mean +- std`` of fractions, as percent with one decimal: ``46.3 ± 0.8``."""
    return f"{100 * mean:.1f} ± {100 * std:.1f}"
