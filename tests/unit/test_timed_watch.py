"""workflow/scripts/timed.py --watch: one live line per running stage from its log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import timed  # noqa: E402


def test_last_progress_is_the_last_bar_of_the_log(tmp_path):
    log = tmp_path / "distill_lss.log"
    log.write_text(
        "Executing Cell 3\n"
        "distillation:  10%|#   | 10/100 [00:01<00:09,  9.5it/s]\r"
        "distillation:  45%|####  | 45/100 [00:05<00:06,  9.1it/s, loss=0.5]\r"
        "Ending Cell 3\n"
    )
    assert (
        timed.last_progress(log)
        == "distillation: 45%|#### | 45/100 [00:05<00:06, 9.1it/s, loss=0.5]"
    )
    (tmp_path / "quiet.log").write_text("no bar here\n")
    assert timed.last_progress(tmp_path / "quiet.log") is None


def test_watch_prints_a_line_for_a_stage_that_logs_progress(tmp_path):
    logs = tmp_path / "logs"
    target = str(logs / "evaluate_lss.log")
    writer = (
        f"import time, pathlib; p = pathlib.Path({target!r}); p.parent.mkdir(exist_ok=True)\n"
        "for i in range(1, 4):\n"
        "    p.write_text(f'eval epochs:  {i}0%|#| {i}/10 [00:0{i}<00:09, 1.0epoch/s]')\n"
        "    time.sleep(0.6)\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "workflow" / "scripts" / "timed.py"),
            "--out",
            str(tmp_path / "time.txt"),
            "--watch",
            str(logs),
            "--watch-every",
            "0.5",
            "--",
            sys.executable,
            "-c",
            writer,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("[evaluate_lss]")]
    assert lines, out
    assert "eval epochs:" in lines[-1] and "/10 [" in lines[-1]
