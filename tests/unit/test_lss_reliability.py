"""Reliability, second pass: each defect of the issue has a test here that
fails on the library before the fix. Library modules that did not exist before
(``lsslib.locking``) are imported inside the tests, so that each test fails for its
own reason. The exhaustive cases (a kill after every file operation, ...) are in
``tests/faults``."""

from __future__ import annotations

import math
import os
import shutil
import signal
import stat
import sys
import tarfile
import time
import traceback
from pathlib import Path

import pytest
import torch

from lsslib import data as lssdata
from lsslib import experts as lssexperts
from lsslib.artifacts import ArtifactError, atomic_write_text, load_artifact, save_artifact
from lsslib.config import BufferConfig, DistillConfig, ModelConfig
from lsslib.distill import Distiller
from lsslib.experts import BufferMismatch, ExpertBuffer, train_experts

DISTILL = {
    "ipc": 1,
    "rank": 1,
    "subspaces": 2,
    "iterations": 2,
    "syn_steps": 2,
    "expert_epochs": 2,
    "max_start_epoch": 2,
    "lr_factors": 100.0,
    "lr_lr": 1e-5,
    "checkpoint_every": 1,
}
MODEL = {"net_depth": 2, "net_width": 4}
BUFFER = {
    "num_experts": 2,
    "train_epochs": 4,
    "batch_train": 16,
    "lr_teacher": 0.05,
    "experts_per_group": 2,
}


def _distiller(buffer, out, data, model_cfg=None, **changes):
    cfg = DistillConfig(**{**DISTILL, **changes})
    extra = {} if model_cfg is None else {"model_cfg": model_cfg}
    return Distiller(cfg, data.config, buffer, data.x_train, data.y_train, out, **extra)


def _fork(body, *, kill_at_replace: tuple[str, int] | None = None) -> int:
    """Run ``body()`` in a forked child; with ``kill_at_replace=(suffix, n)`` the child
    SIGKILLs itself right after its n-th ``os.replace`` onto a name ending in ``suffix``.
    Returns 0 / 1 (returned / raised) or the negative signal number."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if kill_at_replace is not None:
                real, seen = os.replace, []

                def replace(src, dst, *a, **k):
                    real(src, dst, *a, **k)
                    if str(dst).endswith(kill_at_replace[0]):
                        seen.append(dst)
                        if len(seen) == kill_at_replace[1]:
                            os.kill(os.getpid(), signal.SIGKILL)

                os.replace = replace
            body()
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _hold(body):
    """Fork a child that runs ``body()`` and keeps its result until killed; returns
    ``(pid, kill)`` once ``body`` has returned."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            keep = body()  # noqa: F841
            os.write(w, b"ok")
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            os.write(w, b"no")
        while True:
            signal.pause()
    os.close(w)
    ok = os.read(r, 2) == b"ok"
    os.close(r)

    def kill():
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    if not ok:
        kill()
        raise AssertionError("holder failed")
    return pid, kill


