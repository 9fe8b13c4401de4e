"""The book's tables, assembled from the stages' artifacts (no training here).

Every number is labelled with where it comes from: *paper* (the paper's text),
*anchor* (published elsewhere; PAPER.md section 4) or *measured here* (this
profile's runs, with hardware).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import __version__
from .report import collect_run, fmt_acc, read_json
from .synset import layout

__all__ = [
    "ANCHORS_CIFAR10_IPC1",
    "main_table",
    "storage_table",
    "reproduce_table",
    "speed_table",
    "paper_claims_table",
    "choices_table",
    "run_info_markdown",
    "buffers_table",
]

#: Published CIFAR-10 IPC 1 accuracies (%) used in the claims table (PAPER.md section 4).
ANCHORS_CIFAR10_IPC1 = {"random real": 14.4, "MTT": 46.3, "DATM": 46.9, "full train set": 84.8}


def _baseline_row(results_dir: Path, name: str) -> dict[str, Any]:
    m = read_json(results_dir / "baselines" / name / "metrics.json")
    st, res = m["storage"], m["result"]
    return {
        "method": m["label"],
        "images/class": st["images_per_class"],
        "stored floats": st["image_floats"] + st["label_floats"] + st["lr_floats"],
        "bytes": st["total_bytes"],
        "acc_mean": res["mean"],
        "acc_std": res["std"],
    }


def main_table(
    results_dir: str | Path,
    main: Mapping[str, str],
    baselines: Sequence[str],
    hardware: str,
    profile: str,
) -> pd.DataFrame:
    """Meta-test accuracy of LSS, pixel MTT and the baselines (all *measured here*).

    Args:
        results_dir: ``results/PROFILE``.
        main: ``{"lss": run, "mtt": run}``.
        baselines: baseline names under ``results_dir/baselines``.
        hardware, profile: for the source column.
    """
    results_dir = Path(results_dir)
    rows = []
    for role, title in (("lss", "MTT-LSS"), ("mtt", "pixel MTT")):
        r = collect_run(results_dir, main[role])
        extra = (
            f" (r={r['rank']}, {r['schedule']}, {'soft' if r['soft_labels'] else 'hard'} labels)"
            if role == "lss"
            else f" ({'soft' if r['soft_labels'] else 'hard'} labels)"
        )
        rows.append(
            {
                "method": title + extra,
                "images/class": r["images_per_class"],
                "stored floats": r["floats"],
                "bytes": r["bytes"],
                "acc_mean": r["acc_mean"],
                "acc_std": r["acc_std"],
            }
        )
    rows += [_baseline_row(results_dir, b) for b in baselines]
    df = pd.DataFrame(rows)
    df["accuracy (%)"] = [fmt_acc(m, s) for m, s in zip(df["acc_mean"], df["acc_std"], strict=True)]
    df["source"] = f"measured here ({profile}, {hardware})"
    return df


def storage_table(channels: int = 3, side: int = 32, num_classes: int = 10) -> pd.DataFrame:
    """Images per class that fit IPC 1/10/50 for each parameterisation and rank (PAPER.md 2.2).

    Computed by :func:`lsslib.synset.layout` (hard labels; soft labels are reported
    beside the budget, or counted with ``strict_budget``).
    """
    rows = []
    combos = [("pixels", 0)] + [("lowrank", r) for r in (2, 4, 8, 16)] + [("two_sided", 4)]
    for par, r in combos:
        row: dict[str, Any] = {"parameterisation": par, "rank r": r or "-"}
        for ipc in (1, 10, 50):
            lay = layout(
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
            row[f"IPC {ipc}: images/class"] = lay.images_per_class
            row[f"IPC {ipc}: floats used / budget"] = f"{lay.image_floats} / {lay.budget_floats}"
        rows.append(row)
    return pd.DataFrame(rows)


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


def _mem(r: Mapping[str, Any]) -> str:
    return f"{r['peak_mem_mib']:,.0f} MiB"


def _pct(r: Mapping[str, Any]) -> str:
    f = r["fraction_of_peak"]
    return "-" if f is None else f"{100 * f:.0f} %"


def _speed_row(rec: Mapping[str, Any]) -> dict[str, Any]:
    """One benchmark record (the JSON line of a ``benchmarks/bench_*.py`` run) as a table row."""
    cfg, res, rat = rec["config"], rec["results"], rec["ratios"]
    bench = rec["bench"]
    if bench == "experts":
        tog, base = res[rec["together"]], res["one_at_a_time"]
        setup = f"{cfg['model']}, {cfg['experts']} experts x {cfg['images']:,} images, batch {cfg['batch']}"
        opt = f"together ({rec['together']}): {tog['images_per_s_median']:,.0f} img/s"
        bas = f"one at a time: {base['images_per_s_median']:,.0f} img/s"
        ratio = (
            f"{rat['together_vs_one_at_a_time_median']}x "
            f"({rat['together_vs_one_at_a_time_best']}x best, "
            f"{rat['together_vs_one_at_a_time_cpu_time']}x CPU time)"
        )
        mem = f"{_mem(tog)} / {_mem(base)}"
        frac = _pct(tog)
    elif bench == "evaluate":
        tog, base = res["together"], res["sequential"]
        setup = f"{cfg['model']}, {cfg['nets']} nets x {cfg['epochs']} epochs on {cfg['images']:,} images"
        opt = f"together: {tog['median_s']:.2f} s (1000 epochs: {tog['projected_full_s']:,.0f} s)"
        bas = f"one net after another: {base['median_s']:.2f} s"
        ratio = (
            f"{rat['together_vs_sequential_median']}x ({rat['together_vs_sequential_best']}x best, "
            f"{rat['together_vs_sequential_cpu_time']}x CPU time)"
        )
        mem = f"{_mem(tog)} / {_mem(base)}"
        frac = _pct(tog)
    elif bench == "distill":
        base = res["unrolled"]
        # the benchmark's memory ratio: allocator peaks on CUDA, RSS added by the run on CPU
        basis = "peak" if rec["device"] != "cpu" else "added RSS"
        modes = [m for m in ("checkpointed", "tesla") if m in res]
        setup = (
            f"{cfg['model']}, syn_steps {cfg['syn_steps']}, batch_syn {cfg['batch_syn']}, "
            f"{cfg['n_syn']} images"
        )
        opt = "; ".join(
            f"{m}: {res[m]['image_steps_per_s_median']:,.0f} image-steps/s" for m in modes
        )
        bas = f"unrolled: {base['image_steps_per_s_median']:,.0f} image-steps/s"
        ratio = "; ".join(
            f"{m} {rat[m]['speed_vs_unrolled_median']}x ({rat[m]['speed_vs_unrolled_best']}x best, "
            f"{rat[m]['speed_vs_unrolled_cpu_time']}x CPU time)"
            for m in modes
        )
        mem = (
            "; ".join(
                f"{m} {_mem(res[m])} ({rat[m]['memory_vs_unrolled']:.2f} of unrolled's {basis})"
                for m in modes
            )
            + f"; unrolled {_mem(base)}"
        )
        frac = "; ".join(f"{m} {_pct(res[m])}" for m in [*modes, "unrolled"])
    else:
        raise ValueError(
            f"invalid benchmark record bench={bench!r}: allowed experts, evaluate, distill"
        )
    targets = rec.get("gpu_targets")
    if targets is None:
        target_text = "n/a (CPU run)" if rec["device"] == "cpu" else "not checked"
    else:
        target_text = ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in targets.items())
    return {
        "stage": bench,
        "configuration": setup
        + (" (DSA on)" if cfg.get("dsa") else " (no DSA)")
        + (", malloc not tuned" if rec["device"] == "cpu" and not rec.get("malloc_tuned") else ""),
        "device": f"{rec['device_string']}; torch {rec['torch']}; {rec['date_utc'][:10]}",
        "optimised (median)": opt,
        "baseline (median)": bas,
        "speed ratio": ratio,
        "peak memory": mem,
        "fraction of peak": frac,
        "GPU targets": target_text,
        "command": rec["command"],
    }


def speed_table(records_dir: str | Path) -> pd.DataFrame:
    """The stage benchmarks of record (``benchmarks/records/*.json``) as one table.

    Each JSON file is the record a ``benchmarks/bench_*.py --out FILE`` run wrote
    (its last output line). Speeds are the median rounds; ratios are optimised /
    baseline speed, so above 1 is faster; memory is the CUDA allocator's peak on a
    GPU and the peak resident set on a CPU (see ``benchmarks/README.md``).

    Returns:
        One row per record, sorted by stage then file name; no rows when the
        folder is missing or empty.

    Raises:
        ValueError: a record of an unknown benchmark.
    """
    cols = [
        "stage",
        "configuration",
        "device",
        "optimised (median)",
        "baseline (median)",
        "speed ratio",
        "peak memory",
        "fraction of peak",
        "GPU targets",
        "command",
    ]
    folder = Path(records_dir)
    recs = [read_json(f) for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    order = {"experts": 0, "distill": 1, "evaluate": 2}
    rows = sorted((_speed_row(r) for r in recs), key=lambda r: order[r["stage"]])
    return pd.DataFrame(rows, columns=cols)


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
    """The reconstruction choices of PAPER.md section 2 and how much the measured ones matter."""

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
