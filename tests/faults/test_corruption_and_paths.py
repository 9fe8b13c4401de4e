"""Corrupted files are refused by name and left untouched; a run's identity does not
depend on how its paths are spelled or where its results folder lies."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_BUFFER, TINY_DISTILL, TINY_MODEL
from harness import count_ops, run_child

from lsslib.artifacts import ArtifactError, load_artifact, read_metadata
from lsslib.config import BufferConfig, DataConfig, DistillConfig, ModelConfig
from lsslib.distill import Distiller
from lsslib.experts import ExpertBuffer, train_experts
from lsslib.synset import load_synset


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _tensor_file(stem: Path) -> Path:
    return stem.with_name(read_metadata(stem)["tensor_file"])


def _distiller(buffer_dir, out, data, **changes):
    cfg = DistillConfig(**{**TINY_DISTILL, **changes})
    return Distiller(cfg, data.config, ExpertBuffer(buffer_dir), data.x_train, data.y_train, out)


@pytest.fixture
def buffer_copy(tmp_path, tiny_buffer_dir) -> Path:
    dst = tmp_path / "buffers"
    shutil.copytree(tiny_buffer_dir, dst)
    return dst


def test_truncated_expert_is_not_reused(buffer_copy, tiny_data, outcome):
    f = _tensor_file(buffer_copy / "expert_001")
    f.write_bytes(f.read_bytes()[:100])
    before = _snapshot(buffer_copy)
    with pytest.raises(ArtifactError, match=rf"{f.name}: sha256 does not match.*expert_NNN"):
        train_experts(
            tiny_data,
            ModelConfig(**TINY_MODEL),
            BufferConfig(**TINY_BUFFER),
            buffer_copy,
            log=lambda _l: None,
        )
    assert _snapshot(buffer_copy) == before
    outcome(
        "corrupted", "finished buffer with a truncated expert", "refused naming the file, untouched"
    )
    # the fix the message gives: delete the index and the damaged expert; only it is retrained
    (buffer_copy / "buffer.json").unlink()
    for p in buffer_copy.glob("expert_001.*"):
        p.unlink()
    good = before[_tensor_file(buffer_copy / "expert_000").name]
    buf = train_experts(
        tiny_data,
        ModelConfig(**TINY_MODEL),
        BufferConfig(**TINY_BUFFER),
        buffer_copy,
        log=lambda _l: None,
    )
    buf.verify()
    assert _tensor_file(buffer_copy / "expert_000").read_bytes() == good
    outcome(
        "corrupted", "... after deleting the index and that expert", "only it retrained, verified"
    )


@pytest.mark.parametrize(
    "damage", ["bit flip in tensors", "truncated JSON", "tensor_file outside the folder"]
)
def test_damaged_checkpoint_is_refused_and_left(
    tmp_path, tiny_buffer_dir, tiny_data, damage, outcome
):
    out = tmp_path / "run"
    run = _distiller(tiny_buffer_dir, out, tiny_data, iterations=2)
    run.run()
    del run
    (out / "synset.json").unlink()  # as if killed before the set was written
    j = out / "checkpoint.json"
    if damage == "bit flip in tensors":
        f = _tensor_file(out / "checkpoint")
        blob = bytearray(f.read_bytes())
        blob[-5] ^= 0x01
        f.write_bytes(bytes(blob))
        match = "sha256"
    elif damage == "truncated JSON":
        j.write_text(j.read_text()[:50])
        match = "not valid JSON"
    else:
        meta = json.loads(j.read_text())
        meta["tensor_file"] = "../../etc/passwd"
        j.write_text(json.dumps(meta))
        match = "not a tensor file of this artifact"
    before = _snapshot(out)
    with pytest.raises(ArtifactError, match=match):
        _distiller(tiny_buffer_dir, out, tiny_data, iterations=2)
    after = _snapshot(out)
    assert after == before, set(before) ^ set(after)
    outcome(
        "corrupted", f"distillation checkpoint: {damage}", f"refused ({match}), files untouched"
    )


def test_truncated_synset_is_refused(tmp_path, tiny_buffer_dir, tiny_data, outcome):
    out = tmp_path / "run"
    _distiller(tiny_buffer_dir, out, tiny_data, iterations=2).run()
    f = _tensor_file(out / "synset")
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(ArtifactError, match="truncated or corrupted.*Rerun the distillation"):
        load_synset(out / "synset")
    outcome("corrupted", "truncated synthetic set", "refused naming the file")


def _distill(buffer_dir, out, data) -> None:
    _distiller(buffer_dir, out, data).run()


def _kill_midway(buffer_dir, out, data, tmp: Path) -> int:
    """Run until just after the second checkpoint's commit, killed there; returns its iteration."""
    ops = count_ops(lambda: _distill(buffer_dir, tmp / "probe", data), tmp)
    k = [i for i, op in enumerate(ops, 1) if op == "replace checkpoint.json"][1]
    assert run_child(lambda: _distill(buffer_dir, out, data), kill_after=k) == -9
    return int(read_metadata(out / "checkpoint")["iteration"])


