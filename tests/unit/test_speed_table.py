"""The book's speed tables (benchmarks/speed_table.py) read the benchmark records."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import speed_table as summary  # noqa: E402  (benchmarks/ is scripts, not a package)

RECORDS = ROOT / "benchmarks" / "records"


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
        vs_ref = rec.get("vs_reference") or {}
        for name, r in vs_ref.items():
            assert f"{name} {r['speed_median']}x ({r['speed_cpu_time']}x CPU time)" in (
                row["vs plain PyTorch reference"].item()
            )
        if not vs_ref:
            assert row["vs plain PyTorch reference"].item() == "not run"
        for name, f in (rec.get("convolution_floor_vs_reference") or {}).items():
            assert f"{name} {f}x" in row["convolution floor"].item()
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
