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
# # Stage 3: evaluation (meta-test accuracy)
#
# Trains `num_eval` fresh ConvNets on a synthetic set (`baseline="synset"`), on a
# class-balanced random real subset of `real_ipc` images per class
# (`baseline="random_real"`), or on the whole training (sub)set
# (`baseline="full"`), and reports mean ± std of their test accuracy
# (MTT's protocol, PAPER.md 2.8).
#
# <a href="https://colab.research.google.com/github/lss-companion/mtt-lss/blob/main/notebooks/03_evaluate.ipynb" target="_parent">Run in Colab</a>
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
num_eval: int = 5
eval_epochs: int = 300
lr_eval: Optional[float] = None
mom_eval: float = 0.9
l2_eval: float = 0.0005
batch_eval: int = 256
eval_seed: int = 0
dsa: bool = True
dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
baseline: str = "synset"
real_ipc: int = 1
synset_dir: str = "results/cpu/runs/lss"
buffer_dir: str = ""
out_dir: str = "results/cpu/runs/lss/eval"
device: str = "cpu"

# %%
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lsslib import config, data, distill, evaluate, models, plots, report, synset

if IN_COLAB:
    device = "cuda"
data_cfg, model_cfg, eval_cfg = config.parse_stage("evaluate", globals())  # fails fast on bad input
out_lock = evaluate.claim_out_dir(out_dir)  # one writer per folder, disk checked, before any work
config.check_choice("baseline", baseline, ("synset", "random_real", "full"))
config.check_range("real_ipc", real_ipc, lo=1, integer=True)
dev = report.pick_device(device)
real = data.load_data(data_cfg, dev)
spec = models.ConvNetSpec.from_config(
    model_cfg, channels=real.channels, side=real.side, num_classes=real.num_classes
)

if baseline == "synset":
    loaded = distill.load_synset(synset_dir, dev)
    if (
        loaded.meta["identity"]["spec"] != spec.to_dict()
        or loaded.meta["config"]["data"]["dataset"] != dataset
    ):
        raise ValueError(
            f"invalid parameter synset_dir={synset_dir!r}: the set was distilled for "
            f"{loaded.meta['identity']['spec']} on {loaded.meta['config']['data']['dataset']!r}, "
            f"this evaluation asks for {spec.to_dict()} on {dataset!r}"
        )
    x, y = loaded.export()
    lr = eval_cfg.lr_eval or loaded.syn_lr
    storage = loaded.meta["storage"]
    label = f"{loaded.meta['parameterisation']} ({synset_dir})"
elif baseline == "random_real":
    x, y = evaluate.random_real_subset(real, real_ipc, seed=eval_cfg.eval_seed)
    lr = eval_cfg.lr_eval or 0.01
    storage = synset.real_storage(len(x), real.num_classes, real.channels, real.side).to_dict()
    label = f"random real, {real_ipc} per class"
else:
    x, y = real.x_train, real.y_train
    lr = eval_cfg.lr_eval or 0.01
    storage = synset.real_storage(len(x), real.num_classes, real.channels, real.side).to_dict()
    label = f"full training set ({x.shape[0]} images)"
print(report.describe_device(dev))
print(
    f"{label}: {x.shape[0]} training images, lr {lr:.4g}, {eval_cfg.num_eval} nets x {eval_cfg.eval_epochs} epochs"
)

# %%
bar = tqdm(total=eval_cfg.eval_epochs, desc="eval epochs", unit="epoch")
result = evaluate.evaluate_images(
    spec, x, y, real, eval_cfg, lr=lr, progress=lambda done, total: bar.update(done - bar.n)
)
bar.close()
print(f"meta-test accuracy {report.fmt_acc(result.mean, result.std)} % ({result.seconds:.1f} s)")

# %%
out = Path(out_dir)
metrics = {
    "baseline": baseline,
    "label": label,
    "result": result.to_dict(),
    "storage": storage,
    "config": {
        "data": data_cfg.to_dict(),
        "model": model_cfg.to_dict(),
        "eval": eval_cfg.to_dict(),
    },
    "hardware": report.describe_device(dev),
}
report.save_figure(
    plots.eval_curves({label: (result.curve_epochs, result.curve_mean)}), out / "eval_curve.png"
)
table = pd.DataFrame(
    [{"set": label, "images": x.shape[0], "accuracy (%)": report.fmt_acc(result.mean, result.std)}]
)
report.write_table(table, out / "accuracy")
report.write_metrics(out / "metrics.json", metrics)
table
