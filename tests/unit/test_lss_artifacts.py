"""Artifacts: safetensors + JSON round trip, corruption, schema, atomic writes, no pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import lsslib
from lsslib.artifacts import (
    SCHEMA_VERSION,
    ArtifactError,
    atomic_path,
    load_artifact,
    read_metadata,
    save_artifact,
)


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "i64": torch.arange(7),
        "u8": torch.randint(0, 256, (2, 3), generator=g, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 2),
        "view": torch.arange(12.0).view(3, 4).t(),  # non-contiguous
    }


def _tensor_file(stem: Path) -> Path:
    """The tensor file that ``stem.json`` commits."""
    return stem.with_name(read_metadata(stem)["tensor_file"])


def test_round_trip(tmp_path):
    tensors = sample_tensors()
    jpath = save_artifact(
        tmp_path / "a", tensors, kind="thing", config={"x": 1, "y": [1, 2]}, extra={"note": "hi"}
    )
    assert jpath == tmp_path / "a.json"
    back, meta = load_artifact(tmp_path / "a", kind="thing")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["config"] == {"x": 1, "y": [1, 2]}
    assert meta["note"] == "hi"
    assert meta["lsslib_version"] == lsslib.__version__
    assert meta["torch_version"] == torch.__version__
    assert read_metadata(tmp_path / "a")["kind"] == "thing"
    # nothing but the two files (no temporary leftovers, no lock file); the tensor file is
    # named by its content's sha256 and recorded in the JSON
    assert meta["tensor_file"] == f"a.{meta['sha256'][:12]}.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.json", meta["tensor_file"]])


def test_kind_mismatch_and_missing_files(tmp_path):
    save_artifact(tmp_path / "a", {"t": torch.ones(2)}, kind="expert")
    with pytest.raises(ArtifactError, match=r"a\.json.*kind 'expert', expected 'synset'"):
        load_artifact(tmp_path / "a", kind="synset")
    with pytest.raises(ArtifactError, match=r"b\.json.*missing.*rerun it"):
        load_artifact(tmp_path / "b", rebuild_hint="rerun it")
    _tensor_file(tmp_path / "a").unlink()
    with pytest.raises(ArtifactError, match=r"a\.[0-9a-f]{12}\.safetensors.*tensor file missing"):
        load_artifact(tmp_path / "a")


def test_truncated_tensor_file_raises_naming_the_file(tmp_path):
    save_artifact(tmp_path / "t", sample_tensors(), kind="k")
    f = _tensor_file(tmp_path / "t")
    blob = f.read_bytes()
    f.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ArtifactError, match=re.escape(str(f)) + ".*truncated or corrupted"):
        load_artifact(tmp_path / "t")


def test_bit_flip_raises_naming_the_file(tmp_path):
    save_artifact(tmp_path / "t", sample_tensors(), kind="k")
    f = _tensor_file(tmp_path / "t")
    blob = bytearray(f.read_bytes())
    blob[-3] ^= 0x10  # one bit in the data section
    f.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match=re.escape(str(f)) + ".*sha256"):
        load_artifact(tmp_path / "t")


def test_other_schema_version_or_broken_json_raises(tmp_path):
    save_artifact(tmp_path / "s", {"t": torch.ones(1)}, kind="k")
    j = tmp_path / "s.json"
    meta = json.loads(j.read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    j.write_text(json.dumps(meta))
    with pytest.raises(
        ArtifactError, match=re.escape(str(j)) + f".*schema version {SCHEMA_VERSION + 1}"
    ):
        load_artifact(tmp_path / "s")
    del meta["schema_version"]
    j.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="schema version None"):
        read_metadata(tmp_path / "s")
    j.write_text('{"schema_version": 1, "kind": ')
    with pytest.raises(ArtifactError, match=re.escape(str(j)) + ".*not valid JSON"):
        read_metadata(tmp_path / "s")


def test_failed_write_leaves_previous_file_intact(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp != target
            tmp.write_bytes(b"new half-written")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # temporary file removed
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_crash_between_tensors_and_json_keeps_the_previous_artifact(tmp_path, monkeypatch):
    """A crash while writing the JSON (after the tensors) leaves the previous artifact,
    loadable and unchanged (tensors and JSON commit as one unit)."""
    old = {"t": torch.arange(4.0)}
    save_artifact(tmp_path / "a", old, kind="k")
    import lsslib.artifacts as art

    real = art.atomic_write_text

    def crash(path, text):
        if str(path).endswith(".json"):
            raise OSError("disk full")
        real(path, text)

    monkeypatch.setattr(art, "atomic_write_text", crash)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(tmp_path / "a", {"t": torch.arange(4.0) + 1}, kind="k")
    monkeypatch.undo()
    back, _ = load_artifact(tmp_path / "a")
    assert torch.equal(back["t"], old["t"])
    assert not list(tmp_path.glob(".*.tmp"))
    # the orphaned new tensor file is removed by the next write
    assert len(list(tmp_path.glob("a.*.safetensors"))) == 2
    save_artifact(tmp_path / "a", {"t": torch.arange(4.0) + 2}, kind="k")
    assert len(list(tmp_path.glob("a.*.safetensors"))) == 1
