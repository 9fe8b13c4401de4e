"""The book's figures, one function each; every function returns a matplotlib Figure.

Inputs are plain tensors, dicts and DataFrames read from the stages' artifacts;
nothing here trains or loads. Images are shown in pixel space: callers pass
images already mapped back through :meth:`lsslib.data.Normaliser.invert`.
Figure numbers refer to the paper (Fig. 1, 3, 4, 5).

Every figure is drawn under one style (:data:`STYLE`, applied by :func:`styled`):
figures at most :data:`MAX_WIDTH_IN` inches wide, saved at :data:`DPI`, with text of
at least :data:`MIN_FONT_PT` points, so that in the book's page column (about 740 CSS
px at a 1280 px window) no text renders below 11 px
(px = pt * dpi / 72 * rendered width / figure width in px). Legends sit outside the
data, bar axes start at zero, and image grids are capped at the page width.
:func:`lsslib.report.save_figure` records the smallest font and the dpi in the PNG.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from torch import Tensor  # noqa: E402

from .config import DistillConfig  # noqa: E402
from .parameterisations import Components  # noqa: E402
from .plan import schedule_upper  # noqa: E402

__all__ = [
    "STYLE",
    "DPI",
    "MAX_WIDTH_IN",
    "MIN_FONT_PT",
    "styled",
    "min_font_pt",
    "image_grid",
    "expert_curves",
    "distill_curves",
    "parameterisation_figure",
    "side_by_side",
    "rank_sweep",
    "accuracy_vs_storage",
    "schedule_bounds",
    "schedule_ablation",
    "eval_curves",
    "effects_figure",
    "method_bars",
    "accuracy_vs_iteration",
    "storage_accuracy",
    "minmax",
]

#: Resolution every figure is saved at (:func:`lsslib.report.save_figure`).
DPI = 130
#: Widest figure, in inches: 910 px at :data:`DPI`, shown in a ~740 px column (x 0.81).
MAX_WIDTH_IN = 7.0
#: Smallest font used: 9 pt at 130 dpi, shrunk by 0.81, is 13 px on the page.
MIN_FONT_PT = 9.0
#: The one style of the book's figures.
STYLE: dict[str, Any] = {
    "font.size": 10.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 10.0,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": MIN_FONT_PT,
    "figure.titlesize": 11.0,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.grid": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
#: Size of one image of a grid, inches (at most; smaller when many columns).
_CELL_IN = 0.75
_F = TypeVar("_F", bound=Callable[..., plt.Figure])


def styled(func: _F) -> _F:
    """Draw ``func``'s figure under :data:`STYLE` (ticks are made inside the style too)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            fig = func(*args, **kwargs)
            fig.canvas.draw()  # create every tick label while the style holds
        return fig

    return wrapper  # type: ignore[return-value]


def min_font_pt(fig: plt.Figure) -> float:
    """The smallest font size (pt) of any visible, non-empty text of a drawn figure."""
    fig.canvas.draw()
    sizes = [
        t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
    ]
    return float(min(sizes)) if sizes else float("nan")


def _wrap(text: str, width: int = 30) -> str:
    """A label broken into lines of at most ``width`` characters."""
    return textwrap.fill(str(text), width, break_long_words=False)


