"""Copy a finished profile's results of record into records/PROFILE (small files only).

Usage: python workflow/scripts/keep_records.py results/study records/study

Kept: every evaluation record (runs' eval/metrics.json, baselines/, evals/), every
distilled set (synset.json + its tensor file; snapshots are left out), the per-iteration
log.csv, the study stage's tables and figures (study/), the buffer index, Snakemake's
per-job benchmark TSVs and pipeline_time.txt. Not kept: expert trajectories,
checkpoints, executed notebooks and logs (rebuild them with the pipeline).
The destination is replaced as a whole, through a temporary folder, so that it is
complete or absent.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path


def keep(src: Path, dst: Path) -> int:
    if not (src / "buffers" / "buffer.json").is_file():
        raise SystemExit(f"{src}: no finished results (buffers/buffer.json missing)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    n = 0
    patterns = [
        "runs/*/eval/metrics.json",
        "runs/*/eval/accuracy.md",
        "runs/*/synset.json",
        "runs/*/synset.*.safetensors",
        "runs/*/log.csv",
        "baselines/*/metrics.json",
        "evals/*/metrics.json",
        "study/*",
        "benchmarks/*.tsv",
        "pipeline_time.txt",
    ]
    for pat in patterns:
        for f in sorted(src.glob(pat)):
            if f.is_file():
                out = tmp / f.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)
                n += 1
    shutil.copy2(src / "buffers" / "buffer.json", tmp / "buffer.json")
    readme = dst / "README.md"
    if readme.is_file():  # the provenance note is written by hand, kept across refreshes
        shutil.copy2(readme, tmp / "README.md")
    old = dst.with_name(f".{dst.name}.old")
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return n + 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(f"kept {keep(Path(sys.argv[1]), Path(sys.argv[2]))} files in {sys.argv[2]}")
