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
# # Stage 5: ablation on the start-epoch schedule
#
# Gathers runs that differ only in the schedule of the start epoch: `fixed`
# (MTT: uniform below `max_start_epoch` throughout), `linear` (DATM's widening
# upper bound) and `stair` (a step every `stair_every` iterations). The paper's
# progressive strategy (its Fig. 3) is one of the latter two; PAPER.md 2.5.
#
# <a href="https://colab.research.google.com/github/lss-companion/mtt-lss/blob/main/notebooks/05_ablation_schedule.ipynb" target="_parent">Run in Colab</a>
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
# Defaults: the `cpu` profile's schedule ablation (workflow/profiles/cpu.yaml).
results_dir: str = "results/cpu"
runs: list = ["lss_fixed", "lss", "lss_stair"]
out_dir: str = "results/cpu/ablation_schedule"

# %%
from pathlib import Path

import pandas as pd

from lsslib import config, plots, report

if not runs:
    raise ValueError("invalid parameter runs=[]: allowed a non-empty list of run names")
df = pd.DataFrame([report.collect_run(results_dir, r) for r in runs])
logs = {f"{r} ({s})": report.read_log(results_dir, r) for r, s in zip(df["run"], df["schedule"])}
tail = max(1, min(len(v) for v in logs.values()) // 5)
table = pd.DataFrame(
    {
        "run": df["run"],
        "schedule": df["schedule"],
        "images/class": df["images_per_class"],
        "final loss (mean of last 20 %)": [v["loss"].tail(tail).mean() for v in logs.values()],
        "syn_lr": df["syn_lr"],
        "accuracy (%)": [report.fmt_acc(m, s) for m, s in zip(df["acc_mean"], df["acc_std"])],
    }
)
out = Path(out_dir)
report.write_table(table, out / "table")
table

# %% [markdown]
# ## Accuracy and loss per schedule

# %%
fig = plots.schedule_ablation(df.assign(label=df["schedule"]), logs)
report.save_figure(fig, out / "schedule_ablation.png")

# %% [markdown]
# ## The start-epoch bounds and the start epochs drawn (paper Fig. 3)

# %%
cfgs = {}
for r in runs:
    meta = report.read_json(Path(results_dir) / "runs" / r / "synset.json")
    cfgs[r] = config.DistillConfig(**meta["config"]["distill"])
fig = plots.schedule_bounds(cfgs, {r: report.read_log(results_dir, r) for r in runs})
report.save_figure(fig, out / "schedule_bounds.png")
