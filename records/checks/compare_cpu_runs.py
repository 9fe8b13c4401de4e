"""Compare two results/cpu folders number by number (the redesign's bitwise check).

Usage: python records/checks/compare_cpu_runs.py BEFORE/results/cpu AFTER/results/cpu
Prints one row per run and baseline: synthetic-set tensors (torch.equal), tensors
added, evaluation accuracies and curve, syn_lr, storage, and the log without its
``seconds`` column (all compared exactly).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lsslib.artifacts import load_artifact


def _log(path: Path) -> list[str]:
    return [",".join(line.split(",")[:-1]) for line in path.read_text().splitlines()]


def _result(path: Path) -> dict:
    return json.loads(path.read_text())["result"]


def main(old: Path, new: Path) -> None:
    print("| run | synset tensors | tensors added | accuracies | curve | syn_lr | storage | log |")
    print("|---|---|---|---|---|---|---|---|")
    for run in sorted(p.name for p in (old / "runs").iterdir()):
        a, b = old / "runs" / run, new / "runs" / run
        ta, ma = load_artifact(a / "synset", kind="synset")
        tb, mb = load_artifact(b / "synset", kind="synset")
        same = all(torch.equal(ta[k], tb[k]) for k in ta)
        ra, rb = _result(a / "eval" / "metrics.json"), _result(b / "eval" / "metrics.json")
        cells = [
            same,
            ", ".join(sorted(set(tb) - set(ta))) or "-",
            ra["accuracies"] == rb["accuracies"],
            ra["curve_mean"] == rb["curve_mean"],
            ma["syn_lr"] == mb["syn_lr"],
            ma["storage"] == mb["storage"],
            _log(a / "log.csv") == _log(b / "log.csv"),
        ]
        print(f"| {run} | " + " | ".join(str(c) for c in cells) + " |")
    for name in sorted(p.name for p in (old / "baselines").iterdir()):
        ra = _result(old / "baselines" / name / "metrics.json")
        rb = _result(new / "baselines" / name / "metrics.json")
        same = (ra["accuracies"] == rb["accuracies"], ra["curve_mean"] == rb["curve_mean"])
        print(f"| baseline {name} | - | - | {same[0]} | {same[1]} | - | - | - |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