# --------------------------------------------------------------- 1, 6: one-unit commits
@pytest.mark.parametrize("tensor_replace", [2, 3])
def test_checkpoint_survives_a_kill_between_its_tensor_and_json_writes(
    tmp_path, lss_tiny_buffer, lss_tiny_data, tensor_replace
):
    """Killed right after the tensors of a later checkpoint were renamed into place, the
    run still resumes (before the fix: new tensors beside the old JSON, refused forever)."""
    out = tmp_path / "run"
    code = _fork(
        lambda: _distiller(lss_tiny_buffer, out, lss_tiny_data).run(),
        kill_at_replace=(".safetensors", tensor_replace),
    )
    assert code == -signal.SIGKILL
    run = _distiller(lss_tiny_buffer, out, lss_tiny_data)  # resumes: no sha256 refusal
    assert run.iteration in (0, 1)
    run.run()
    ref = _distiller(lss_tiny_buffer, tmp_path / "ref", lss_tiny_data)
    ref.run()
    a, _ = load_artifact(out / "synset", kind="synset")
    b, _ = load_artifact(tmp_path / "ref" / "synset", kind="synset")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_leftovers_of_killed_writes_are_removed_on_the_next_open(
    tmp_path, lss_tiny_buffer, lss_tiny_data
):
    out = tmp_path / "run"
    run = _distiller(lss_tiny_buffer, out, lss_tiny_data, iterations=1)
    run.run()
    del run
    debris = [
        out / ".checkpoint.json.k1ll3d_x.tmp",
        out / ".checkpoint.safetensors.abcd1234.tmp",
        out / ".checkpoint.0123456789ab.safetensors.qwertyui.tmp",
        out / "checkpoint.0123456789ab.safetensors",
        out / ".log.csv.zzzzzzzz.tmp",
    ]
    for p in debris:
        p.write_bytes(b"half-written")
    run = _distiller(lss_tiny_buffer, out, lss_tiny_data, iterations=1)
    assert run.iteration == 1
    run.checkpoint()
    assert [p.name for p in debris if p.exists()] == []


# ----------------------------------------------------------------- 2: one writer per folder
def test_a_second_writer_of_a_run_folder_is_refused_with_pid_and_command(
    tmp_path, lss_tiny_buffer, lss_tiny_data
):
    out = tmp_path / "run"
    pid, kill = _hold(lambda: _distiller(lss_tiny_buffer, out, lss_tiny_data))
    try:
        with pytest.raises(RuntimeError, match=rf"out_dir=.*pid {pid} \(command: .+\)"):
            _distiller(
                lss_tiny_buffer,
                out,
                lss_tiny_data,
                parameterisation="pixels",
                lr_factors=None,
                subspaces=1,
            )
    finally:
        kill()
    # the lock died with its SIGKILLed holder
    run = _distiller(lss_tiny_buffer, out, lss_tiny_data)
    assert run.iteration == 0


def test_a_second_buffer_writer_and_evaluation_writer_are_refused(tmp_path, lss_tiny_data):
    from lsslib.evaluate import claim_out_dir
    from lsslib.locking import LockBusy, hold_folder

    folder = tmp_path / "buffers"
    pid, kill = _hold(lambda: hold_folder(folder, param="buffer_dir", stage="expert buffer"))
    try:
        with pytest.raises(LockBusy, match=rf"buffer_dir=.*pid {pid}"):
            train_experts(lss_tiny_data, ModelConfig(**MODEL), BufferConfig(**BUFFER), folder)
        assert not list(folder.glob("group_*"))  # refused before training
    finally:
        kill()
    pid, kill = _hold(lambda: claim_out_dir(tmp_path / "eval"))
    try:
        with pytest.raises(LockBusy, match=rf"out_dir=.*evaluation.*pid {pid}"):
            claim_out_dir(tmp_path / "eval")
    finally:
        kill()


# ----------------------------------------------------- 3: model parameters honoured
def test_model_parameters_of_another_network_are_refused_naming_each_field(
    tmp_path, lss_tiny_buffer, lss_tiny_data
):
    out = tmp_path / "run"
    with pytest.raises(BufferMismatch) as err:
        _distiller(
            lss_tiny_buffer,
            out,
            lss_tiny_data,
            model_cfg=ModelConfig(net_depth=2, net_width=32, net_norm="none"),
        )
    msg = str(err.value)
    assert "net_width: the buffer has 4, the parameters ask for 32" in msg
    assert "net_norm: the buffer has 'instancenorm', the parameters ask for 'none'" in msg
    assert "net_depth" not in msg
    assert not out.exists()  # before any work
    run = _distiller(lss_tiny_buffer, out, lss_tiny_data, model_cfg=ModelConfig(**MODEL))
    assert run.spec == lss_tiny_buffer.spec


