"""Two writers of one folder: the second is refused at once, naming the holder's pid
and command; the lock dies with its process; a cold cache is filled once."""

from __future__ import annotations

import os
import signal
import tarfile
import time

import pytest
import torch
from conftest import TINY_BUFFER, TINY_DISTILL, TINY_MODEL
from harness import hold_in_child, start_child, write_tiny_cifar_archive

from lsslib import data as lssdata
from lsslib.config import BufferConfig, DistillConfig, ModelConfig
from lsslib.distill import Distiller
from lsslib.evaluate import claim_out_dir
from lsslib.experts import ExpertBuffer, train_experts
from lsslib.locking import LockBusy

PIXELS = {"parameterisation": "pixels", "lr_factors": None, "subspaces": 1}


def _distiller(buffer_dir, out, data, **changes):
    cfg = DistillConfig(**{**TINY_DISTILL, **changes})
    return Distiller(cfg, data.config, ExpertBuffer(buffer_dir), data.x_train, data.y_train, out)


def test_lss_and_pixel_runs_into_one_folder(tmp_path, tiny_buffer_dir, tiny_data, outcome):
    out = tmp_path / "run"
    pid, kill = hold_in_child(lambda ready: _distiller(tiny_buffer_dir, out, tiny_data))
    try:
        with pytest.raises(LockBusy) as err:
            _distiller(tiny_buffer_dir, out, tiny_data, **PIXELS)
        msg = str(err.value)
        assert f"pid {pid}" in msg and "command:" in msg and "out_dir=" in msg, msg
        assert "pytest" in msg or os.path.basename(__file__) in msg or "python" in msg, msg
    finally:
        kill()
    outcome(
        "two writers",
        "LSS run holds out_dir, pixel run starts",
        f"refused naming pid {pid} and its command",
    )
    # the holder was SIGKILLed: its lock went with it, the next run proceeds
    run = _distiller(tiny_buffer_dir, out, tiny_data, **PIXELS)
    assert run.iteration == 0
    del run
    outcome(
        "two writers", "holder SIGKILLed, next distillation starts", "proceeds (lock died with it)"
    )


def test_two_buffer_trainings_into_one_folder(tmp_path, tiny_data, outcome):
    folder = tmp_path / "buffers"
    cfg = BufferConfig(**TINY_BUFFER)

    def train_and_stall(ready):
        def progress(done, total):
            ready()
            signal.pause()  # stall mid-training, holding the folder

        train_experts(
            tiny_data,
            ModelConfig(**TINY_MODEL),
            cfg,
            folder,
            progress=progress,
            log=lambda _l: None,
        )

    pid, kill = hold_in_child(train_and_stall)
    try:
        with pytest.raises(LockBusy, match=rf"buffer_dir=.*pid {pid} \(command:"):
            train_experts(tiny_data, ModelConfig(**TINY_MODEL), cfg, folder, log=lambda _l: None)
    finally:
        kill()
    outcome(
        "two writers",
        "buffer training holds buffer_dir, a second starts",
        f"refused naming pid {pid}",
    )
    buf = train_experts(tiny_data, ModelConfig(**TINY_MODEL), cfg, folder, log=lambda _l: None)
    buf.verify()
    outcome(
        "two writers",
        "holder SIGKILLed mid-epoch, training rerun",
        "resumes and completes, verified",
    )


def test_two_evaluations_into_one_folder(tmp_path, outcome):
    out = tmp_path / "eval"
    pid, kill = hold_in_child(lambda ready: claim_out_dir(out))
    try:
        with pytest.raises(LockBusy, match=rf"out_dir=.*evaluation.*pid {pid}"):
            claim_out_dir(out)
    finally:
        kill()
    lock = claim_out_dir(out)
    lock.release()
    assert not (out / ".lsslib.lock").exists()  # removed on a normal release
    outcome("two writers", "evaluation holds out_dir, a second starts", f"refused naming pid {pid}")


def test_cold_cache_unpack_and_decode_by_two_processes(tmp_path, monkeypatch, outcome):
    root = tmp_path / "root"
    root.mkdir()
    write_tiny_cifar_archive(root)
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    real_extract = tarfile.TarFile.extractall

    def slow_extract(self, *args, **kwargs):  # widen the window in which the two overlap
        time.sleep(0.3)
        out = real_extract(self, *args, **kwargs)
        time.sleep(0.6)
        return out

    monkeypatch.setattr(tarfile.TarFile, "extractall", slow_extract)

    def load():
        x, y, _ = lssdata.load_split_uint8("cifar10", "train", str(root))
        torch.save  # noqa: B018 - nothing to return across fork; the cache is checked below
        assert x.shape == (4, 3, 4, 4) and y.tolist() == [0, 0, 1, 1]

    first = start_child(load)
    time.sleep(0.2)
    second = start_child(load)
    codes = first(), second()
    assert codes == (0, 0), codes
    cache = tmp_path / "cache"
    unpacked = [p for p in cache.iterdir() if p.is_dir()]
    assert len(unpacked) == 1 and (unpacked[0] / ".complete").is_file()
    assert len(list(cache.glob("cifar10_*_train.json"))) == 1
    assert not list(cache.glob(".*partial*")) and not list(cache.glob(".*.lock"))
    outcome(
        "two writers", "two processes on a cold cache (unpack + decode)", "both succeed, one entry"
    )