def _same_result(a: Path, b: Path) -> None:
    ta, _ = load_artifact(a / "synset", kind="synset")
    tb, _ = load_artifact(b / "synset", kind="synset")
    assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_relative_then_absolute_buffer_path_resumes(
    tmp_path, buffer_copy, tiny_data, monkeypatch, outcome
):
    ref = tmp_path / "ref"
    _distill(buffer_copy, ref, tiny_data)
    monkeypatch.chdir(tmp_path)
    it = _kill_midway(Path("buffers"), Path("cut"), tiny_data, tmp_path)
    run = _distiller(buffer_copy.resolve(), (tmp_path / "cut").resolve(), tiny_data)
    assert run.iteration == it > 0
    run.run()
    del run
    _same_result(ref, tmp_path / "cut")
    outcome(
        "paths",
        "killed with relative buffer path, resumed with absolute",
        f"resumed at {it}, bitwise",
    )


def test_results_folder_copied_elsewhere_resumes(tmp_path, buffer_copy, tiny_data, outcome):
    ref = tmp_path / "ref"
    _distill(buffer_copy, ref, tiny_data)
    results = tmp_path / "results"
    shutil.move(buffer_copy, results / "buffers")
    it = _kill_midway(results / "buffers", results / "run", tiny_data, tmp_path)
    moved = tmp_path / "elsewhere" / "results"
    shutil.copytree(results, moved)
    run = _distiller(moved / "buffers", moved / "run", tiny_data)
    assert run.iteration == it > 0
    run.run()
    del run
    _same_result(ref, moved / "run")
    outcome("paths", "results folder copied elsewhere mid-run", f"resumed at {it}, bitwise")


def test_data_root_spelling_does_not_change_identity(
    tmp_path, buffer_copy, tiny_data, monkeypatch, outcome
):
    """The data path is no part of a buffer's or a run's identity; the data's content is."""
    from dataclasses import replace

    data = replace(
        tiny_data, config=DataConfig(dataset="cifar10", normalisation="none", data_root="/a/b/../b")
    )
    buf = train_experts(
        data,
        ModelConfig(**TINY_MODEL),
        BufferConfig(**TINY_BUFFER),
        buffer_copy,
        log=lambda _l: None,
    )
    assert buf.meta["config"]["data"]["data_root"] is None  # built without one: reused all the same
    out = tmp_path / "run"
    _distiller(buffer_copy, out, tiny_data, iterations=2).run()
    (out / "synset.json").unlink()
    run = Distiller(
        DistillConfig(**{**TINY_DISTILL, "iterations": 2}),
        data.config,
        ExpertBuffer(buffer_copy),
        data.x_train,
        data.y_train,
        out,
    )
    assert run.iteration == 2
    del run
    outcome(
        "paths",
        "data_root spelled differently (buffer reuse, resume)",
        "accepted: identity is content",
    )
    # but other data (one image changed) is another run, and the refusal names the field
    x = tiny_data.x_train.clone()
    x[0, 0, 0, 0] += 1
    with pytest.raises(ArtifactError, match=r"data_digest: '[0-9a-f]+' -> '[0-9a-f]+'"):
        Distiller(
            DistillConfig(**{**TINY_DISTILL, "iterations": 2}),
            data.config,
            ExpertBuffer(buffer_copy),
            x,
            tiny_data.y_train,
            out,
        )
    with pytest.raises(ArtifactError, match=r"distill\.lr_lr: 1e-05 -> 2e-05"):
        _distiller(buffer_copy, out, tiny_data, iterations=2, lr_lr=2e-5)
    outcome(
        "paths", "other data / other lr_lr on resume", "refused naming data_digest / distill.lr_lr"
    )
    assert os.path.isdir(out)