# ------------------------------------------------------------- 4: identity is content
def test_resume_does_not_depend_on_how_the_buffer_path_is_spelled(
    tmp_path, lss_tiny_buffer, lss_tiny_data, monkeypatch
):
    shutil.copytree(lss_tiny_buffer.folder, tmp_path / "buffers")
    monkeypatch.chdir(tmp_path)
    run = _distiller(ExpertBuffer("buffers"), Path("run"), lss_tiny_data, iterations=1)
    run.run()
    del run
    (tmp_path / "run" / "synset.json").unlink()
    again = _distiller(
        ExpertBuffer(tmp_path / "buffers"), tmp_path / "run", lss_tiny_data, iterations=1
    )
    assert again.iteration == 1


def test_a_refused_resume_names_the_fields_that_differ(tmp_path, lss_tiny_buffer, lss_tiny_data):
    out = tmp_path / "run"
    run = _distiller(lss_tiny_buffer, out, lss_tiny_data, iterations=1)
    run.run()
    del run
    with pytest.raises(
        ArtifactError, match=r"distill\.lr_lr: 1e-05 -> 2e-05.*distill\.syn_steps: 2 -> 3"
    ):
        _distiller(lss_tiny_buffer, out, lss_tiny_data, iterations=1, lr_lr=2e-5, syn_steps=3)


def test_config_diff_lists_dotted_keys():
    from lsslib.artifacts import config_diff

    a = {"data": {"dataset": "cifar10", "zca": {"eps": 0.1}}, "x": 1, "gone": 2}
    b = {"data": {"dataset": "svhn", "zca": {"eps": 0.2}}, "x": 1, "new": [3]}
    assert config_diff(a, b) == [
        "data.dataset: 'cifar10' -> 'svhn'",
        "data.zca.eps: 0.1 -> 0.2",
        "gone: 2 -> <missing>",
        "new: <missing> -> [3]",
    ]
    assert config_diff(a, a) == []


# ------------------------------------------------------------ 5: disk checks on the peak
def _fake_free(monkeypatch, free: int) -> None:
    total = 10**12
    monkeypatch.setattr(
        shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(total, total - free, free)
    )


def test_buffer_disk_check_counts_the_group_states(tmp_path, lss_tiny_data, monkeypatch):
    needs, sizes = [], []
    folder = tmp_path / "buffers"
    real_check, real_save = lssexperts.check_free_space, lssexperts.save_artifact

    def check(where, need, **kw):
        needs.append(need)
        real_check(where, need, **kw)

    def save(*a, **k):  # the folder's size right after every save (old group state still there)
        out = real_save(*a, **k)
        sizes.append(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))
        return out

    monkeypatch.setattr(lssexperts, "check_free_space", check)
    monkeypatch.setattr(lssexperts, "save_artifact", save)
    train_experts(
        lss_tiny_data, ModelConfig(**MODEL), BufferConfig(**BUFFER), folder, log=lambda _l: None
    )
    assert needs and max(sizes) <= needs[0], (needs, max(sizes))


def test_distillation_and_data_cache_check_the_disk_before_writing(
    tmp_path, lss_tiny_buffer, lss_tiny_data, monkeypatch
):
    _fake_free(monkeypatch, 20_000)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"distillation run.*need about [\d.]+ MB.*[\d.]+ MB free"):
        _distiller(lss_tiny_buffer, out, lss_tiny_data)
    assert not list(out.glob("checkpoint*"))
    root = tmp_path / "root"
    _tiny_archive(root)
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    _fake_free(monkeypatch, 1_000)
    with pytest.raises(OSError, match=r"unpacked cifar10-jpeg.tar.xz.*need about.*free"):
        lssdata.load_split_uint8("cifar10", "train", str(root))
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


