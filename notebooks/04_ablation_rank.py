# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Stage 4: ablation on the rank r
#
# Gathers the distillation runs that differ only in the rank r of the mappers
# (each distilled by stage 2 and evaluated by stage 3): images per class, storage
# and meta-test accuracy for each r, and one class's images for each r (paper
# Fig. 5: higher r, more detail, fewer images in the same budget).
#
# <a href="https://colab.research.google.com/github/lss-companion/mtt-lss/blob/main/notebooks/04_ablation_rank.ipynb" target="_parent">Run in Colab</a>
# (Runtime → Change runtime type → GPU). The next cell installs `lsslib`, and only inside Colab.

# %%
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "git+https://github.com/lss-companion/mtt-lss",
        ],
        check=True,
    )

# %% tags=["parameters"]
# Defaults: the `cpu` profile's rank ablation (workflow/profiles/cpu.yaml).
results_dir: str = "results/cpu"
runs: list = ["lss_r2", "lss", "lss_r8"]
out_dir: str = "results/cpu/ablation_rank"

# %%
from pathlib import Path

import pandas as pd

from lsslib import config, data, distill, plots, report

if not runs:
    raise ValueError("invalid parameter runs=[]: allowed a non-empty list of run names")
rows = [report.collect_run(results_dir, r) for r in runs]
df = pd.DataFrame(rows).sort_values("rank")
table = pd.DataFrame(
    {
        "run": df["run"],
        "rank r": df["rank"],
        "images/class": df["images_per_class"],
        "stored floats": df["floats"],
        "budget floats": df["budget_floats"],
        "bytes": df["bytes"],
        "accuracy (%)": [report.fmt_acc(m, s) for m, s in zip(df["acc_mean"], df["acc_std"])],
    }
)
out = Path(out_dir)
report.write_table(table, out / "table")
table

# %% [markdown]
# ## Accuracy against storage

# %%
points = df.assign(label=[f"r={r}" for r in df["rank"]])
fig = plots.accuracy_vs_storage(points[["label", "floats", "acc_mean", "acc_std"]])
report.save_figure(fig, out / "accuracy_storage.png")

# %% [markdown]
# ## Images for each r (paper Fig. 5)

# %%
first = distill.load_synset(Path(results_dir) / "runs" / runs[0])
real = data.load_data(config.DataConfig(**first.meta["config"]["data"]))
sweep = []
for _, row in df.iterrows():
    loaded = distill.load_synset(Path(results_dir) / "runs" / row["run"])
    x, _ = loaded.export()
    n = x.shape[0] // real.num_classes
    sweep.append(
        (
            int(row["rank"]),
            real.normaliser.invert(x[:n]),
            int(row["images_per_class"]),
            int(row["floats"]),
        )
    )
fig = plots.rank_sweep(sweep, real.classes[0])
report.save_figure(fig, out / "rank_sweep.png")
