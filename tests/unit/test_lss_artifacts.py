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
    atomic_write_json,
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
    # nothing but the two files (no temporary leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors"]


def test_kind_mismatch_and_missing_files(tmp_path):
    save_artifact(tmp_path / "a", {"t": torch.ones(2)}, kind="expert")
    with pytest.raises(ArtifactError, match=r"a\.json.*kind 'expert', expected 'synset'"):
        load_artifact(tmp_path / "a", kind="synset")
    with pytest.raises(ArtifactError, match=r"b\.json.*missing.*rerun it"):
        load_artifact(tmp_path / "b", rebuild_hint="rerun it")
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"a\.safetensors.*tensor file missing"):
        load_artifact(tmp_path / "a")


def test_truncated_tensor_file_raises_naming_the_file(tmp_path):
    save_artifact(tmp_path / "t", sample_tensors(), kind="k")
    f = tmp_path / "t.safetensors"
    blob = f.read_bytes()
    f.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ArtifactError, match=re.escape(str(f)) + ".*truncated or corrupted"):
        load_artifact(tmp_path / "t")


def test_bit_flip_raises_naming_the_file(tmp_path):
    save_artifact(tmp_path / "t", sample_tensors(), kind="k")
    f = tmp_path / "t.safetensors"
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


def test_crash_between_tensors_and_json_is_refused_not_mixed(tmp_path, monkeypatch):
    """A crash while writing the JSON (after the tensors) must not yield a loadable mix."""
    old = {"t": torch.arange(4.0)}
    save_artifact(tmp_path / "a", old, kind="k")
    import lsslib.artifacts as art

    def crash(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(art, "atomic_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(tmp_path / "a", {"t": torch.arange(4.0) + 1}, kind="k")
    monkeypatch.undo()
    # the tensors were replaced but the old JSON's checksum no longer matches: refused,
    # never silently loaded as a mix of two versions
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(tmp_path / "a")
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_json_is_sorted_and_readable(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": Path("x")})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"a": "x", "b": 1}
    assert text.index('"a"') < text.index('"b"')


def test_no_pickle_in_lsslib():
    """Nothing in lsslib unpickles: no pickle module, torch.load only with weights_only=True."""
    src = Path(lsslib.__file__).resolve().parent
    files = sorted(src.glob("*.py"))
    assert len(files) >= 10
    for f in files:
        text = f.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", code, re.M), f
        assert "pickle.load" not in code, f
        assert "allow_pickle=True" not in code, f
        for m in re.finditer(r"torch\.load\(", code):
            call = _call_text(code, m.end() - 1)
            assert "weights_only=True" in call, (f, call)


def _call_text(code: str, open_paren: int) -> str:
    """The text of a call from its opening parenthesis to the matching closing one."""
    depth = 0
    for i in range(open_paren, len(code)):
        depth += {"(": 1, ")": -1}.get(code[i], 0)
        if depth == 0:
            return code[open_paren : i + 1]
    return code[open_paren:]


def test_call_text_helper():
    code = "x = torch.load(Path(a), weights_only=True) + 1"
    assert _call_text(code, code.index("(")) == "(Path(a), weights_only=True)"