# ------------------------------------------------------------------ 6: smaller findings
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_are_written_with_the_umask_modes(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_artifact(tmp_path / "a", {"t": torch.ones(2)}, kind="k")
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes and all(m == want for m in modes.values()), modes


def test_a_buffer_dir_that_is_a_file_fails_at_once(tmp_path, lss_tiny_data):
    f = tmp_path / "buffers"
    f.write_text("not a folder")
    epochs = []
    with pytest.raises(ValueError, match=r"invalid parameter buffer_dir=.*existing file"):
        train_experts(
            lss_tiny_data,
            ModelConfig(**MODEL),
            BufferConfig(**BUFFER),
            f,
            progress=lambda d, t: epochs.append(d),
            log=lambda _l: None,
        )
    assert epochs == []


def test_an_out_dir_that_is_a_file_fails_at_once(tmp_path, lss_tiny_buffer, lss_tiny_data):
    f = tmp_path / "run"
    f.write_text("not a folder")
    with pytest.raises(ValueError, match=r"invalid parameter out_dir=.*existing file"):
        _distiller(lss_tiny_buffer, f, lss_tiny_data)


def test_a_damaged_buffer_is_never_reported_complete(tmp_path, lss_tiny_buffer, lss_tiny_data):
    folder = tmp_path / "buffers"
    shutil.copytree(lss_tiny_buffer.folder, folder)
    (f,) = folder.glob("expert_001*.safetensors")
    f.write_bytes(f.read_bytes()[:64])
    lines = []
    with pytest.raises(ArtifactError, match=rf"{f.name}.*sha256"):
        train_experts(
            lss_tiny_data, ModelConfig(**MODEL), BufferConfig(**BUFFER), folder, log=lines.append
        )
    assert not any("reusing" in line for line in lines)


def test_a_data_root_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"invalid parameter data_root=.*no such folder"):
        lssdata.find_data_root("cifar10", str(tmp_path / "misspelled"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"invalid parameter data_root=.*holds no svhn"):
        lssdata.find_data_root("svhn", str(tmp_path / "empty"))


def test_an_offline_download_fails_fast_says_what_to_do_and_leaves_nothing(tmp_path, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LSS_DATA_ROOT", raising=False)
    monkeypatch.delenv("LSS_CACHE_DIR", raising=False)
    monkeypatch.setattr(lssdata, "_candidates", lambda _root: [tmp_path / "data"])
    t0 = time.monotonic()
    with pytest.raises(
        OSError, match=r"svhn .*cannot be downloaded.*train_32x32.mat.*data_root.*LSS_DATA_ROOT"
    ):
        lssdata.load_split_uint8("svhn", "train")
    assert time.monotonic() - t0 < 10
    assert list(tmp_path.iterdir()) == []  # no empty ./data, no cache folder


def _tiny_archive(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    tree = root / "tree" / "cifar10-jpeg"
    for split in ("train", "test"):
        for cls in ("ant", "bee"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(
                    tree / split / cls / f"{i}.png"
                )
    with tarfile.open(root / "cifar10-jpeg.tar.xz", "w:xz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    shutil.rmtree(root / "tree")
    return root / "cifar10-jpeg.tar.xz"


def test_two_processes_on_a_cold_cache_do_not_race_in_unpacking(tmp_path, monkeypatch):
    root = tmp_path / "root"
    archive = _tiny_archive(root)
    monkeypatch.setenv("LSS_CACHE_DIR", str(tmp_path / "cache"))
    real = tarfile.TarFile.extractall

    def slow(self, *a, **k):  # the second process starts while the first is unpacking
        time.sleep(0.3)
        out = real(self, *a, **k)
        time.sleep(0.6)
        return out

    monkeypatch.setattr(tarfile.TarFile, "extractall", slow)
    sys.stdout.flush()
    sys.stderr.flush()
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                dest = lssdata._unpack_archive(archive)
                code = 0 if len(list((dest / "train").rglob("*.png"))) == 4 else 2
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
        time.sleep(0.2)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    assert codes == [0, 0]


def test_non_finite_numbers_are_refused_as_not_finite():
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError) as err:
            DistillConfig(lr_factors=bad)
        msg = str(err.value)
        assert "a finite number" in msg and "inf]" not in msg, msg
