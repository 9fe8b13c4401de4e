"""The book's benchmark and timing tables (lsslib.summary) read what the runs wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lsslib import summary

RECORDS = Path(__file__).resolve().parents[2] / "benchmarks" / "records"


def _records() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))}


def test_speed_table_has_one_row_per_record_with_its_ratios():
    recs = _records()
    assert recs, "benchmarks/records holds no records"
    df = summary.speed_table(RECORDS)
    assert len(df) == len(recs)
    order = {"experts": 0, "distill": 1, "evaluate": 2}
    assert list(df["stage"]) == sorted(df["stage"], key=order.__getitem__)
    for rec in recs.values():
        row = df[df["command"] == rec["command"]]
        assert len(row) == 1, rec["command"]
        ratio = row["speed ratio"].item()
        rat = rec["ratios"]
        if rec["bench"] == "experts":
            assert ratio.startswith(f"{rat['together_vs_one_at_a_time_median']}x ")
        elif rec["bench"] == "evaluate":
            assert ratio.startswith(f"{rat['together_vs_sequential_median']}x ")
        else:
            assert f"checkpointed {rat['checkpointed']['speed_vs_unrolled_median']}x" in ratio
        assert rec["date_utc"][:10] in row["device"].item()
        assert rec["torch"] in row["device"].item()
        assert row["GPU targets"].item() == "n/a (CPU run)"
        tuned = "malloc not tuned" not in row["configuration"].item()
        assert tuned == rec["malloc_tuned"]


def test_speed_table_marks_gpu_targets(tmp_path):
    rec = _records()["cpu_experts_w128.json"]
    rec = {**rec, "device": "cuda", "device_string": "NVIDIA H100 80GB HBM3"}
    rec["gpu_targets"] = {"together_ge_50k_img_s": True, "together_ge_5x_one_at_a_time": False}
    (tmp_path / "gpu_experts.json").write_text(json.dumps(rec))
    row = summary.speed_table(tmp_path).iloc[0]
    assert row["GPU targets"] == "together_ge_50k_img_s: pass, together_ge_5x_one_at_a_time: FAIL"
    assert row["device"].startswith("NVIDIA H100 80GB HBM3; torch ")


def test_speed_table_distill_memory_basis_follows_the_device(tmp_path):
    rec = _records()["cpu_distill_w128.json"]
    shutil.copy(RECORDS / "cpu_distill_w128.json", tmp_path / "a.json")
    cpu_row = summary.speed_table(tmp_path).iloc[0]
    assert "of unrolled's added RSS" in cpu_row["peak memory"]
    (tmp_path / "a.json").write_text(json.dumps({**rec, "device": "cuda", "gpu_targets": {}}))
    gpu_row = summary.speed_table(tmp_path).iloc[0]
    assert "of unrolled's peak" in gpu_row["peak memory"]


def test_speed_table_empty_and_unknown(tmp_path):
    assert summary.speed_table(tmp_path / "missing").empty
    (tmp_path / "x.json").write_text(
        json.dumps({**_records()["cpu_experts_w128.json"], "bench": "zca"})
    )
    with pytest.raises(ValueError, match="bench='zca'"):
        summary.speed_table(tmp_path)


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
