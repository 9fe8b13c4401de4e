"""``grad_mode='sharded'``: the gradient over 2 gloo ranks equals the single process's.

Each multi-rank check starts 2 processes (CPU, gloo, ``env://`` rendezvous on 127.0.0.1
with a free port, one thread each) from a script written to ``tmp_path``; the ranks
write what they computed to safetensors and this process compares it with the
single-process :func:`~lsslib.matching.checkpointed_loss` / ``unrolled_loss`` result of
the same problem (never with itself).

Tolerances: float64 problems agree to 1e-10 relative (the sharded sum only reorders
additions); float32 ones to 1e-5 of the largest entry (about 100 float32 ulps: the
full-batch mean is a sum of 2 partial means, and the order propagates through the inner
steps). The 2 ranks agree bitwise with each other (they apply the same reduced tensors).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lsslib import sharded
from lsslib.artifacts import load_artifact
from lsslib.config import RENDEZVOUS_ENV, DistillConfig
from lsslib.distill import Distiller
from lsslib.experts import ExpertBuffer
from lsslib.matching import matching_loss
from lsslib.models import ConvNetSpec, init_flat
from lsslib.parameterisations import Labels
from lsslib.parameterisations.lowrank import LowRankSynSet
from lsslib.plan import make_plan
from lsslib.synset import layout

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
K, C, SIDE, R = 3, 2, 8, 2
CASES = [(p, soft) for p in ("lowrank", "pixels") for soft in (True, False)]


def make_case(param: str, soft: bool, dtype: torch.dtype, seed: int = 0, batch: int = 5) -> dict:
    """A tiny problem: 9 images (low-rank with rank 2, or a pixel leaf), hard or soft
    labels, a depth-2 ConvNet, 4 inner steps of ``batch`` images with every DSA family."""
    g = torch.Generator().manual_seed(seed)
    spec = ConvNetSpec(C, SIDE, K, depth=2, width=4)
    lay = layout(
        "lowrank",
        ipc=1,
        rank=R,
        subspaces=1,
        channels=C,
        side=SIDE,
        num_classes=K,
        soft_labels=soft,
        strict_budget=False,
    )
    j = lay.bases
    syn = LowRankSynSet(
        lay,
        torch.randn(K, 1, C, SIDE, R, generator=g),
        torch.randn(K, 1, j, C, R, SIDE, generator=g) / 2,
        K,
    ).to(dtype)
    cls = syn.class_index()
    leaves: dict[str, torch.Tensor] = {}
    if param == "lowrank":
        leaves.update(mappers=syn.mappers, bases=syn.bases)
        images = syn.images
    else:
        pix = syn.images().detach().clone().requires_grad_(True)
        leaves["x"] = pix
        images = lambda: pix  # noqa: E731
    logits = 2 * torch.randn(len(cls), K, generator=g) if soft else None
    labels = Labels(cls, K, logits).to(dtype)
    if soft:
        leaves["logits"] = labels.logits
    start = init_flat(spec, g).to(dtype)
    target = start + 0.05 * torch.randn(start.shape, generator=g).to(dtype)
    syn_lr = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    leaves["syn_lr"] = syn_lr
    plan = make_plan(len(cls), 4, batch, SIDE, "color_crop_cutout_flip_scale_rotate", g)
    return dict(
        spec=spec,
        images=images,
        labels=labels,
        start=start,
        target=target,
        syn_lr=syn_lr,
        plan=plan,
        leaves=leaves,
    )


def case_grads(case: dict, mode: str) -> dict[str, torch.Tensor]:
    """The loss and every leaf's gradient of ``mode`` on ``case``."""
    c = case
    loss = matching_loss(
        c["spec"],
        c["start"],
        c["target"],
        c["images"](),
        c["labels"].targets(),
        c["syn_lr"],
        c["plan"],
        mode,
    )
    if mode == "unrolled":
        loss.backward()
    out = {"loss": loss.detach().reshape(1)}
    for name, leaf in c["leaves"].items():
        assert leaf.grad is not None, (mode, name)
        out[name] = leaf.grad.detach().clone()
    return out


