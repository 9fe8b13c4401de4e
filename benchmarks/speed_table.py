"""The stage benchmarks of record (``benchmarks/records/*.json``) as the book's speed tables.

Usage::

    python benchmarks/speed_table.py [RECORDS_DIR] [TABLES_DIR]

writes ``TABLES_DIR/speed.csv/.md`` (the figures) and ``speed_runs.csv/.md`` (device,
versions, date and command of each row); defaults ``benchmarks/records`` and
``book/_generated/tables``. The Snakemake workflow runs it (rule ``speed_tables``).
Each record is the JSON line a ``benchmarks/bench_*.py --out FILE`` run wrote.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lsslib.report import write_table


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
    vs_ref = rec.get("vs_reference") or {}
    reference = (
        "; ".join(
            f"{name} {r['speed_median']}x ({r['speed_cpu_time']}x CPU time)"
            + (f", peak RSS {r['peak_rss']}x" if "peak_rss" in r else "")
            for name, r in vs_ref.items()
        )
        or "not run"
    )
    floors = rec.get("convolution_floor_vs_reference") or {}
    floor = "; ".join(f"{name} {f}x" for name, f in floors.items()) or "not profiled"
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
        "vs plain PyTorch reference": reference,
        "convolution floor": floor,
        "peak memory": mem,
        "fraction of peak": frac,
        "GPU targets": target_text,
        "command": rec["command"],
    }


def speed_table(records_dir: str | Path) -> pd.DataFrame:
    """The stage benchmarks of record (``benchmarks/records/*.json``) as one table.

    Each JSON file is the record a ``benchmarks/bench_*.py --out FILE`` run wrote
    (its last output line). Speeds are the median rounds; ratios are optimised /
    baseline speed, so above 1 is faster; "vs plain PyTorch reference" is reference
    time / lsslib time (median round, and process CPU time) against the issue-16
    reference of ``benchmarks/_reference.py``, and "convolution floor" the most that
    ratio could reach if everything but the convolutions took no time (records
    without them say "not run" / "not profiled"); memory is the CUDA allocator's peak on a
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
        "vs plain PyTorch reference",
        "convolution floor",
        "peak memory",
        "fraction of peak",
        "GPU targets",
        "command",
    ]
    folder = Path(records_dir)
    recs = (
        [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
        if folder.is_dir()
        else []
    )
    order = {"experts": 0, "distill": 1, "evaluate": 2}
    rows = sorted((_speed_row(r) for r in recs), key=lambda r: order[r["stage"]])
    return pd.DataFrame(rows, columns=cols)


def main(argv: list[str]) -> None:
    records = Path(argv[0] if argv else "benchmarks/records")
    tables = Path(argv[1] if len(argv) > 1 else "book/_generated/tables")
    speed = speed_table(records)
    write_table(speed.drop(columns=["device", "command"]), tables / "speed")
    write_table(speed[["stage", "configuration", "device", "command"]], tables / "speed_runs")
    print(f"{len(speed)} benchmark records -> {tables}/speed.md, speed_runs.md")


if __name__ == "__main__":
    main(sys.argv[1:])
