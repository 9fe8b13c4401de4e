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
# # Stage 1: expert trajectories
#
# Trains `num_experts` ConvNets on the real training set and stores each one's
# parameters after every epoch (MTT's buffer; PAPER.md 2.7). The run resumes at
# the expert group and epoch where it stopped, refuses a folder that holds a
# buffer of other parameters, and checks the free disk space first.
#
# <a href="https://colab.research.google.com/github/lss-companion/mtt-lss/blob/main/notebooks/01_buffers.ipynb" target="_parent">Run in Colab</a>
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
from typing import Optional

# Defaults: the `cpu` profile (workflow/profiles/cpu.yaml).
dataset: str = "cifar10"
data_root: Optional[str] = None
train_per_class: Optional[int] = 500
test_per_class: Optional[int] = None
normalisation: str = "zca"
zca_eps: float = 0.1
subset_seed: int = 0
net_depth: int = 3
net_width: int = 32
net_norm: str = "instancenorm"
net_pooling: str = "avgpool"
num_experts: int = 4
train_epochs: int = 8
lr_teacher: float = 0.01
mom_teacher: float = 0.0
l2_teacher: float = 0.0
batch_train: int = 64
dsa: bool = True
dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
expert_seed: int = 0
experts_per_group: int = 4
buffer_dir: str = "results/cpu/buffers"
device: str = "cpu"

# %%
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lsslib import config, data, experts, plots, report

if IN_COLAB:
    device = "cuda"
data_cfg, model_cfg, buffer_cfg = config.parse_stage(
    "buffers", globals()
)  # fails fast on bad input
dev = report.pick_device(device)
print(report.describe_device(dev))

# %%
t0 = time.perf_counter()
real = data.load_data(data_cfg, dev)
print(
    f"train {tuple(real.x_train.shape)}, test {tuple(real.x_test.shape)}, {time.perf_counter() - t0:.1f} s"
)

# %%
bar = tqdm(
    total=buffer_cfg.num_experts * buffer_cfg.train_epochs, desc="expert epochs", unit="epoch"
)


def progress(done: int, total: int) -> None:
    bar.update(done - bar.n)


t0 = time.perf_counter()
buffer = experts.train_experts(
    real, model_cfg, buffer_cfg, buffer_dir, progress=progress, log=bar.write
)
bar.close()
print(buffer, f"{time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ## Expert accuracy per epoch

# %%
out = Path(buffer_dir)
curves = buffer.accuracy_curves()
fig = plots.expert_curves(curves)
report.save_figure(fig, out / "expert_curves.png")
summary = pd.DataFrame(
    {
        "expert": range(buffer.num_experts),
        "final train acc (%)": [100 * c[-1] for c in curves["train"]],
        "final test acc (%)": [100 * c[-1] for c in curves["test"]],
    }
)
report.write_table(summary, out / "experts")
summary
