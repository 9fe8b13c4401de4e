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
# # Stage 6: summary for the book
#
# Reads the artifacts of stages 1-5 and writes every figure and table the book
# shows into `book_dir` (`book/_generated`): the paper's Fig. 1, 3, 4 and 5
# rebuilt from our runs, the accuracy table at equal storage, the ablations, the
# paper's claims beside the anchors and our measurements, and the run's wall
# times and peak memory.
#
# <a href="https://colab.research.google.com/github/lss-companion/mtt-lss/blob/main/notebooks/06_summary.ipynb" target="_parent">Run in Colab</a>
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
# Defaults: the `cpu` profile (workflow/profiles/cpu.yaml).
results_dir: str = "results/cpu"
profile: str = "cpu"
description: str = (
    "CIFAR-10, IPC 1, ConvNetD3 at width 32 on 500 images per class, sized for a 2-core CPU"
)
book_dir: str = "book/_generated"
bench_records: str = "benchmarks/records"  # the stage benchmarks of record (JSON)
main: dict = {"lss": "lss", "mtt": "mtt"}
baselines: list = ["random_real", "full"]
ablations: dict = {
    "rank": ["lss_r2", "lss", "lss_r8"],
    "schedule": ["lss_fixed", "lss", "lss_stair"],
}

# %%
import datetime
from pathlib import Path

import pandas as pd

from lsslib import config, data, distill, plots, report, summary

res = Path(results_dir)
book = Path(book_dir)
figs, tabs = book / "figures", book / "tables"
for role in ("lss", "mtt"):
    if role not in main:
        raise ValueError(
            f"invalid parameter main={main!r}: allowed a dict with keys 'lss' and 'mtt'"
        )
lss_meta = report.read_json(res / "runs" / main["lss"] / "synset.json")
real = data.load_data(config.DataConfig(**lss_meta["config"]["data"]))
hardware = report.read_json(res / "runs" / main["lss"] / "eval" / "metrics.json")["hardware"]

# %% [markdown]
# ## Accuracy at equal storage

# %%
main_df = summary.main_table(res, main, baselines, hardware, profile)
report.write_table(main_df.drop(columns=["acc_mean", "acc_std"]), tabs / "main")
main_df.drop(columns=["acc_mean", "acc_std"])

# %% [markdown]
# ## Ablations

# %%
rank_df = pd.DataFrame([report.collect_run(res, r) for r in ablations.get("rank", [])])
sched_df = pd.DataFrame([report.collect_run(res, r) for r in ablations.get("schedule", [])])
for key, df, cols in (
    ("rank_ablation", rank_df, ["run", "rank", "images_per_class", "floats", "bytes"]),
    ("schedule_ablation", sched_df, ["run", "schedule", "images_per_class", "syn_lr"]),
):
    if len(df):
        t = df[cols].copy()
        t["accuracy (%)"] = [report.fmt_acc(m, s) for m, s in zip(df["acc_mean"], df["acc_std"])]
        report.write_table(t, tabs / key)
rank_df

# %% [markdown]
# ## Claims, choices, storage, experts, reproduction

# %%
report.write_table(
    summary.paper_claims_table(main_df, rank_df, sched_df, profile), tabs / "paper_claims"
)
report.write_table(summary.choices_table(rank_df, sched_df), tabs / "choices")
report.write_table(
    summary.storage_table(real.channels, real.side, real.num_classes), tabs / "storage"
)
buffer_meta = report.read_json(res / "buffers" / "buffer.json")
report.write_table(summary.buffers_table(buffer_meta), tabs / "buffers")
repro = summary.reproduce_table(res / "benchmarks")
report.write_table(repro, tabs / "reproduce")
# speed of each stage against its straightforward baseline (benchmarks/README.md)
speed = summary.speed_table(bench_records)
report.write_table(speed.drop(columns=["device", "command"]), tabs / "speed")
report.write_table(speed[["stage", "configuration", "device", "command"]], tabs / "speed_runs")
repro

# %% [markdown]
# ## Figures (paper Fig. 1, 3, 4, 5 and the stage figures)

