"""Resume after SIGKILL: expert buffers and distillation runs end bitwise-equal to
uninterrupted runs. Each run is a subprocess started from a script
written to tmp_path; the interrupted one is slowed by a sleep in its progress
callback so that the kill lands mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lsslib.artifacts import load_artifact
from lsslib.experts import ExpertBuffer

pytestmark = pytest.mark.slow

DATA = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from lsslib.config import DataConfig
from lsslib.data import Normaliser, RealData


def tiny_data(k=4, n=12, nt=4, c=3, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = 1.5 * torch.randn(k, c, side, side, generator=g)

    def draw(m):
        y = torch.arange(k).repeat_interleave(m)
        return proto[y] + 0.5 * torch.randn(k * m, c, side, side, generator=g), y

    (xtr, ytr), (xte, yte) = draw(n), draw(nt)
    cfg = DataConfig(dataset="cifar10", normalisation="none")
    norm = Normaliser(torch.zeros(c), torch.ones(c))
    return RealData(xtr, ytr, xte, yte, [str(i) for i in range(k)], norm, cfg)
"""

EXPERT_SCRIPT = (
    DATA
    + """
from lsslib.config import BufferConfig, ModelConfig
from lsslib.experts import train_experts

folder, delay = Path(sys.argv[1]), float(sys.argv[2])


def progress(done, total):
    print("PROGRESS", done, total, flush=True)
    time.sleep(delay)


train_experts(
    tiny_data(),
    ModelConfig(net_depth=2, net_width=4),
    BufferConfig(num_experts=3, train_epochs=4, batch_train=16, lr_teacher=0.05,
                 mom_teacher=0.5, experts_per_group=2),
    folder,
    log=lambda line: print("LOG", line, flush=True),
    progress=progress,
)
print("DONE", flush=True)
"""
)

DISTILL_SCRIPT = (
    DATA
    + """
from lsslib.config import DistillConfig
from lsslib.distill import Distiller
from lsslib.experts import ExpertBuffer

buffer, out, delay = ExpertBuffer(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
data = tiny_data()
cfg = DistillConfig(ipc=1, rank=1, subspaces=2, iterations=6, syn_steps=3, expert_epochs=2,
                    max_start_epoch=2, lr_factors=100.0, lr_lr=1e-5, checkpoint_every=2)
d = Distiller(cfg, data.config, buffer, data.x_train, data.y_train, out)
print("START", d.iteration, flush=True)
d.run(callback=lambda row: time.sleep(delay))
print("DONE", flush=True)
"""
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_to_end(script: Path, *args, timeout: float = 240) -> str:
    res = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DONE" in res.stdout
    return res.stdout


def kill_when(script: Path, args, marker, timeout: float = 180) -> None:
    """Start the script, SIGKILL it as soon as ``marker`` exists (a path) or returns
    true (a callable), check it died mid-run."""
    ready = marker if callable(marker) else marker.exists
    proc = subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        t0 = time.monotonic()
        while not ready():
            assert proc.poll() is None, f"finished before {marker} appeared: {proc.stderr.read()}"
            assert time.monotonic() - t0 < timeout, f"{marker} never appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert "DONE" not in out


def test_expert_training_resumes_bitwise_after_sigkill(tmp_path):
    script = _script(tmp_path, "experts.py", EXPERT_SCRIPT)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_to_end(script, ref, 0)
    kill_when(script, (cut, 0.5), cut / "group_000" / "epoch_002.json")
    assert not (cut / "buffer.json").exists()
    assert not (cut / "expert_000.json").exists()
    out = run_to_end(script, cut, 0)
    # it resumed: the first progress report is past epoch 2 of the first group (2 experts)
    first = [line for line in out.splitlines() if line.startswith("PROGRESS")][0]
    assert int(first.split()[1]) >= 2 * 3, first
    a, b = ExpertBuffer(ref), ExpertBuffer(cut)
    assert a.num_experts == b.num_experts == 3
    for i in range(3):
        ta, tb = a.trajectory(i), b.trajectory(i)
        assert ta.shape == (5, a.spec.num_params)
        assert torch.equal(ta, tb), i
    assert a.accuracy_curves() == b.accuracy_curves()
    assert not list(cut.glob("group_*"))  # resume state removed once the group is done


def test_distillation_resumes_bitwise_after_sigkill(tmp_path, lss_tiny_buffer):
    script = _script(tmp_path, "distill.py", DISTILL_SCRIPT)
    buf = lss_tiny_buffer.folder
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_to_end(script, buf, ref, 0)
    # log.csv gains a row per iteration: with 3 rows, the checkpoint at iteration 2 exists
    log = cut / "log.csv"
    kill_when(
        script,
        (buf, cut, 0.5),
        lambda: log.is_file() and len(log.read_text().splitlines()) >= 4,
    )
    assert not (cut / "synset.json").exists()
    out = run_to_end(script, buf, cut, 0)
    start = int(out.split("START", 1)[1].split()[0])
    assert 2 <= start < 6, out  # resumed from a checkpoint, not from scratch
    ta, ma = load_artifact(ref / "synset", kind="synset")
    tb, mb = load_artifact(cut / "synset", kind="synset")
    assert set(ta) == set(tb) >= {"synset.mappers", "synset.bases", "labels.logits", "syn_lr"}
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert ma["iterations"] == mb["iterations"] == 6
    _, ca = load_artifact(ref / "checkpoint", kind="distill_checkpoint")
    _, cb = load_artifact(cut / "checkpoint", kind="distill_checkpoint")
    strip = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]  # noqa: E731
    assert strip(ca["log"]) == strip(cb["log"])
