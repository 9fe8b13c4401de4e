"""The book's timing tables (lsslib.summary) read what the runs wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsslib import summary

RECORDS = Path(__file__).resolve().parents[2] / "benchmarks" / "records"


def _records() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))}


def test_reproduce_table_sums_times_and_keeps_the_largest_peak(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\n"
    (tmp_path / "buffers.tsv").write_text(header + "10.04\t0:00:10\t1500.4\t5000\n")
    (tmp_path / "distill_lss.tsv").write_text(header + "20.0\t0:00:20\t1968.1\t5500\n")
    (tmp_path / "summary.tsv").write_text(header)  # still running: no row yet
    df = summary.reproduce_table(tmp_path)
    assert list(df["job"])[:2] == ["buffers", "distill_lss"]
    total = df.iloc[-1]
    assert total["job"].startswith("all jobs")
    assert total["wall time (s)"] == pytest.approx(30.0)
    assert total["peak RSS (MB)"] == 1968
