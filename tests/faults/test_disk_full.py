"""A full disk, simulated through :data:`lsslib.artifacts.free_bytes`: every stage
refuses before writing, saying how much it needs and how much is free."""

from __future__ import annotations

import os
import re

import pytest
import torch
from conftest import TINY_BUFFER, TINY_DISTILL, TINY_MODEL
from harness import run_child, write_tiny_cifar_archive

import lsslib.artifacts as art
from lsslib import data as lssdata
from lsslib.config import BufferConfig, DistillConfig, ModelConfig
from lsslib.distill import Distiller
from lsslib.evaluate import claim_out_dir
from lsslib.experts import ExpertBuffer, buffer_peak_bytes, train_experts
from lsslib.models import ConvNetSpec

NEED_FREE = re.compile(r"need about [\d.]+ MB .*, [\d.]+ MB free")


def _files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def disk_free(monkeypatch):
    """Set the free bytes every folder reports."""

    def set_free(n: int) -> None:
        monkeypatch.setattr(art, "free_bytes", lambda _folder: n)

    return set_free


def test_buffer_training_refused_on_a_full_disk(tmp_path, tiny_data, disk_free, outcome):
    disk_free(10_000)
    folder = tmp_path / "buffers"
    with pytest.raises(art.DiskFull, match=NEED_FREE) as err:
        train_experts(
            tiny_data,
            ModelConfig(**TINY_MODEL),
            BufferConfig(**TINY_BUFFER),
            folder,
            log=lambda _l: None,
        )
    assert "expert buffer (training peak)" in str(err.value)
    assert _files(folder) == []
    outcome(
        "full disk",
        "buffer training, 10 kB free",
        "refused before writing: " + NEED_FREE.search(str(err.value)).group(0),
    )


def test_buffer_disk_estimate_covers_the_measured_peak(tmp_path, tiny_data, monkeypatch, outcome):
    """The folder's size at every write point stays within the estimate, which is tight."""
    folder = tmp_path / "buffers"
    cfg = BufferConfig(**{**TINY_BUFFER, "num_experts": 3})
    sizes = []

    def measure(_point, _path):
        sizes.append(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))

    monkeypatch.setattr(art, "fault_hook", measure)
    train_experts(tiny_data, ModelConfig(**TINY_MODEL), cfg, folder, log=lambda _l: None)
    spec = ConvNetSpec.from_config(ModelConfig(**TINY_MODEL), channels=3, side=8, num_classes=4)
    est = buffer_peak_bytes(spec, cfg)
    payload = est - (1 << 20)  # the estimate less its metadata allowance
    assert max(sizes) <= est
    assert payload <= max(sizes) <= payload * 1.25, (payload, max(sizes))
    final = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    outcome(
        "full disk",
        "buffer peak: measured vs estimated payload",
        f"peak {max(sizes)} B measured, {payload} B estimated (finished buffer {final} B)",
    )


def test_distillation_refused_on_a_full_disk(
    tmp_path, tiny_buffer_dir, tiny_data, disk_free, outcome
):
    disk_free(20_000)
    out = tmp_path / "run"
    cfg = DistillConfig(**TINY_DISTILL)
    with pytest.raises(art.DiskFull, match=NEED_FREE) as err:
        Distiller(
            cfg,
            tiny_data.config,
            ExpertBuffer(tiny_buffer_dir),
            tiny_data.x_train,
            tiny_data.y_train,
            out,
        )
    assert "checkpoint" in str(err.value) and "x2" in str(err.value)
    assert _files(out) == []
    outcome(
        "full disk", "distillation, 20 kB free", "refused before writing (checkpoint x2 + synset)"
    )


def test_distillation_refused_through_the_environment_hook(
    tmp_path, tiny_buffer_dir, tiny_data, outcome
):
    out = tmp_path / "run"

    def body():
        os.environ["LSS_FAKE_FREE_BYTES"] = "1000"
        cfg = DistillConfig(**TINY_DISTILL)
        Distiller(
            cfg,
            tiny_data.config,
            ExpertBuffer(tiny_buffer_dir),
            tiny_data.x_train,
            tiny_data.y_train,
            out,
        )

    assert run_child(body) == 1  # raised (DiskFull: traceback on stderr)
    assert _files(out) == []
    outcome("full disk", "distillation, LSS_FAKE_FREE_BYTES=1000 (child)", "refused before writing")


def test_evaluation_refused_on_a_full_disk(tmp_path, disk_free, outcome):
    disk_free(1_000)
    with pytest.raises(art.DiskFull, match=NEED_FREE):
        claim_out_dir(tmp_path / "eval")
    assert _files(tmp_path / "eval") == []
    outcome("full disk", "evaluation outputs, 1 kB free", "refused before any work")


def test_data_cache_refused_before_unpacking(tmp_path, monkeypatch, disk_free, outcome):
    root = tmp_path / "root"
    root.mkdir()
    write_tiny_cifar_archive(root)
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    disk_free(5_000)
    with pytest.raises(art.DiskFull, match=r"unpacked cifar10-jpeg.tar.xz.*" + NEED_FREE.pattern):
        lssdata.load_split_uint8("cifar10", "train", str(root))
    assert _files(tmp_path / "cache") == []
    outcome("full disk", "data cache: unpacking the archive, 5 kB free", "refused before unpacking")
    disk_free(10**12)
    x, _, _ = lssdata.load_split_uint8("cifar10", "train", str(root))
    assert x.shape[0] == 4


def test_save_artifact_refused_and_previous_kept(tmp_path, disk_free, outcome):
    art.save_artifact(tmp_path / "a", {"t": torch.arange(3.0)}, kind="k")
    before = _files(tmp_path)
    disk_free(100)
    with pytest.raises(art.DiskFull, match=NEED_FREE):
        art.save_artifact(tmp_path / "a", {"t": torch.arange(1000.0)}, kind="k")
    assert _files(tmp_path) == before
    t, _ = art.load_artifact(tmp_path / "a", kind="k")
    assert torch.equal(t["t"], torch.arange(3.0))
    outcome("full disk", "any artifact write, 100 B free", "refused, previous artifact intact")
