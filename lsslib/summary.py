"""The book's tables, assembled from the stages' artifacts (no training here).

Every number is labelled with where it comes from: *paper* (the paper's text),
*anchor* (published elsewhere; the anchors' published accuracies, book/results.md) or *measured here* (this
profile's runs, with hardware).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import __version__, parameterisations, plots, study
from .report import fmt_acc, save_figure
from .results import EvalRecord, Results, read_json, run_facts
from .synset import layout

__all__ = [
    "ANCHORS_CIFAR10_IPC1",
    "main_table",
    "storage_table",
    "reproduce_table",
    "paper_claims_table",
    "choices_table",
    "run_info_markdown",
    "buffers_table",
]

#: Published CIFAR-10 IPC 1 accuracies (%) used in the claims table (the anchors' published accuracies, book/results.md).
ANCHORS_CIFAR10_IPC1 = {"random real": 14.4, "MTT": 46.3, "DATM": 46.9, "full train set": 84.8}


def _baseline_row(results: Results, name: str) -> dict[str, Any]:
    m = EvalRecord.read(results.baseline(name).metrics)
    st = m.storage
    nets = len(m.result["accuracies"])
    label = m.label
    if m.baseline == "full":  # say what it is: this profile's training set, and how few nets
        label = (
            f"full training set: {st['images_per_class']} training images per class, "
            f"{nets} network{'s' if nets != 1 else ''}"
        )
    return {
        "method": label,
        "images/class": st["images_per_class"],
        "stored floats": st["image_floats"] + st["label_floats"] + st["lr_floats"],
        "bytes": st["total_bytes"],
        "acc_mean": m.mean,
        "acc_std": m.std,
        "accuracy (%)": spread_text(m.result["accuracies"]),
    }


def main_table(
    results: Results,
    main: Mapping[str, str],
    baselines: Sequence[str],
    hardware: str,
    profile: str,
    compare: Sequence[str] = (),
) -> pd.DataFrame:
    """Meta-test accuracy of LSS, pixel MTT, further runs and the baselines (all
    *measured here*), in that order.

    Args:
        results: the profile's :class:`~lsslib.results.Results`.
        main: ``{"lss": run, "mtt": run}``.
        baselines: baseline names.
        hardware, profile: for the source column.
        compare: further runs listed after the main two (e.g. other parameterisations).
    """
    rows = []
    for run in [main["lss"], main["mtt"], *compare]:
        r = run_facts(results.run(run), run)
        labels = f"{'soft' if r['soft_labels'] else 'hard'} labels"
        rank = f"r={r['rank']}, " if r["rank"] is not None else ""
        extra = f" ({rank}{r['schedule']} schedule, {labels})"
        rows.append(
            {
                "method": r["title"] + extra,
                "images/class": r["images_per_class"],
                "stored floats": r["floats"],
                "bytes": r["bytes"],
                "acc_mean": r["acc_mean"],
                "acc_std": r["acc_std"],
                "accuracy (%)": spread_text(
                    EvalRecord.read(results.run(run).eval.metrics).result["accuracies"]
                ),
            }
        )
    rows += [_baseline_row(results, b) for b in baselines]
    df = pd.DataFrame(rows)
    df["source"] = f"measured here ({profile}, {hardware})"
    return df


def storage_table(channels: int = 3, side: int = 32, num_classes: int = 10) -> pd.DataFrame:
    """Images per class that fit IPC 1/10/50 for each parameterisation and rank (book/choices.md §2),
    and the share of each budget the images use, in four short columns (the budgets are in
    the last column's header).

    Every registered parameterisation, ranks 2/4/8/16 for those with a rank, solved by
    its unit (:func:`lsslib.synset.layout`; hard labels; soft labels are reported beside
    the budget, or counted with ``strict_budget``).
    """
    ipcs = (1, 10, 50)
    rows, budgets = [], {}
    combos = [
        (name, r)
        for name in parameterisations.names()
        for r in ((2, 4, 8, 16) if parameterisations.get(name).uses_rank else (0,))
    ]
    for par, r in combos:
        lays = [
            layout(
                par,
                ipc=ipc,
                rank=max(r, 1),
                subspaces=1,
                channels=channels,
                side=side,
                num_classes=num_classes,
                soft_labels=False,
                strict_budget=False,
            )
            for ipc in ipcs
        ]
        budgets = {ipc: lay.budget_floats for ipc, lay in zip(ipcs, lays, strict=True)}
        used = [100 * lay.image_floats / lay.budget_floats for lay in lays]
        rows.append(
            {
                "parameterisation": par,
                "rank r": r or "-",
                "images/class at IPC 1 / 10 / 50": " / ".join(
                    str(lay.images_per_class) for lay in lays
                ),
                "budget used (%)": " / ".join(f"{u:.1f}".rstrip("0").rstrip(".") for u in used),
            }
        )
    df = pd.DataFrame(rows)
    budget = " / ".join(f"{budgets[i]:,}" for i in ipcs)
    return df.rename(columns={"budget used (%)": f"budget used (%) of {budget} floats"})


def reproduce_table(bench_dir: str | Path) -> pd.DataFrame:
    """Wall time and peak RSS of every pipeline job, from Snakemake's ``benchmark:`` TSVs.

    Returns:
        Columns ``job``, ``wall time (s)``, ``peak RSS (MB)``; a last row ``all jobs``
        with the summed time and the largest peak. Jobs still running (the summary
        itself) are absent.
    """
    rows = []
    for path in sorted(Path(bench_dir).glob("*.tsv")):
        with open(path) as fh:
            rec = next(csv.DictReader(fh, delimiter="\t"), None)
        if rec is None:
            continue
        rss = rec.get("max_rss", "NA")
        rows.append(
            {
                "job": path.stem,
                "wall time (s)": round(float(rec["s"]), 1),
                "peak RSS (MB)": round(float(rss), 0) if rss not in ("NA", "-", "") else None,
            }
        )
    df = pd.DataFrame(rows, columns=["job", "wall time (s)", "peak RSS (MB)"])
    if len(df):
        total = {
            "job": "all jobs (time summed; jobs may run in parallel)",
            "wall time (s)": round(df["wall time (s)"].sum(), 1),
            "peak RSS (MB)": df["peak RSS (MB)"].max(),
        }
        df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    return df


def paper_claims_table(
    main: pd.DataFrame, rank: pd.DataFrame | None, schedule: pd.DataFrame | None, profile: str
) -> pd.DataFrame:
    """Claims of the paper beside anchors and our measurements.

    Args:
        main: from :func:`main_table` (rows LSS, MTT, random real, full, in that order).
        rank: rows of the rank ablation (``collect_run`` dicts), or ``None``.
        schedule: rows of the schedule ablation, or ``None``.
        profile: profile name for labels.
    """
    lss, mtt = main.iloc[0], main.iloc[1]
    real = main[main["method"].str.startswith("random real")]
    rows = [
        {
            "claim": "MTT-LSS beats the baselines (average over CIFAR-10/100, SVHN at IPC 1/10/50)",
            "paper": "+9.9 points on average",
            "anchor": f"MTT CIFAR-10 IPC 1: {ANCHORS_CIFAR10_IPC1['MTT']} %",
            "measured here": f"CIFAR-10 IPC 1 only ({profile}): LSS {fmt_acc(lss.acc_mean, lss.acc_std)} vs pixel MTT {fmt_acc(mtt.acc_mean, mtt.acc_std)}: {100 * (lss.acc_mean - mtt.acc_mean):+.1f} points",
        },
        {
            "claim": "More synthetic images at the same storage (Fig. 2, 4)",
            "paper": "qualitative",
            "anchor": "-",
            "measured here": f"{lss['images/class']} vs {mtt['images/class']} images/class at {lss['stored floats']} vs {mtt['stored floats']} stored floats",
        },
    ]
    if len(real):
        r = real.iloc[0]
        rows.append(
            {
                "claim": "Distilled data beats real data of the same storage",
                "paper": "implied",
                "anchor": f"random real CIFAR-10 IPC 1: {ANCHORS_CIFAR10_IPC1['random real']} %",
                "measured here": f"LSS {fmt_acc(lss.acc_mean, lss.acc_std)} vs random real {fmt_acc(r.acc_mean, r.acc_std)}: {100 * (lss.acc_mean - r.acc_mean):+.1f} points",
            }
        )
    if rank is not None and len(rank):
        rk = rank.sort_values("rank")
        parts = ", ".join(
            f"r={int(x.rank)}: {x.images_per_class}/class, {100 * x.acc_mean:.1f} %"
            for x in rk.itertuples()
        )
        rows.append(
            {
                "claim": "Higher r: more detail per image, more storage (Fig. 5)",
                "paper": "qualitative",
                "anchor": "-",
                "measured here": parts,
            }
        )
    if schedule is not None and len(schedule):
        parts = ", ".join(f"{x.schedule}: {100 * x.acc_mean:.1f} %" for x in schedule.itertuples())
        rows.append(
            {
                "claim": "Progressive (easy-to-hard) trajectory matching helps (Fig. 3)",
                "paper": "qualitative",
                "anchor": "DATM (linear schedule)",
                "measured here": parts,
            }
        )
    rows.append(
        {
            "claim": "Largest gains at low compression (small IPC)",
            "paper": "qualitative",
            "anchor": "-",
            "measured here": f"not measured ({profile} runs IPC 1 only)",
        }
    )
    return pd.DataFrame(rows)


def choices_table(rank: pd.DataFrame | None, schedule: pd.DataFrame | None) -> pd.DataFrame:
    """The reconstruction choices of book/choices.md and how much the measured ones matter."""

    def spread(df: pd.DataFrame | None, key: str) -> str:
        if df is None or not len(df):
            return "not measured"
        lo, hi = df.loc[df.acc_mean.idxmin()], df.loc[df.acc_mean.idxmax()]
        return f"{100 * (hi.acc_mean - lo.acc_mean):.1f} points between {key}={lo[key]} ({100 * lo.acc_mean:.1f} %) and {key}={hi[key]} ({100 * hi.acc_mean:.1f} %)"

    rows = [
        (
            "1. parameterisation: U[k,s] (C x H x r) times V[k,s,j] (C x r x W)",
            "paper Fig. 1, 4 (reading of 'shared dimension mapper')",
            spread(rank, "rank"),
        ),
        (
            "2. storage: every float counted; labels reported beside the budget",
            "HaBa/RTP budget accounting",
            "exact by construction (tests)",
        ),
        (
            "3. SVD initialisation from correctly classified real images",
            "DATM's selection rule",
            "not measured",
        ),
        ("4. soft labels: DATM's init, SGD momentum 0.9, soft CE", "DATM", "not measured"),
        ("5. progressive schedule: DATM's linear widening", "DATM", spread(schedule, "schedule")),
        ("6. inner loop and normalised loss, syn_lr >= 1e-3", "MTT", "not measured"),
        ("7. experts: ConvNetD3, SGD 0.01, DSA, ZCA", "MTT buffer.py", "not measured"),
        (
            "8. evaluation: 5 nets, 1000 epochs, lr = learned syn_lr",
            "MTT evaluate_synset",
            "not measured",
        ),
        ("9. ConvNetD3 layout", "DC/DSA/MTT ConvNet", "parameter counts tested"),
        ("10. DSA strategy and ranges", "DSA ParamDiffAug", "not measured"),
        ("11. bounded batch_syn; TESLA as an option", "MTT, TESLA", "see benchmarks"),
    ]
    return pd.DataFrame(rows, columns=["choice", "anchor", "measured impact"])


def buffers_table(buffer_meta: Mapping[str, Any]) -> pd.DataFrame:
    """One row: experts, epochs, parameters, final test accuracy (mean +- std over experts)."""
    acc = buffer_meta["accuracy"]
    finals = torch.tensor([acc[k]["test"][-1] for k in acc])
    cfg = buffer_meta["config"]
    return pd.DataFrame(
        [
            {
                "experts": buffer_meta["num_experts"],
                "epochs": buffer_meta["epochs"],
                "parameters": buffer_meta["num_params"],
                "model": f"ConvNet depth {cfg['model']['net_depth']}, width {cfg['model']['net_width']}, {cfg['model']['net_norm']}",
                "training images": "all"
                if cfg["data"]["train_per_class"] is None
                else f"{cfg['data']['train_per_class']} per class",
                "final test accuracy (%)": fmt_acc(
                    float(finals.mean()), float(finals.std(unbiased=False))
                ),
            }
        ]
    )


def run_info_markdown(
    profile: str, description: str, hardware: str, dataset: str, total_seconds: float, date: str
) -> str:
    """The MyST box included on the intro, results and reproduce pages."""
    return (
        ":::{admonition} The run behind the measured numbers\n"
        ":class: note\n"
        f"Profile **{profile}** ({description.strip()}) · dataset **{dataset}** (the offline JPEG copy of CIFAR-10 where "
        "used: quality 75, so not bit-comparable with the official pickles) · hardware: "
        f"{hardware} · torch {torch.__version__} · lsslib {__version__} · date {date} · "
        f"stage jobs {total_seconds / 60:.1f} min in all (jobs run side by side; the pipeline's own wall "
        "time is on the Reproduce page).\n"
        ":::\n"
    )


# ----------------------------------------------------------------- the readers' plots


def spread_text(accuracies: Sequence[float]) -> str:
    """Accuracies (fractions) of the evaluation networks as the book shows them (%):
    ``mean ± std`` (population std, as :func:`lsslib.report.fmt_acc`) from 3 networks
    on, a range from 2 (a std of 2 means nothing), the value alone from 1."""
    acc = [100 * a for a in accuracies]
    if len(acc) >= 3:
        return f"{float(np.mean(acc)):.1f} ± {float(np.std(acc)):.1f}"
    if len(acc) == 2:
        return f"{float(np.mean(acc)):.1f} (range {min(acc):.1f} to {max(acc):.1f}, 2 networks)"
    return f"{acc[0]:.1f} (1 network)" if acc else "-"


def equal_storage_rows(main: pd.DataFrame, slack: float = 1.2) -> pd.DataFrame:
    """The rows of :func:`main_table` whose storage is within ``slack`` x the first row's
    (MTT-LSS's): the comparison at equal storage, without the full training set."""
    budget = float(main.iloc[0]["stored floats"])
    return main[main["stored floats"] <= slack * budget]


def comparison_figures(
    results: Results,
    main_df: pd.DataFrame,
    rank_runs: Sequence[str],
    figs: str | Path,
    num_eval: int,
) -> list[Path]:
    """The readers' plots of one profile, next to the summary stage's figures.

    * ``main_bars.png``: the main comparison at equal storage, bars with the std over
      the ``num_eval`` evaluation networks of one distillation (:func:`plots.method_bars`);
    * ``storage_accuracy.png``: accuracy against stored floats for every rank run and the
      equal-storage rows, per IPC that has records (:func:`plots.storage_accuracy`).
    """

    figs = Path(figs)
    eq = equal_storage_rows(main_df)
    bars = pd.DataFrame(
        {"label": eq["method"], "acc": 100 * eq["acc_mean"], "err": 100 * eq["acc_std"]}
    )
    spread = f"{num_eval} evaluation networks of one distillation"
    out = [save_figure(plots.method_bars(bars, spread), figs / "main_bars.png", close=True)]
    rows = [run_facts(results.run(r), r) for r in rank_runs]
    ipc = {r: read_json(results.run(r).synset_json)["config"]["distill"]["ipc"] for r in rank_runs}
    pts = pd.DataFrame(
        [
            {
                "label": f"{r['title']} r={r['rank']}",
                "ipc": ipc[r["run"]],
                "floats": r["floats"],
                "acc": 100 * r["acc_mean"],
                "err": 100 * r["acc_std"],
            }
            for r in rows
        ]
    )
    others = eq[~eq["method"].str.startswith("MTT-LSS")]
    pts = pd.concat(
        [
            pts,
            pd.DataFrame(
                {
                    "label": others["method"],
                    "ipc": pts["ipc"].iloc[0] if len(pts) else 1,
                    "floats": others["stored floats"],
                    "acc": 100 * others["acc_mean"],
                    "err": 100 * others["acc_std"],
                }
            ),
        ],
        ignore_index=True,
    )
    missing = sorted({1, 10, 50} - set(pts["ipc"]))
    note = f"no records at IPC {', '.join(map(str, missing))} yet" if missing else ""
    out.append(
        save_figure(plots.storage_accuracy(pts, note), figs / "storage_accuracy.png", close=True)
    )
    return out


def study_figures(results_dir: str | Path, profile: str, out: str | Path) -> list[Path]:
    """The study's readers' plots, from its records (:class:`lsslib.study.StudyRecords`).

    * ``cells_bars.png``: every cell's accuracy, bars with the std over distillation seeds;
    * ``accuracy_iteration.png``: accuracy against distillation iteration per cell, from
      the sets saved during distillation and the final ones (mean ± std over seeds).
    """

    rec = study.StudyRecords(results_dir, profile)
    out = Path(out)
    cells = study.cells_table(rec)
    bars = pd.DataFrame(
        {
            "label": [
                f"{c}: {s}, {_short_labels(lab)}"
                for c, s, lab in zip(cells["cell"], cells["set"], cells["labels"], strict=True)
            ],
            "acc": cells["_mean"],
            "err": [float(np.std(list(rec.scores(c).values()), ddof=1)) for c in cells["cell"]],
        }
    )
    spread = f"{len(rec.seeds)} distillation seeds"
    files = [save_figure(plots.method_bars(bars, spread), out / "cells_bars.png", close=True)]
    curves = _iteration_curves(rec)
    if curves:
        fig = plots.accuracy_vs_iteration(curves, spread)
        files.append(save_figure(fig, out / "accuracy_iteration.png", close=True))
    return files


def _short_labels(labels: str) -> str:
    """The study's label kinds in a few words, for a plot's tick labels."""
    if "argmax" in labels:
        return "argmax labels"
    if "counted" in labels:
        return "soft labels in budget"
    return labels.replace("learned ", "").replace(" (DATM's rule)", "") + " labels"


def _iteration_curves(rec) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """``{cell: (iterations, mean %, std % over seeds)}`` from the snapshot evaluations
    (``iteration`` set) and the final evaluations of the same runs."""
    at: dict[str, dict[int, list[float]]] = {}
    for name, e in rec.profile["evals"].items():
        if e["iteration"] is None:
            continue
        base, _seed = rec.profile["seed_of"][e["of"]]
        at.setdefault(base, {}).setdefault(int(e["iteration"]), []).append(
            100 * rec.record(name).mean
        )
    curves = {}
    for base, by_it in at.items():
        final_it = int(read_json(rec.res.run(base).synset_json)["iterations"])
        by_it[final_it] = list(rec.scores(base).values())
        its = sorted(by_it)
        curves[base] = (
            its,
            [float(np.mean(by_it[i])) for i in its],
            [float(np.std(by_it[i], ddof=1)) if len(by_it[i]) > 1 else 0.0 for i in its],
        )
    return curves
