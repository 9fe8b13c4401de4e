"""Write clearly fake stand-ins for the pipeline's book/_generated/ files.

Usage: python tests/book/make_placeholder_generated.py DEST

Only for building a *temporary copy* of the book (tests, page development).
Never point DEST at the real book/_generated: every file says PLACEHOLDER.

The file list below is the contract between the summary stage and the book;
keep it in step with the pages (tests/book/test_build_fails_on_missing_figure.py
builds against exactly these files).
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

FIGURES = [
    "fig1_parameterisation",
    "fig3_schedule",
    "fig4_lss_vs_mtt",
    "fig5_rank_sweep",
    "expert_curves",
    "distill_curves",
    "grid_lss",
    "grid_mtt",
    "rank_accuracy_storage",
    "schedule_ablation",
    "eval_curves",
    "main_bars",
    "storage_accuracy",
]

# stem -> (header, rows); every cell of every row is fake.
TABLES = {
    "main": (
        ["method", "CIFAR-10 IPC 1 (%)", "source"],
        [
            ["MTT-LSS (r=4)", "PLACEHOLDER", "measured here"],
            ["pixel MTT", "PLACEHOLDER", "measured here"],
            ["random real subset", "PLACEHOLDER", "measured here"],
            ["full training set", "PLACEHOLDER", "measured here"],
        ],
    ),
    "rank_ablation": (
        ["r", "images per class", "floats used", "accuracy (%)"],
        [[str(r), "PLACEHOLDER", "PLACEHOLDER", "PLACEHOLDER"] for r in (2, 4, 8, 16)],
    ),
    "schedule_ablation": (
        ["schedule", "accuracy (%)"],
        [[s, "PLACEHOLDER"] for s in ("fixed", "linear", "stair")],
    ),
    "paper_claims": (
        ["claim", "paper", "anchor", "measured here"],
        [["average gain over baselines", "+9.9 % (paper)", "PLACEHOLDER", "PLACEHOLDER"]],
    ),
    "storage": (
        ["parameterisation", "rank r", "images/class at IPC 1 / 10 / 50", "budget used (%)"],
        [["lowrank", str(r), "PLACEHOLDER", "PLACEHOLDER"] for r in (2, 4, 8, 16)],
    ),
    "reproduce": (
        ["stage", "wall time (s)", "peak RSS (MB)"],
        [
            [s, "PLACEHOLDER", "PLACEHOLDER"]
            for s in (
                "buffers",
                "distill",
                "evaluate",
                "ablation_rank",
                "ablation_schedule",
                "summary",
            )
        ],
    ),
    "speed": (
        ["stage", "configuration", "device", "speed ratio", "GPU targets"],
        [
            [s, "PLACEHOLDER", "PLACEHOLDER", "PLACEHOLDER", "PLACEHOLDER"]
            for s in ("experts", "distill", "evaluate")
        ],
    ),
    "speed_summary": (
        ["stage", "configuration", "speed ratio", "GPU targets"],
        [
            [s, "PLACEHOLDER", "PLACEHOLDER", "PLACEHOLDER"]
            for s in ("experts", "distill", "evaluate")
        ],
    ),
    "speed_runs": (
        ["stage", "configuration", "device", "command"],
        [
            [s, "PLACEHOLDER", "PLACEHOLDER", "PLACEHOLDER"]
            for s in ("experts", "distill", "evaluate")
        ],
    ),
    "buffers": (
        ["experts", "epochs", "final test accuracy (%)"],
        [["PLACEHOLDER", "PLACEHOLDER", "PLACEHOLDER"]],
    ),
    "choices": (
        ["choice", "measured impact"],
        [["rank r", "PLACEHOLDER"], ["schedule", "PLACEHOLDER"]],
    ),
}

# The study page's inputs (made from records/study/ by book/assemble.py): stem -> header.
STUDY_TABLES = {
    "cells": ["cell", "set", "labels", "stored floats", "accuracy (%), ± over seeds"],
    "effects": ["effect", "difference (pp)", "95 % t CI (pp)", "verdict"],
    "best_iteration": ["cell", "final (%)", "best on validation (%)"],
    "best_iteration_seeds": ["cell", "seed", "final test (%)"],
    "crossarch": ["set", "distillation net", "other net"],
}

STUDY_FIGURES = ["effects", "cells_bars", "accuracy_iteration"]
# written by book/assemble.py from the study's CSVs (in a copy too): the short tables
STUDY_SHORT = ["effects_short", "cells_short"]

NOTEBOOKS = [
    "01_buffers",
    "02_distill",
    "03_evaluate",
    "04_ablation_rank",
    "05_ablation_schedule",
    "06_summary",
    "07_study",
]

RUN_INFO = """\
:::{admonition} PLACEHOLDER run
:class: warning
These are **placeholder** files written by `tests/book/make_placeholder_generated.py`,
not results. Profile: PLACEHOLDER · dataset: PLACEHOLDER · hardware: PLACEHOLDER ·
torch: PLACEHOLDER · date: PLACEHOLDER · total wall time: PLACEHOLDER.
:::
"""


def _png(text: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.5), dpi=60)
    ax.text(0.5, 0.6, "PLACEHOLDER", ha="center", va="center", fontsize=22, color="crimson")
    ax.text(0.5, 0.3, text, ha="center", va="center", fontsize=10)
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[list[str]]) -> str:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _notebook(stem: str, png: bytes):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    params = new_code_cell("ipc = 1  # PLACEHOLDER parameters cell")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        new_markdown_cell(
            f"# {stem} (PLACEHOLDER)\n\nA fake executed notebook, "
            "with a formula $x = U V$ so the page has math."
        ),
        params,
        new_code_cell(
            "print('PLACEHOLDER output')",
            execution_count=1,
            outputs=[new_output("stream", name="stdout", text="PLACEHOLDER output\n")],
        ),
        new_code_cell(
            "plot()",
            execution_count=2,
            outputs=[
                new_output(
                    "display_data",
                    data={"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"},
                )
            ],
        ),
    ]
    return nb


def write_placeholders(dest: Path) -> None:
    import nbformat

    dest = Path(dest)
    (dest / "figures").mkdir(parents=True, exist_ok=True)
    (dest / "tables").mkdir(parents=True, exist_ok=True)
    (dest / "notebooks").mkdir(parents=True, exist_ok=True)
    (dest / "run_info.md").write_text(RUN_INFO)
    (dest / "pipeline_time.txt").write_text("wall_seconds: PLACEHOLDER\npeak_rss_mb: PLACEHOLDER\n")
    for stem in FIGURES:
        (dest / "figures" / f"{stem}.png").write_bytes(_png(stem))
    for stem, (header, rows) in TABLES.items():
        (dest / "tables" / f"{stem}.md").write_text(_markdown_table(header, rows))
        (dest / "tables" / f"{stem}.csv").write_text(_csv(header, rows))
    study = dest / "study"
    study.mkdir(parents=True, exist_ok=True)
    for stem, header in STUDY_TABLES.items():
        rows = [["PLACEHOLDER"] * len(header)]
        (study / f"{stem}.md").write_text(_markdown_table(header, rows))
        (study / f"{stem}.csv").write_text(_csv(header, rows))
    for stem in STUDY_FIGURES:
        (study / f"{stem}.png").write_bytes(_png(stem))
    (study / "findings.md").write_text("- PLACEHOLDER finding.\n")
    (study / "study_info.md").write_text("PLACEHOLDER study run.\n")
    png = _png("notebook output")
    for stem in NOTEBOOKS:
        nbformat.write(_notebook(stem, png), dest / "notebooks" / f"{stem}.ipynb")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(argv[1]).resolve()
    real = (Path(__file__).resolve().parents[2] / "book" / "_generated").resolve()
    if dest == real:
        print(f"refusing to write placeholders into the real {real}", file=sys.stderr)
        return 2
    write_placeholders(dest)
    print(f"placeholders written to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
