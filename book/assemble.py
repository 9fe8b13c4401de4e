"""Put the book's inputs in order before a build (called by book/build.sh).

Usage: python book/assemble.py ROOT

ROOT is the repository (or a test's copy of the book); the inputs are
ROOT/book/_generated/. In order:

1. No pipeline results there (no run_info.md) but records of the ``cpu`` profile in
   ROOT/records/cpu/: the tables, the run box and every figure are made from those
   records (the committed results of a real run; the figures redrawn with
   ``lsslib.plots``), and the appendix gets the stage notebooks as committed
   (not executed). Nothing is trained.
2. The study's records in ROOT/records/study/: notebooks/07_study.ipynb is executed on
   them (it only reads them) into _generated/notebooks/07_study.ipynb, writing the
   study page's tables and figures into _generated/study/, plus the readers' plots
   (:func:`lsslib.summary.study_figures`) and short versions of the widest tables
   (:data:`SHORT_TABLES`).
3. ``tables/speed_summary.md``: the short speed table (stage, configuration, speed
   ratio, GPU targets) from ``tables/speed.csv``; the page folds the full one. Cells
   of a ``command`` column become inline code (copyable as they are).
4. The executed notebooks are cleaned for reading: a progress bar keeps its final
   line, widget outputs are dropped, and local paths become relative.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

STAGE_NOTEBOOKS = [
    "01_buffers",
    "02_distill",
    "03_evaluate",
    "04_ablation_rank",
    "05_ablation_schedule",
    "06_summary",
]
WIDGET = "application/vnd.jupyter.widget-view+json"
#: absolute paths of this machine as they appear in outputs (warnings, tracebacks)
LOCAL_PATH = re.compile(r"(?:/(?:root|home|work|tmp|Users|opt|usr|var)/)[^\s'\"]*")


# ----------------------------------------------------------------- notebook outputs


#: stderr lines that only say how the notebook ran (tqdm without ipywidgets under
#: papermill), with the source line Python prints after a warning
NOISE = re.compile(
    r"^.*TqdmWarning: IProgress not found.*\n(?:\s+from \.autonotebook import .*\n)?", re.M
)


def _final_line(text: str) -> str:
    """What a terminal would show last of a stream that redraws lines with ``\\r``."""
    lines = []
    for line in text.split("\n"):
        lines.append(line.split("\r")[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r"))
    return "\n".join(lines)


def _relative(text: str, root: Path) -> str:
    """Local absolute paths as paths relative to the repository (or their last part)."""
    text = text.replace(str(root) + "/", "")

    def short(m: re.Match) -> str:
        return "…/" + Path(m.group(0)).name

    return LOCAL_PATH.sub(short, text)


def clean_outputs(outputs: list[dict], root: Path) -> list[dict]:
    """A cell's outputs for the book: no widgets, progress streams as their last state
    (consecutive stderr chunks merged first), no tqdm notice about widgets, no local
    paths."""
    kept: list[dict] = []
    for out in outputs:
        data = out.get("data", {})
        if WIDGET in data:  # a tqdm.auto widget; its text/plain twin is kept if any
            text = data.get("text/plain", "")
            if not text or "%|" not in "".join(text):
                continue
            out = {"output_type": "stream", "name": "stderr", "text": "".join(text) + "\n"}
        if out.get("output_type") == "stream":
            text = "".join(out.get("text", ""))
            if kept and kept[-1].get("output_type") == "stream" and kept[-1]["name"] == out["name"]:
                kept[-1]["text"] += text
                continue
            out = dict(out, text=text)
        kept.append(out)
    for out in kept:
        if out.get("output_type") == "stream":
            out["text"] = _relative(NOISE.sub("", _final_line(out["text"])), root)
        for key in ("text/plain", "text/markdown", "text/html"):
            if key in out.get("data", {}):
                value = out["data"][key]
                out["data"][key] = _relative("".join(value), root)
        if out.get("output_type") == "error":
            out["traceback"] = [_relative(t, root) for t in out.get("traceback", [])]
    return kept


def clean_notebook(path: Path, root: Path) -> None:
    """Clean every code cell's outputs of an executed notebook, in place."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = clean_outputs(cell.get("outputs", []), root)
    nb.get("metadata", {}).pop("widgets", None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------ speed summary


#: the speed table's ratio columns, shown without their parenthesised variants
RATIOS = ("speed ratio", "vs plain PyTorch reference")


def speed_summary(tables: Path) -> None:
    """``speed_summary.md``: stage, configuration, speed ratio, the ratio against the
    plain PyTorch reference (where the table has it) and GPU targets of every row of
    ``speed.csv``, the ratios without their best and CPU-time variants."""
    src = tables / "speed.csv"
    if not src.is_file():
        return
    with open(src, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    wanted = ["stage", "configuration", "speed ratio", "vs plain PyTorch reference", "GPU targets"]
    cols = [c for c in wanted if rows and c in rows[0]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [re.sub(r" \([^)]*\)", "", r[c]) if c in RATIOS else r[c] for c in cols]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    (tables / "speed_summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def code_commands(tables: Path) -> None:
    """In every Markdown table with a ``command`` column, show those cells as code, so
    that a reader copies them as they are (a command is not prose)."""
    for md in sorted(tables.glob("*.md")):
        lines = md.read_text(encoding="utf-8").splitlines()
        if len(lines) < 3 or not lines[0].startswith("|"):
            continue
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        if "command" not in header:
            continue
        col = header.index("command")
        for i in range(2, len(lines)):
            cells = lines[i].strip().strip("|").split(" | ")
            if col < len(cells) and cells[col].strip() and "`" not in cells[col]:
                cells[col] = f"`{cells[col].strip()}`"
                lines[i] = "| " + " | ".join(c.strip() for c in cells) + " |"
        md.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------- the study

#: The study page's short tables: stem -> (source table, the columns shown, in order;
#: those the source lacks are left out). The full tables are folded below them.
SHORT_TABLES = {
    "effects_short": (
        "effects",
        ["effect", "difference (pp)", "95 % t CI (pp)", "verdict", "verdict after Holm"],
    ),
    "cells_short": (
        "cells",
        ["cell", "set", "labels", "stored floats", "accuracy (%), ± over seeds"],
    ),
}


def short_tables(study_dir: Path) -> None:
    """Write the study page's short tables (:data:`SHORT_TABLES`) from the full CSVs."""
    for stem, (source, wanted) in SHORT_TABLES.items():
        src = study_dir / f"{source}.csv"
        if not src.is_file():
            continue
        with open(src, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        cols = [c for c in wanted if rows and c in rows[0]]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r[c].replace("|", "/") for c in cols) + " |" for r in rows]
        (study_dir / f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def study(root: Path, gen: Path) -> None:
    """Execute 07_study on ROOT/records/study into the appendix and _generated/study/."""
    records, nb = root / "records" / "study", root / "notebooks" / "07_study.ipynb"
    if not (records / "study" / "effects.md").is_file() or not nb.is_file():
        return
    out = gen / "study"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (gen / "notebooks").mkdir(parents=True, exist_ok=True)
    # the study's provenance box and findings are the records' (written when it ran)
    for name in ("study_info.md", "findings.md"):
        shutil.copy2(records / "study" / name, out / name)
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(nb),
        str(gen / "notebooks" / "07_study.ipynb"),
        "-p",
        "results_dir",
        "records/study",
        "-p",
        "out_dir",
        "book/_generated/study",
        "--cwd",
        str(root),
        "--no-progress-bar",
    ]
    subprocess.run(cmd, check=True, cwd=root, capture_output=True, text=True)
    for name in ("study_info.md", "findings.md"):
        shutil.copy2(records / "study" / name, out / name)
    from lsslib import summary

    summary.study_figures(records, "study", out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1]).resolve()
    gen = root / "book" / "_generated"
    if not (gen / "run_info.md").is_file() and (root / "records" / "cpu" / "run_info.md").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from records_book import from_records

        from_records(root, gen)
        print("book/assemble.py: no pipeline results in book/_generated; made from records/cpu")
    study(root, gen)
    short_tables(gen / "study")
    speed_summary(gen / "tables")
    code_commands(gen / "tables")
    for nb in sorted((gen / "notebooks").glob("*.ipynb")):
        clean_notebook(nb, root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
