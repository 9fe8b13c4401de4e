"""book/assemble.py: what it does to the book's inputs before a build.

* An executed notebook's progress bars (tqdm widgets and ``\\r``-redrawn stderr) end
  as one final line each, widget outputs are gone, and local paths become relative.
* The short speed table keeps stage, configuration, ratio and targets; commands in
  a table become inline code; the study's short tables keep the named columns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "book"))

import assemble  # noqa: E402

ROOT = Path("/work/checkout")
WIDGET = "application/vnd.jupyter.widget-view+json"


def _bar_chunks(n: int) -> list[dict]:
    return [
        {"output_type": "stream", "name": "stderr", "text": f"\rdistill: {i}%|##| {i}/{n}"}
        for i in range(1, n + 1)
    ]


def _notebook(tmp_path: Path) -> Path:
    tqdm_notice = (
        f"{ROOT}/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress "
        "not found. Please update jupyter and ipywidgets.\n"
        "  from .autonotebook import tqdm as notebook_tqdm\n"
    )
    outputs = [
        {"output_type": "stream", "name": "stderr", "text": tqdm_notice},
        {
            "output_type": "display_data",
            "data": {WIDGET: {"model_id": "abc"}, "text/plain": "expert epochs: 100%|##| 32/32"},
            "metadata": {},
        },
        {
            "output_type": "display_data",
            "data": {WIDGET: {"model_id": "def"}, "text/plain": "HBox(children=...)"},
            "metadata": {},
        },
        *_bar_chunks(200),
        {
            "output_type": "stream",
            "name": "stderr",
            "text": "\n/root/.venv/lib/python3.11/site-packages/torch/x.py:12: UserWarning: slow\n",
        },
        {
            "output_type": "stream",
            "name": "stdout",
            "text": f"wrote {ROOT}/results/cpu/runs/lss/synset.json\n",
        },
    ]
    nb = {
        "cells": [{"cell_type": "code", "source": "run()", "metadata": {}, "outputs": outputs}],
        "metadata": {"widgets": {"state": {}}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_progress_bars_end_as_one_line_without_widgets_or_local_paths(tmp_path):
    path = _notebook(tmp_path)
    assemble.clean_notebook(path, ROOT)
    nb = json.loads(path.read_text())
    outputs = nb["cells"][0]["outputs"]
    assert all(WIDGET not in o.get("data", {}) for o in outputs)
    assert "widgets" not in nb["metadata"]
    streams = [o for o in outputs if o["output_type"] == "stream"]
    assert [o["name"] for o in streams] == ["stderr", "stdout"], outputs
    stderr = streams[0]["text"]
    assert "expert epochs: 100%|##| 32/32" in stderr
    assert stderr.count("distill:") == 1 and "200/200" in stderr
    assert "\r" not in stderr
    text = json.dumps(outputs)
    assert "/root/" not in text and "/work/" not in text, text
    assert "wrote results/cpu/runs/lss/synset.json" in streams[1]["text"]
    assert "x.py:12: UserWarning: slow" in stderr
    assert "IProgress" not in stderr and "autonotebook" not in stderr


def test_speed_summary_commands_and_short_tables(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "speed.csv").write_text(
        "stage,configuration,optimised (median),speed ratio,GPU targets\n"
        'experts,"w64, 2 experts (DSA on)",1 img/s,"0.991x (1.034x best, 1.015x CPU time)",n/a\n'
    )
    (tables / "speed_runs.md").write_text(
        "| stage | command |\n|---|---|\n| experts | python b.py --quick --out x.json |\n"
    )
    assemble.speed_summary(tables)
    assemble.code_commands(tables)
    summary = (tables / "speed_summary.md").read_text().splitlines()
    assert summary[0] == "| stage | configuration | speed ratio | GPU targets |"
    assert summary[2] == "| experts | w64, 2 experts (DSA on) | 0.991x | n/a |"
    runs = (tables / "speed_runs.md").read_text()
    assert "| `python b.py --quick --out x.json` |" in runs

    study = tmp_path / "study"
    study.mkdir()
    (study / "effects.csv").write_text(
        "effect,cells (a − b),difference (pp),95 % t CI (pp),p,verdict\n"
        'a vs b,a − b,+3.6,"[+1.9, +5.3]",0.01,holds\n'
    )
    assemble.short_tables(study)
    short = (study / "effects_short.md").read_text().splitlines()
    assert short[0] == "| effect | difference (pp) | 95 % t CI (pp) | verdict |"
    assert short[2] == "| a vs b | +3.6 | [+1.9, +5.3] | holds |"
