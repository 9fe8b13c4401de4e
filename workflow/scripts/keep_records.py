"""Copy a finished profile's results of record into records/PROFILE (small files only).

Usage: python workflow/scripts/keep_records.py RESULTS RECORDS [BOOK_DIR]
  e.g. python workflow/scripts/keep_records.py results/study records/study
       python workflow/scripts/keep_records.py results/cpu records/cpu book/_generated

Kept: every evaluation record (runs' eval/metrics.json, baselines/, evals/), every
distilled set (synset.json + its tensor file; snapshots are left out), the per-iteration
log.csv, the study stage's tables and figures (study/), the buffer index, Snakemake's
per-job benchmark TSVs and pipeline_time.txt, and with BOOK_DIR the summary stage's
book inputs (tables/, figures/, run_info.md). Not kept: expert trajectories,
checkpoints, executed notebooks and logs (rebuild them with the pipeline).
The destination is replaced as a whole, through a temporary folder, so that it is
complete or absent.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path


def keep(src: Path, dst: Path, book: Path | None = None) -> int:
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
    if book is not None:
        for f in sorted([*book.glob("tables/*"), *book.glob("figures/*"), book / "run_info.md"]):
            if f.is_file():
                out = tmp / f.relative_to(book)
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
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    book = Path(sys.argv[3]) if len(sys.argv) == 4 else None
    print(f"kept {keep(Path(sys.argv[1]), Path(sys.argv[2]), book)} files in {sys.argv[2]}")
