"""The book's figures, one function each; every function returns a matplotlib Figure.

Inputs are plain tensors, dicts and DataFrames read from the stages' artifacts;
nothing here trains or loads. Images are shown in pixel space: callers pass
images already mapped back through :meth:`lsslib.data.Normaliser.invert`.
Figure numbers refer to the paper (Fig. 1, 3, 4, 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .config import DistillConfig  # noqa: E402
from .parameterisations import Components  # noqa: E402
from .plan import schedule_upper  # noqa: E402

__all__ = [
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
    "minmax",
]


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


def image_grid(
    images: Tensor, classes: Sequence[str], per_class: int, title: str = "", max_cols: int = 10
) -> plt.Figure:
    """Synthetic images, one row per class.

    Args:
        images: float ``[K * n, C, H, W]`` in [0, 1], ordered by class.
        classes: K class names.
        per_class: n.
        title: figure title.
        max_cols: images shown per class at most.
    """
    k = len(classes)
    cols = min(per_class, max_cols)
    fig, axes = plt.subplots(k, cols, figsize=(0.9 * cols + 1.2, 0.9 * k + 0.4), squeeze=False)
    for c in range(k):
        for j in range(cols):
            _show(axes[c, j], images[c * per_class + j])
        axes[c, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def expert_curves(curves: Mapping[str, list[list[float]]]) -> plt.Figure:
    """Train and test accuracy of every expert after each epoch (mean and spread)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for key, color in (("train", "tab:blue"), ("test", "tab:orange")):
        arr = np.array(curves[key], dtype=float)  # [E, T+1]
        ep = np.arange(arr.shape[1])
        mask = ~np.isnan(arr).all(0)
        mean = np.nanmean(arr[:, mask], 0)
        ax.plot(ep[mask], 100 * mean, color=color, label=f"{key} (mean of {arr.shape[0]})")
        ax.fill_between(
            ep[mask],
            100 * np.nanmin(arr[:, mask], 0),
            100 * np.nanmax(arr[:, mask], 0),
            color=color,
            alpha=0.2,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def distill_curves(logs: Mapping[str, pd.DataFrame]) -> plt.Figure:
    """Matching loss, syn_lr and start epoch per iteration for several runs."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for name, df in logs.items():
        w = max(1, len(df) // 25)
        axes[0].plot(df["iteration"], df["loss"].rolling(w, min_periods=1).mean(), label=name)
        axes[1].plot(df["iteration"], df["syn_lr"], label=name)
        axes[2].plot(df["iteration"], df["upper"], label=f"{name} upper")
    axes[0].set_title("matching loss (moving mean)", fontsize=9)
    axes[1].set_title("syn_lr", fontsize=9)
    axes[2].set_title("start-epoch upper bound", fontsize=9)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


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
    fig = plt.figure(figsize=(1.6 * n + 1.6 * m + 0.6, 3.4))
    gs = fig.add_gridspec(2, n + m, width_ratios=[0.6] * m + [1] * n, height_ratios=[0.35, 1])
    for i, (title, t) in enumerate(comp.shared):
        ax = fig.add_subplot(gs[1, i])
        _show(ax, minmax(t))
        ax.set_title(title, fontsize=8)
    for j in range(n):
        title, t = comp.per_image[j]
        axv = fig.add_subplot(gs[0, m + j])
        _show(axv, minmax(t))
        axv.set_title(title, fontsize=8)
        axx = fig.add_subplot(gs[1, m + j])
        _show(axx, images01[j])
        axx.set_xlabel(comp.image_title.format(j + 1), fontsize=8)
    fig.suptitle(f"class '{class_name}': {comp.caption}", fontsize=9)
    return fig


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
    fig, axes = plt.subplots(
        k,
        cols + 2 + other_per_class,
        figsize=(1.0 * (cols + 2 + other_per_class) + 1, 1.05 * k + 0.6),
        squeeze=False,
    )
    for c in range(k):
        row = axes[c]
        _show(row[0], minmax(comps[c].shared[0][1]))
        _show(row[1], minmax(comps[c].per_image[0][1]))
        for j in range(cols):
            _show(row[2 + j], ours01[c * ours_per_class + j])
        for j in range(other_per_class):
            _show(row[2 + cols + j], other01[c * other_per_class + j])
        row[0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title(comps[0].shared[0][0].split("\n")[0], fontsize=8)
    axes[0, 1].set_title(comps[0].per_image[0][0], fontsize=8)
    axes[0, 2].set_title(f"{ours_title} ({ours_per_class}/class)", fontsize=8, loc="left")
    axes[0, 2 + cols].set_title(f"{other_title} ({other_per_class}/class)", fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return fig


def rank_sweep(
    rows: Sequence[tuple[int, Tensor, int, int]], class_name: str, max_cols: int = 8
) -> plt.Figure:
    """Fig. 5: one class's images for each rank r, with images per class and storage.

    Args:
        rows: ``(r, images01 [n, C, H, W] of that class, images_per_class, stored floats)``.
    """
    cols = min(max_cols, max(r[1].shape[0] for r in rows))
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.0 * cols + 2.2, 1.1 * len(rows) + 0.3), squeeze=False
    )
    for i, (r, imgs, n, floats) in enumerate(rows):
        for j in range(cols):
            if j < imgs.shape[0]:
                _show(axes[i, j], imgs[j])
            else:
                axes[i, j].axis("off")
        axes[i, 0].set_ylabel(
            f"r = {r}\n{n}/class\n{floats / 1e3:.1f}k floats",
            rotation=0,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.suptitle(f"class '{class_name}' for each rank r", fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.1)
    return fig


def accuracy_vs_storage(df: pd.DataFrame) -> plt.Figure:
    """Meta-test accuracy (mean +- std) against stored floats; columns ``label``,
    ``floats``, ``acc_mean``, ``acc_std`` (fractions)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for _, row in df.iterrows():
        ax.errorbar(
            row["floats"] / 1e3,
            100 * row["acc_mean"],
            yerr=100 * row["acc_std"],
            fmt="o",
            capsize=3,
        )
        ax.annotate(
            str(row["label"]),
            (row["floats"] / 1e3, 100 * row["acc_mean"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel("stored floats (thousands; labels and syn_lr included)")
    ax.set_ylabel("meta-test accuracy (%)")
    ax.grid(alpha=0.3)
    return fig


def schedule_bounds(
    configs: Mapping[str, DistillConfig], logs: Mapping[str, pd.DataFrame] | None = None
) -> plt.Figure:
    """Fig. 3: the start-epoch upper bound over iterations for each schedule,
    with the start epochs actually drawn (dots) where logs are given."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
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
    ax.set_ylabel("start epoch (bound; dots = drawn)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def schedule_ablation(df: pd.DataFrame, logs: Mapping[str, pd.DataFrame]) -> plt.Figure:
    """Accuracy per schedule (bars, mean +- std) and the matching loss per iteration."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.bar(
        df["label"],
        100 * df["acc_mean"],
        yerr=100 * df["acc_std"],
        capsize=4,
        color="tab:blue",
        alpha=0.8,
    )
    a.set_ylabel("meta-test accuracy (%)")
    lo = 100 * float((df["acc_mean"] - df["acc_std"]).min())
    a.set_ylim(max(0.0, lo - 5), None)
    for name, log in logs.items():
        w = max(1, len(log) // 25)
        b.plot(log["iteration"], log["loss"].rolling(w, min_periods=1).mean(), label=name)
    b.set_xlabel("iteration")
    b.set_ylabel("matching loss (moving mean)")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def eval_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> plt.Figure:
    """Mean test accuracy of the evaluation networks over their training epochs."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, (ep, acc) in curves.items():
        ax.plot(ep, [100 * a for a in acc], marker="o", ms=3, label=name)
    ax.set_xlabel("evaluation epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def effects_figure(effects: pd.DataFrame) -> plt.Figure:
    """A forest plot of paired effects: the mean difference (pp) and its 95 % t interval
    per effect (:func:`lsslib.study.effects_table`'s ``_mean``, ``_lo``, ``_hi``
    columns); a dashed line at 0. An interval crossing 0 is drawn grey (within the noise).
    """
    n = len(effects)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * n + 1.2))
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
    ax.set_yticklabels(list(effects["effect"]), fontsize=8)
    ax.set_xlabel("difference in meta-test accuracy (pp), 95 % t CI over paired seeds")
    fig.tight_layout()
    return fig