def rank_grads(out: Path) -> None:
    """Run on every rank: the sharded gradients of every case, and the refusals."""
    rank, ws = sharded.world()
    assert ws == 2
    res = {}
    for dtype in (torch.float64, torch.float32):
        for param, soft in CASES:
            g = case_grads(make_case(param, soft, dtype), "sharded")
            res.update({f"{param}.{soft}.{dtype}.{k}": v for k, v in g.items()})
    case = make_case("pixels", True, torch.float32, batch=1)
    try:
        case_grads(case, "sharded")
    except ValueError as exc:
        (out / f"refused{rank}.txt").write_text(str(exc))
    from safetensors.torch import save_file

    save_file(res, str(out / f"rank{rank}.safetensors"))


RANK_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
import test_sharded as T
from lsslib import sharded
from pathlib import Path

out = Path(sys.argv[1])
sharded.launch(getattr(T, sys.argv[2]), out, *sys.argv[3:])
print("DONE", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(tmp_path: Path, fn: str, *args: str, world: int = 2) -> list[subprocess.Popen]:
    """Start ``world`` ranks running ``fn(out, *args)`` of this module under ``launch``."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(here=str(HERE))))
    port = str(_free_port())
    procs = []
    for r in range(world):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            RANK=str(r),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(r),
            OMP_NUM_THREADS="1",
            PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path), fn, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        assert "DONE" in out
        outs.append(out)
    return outs


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    tol = 1e-10 if b.dtype == torch.float64 else 1e-5
    scale = b.abs().max().item()
    assert scale > 0, what
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=what)


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_gradient(tmp_path):
    finish(start_ranks(tmp_path, "rank_grads"))
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert set(r0) == set(r1) and len(r0) == 2 * (5 + 4 + 4 + 3)  # loss + leaves per case
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # every rank keeps an identical set
    for dtype in (torch.float64, torch.float32):
        for param, soft in CASES:
            for mode in ("checkpointed", "unrolled"):
                ref = case_grads(make_case(param, soft, dtype), mode)
                for name, want in ref.items():
                    _close(
                        r0[f"{param}.{soft}.{dtype}.{name}"], want, f"{param} {soft} {mode} {name}"
                    )
    for r in (0, 1):  # a batch of 1 image cannot be split over 2 ranks
        msg = (tmp_path / f"refused{r}.txt").read_text()
        assert "world_size=2" in msg and "batch_syn=1" in msg


@pytest.mark.parametrize("param,soft", CASES)
def test_one_process_is_checkpointed_bitwise(param, soft):
    """Without a process group the mode is op for op the checkpointed one."""
    assert sharded.world() == (0, 1)
    a = case_grads(make_case(param, soft, torch.float32), "checkpointed")
    b = case_grads(make_case(param, soft, torch.float32), "sharded")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_shares_are_contiguous_and_cover_the_batch():
    assert sharded.shares(5, 2) == [(0, 3), (3, 5)]
    assert sharded.shares(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match=r"world_size=3: allowed at most batch_syn=2"):
        sharded.shares(2, 3)


def test_world_size_larger_than_batch_syn_is_refused(monkeypatch):
    cfg = DistillConfig(grad_mode="sharded", batch_syn=2)
    assert cfg.check_sharding(2) == 2
    with pytest.raises(
        ValueError, match=r"invalid parameter world_size=4: allowed at most batch_syn=2"
    ):
        cfg.check_sharding(4)
    full = DistillConfig(grad_mode="sharded")  # batch = the whole set
    with pytest.raises(ValueError, match=r"world_size=4: allowed at most the set size 3"):
        full.check_sharding(4, set_size=3)
    for k, v in zip(RENDEZVOUS_ENV, ("127.0.0.1", "1", "0", "8"), strict=True):
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=r"world_size=8: allowed at most batch_syn=2"):
        cfg.check_against(channels=3, side=32, num_classes=10)  # checked before any data
    assert DistillConfig(grad_mode="checkpointed", batch_syn=2).check_sharding() == 1


def test_missing_rendezvous_is_refused_before_any_work(
    monkeypatch, lss_tiny_data, lss_tiny_buffer, tmp_path
):
    for k in RENDEZVOUS_ENV:
        monkeypatch.delenv(k, raising=False)
    cfg = DistillConfig(
        grad_mode="sharded",
        ipc=1,
        rank=1,
        subspaces=2,
        iterations=1,
        syn_steps=2,
        max_start_epoch=2,
    )
    with pytest.raises(ValueError, match=r"invalid parameter grad_mode='sharded'.*MASTER_ADDR"):
        cfg.check_sharding()
    with pytest.raises(ValueError, match=r"grad_mode='sharded'.*missing MASTER_ADDR"):
        sharded.ensure_process_group()
    d = lss_tiny_data
    with pytest.raises(ValueError, match=r"grad_mode='sharded'"):
        Distiller(cfg, d.config, lss_tiny_buffer, d.x_train, d.y_train, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.json").exists()


# ------------------------------------------------------------------ distillation
DISTILL = dict(
    ipc=1,
    rank=1,
    subspaces=2,
    iterations=6,
    syn_steps=3,
    expert_epochs=2,
    max_start_epoch=2,
    lr_factors=100.0,
    lr_lr=1e-5,
    checkpoint_every=2,
)


def _run(data, out: Path, buffer_dir: str, run: str, mode: str, kill_at: int) -> None:
    """A distillation into ``out/run`` (rank 0 kills itself after iteration ``kill_at``)."""
    cfg = DistillConfig(grad_mode=mode, **DISTILL)
    d = Distiller(cfg, data.config, ExpertBuffer(buffer_dir), data.x_train, data.y_train, out / run)
    print("START", d.iteration, flush=True)

    def cb(row: dict) -> None:
        if row["iteration"] == int(kill_at) and sharded.is_writer():
            os.kill(os.getpid(), signal.SIGKILL)

    d.run(callback=cb)


def run_distill(out: Path, buffer_dir: str, run: str, kill_at: str = "-1") -> None:
    """Run on every rank: the sharded distillation of :data:`DISTILL`."""
    from conftest import _make_tiny_data  # the data of the lss_tiny_data fixture

    _run(_make_tiny_data(), out, buffer_dir, run, "sharded", int(kill_at))


def _kill_mid_run(procs: list[subprocess.Popen]) -> None:
    try:
        procs[0].wait(timeout=120)
        assert procs[0].returncode == -signal.SIGKILL, procs[0].stderr.read()[-2000:]
    finally:
        for p in procs[1:]:  # the other rank loses its peer mid all-reduce
            p.kill()
        for p in procs:
            p.communicate()


@pytest.mark.slow
def test_sharded_distillation_resumes_and_matches_one_process(
    tmp_path, lss_tiny_data, lss_tiny_buffer
):
    buf = str(lss_tiny_buffer.folder)
    finish(start_ranks(tmp_path, "run_distill", buf, "whole"))
    _kill_mid_run(start_ranks(tmp_path, "run_distill", buf, "cut", "2"))
    cut = tmp_path / "cut"
    assert not (cut / "synset.json").exists()
    outs = finish(start_ranks(tmp_path, "run_distill", buf, "cut"))
    for out in outs:  # every rank resumed from rank 0's checkpoint at iteration 2
        assert int(out.split("START", 1)[1].split()[0]) == 2, out
    _run(lss_tiny_data, tmp_path, buf, "single", "checkpointed", -1)  # the single-process reference
    ta, ma = load_artifact(tmp_path / "whole" / "synset", kind="synset")
    tb, mb = load_artifact(cut / "synset", kind="synset")
    tc, _ = load_artifact(tmp_path / "single" / "synset", kind="synset")
    assert (
        set(ta)
        == set(tb)
        == set(tc)
        >= {"synset.mappers", "synset.bases", "labels.logits", "syn_lr"}
    )
    assert ma["iterations"] == mb["iterations"] == 6
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k  # resuming is bitwise
        if ta[k].is_floating_point():
            scale = tc[k].abs().max().item()
            torch.testing.assert_close(ta[k], tc[k], rtol=1e-4, atol=1e-4 * scale, msg=k)
    _, ca = load_artifact(tmp_path / "whole" / "checkpoint", kind="distill_checkpoint")
    _, cb = load_artifact(cut / "checkpoint", kind="distill_checkpoint")
    _, cc = load_artifact(tmp_path / "single" / "checkpoint", kind="distill_checkpoint")
    strip = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]  # noqa: E731
    assert strip(ca["log"]) == strip(cb["log"])
    assert [r["expert"] for r in ca["log"]] == [r["expert"] for r in cc["log"]]
    for ra, rc in zip(ca["log"], cc["log"], strict=True):
        assert ra["loss"] == pytest.approx(rc["loss"], rel=1e-4)


# ------------------------------------------------------------------ memory model
def test_activation_floats_counts_the_convnet_maps():
    spec = ConvNetSpec(3, 32, 10, depth=3, width=128)
    maps = sum(3 * 128 * s * s + 128 * (s // 2) ** 2 for s in (32, 16, 8))
    assert sharded.activation_floats(spec) == 2 * 3 * 32 * 32 + maps + 10


def test_memory_model_divides_only_the_activations_by_the_ranks():
    spec = ConvNetSpec(3, 32, 10, depth=3, width=128)
    one = sharded.memory_model(spec, images=100, batch_syn=100, syn_steps=4)
    two = sharded.memory_model(spec, images=100, batch_syn=100, syn_steps=4, world_size=2)
    three = sharded.memory_model(spec, images=100, batch_syn=100, syn_steps=4, world_size=3)
    assert one.activations == 2 * two.activations
    assert three.activations == two.activations * 34 // 50  # the largest share: 34 images
    for f in ("trajectory", "vectors", "synset", "expert", "runtime"):
        assert getattr(one, f) == getattr(two, f), f
    assert one.trajectory == 5 * spec.num_params * 4
    # the CPU record of benchmarks/bench_sharded.py: 506 MiB added by 1 process, 289 per rank
    assert abs(one.total / 2**20 - 506.4) < 0.2 * 506.4
    assert abs(two.total / 2**20 - 289.3) < 0.2 * 289.3
    with pytest.raises(ValueError, match=r"world_size=101"):
        sharded.memory_model(spec, images=100, batch_syn=100, syn_steps=4, world_size=101)


def test_predict_solves_the_layout_of_a_named_dataset(capsys):
    cfg = DistillConfig(parameterisation="pixels", ipc=10, soft_labels=False, syn_steps=20)
    m = sharded.predict(cfg, dataset="cifar100", world_size=4)
    spec = ConvNetSpec(3, 32, 100, depth=3, width=128)
    assert m.synset == 3 * 1000 * 3 * 32 * 32 * 4
    assert (
        m.activations
        == sharded.memory_model(
            spec, images=1000, batch_syn=1000, syn_steps=20, world_size=4
        ).activations
    )
    with pytest.raises(ValueError, match=r"invalid parameter dataset='mnist9'"):
        sharded.predict(cfg, dataset="mnist9")
    sharded.main(
        [
            "--dataset",
            "cifar100",
            "--parameterisation",
            "pixels",
            "--ipc",
            "10",
            "--world-sizes",
            "1,2",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].split()[0] == "1" and lines[2].split()[0] == "2"
    assert float(lines[2].split()[1]) < float(lines[1].split()[1])
