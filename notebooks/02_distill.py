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
# # Stage 2: distillation (trajectory matching with low-rank space sampling)
#
# One distillation run: a synthetic set (`parameterisation`: `lowrank` = MTT-LSS,
# `pixels` = MTT) at a storage budget of `ipc` images per class, matched to the
# expert trajectories of stage 1 (PAPER.md 2.1-2.6). Checkpoints every
# `checkpoint_every` iterations; rerunning resumes from the last one.
#
# <a href="https://colab.research.google.com/github/lss-companion/mtt-lss/blob/main/notebooks/02_distill.ipynb" target="_parent">Run in Colab</a>
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

# Defaults: the `cpu` profile, run `lss` (workflow/profiles/cpu.yaml).
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
parameterisation: str = "lowrank"
ipc: int = 1
rank: int = 4
subspaces: int = 1
soft_labels: bool = True
lr_y: float = 5.0
strict_budget: bool = False
iterations: int = 100
syn_steps: int = 10
expert_epochs: int = 2
max_start_epoch: int = 4
min_start_epoch: int = 0
schedule: str = "linear"
schedule_start: Optional[int] = None
schedule_iterations: Optional[int] = 70
stair_every: int = 100
lr_img: float = 100.0
lr_factors: Optional[float] = None
lr_lr: float = 1e-05
syn_lr_init: float = 0.01
min_syn_lr: float = 0.001
batch_syn: Optional[int] = None
momentum_syn: float = 0.5
init: str = "real"
dsa: bool = True
dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
distill_seed: int = 0
grad_mode: str = "unrolled"
checkpoint_every: int = 25
max_batch_syn: int = 4096
buffer_dir: str = "results/cpu/buffers"
out_dir: str = "results/cpu/runs/lss"
device: str = "cpu"

# %%
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lsslib import config, data, distill, experts, plots, report

if IN_COLAB:
    device = "cuda"
data_cfg, model_cfg, distill_cfg = config.parse_stage(
    "distill", globals()
)  # fails fast on bad input
dev = report.pick_device(device, tf32=False)  # the unrolled loop stays in fp32 (PAPER.md 2.6)
buffer = experts.ExpertBuffer(buffer_dir)
real = data.load_data(data_cfg, dev)
run = distill.Distiller(
    distill_cfg, data_cfg, buffer, real.x_train, real.y_train, out_dir, dev, model_cfg
)
storage = run.synset.storage(run.labels, distill_cfg.strict_budget)
print(report.describe_device(dev))
print(
    f"{run.synset.kind}: {run.layout.images_per_class} images/class, J={run.layout.bases}, "
    f"{storage.used_floats} of {storage.budget_floats} budget floats, {storage.total_bytes} bytes stored"
)
print(f"resuming at iteration {run.iteration}" if run.iteration else "starting at iteration 0")

# %%
bar = tqdm(total=distill_cfg.iterations, initial=run.iteration, desc="distillation", unit="it")


def show(row: dict) -> None:
    bar.update(1)
    bar.set_postfix(
        loss=f"{row['loss']:.4f}", syn_lr=f"{row['syn_lr']:.4g}", start=row["start_epoch"]
    )


t0 = time.perf_counter()
run.run(callback=show)
bar.close()
print(
    f"{time.perf_counter() - t0:.1f} s, syn_lr {float(run.syn_lr):.4g}, clamped {run.clamped} times"
)

# %% [markdown]
# ## Loss, syn_lr and start epochs

# %%
out = Path(out_dir)
log = pd.DataFrame(run.log)
report.save_figure(plots.distill_curves({run.synset.kind: log}), out / "curves.png")
log.tail()

# %% [markdown]
# ## The synthetic images

# %%
loaded = distill.load_synset(out, dev)
images, _ = loaded.export()
pixels = real.normaliser.invert(images)
n = pixels.shape[0] // real.num_classes
report.save_figure(
    plots.image_grid(pixels, real.classes, n, title=f"{loaded.synset.kind}, {n} images/class"),
    out / "grid.png",
)

# %%
if loaded.synset.kind.startswith("lowrank"):
    c = 0
    fig = plots.parameterisation_figure(
        loaded.synset.mappers.detach(),
        loaded.synset.bases.detach(),
        pixels[c * n : (c + 1) * n],
        real.classes[c],
        c,
    )
    report.save_figure(fig, out / "components.png")