def _legend_outside(ax, width: int = 28, **kw) -> None:
    """A legend to the right of the axes, off the data, its labels wrapped."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        labels = [_wrap(lab, width) for lab in labels]
        ax.legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw
        )


def _grid_cell(cols: int, label_in: float) -> float:
    """The side of one grid image so that ``cols`` of them and the labels fit the width."""
    return min(_CELL_IN, (MAX_WIDTH_IN - label_in) / max(cols, 1))


def minmax(t: Tensor) -> Tensor:
    """Scale a tensor to [0, 1] for display (a constant tensor becomes 0.5)."""
    t = t.detach().float().cpu()
    lo, hi = t.min(), t.max()
    return (t - lo) / (hi - lo) if hi > lo else torch.full_like(t, 0.5)


def _show(ax, img: Tensor) -> None:
    """``img`` float ``[C, H, W]`` in [0, 1]."""
    arr = img.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    ax.imshow(
        arr.squeeze(-1) if arr.shape[-1] == 1 else arr,
        cmap="gray" if arr.shape[-1] == 1 else None,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)


@styled
def image_grid(
    images: Tensor, classes: Sequence[str], per_class: int, title: str = "", max_cols: int = 10
) -> plt.Figure:
    """Synthetic images, one row per class; with fewer than 3 images per class, one
    column per class (class names on top), so that the grid stays wide rather than tall.

    Images are at most :data:`_CELL_IN` inches and the figure at most
    :data:`MAX_WIDTH_IN` wide, so one image per class is never blown up.

    Args:
        images: float ``[K * n, C, H, W]`` in [0, 1], ordered by class.
        classes: K class names.
        per_class: n.
        title: figure title.
        max_cols: images shown per class at most.
    """
    k = len(classes)
    shown = min(per_class, max_cols)
    by_column = shown < 3
    rows, cols = (shown, k) if by_column else (k, shown)
    label_in = 0.0 if by_column else 1.1
    cell = _grid_cell(cols, label_in)
    top_in = (0.55 if by_column else 0.05) + (0.35 if title else 0.0)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cell * cols + label_in, cell * rows + top_in), squeeze=False
    )
    for c in range(k):
        for j in range(shown):
            ax = axes[j, c] if by_column else axes[c, j]
            _show(ax, images[c * per_class + j])
        if by_column:
            axes[0, c].set_title(classes[c], fontsize=MIN_FONT_PT, rotation=30, ha="left")
        else:
            axes[c, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center")
    _frame(fig, top_in, title)
    return fig


def _frame(fig: plt.Figure, top_in: float, title: str = "") -> None:
    """Close-set image panels with ``top_in`` inches above them, the title at the top."""
    height = fig.get_figheight()
    fig.subplots_adjust(wspace=0.05, hspace=0.05, top=1 - top_in / height, bottom=0.02)
    if title:
        fig.suptitle(title, y=1 - 0.02 / height, va="top")


@styled
def expert_curves(curves: Mapping[str, list[list[float]]]) -> plt.Figure:
    """Train and test accuracy of every expert after each epoch (mean and min-max band)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    for key, color in (("train", "tab:blue"), ("test", "tab:orange")):
        arr = np.array(curves[key], dtype=float)  # [E, T+1]
        ep = np.arange(arr.shape[1])
        mask = ~np.isnan(arr).all(0)
        mean = np.nanmean(arr[:, mask], 0)
        ax.plot(ep[mask], 100 * mean, color=color, label=f"{key}, mean of {arr.shape[0]}")
        ax.fill_between(
            ep[mask],
            100 * np.nanmin(arr[:, mask], 0),
            100 * np.nanmax(arr[:, mask], 0),
            color=color,
            alpha=0.2,
            label=f"{key}, min to max",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


@styled
def distill_curves(logs: Mapping[str, pd.DataFrame]) -> plt.Figure:
    """Matching loss, syn_lr and start epoch per iteration for several runs
    (one legend for the three panels, below them)."""
    fig, axes = plt.subplots(1, 3, figsize=(MAX_WIDTH_IN, 2.9))
    for name, df in logs.items():
        w = max(1, len(df) // 25)
        axes[0].plot(df["iteration"], df["loss"].rolling(w, min_periods=1).mean(), label=name)
        axes[1].plot(df["iteration"], df["syn_lr"], label=name)
        axes[2].plot(df["iteration"], df["upper"], label=name)
    axes[0].set_title("matching loss\n(moving mean)")
    axes[1].set_title("learned step\nsize syn_lr")
    axes[2].set_title("start-epoch\nupper bound")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    return fig


@styled
def parameterisation_figure(
    comp: Components, images01: Tensor, class_name: str, n_images: int = 4
) -> plt.Figure:
    """Fig. 1: how a parameterisation makes one class's images.

    The shared panels (e.g. the mapper U) on the left, one panel per stored image
    (e.g. the basis V_j) above that image, as the unit's
    :meth:`~lsslib.parameterisations.SynSet.components` lists them.

    Args:
        comp: the class's :class:`~lsslib.parameterisations.Components`.
        images01: float ``[J', C, H, W]`` the class's images in [0, 1].
        class_name: label of the class.
        n_images: images shown.
    """
    n = min(n_images, len(comp.per_image), images01.shape[0])
    m = len(comp.shared)
    unit = min(1.4, (MAX_WIDTH_IN - 0.3) / (n + 0.6 * m))
    fig = plt.figure(figsize=(unit * (n + 0.6 * m) + 0.3, unit * 1.35 + 1.1))
    gs = fig.add_gridspec(2, n + m, width_ratios=[0.6] * m + [1] * n, height_ratios=[0.35, 1])
    for i, (title, t) in enumerate(comp.shared):
        ax = fig.add_subplot(gs[1, i])
        _show(ax, minmax(t))
        ax.set_title(title)
    for j in range(n):
        title, t = comp.per_image[j]
        axv = fig.add_subplot(gs[0, m + j])
        _show(axv, minmax(t))
        axv.set_title(title)
        axx = fig.add_subplot(gs[1, m + j])
        _show(axx, images01[j])
        axx.set_xlabel(comp.image_title.format(j + 1))
    fig.suptitle(f"class '{class_name}': {comp.caption}")
    return fig


@styled
def side_by_side(
    comps: Sequence[Components],
    ours01: Tensor,
    ours_per_class: int,
    ours_title: str,
    other01: Tensor,
    other_per_class: int,
    other_title: str,
    classes: Sequence[str],
) -> plt.Figure:
    """Fig. 4: per class, the first shared and per-image panel and the images of one set,
    beside the images of another set at equal storage (LSS beside pixel MTT).

    Args:
        comps: :class:`~lsslib.parameterisations.Components` of each shown class.
        ours01, other01: float ``[K * n, C, H, W]`` images in [0, 1], ordered by class.
    """
    k = min(len(comps), len(classes))
    cols = min(ours_per_class, 7)
    other = min(other_per_class, 3)
    ncols = cols + 2 + other
    cell = _grid_cell(ncols, 1.1)
    fig, axes = plt.subplots(k, ncols, figsize=(cell * ncols + 1.1, cell * k + 0.75), squeeze=False)
    for c in range(k):
        row = axes[c]
        _show(row[0], minmax(comps[c].shared[0][1]))
        _show(row[1], minmax(comps[c].per_image[0][1]))
        for j in range(cols):
            _show(row[2 + j], ours01[c * ours_per_class + j])
        for j in range(other):
            _show(row[2 + cols + j], other01[c * other_per_class + j])
        row[0].set_ylabel(classes[c], rotation=0, ha="right", va="center")
    for col, text in ((0, comps[0].shared[0][0].split("\n")[0]), (1, comps[0].per_image[0][0])):
        axes[0, col].set_title(text.replace(" ", "\n", 1), fontsize=MIN_FONT_PT)
    axes[0, 2].set_title(f"{ours_title}: {ours_per_class} images/class", loc="left")
    axes[0, 2 + cols].set_title(f"{other_title}:\n{other_per_class}/class", loc="left")
    _frame(fig, 0.7)
    return fig


@styled
def rank_sweep(
    rows: Sequence[tuple[int, Tensor, int, int]], class_name: str, max_cols: int = 8
) -> plt.Figure:
    """Fig. 5: one class's images for each rank r, with images per class and storage.

    Args:
        rows: ``(r, images01 [n, C, H, W] of that class, images_per_class, stored floats)``.
    """
    cols = min(max_cols, max(r[1].shape[0] for r in rows))
    cell = _grid_cell(cols, 1.5)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(cell * cols + 1.5, cell * len(rows) + 0.4), squeeze=False
    )
    for i, (r, imgs, n, floats) in enumerate(rows):
        for j in range(cols):
            if j < imgs.shape[0]:
                _show(axes[i, j], imgs[j])
            else:
                axes[i, j].axis("off")
        axes[i, 0].set_ylabel(
            f"r = {r}\n{n}/class\n{floats / 1e3:.1f}k floats", rotation=0, ha="right", va="center"
        )
    _frame(fig, 0.4, f"class '{class_name}' for each rank r")
    return fig


def _bars(ax, labels: Sequence[str], mean, err, color="tab:blue") -> None:
    """Horizontal bars from zero with error bars, best at the top; values written at the tips."""
    ys = np.arange(len(labels))[::-1]
    ax.barh(ys, mean, xerr=err, capsize=3, color=color, alpha=0.85, error_kw={"lw": 1})
    ax.set_yticks(ys, [_wrap(lab, 34) for lab in labels])
    ax.set_xlim(0, max(float(np.max(np.asarray(mean) + np.asarray(err))) * 1.18, 1.0))
    for y, m, e in zip(ys, mean, err, strict=True):
        ax.text(m + e + 0.4, y, f"{m:.1f}", va="center", fontsize=MIN_FONT_PT)
    ax.grid(axis="x", alpha=0.3)


@styled
def accuracy_vs_storage(df: pd.DataFrame) -> plt.Figure:
    """Meta-test accuracy (mean, bar: +- std) of configurations that share one storage
    budget, each labelled with its stored floats; bars from zero. Columns ``label``,
    ``floats``, ``acc_mean``, ``acc_std`` (fractions).

    Storage is a label, not an axis: the configurations differ by a few hundred floats
    (soft labels, syn_lr) at the same image budget, which an axis would magnify into a
    trade-off that is not there.
    """
    labels = [f"{r['label']} ({r['floats'] / 1e3:.1f}k floats)" for _, r in df.iterrows()]
    fig, ax = plt.subplots(figsize=(4.6, 0.5 * len(df) + 1.1))
    _bars(ax, labels, 100 * df["acc_mean"].to_numpy(), 100 * df["acc_std"].to_numpy())
    ax.set_xlabel("meta-test accuracy (%)\nbar: ± std over evaluation networks")
    return fig


@styled
def schedule_bounds(
    configs: Mapping[str, DistillConfig], logs: Mapping[str, pd.DataFrame] | None = None
) -> plt.Figure:
    """Fig. 3: the start-epoch upper bound over iterations for each schedule,
    with the start epochs actually drawn (dots) where logs are given."""
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    for i, (name, cfg) in enumerate(configs.items()):
        its = np.arange(max(cfg.iterations, 1))
        ub = [schedule_upper(cfg, int(t)) for t in its]
        line = ax.step(its, ub, where="post", label=f"{name} ({cfg.schedule})", lw=2)[0]
        if logs is not None and name in logs:
            df = logs[name]
            ax.scatter(
                df["iteration"],
                df["start_epoch"] + 0.08 * (i - 1),
                s=4,
                color=line.get_color(),
                alpha=0.35,
            )
    ax.set_xlabel("distillation iteration")
    ax.set_ylabel("start epoch\n(line: bound; dots: drawn)")
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


@styled
def schedule_ablation(df: pd.DataFrame, logs: Mapping[str, pd.DataFrame]) -> plt.Figure:
    """Accuracy per schedule (bars from zero, +- std) and the matching loss per iteration."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(MAX_WIDTH_IN, 3.0))
    _bars(a, list(df["label"]), 100 * df["acc_mean"].to_numpy(), 100 * df["acc_std"].to_numpy())
    a.set_xlabel("meta-test accuracy (%)\n± std over evaluation networks")
    for name, log in logs.items():
        w = max(1, len(log) // 25)
        b.plot(log["iteration"], log["loss"].rolling(w, min_periods=1).mean(), label=name)
    b.set_xlabel("iteration")
    b.set_ylabel("matching loss\n(moving mean)")
    b.grid(alpha=0.3)
    handles, labels = b.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower right", ncol=max(1, len(labels)), frameon=False)
    return fig


@styled
def eval_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> plt.Figure:
    """Mean test accuracy of the evaluation networks over their training epochs."""
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    for name, (ep, acc) in curves.items():
        ax.plot(ep, [100 * a for a in acc], marker="o", ms=3, label=name)
    ax.set_xlabel("evaluation epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


@styled
def effects_figure(effects: pd.DataFrame) -> plt.Figure:
    """A forest plot of paired effects: the mean difference (pp) and its 95 % t interval
    per effect (:func:`lsslib.study.effects_table`'s ``_mean``, ``_lo``, ``_hi``
    columns); a dashed line at 0. An interval crossing 0 is drawn grey (within the noise).
    """
    n = len(effects)
    fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN - 1.5, 0.5 * n + 1.0))
    ys = list(range(n))[::-1]
    for y, d in zip(ys, effects.to_dict("records"), strict=True):
        lo, hi, m = d["_lo"], d["_hi"], d["_mean"]
        holds = d["verdict"] == "holds"
        colour = "tab:blue" if holds else "0.55"
        if lo == lo and hi == hi:  # not NaN
            ax.plot([lo, hi], [y, y], color=colour, lw=2)
        ax.plot([m], [y], "o", color=colour)
    ax.axvline(0, color="k", ls="--", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([_wrap(e, 40) for e in effects["effect"]])
    ax.set_xlabel("difference in meta-test accuracy (pp), 95 % t CI over paired seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


@styled
def method_bars(df: pd.DataFrame, spread: str) -> plt.Figure:
    """The main comparison at equal storage: one horizontal bar per method, from zero,
    with its spread as error bars.

    Args:
        df: columns ``label``, ``acc`` (mean, %) and ``err`` (%, e.g. the std), in the
            order to show (top first).
        spread: what the error bars are over, for the axis label (e.g. "3 distillation
            seeds" or "5 evaluation networks of one distillation").
    """
    fig, ax = plt.subplots(figsize=(4.2, 0.5 * len(df) + 1.0))
    _bars(ax, list(df["label"]), df["acc"].to_numpy(float), df["err"].to_numpy(float))
    ax.set_xlabel(_wrap(f"meta-test accuracy (%), bar: ± std over {spread}", 45))
    return fig


@styled
def accuracy_vs_iteration(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float]]], spread: str
) -> plt.Figure:
    """Meta-test accuracy against distillation iteration, one line per method.

    Args:
        curves: ``{label: (iterations, mean %, std %)}``, e.g. the sets saved after 50
            iterations and the final ones.
        spread: what the error bars are over (axis label).
    """
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for name, (its, mean, err) in curves.items():
        ax.errorbar(its, mean, yerr=err, marker="o", ms=4, capsize=3, label=name)
    ax.set_xlabel("distillation iteration")
    ax.set_ylabel(f"meta-test accuracy (%)\n± std over {spread}")
    ax.set_xlim(0, None)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


@styled
def storage_accuracy(df: pd.DataFrame, note: str = "") -> plt.Figure:
    """Meta-test accuracy against stored floats (axes from zero), one marker per
    configuration and one colour per IPC, labelled in a legend beside the axes.

    Args:
        df: columns ``label``, ``ipc``, ``floats``, ``acc`` (%), ``err`` (%).
        note: a line under the axes (e.g. which IPCs have no records).
    """
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    markers = "osD^v<>Ph*X"
    for i, r in enumerate(df.itertuples()):
        ax.errorbar(
            r.floats / 1e3,
            r.acc,
            yerr=r.err,
            fmt=markers[i % len(markers)],
            ms=6,
            capsize=3,
            label=f"IPC {r.ipc}: {r.label}",
        )
    ax.set_xlim(0, float(df["floats"].max()) / 1e3 * 1.15)
    ax.set_ylim(0, None)
    ax.set_xlabel("stored floats (thousands; labels and syn_lr included)")
    ax.set_ylabel("meta-test accuracy (%)")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    if note:
        fig.text(0.01, -0.02, note, fontsize=MIN_FONT_PT, va="top")
    return fig
