"""The book's figure style (lsslib.plots), on made-up data: what a reader needs of them.

* every figure function's text is at least plots.MIN_FONT_PT and its PNG at most
  about 1,000 px wide (so in a ~740 px page column text renders >= 11 px);
* the PNG records its smallest font and dpi (lsslib.report.save_figure);
* bar axes start at zero; legends sit outside the axes;
* one image per class is not blown up: the grid is wider than tall and capped.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from lsslib import plots, report
from lsslib.config import DistillConfig
from lsslib.parameterisations import Components

CLASSES = [f"class {i}" for i in range(10)]
MAX_PX = 1000  # 9 pt at 130 dpi stays >= 11 px in a 740 px column up to 1,100 px


def _log(n: int = 30) -> pd.DataFrame:
    it = list(range(n))
    return pd.DataFrame(
        {
            "iteration": it,
            "loss": [1.0 - 0.01 * i for i in it],
            "syn_lr": [0.01 + 0.0001 * i for i in it],
            "start_epoch": [i % 3 for i in it],
            "upper": [2 + i // 10 for i in it],
        }
    )


def _accs(labels) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame(
        {
            "label": labels,
            "floats": [30720 + 100 * i for i in range(n)],
            "acc_mean": [0.3 + 0.01 * i for i in range(n)],
            "acc_std": [0.01] * n,
        }
    )


def _components() -> Components:
    return Components(
        shared=[("mapper U\n(shared)", torch.rand(3, 32, 4))],
        per_image=[(f"basis V_{j + 1}", torch.rand(3, 4, 32)) for j in range(7)],
        image_title="image {}",
        caption="U times V_j",
    )


def _figures() -> dict:
    comps = [_components() for _ in range(5)]
    cfg = DistillConfig(iterations=30, schedule="linear", max_start_epoch=4)
    return {
        "grid_1": lambda: plots.image_grid(torch.rand(10, 3, 32, 32), CLASSES, 1, "pixels"),
        "grid_16": lambda: plots.image_grid(torch.rand(160, 3, 32, 32), CLASSES, 16, "fred"),
        "expert_curves": lambda: plots.expert_curves(
            {"train": [[0.1, 0.3, 0.5]] * 3, "test": [[0.1, 0.25, 0.4]] * 3}
        ),
        "distill_curves": lambda: plots.distill_curves({"LSS (lss)": _log(), "MTT": _log()}),
        "parameterisation": lambda: plots.parameterisation_figure(
            _components(), torch.rand(7, 3, 32, 32), "airplane"
        ),
        "side_by_side": lambda: plots.side_by_side(
            comps,
            torch.rand(70, 3, 32, 32),
            7,
            "MTT-LSS",
            torch.rand(10, 3, 32, 32),
            1,
            "pixel MTT",
            CLASSES,
        ),
        "rank_sweep": lambda: plots.rank_sweep(
            [(r, torch.rand(n, 3, 32, 32), n, 30720) for r, n in ((2, 15), (4, 7), (8, 3))],
            "airplane",
        ),
        "accuracy_vs_storage": lambda: plots.accuracy_vs_storage(_accs(["r=2", "r=4", "r=8"])),
        "schedule_bounds": lambda: plots.schedule_bounds({"lss": cfg}, {"lss": _log()}),
        "schedule_ablation": lambda: plots.schedule_ablation(
            _accs(["fixed", "linear"]), {"lss_fixed (fixed)": _log(), "lss (linear)": _log()}
        ),
        "eval_curves": lambda: plots.eval_curves(
            {"LSS (lss)": ([60, 120], [0.3, 0.35]), "full training set": ([60], [0.45])}
        ),
        "method_bars": lambda: plots.method_bars(
            pd.DataFrame(
                {
                    "label": ["MTT-LSS (r=4, linear schedule, soft labels)", "pixel MTT"],
                    "acc": [38.2, 33.4],
                    "err": [1.1, 2.1],
                }
            ),
            "5 evaluation networks of one distillation",
        ),
        "accuracy_vs_iteration": lambda: plots.accuracy_vs_iteration(
            {"lss": ([50, 100], [36.0, 38.6], [0.5, 0.3])}, "3 distillation seeds"
        ),
        "storage_accuracy": lambda: plots.storage_accuracy(
            pd.DataFrame(
                {
                    "label": ["MTT-LSS r=4", "pixel MTT (fixed schedule, hard labels)"],
                    "ipc": [1, 1],
                    "floats": [31421, 30721],
                    "acc": [38.2, 33.4],
                    "err": [1.1, 2.1],
                }
            ),
            "no records at IPC 10, 50 yet",
        ),
        "effects": lambda: plots.effects_figure(
            pd.DataFrame(
                {
                    "effect": ["low-rank vs pixels, hard labels", "soft vs hard labels"],
                    "_mean": [3.6, 0.3],
                    "_lo": [1.9, -0.2],
                    "_hi": [5.3, 0.7],
                    "verdict": ["holds", "within the noise"],
                }
            )
        ),
    }


@pytest.mark.parametrize("name", sorted(_figures()))
def test_figure_text_and_width(name, tmp_path):
    fig = _figures()[name]()
    assert plots.min_font_pt(fig) >= plots.MIN_FONT_PT
    path = report.save_figure(fig, tmp_path / f"{name}.png", close=True)
    with Image.open(path) as im:
        width, meta = im.size[0], dict(im.text)
    assert width <= MAX_PX, f"{name}: {width} px wide"
    assert float(meta["lss:min_font_pt"]) >= plots.MIN_FONT_PT
    assert meta["lss:dpi"] == "130"


def test_bars_start_at_zero_and_legends_sit_outside():
    figs = _figures()
    for name in ("method_bars", "accuracy_vs_storage"):
        assert figs[name]().axes[0].get_xlim()[0] == 0, name
    assert figs["schedule_ablation"]().axes[0].get_xlim()[0] == 0
    for name in ("eval_curves", "expert_curves", "storage_accuracy", "accuracy_vs_iteration"):
        fig = figs[name]()
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert legend is not None, name
        inside = legend.get_window_extent().x0 < ax.get_window_extent().x1
        assert not inside, f"{name}: the legend overlaps the axes"


def test_one_image_per_class_is_not_blown_up(tmp_path):
    fig = _figures()["grid_1"]()
    w, h = fig.get_size_inches()
    assert w <= plots.MAX_WIDTH_IN and h < w / 2, (w, h)