# %%
lss = distill.load_synset(res / "runs" / main["lss"])
mtt = distill.load_synset(res / "runs" / main["mtt"])
x_lss, _ = lss.export()
x_mtt, _ = mtt.export()
n_lss = x_lss.shape[0] // real.num_classes
n_mtt = x_mtt.shape[0] // real.num_classes
px_lss, px_mtt = real.normaliser.invert(x_lss), real.normaliser.invert(x_mtt)
report.save_figure(
    plots.image_grid(px_lss, real.classes, n_lss, f"MTT-LSS: {n_lss} images/class"),
    figs / "grid_lss.png",
)
report.save_figure(
    plots.image_grid(px_mtt, real.classes, n_mtt, f"pixel MTT: {n_mtt} images/class"),
    figs / "grid_mtt.png",
)
if lss.synset.kind.startswith("lowrank"):
    U, V = lss.synset.mappers.detach(), lss.synset.bases.detach()
    report.save_figure(
        plots.parameterisation_figure(U, V, px_lss[:n_lss], real.classes[0], 0),
        figs / "fig1_parameterisation.png",
    )
    report.save_figure(
        plots.lss_vs_mtt(U, V, px_lss, n_lss, px_mtt, n_mtt, real.classes),
        figs / "fig4_lss_vs_mtt.png",
    )

# %%
runs_for_logs = {f"LSS ({main['lss']})": main["lss"], f"MTT ({main['mtt']})": main["mtt"]}
report.save_figure(
    plots.distill_curves({k: report.read_log(res, v) for k, v in runs_for_logs.items()}),
    figs / "distill_curves.png",
)
report.save_figure(
    plots.expert_curves(
        {
            k: [buffer_meta["accuracy"][i][k] for i in sorted(buffer_meta["accuracy"], key=int)]
            for k in ("train", "test")
        }
    ),
    figs / "expert_curves.png",
)
curves = {}
for label, run in runs_for_logs.items():
    r = report.read_json(res / "runs" / run / "eval" / "metrics.json")["result"]
    curves[label] = (r["curve_epochs"], r["curve_mean"])
for b in baselines:
    m = report.read_json(res / "baselines" / b / "metrics.json")
    curves[m["label"]] = (m["result"]["curve_epochs"], m["result"]["curve_mean"])
report.save_figure(plots.eval_curves(curves), figs / "eval_curves.png")

# %%
if len(rank_df):
    pts = rank_df.sort_values("rank").assign(label=lambda d: [f"LSS r={r}" for r in d["rank"]])
    mt = main_df.iloc[[1]].assign(label="pixel MTT", floats=main_df.iloc[1]["stored floats"])
    pts = pd.concat(
        [
            pts[["label", "floats", "acc_mean", "acc_std"]],
            mt[["label", "floats", "acc_mean", "acc_std"]],
        ]
    )
    report.save_figure(plots.accuracy_vs_storage(pts), figs / "rank_accuracy_storage.png")
    sweep = []
    for row in rank_df.sort_values("rank").itertuples():
        xr, _ = distill.load_synset(res / "runs" / row.run).export()
        n = xr.shape[0] // real.num_classes
        sweep.append(
            (
                int(row.rank),
                real.normaliser.invert(xr[:n]),
                int(row.images_per_class),
                int(row.floats),
            )
        )
    report.save_figure(plots.rank_sweep(sweep, real.classes[0]), figs / "fig5_rank_sweep.png")

# %%
if len(sched_df):
    logs = {f"{r.run} ({r.schedule})": report.read_log(res, r.run) for r in sched_df.itertuples()}
    report.save_figure(
        plots.schedule_ablation(sched_df.assign(label=sched_df["schedule"]), logs),
        figs / "schedule_ablation.png",
    )
    cfgs = {
        r: config.DistillConfig(
            **report.read_json(res / "runs" / r / "synset.json")["config"]["distill"]
        )
        for r in sched_df["run"]
    }
    report.save_figure(
        plots.schedule_bounds(cfgs, {r: report.read_log(res, r) for r in sched_df["run"]}),
        figs / "fig3_schedule.png",
    )

# %%
total = float(repro["wall time (s)"].iloc[:-1].sum()) if len(repro) else 0.0
info = summary.run_info_markdown(
    profile, description, hardware, real.config.dataset, total, datetime.date.today().isoformat()
)
from lsslib.artifacts import atomic_write_text

atomic_write_text(book / "run_info.md", info)
print(info)
