"""The distill stage with ``world_size`` > 1: torchrun's 2 gloo ranks, the profile key, the
workflow's GPU request.

The stage tests distil a tiny ImageFolder tree (3 classes of 8x8 RGB images written to
a temporary folder, decoded into a temporary cache: every rank loads the data itself,
as on a cluster) with an expert buffer trained once in this process. The sharded run is
started by :func:`lsslib.stages.distill` itself (``python -m torch.distributed.run
--standalone --nproc-per-node 2 -m lsslib.launch``) and compared with the same
configuration in one process (``grad_mode='checkpointed'``), never with itself.

Tolerance: to 1e-5 of each tensor's largest entry (and losses to 1e-5 relative), not
bitwise: the 2 ranks sum 2 partial means where one process sums one, so float32
additions happen in another order, and 6 iterations of 3 inner steps carry the
difference on (measured here: at most 2.3e-7 of the largest entry, for the bases; the
learned syn_lr came out bitwise equal). What must be bitwise is the plan (the expert and
start epoch drawn per iteration, from the same seeded generator) and a rerun of the
finished sharded run, which resumes from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lsslib import launch, profiles, stages
from lsslib.artifacts import load_artifact
from lsslib.results import RunPaths, read_log

HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")
K, SIDE = 3, 8
DATA = dict(normalisation="meanstd", net_depth=2, net_width=4)
BUFFER = dict(num_experts=2, train_epochs=4, batch_train=16, lr_teacher=0.05, experts_per_group=2)
DISTILL = dict(
    parameterisation="lowrank",
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


def _write_tree(root: Path) -> None:
    """train/ (10 per class) and test/ (4 per class) PNGs: a class prototype plus noise."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    proto = torch.randint(40, 216, (K, SIDE, SIDE, 3), generator=g)
    for split, m in (("train", 10), ("test", 4)):
        for k in range(K):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(m):
                noise = torch.randint(-30, 31, (SIDE, SIDE, 3), generator=g)
                img = (proto[k] + noise).clamp(0, 255).to(torch.uint8)
                Image.fromarray(img.numpy()).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data tree, its cache (``$LSS_CACHE_DIR``, which the ranks inherit) and a buffer."""
    root = tmp_path_factory.mktemp("launch")
    _write_tree(root / "imgs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LSS_CACHE_DIR", str(root / "cache"))
        mp.setenv("OMP_NUM_THREADS", "2")  # the stage's threads: 1 per rank
        base = dict(DATA, dataset="imagefolder", data_root=str(root / "imgs"))
        bp = stages.stage_parameters("buffers", {**base, **BUFFER}, profile=None)
        stages.buffers(bp, root / "buffers", CPU)
        yield root, base


def params(base: dict, **kw) -> dict:
    return stages.stage_parameters("distill", {**base, **DISTILL, **kw}, profile=None)


@pytest.fixture(scope="module")
def two_ranks(world):
    """The stage's 2-rank run (``world_size=2``) and what it printed."""
    root, base = world
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = stages.distill(
            params(base, grad_mode="sharded"),
            root / "buffers",
            root / "two",
            CPU,
            profile=None,
            world_size=2,
            snapshot_every=3,
        )
    return out, buf.getvalue()


def test_two_ranks_through_the_stage_match_one_process(world, two_ranks, capsys):
    root, base = world
    buf = root / "buffers"
    sharded = params(base, grad_mode="sharded")
    out, said = two_ranks
    assert "2 ranks on cpu" in said and "iteration 6/6" in said  # rank 0's lines, relayed
    assert out.run is None and out.loaded.meta["config"]["distill"]["grad_mode"] == "sharded"
    one = stages.distill(
        params(base, grad_mode="checkpointed"),
        buf,
        root / "one",
        CPU,
        profile=None,
        snapshot_every=3,
    )
    a, b = RunPaths(root / "two"), RunPaths(root / "one")
    for name in ("curves", "grid", "components"):  # drawn once, by the stage's process
        assert a.figure(name).is_file(), name
    for stem_a, stem_b in ((a.synset, b.synset), (a.snapshot(3), b.snapshot(3))):
        ta, ma = load_artifact(stem_a, kind="synset")
        tb, mb = load_artifact(stem_b, kind="synset")
        assert set(ta) == set(tb) >= {"synset.mappers", "synset.bases", "labels.logits", "syn_lr"}
        assert ma["iterations"] == mb["iterations"]
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
            if ta[k].is_floating_point():
                scale = tb[k].abs().max().item()
                torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-5 * scale, msg=k)
    assert out.loaded.meta["iterations"] == one.loaded.meta["iterations"] == 6
    la, lb = read_log(a), read_log(b)
    assert list(la["expert"]) == list(lb["expert"])  # the same plan, drawn on every rank
    assert list(la["start_epoch"]) == list(lb["start_epoch"])
    assert la["loss"].to_list() == pytest.approx(lb["loss"].to_list(), rel=1e-5)
    # a rerun of the finished run resumes from its checkpoint: nothing changes
    before = load_artifact(a.synset, kind="synset")[0]
    stages.distill(sharded, buf, root / "two", CPU, profile=None, world_size=2)
    assert "resuming at iteration 6" in capsys.readouterr().out
    after = load_artifact(a.synset, kind="synset")[0]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_notebook_passes_world_size_to_the_stage(world, two_ranks, tmp_path):
    """papermill runs the notebook in one kernel; the stage starts the 2 ranks; the set is
    bitwise the stage's own 2-rank run (the same ranks doing the same additions)."""
    root, base = world
    cfg = {**base, **DISTILL, "grad_mode": "sharded", "world_size": 2, "snapshot_every": 3}
    cfg.update(buffer_dir=str(root / "buffers"), out_dir=str(tmp_path / "run"), profile=None)
    nb = HERE.parents[1] / "notebooks" / "02_distill.ipynb"
    papermill = Path(sys.executable).parent / "papermill"
    proc = subprocess.run(
        [str(papermill), str(nb), str(tmp_path / "out.ipynb"), "-y", yaml.safe_dump(cfg)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = load_artifact(tmp_path / "run" / "synset", kind="synset")[0]
    want = load_artifact(two_ranks[0].paths.synset, kind="synset")[0]
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert (tmp_path / "run" / "grid.png").is_file()


def test_a_failing_rank_fails_the_stage_with_its_message(world):
    root, base = world  # rank 8 >= the 8-pixel side: only the ranks see the data's shape
    with pytest.raises(RuntimeError, match=r"(?s)exited with status [1-9].*rank=8"):
        stages.distill(
            params(base, grad_mode="sharded", rank=8),
            root / "buffers",
            root / "bad",
            CPU,
            profile=None,
            world_size=2,
        )
    assert not (root / "bad").exists()


STAGE_SCRIPT = """
import sys
import torch
from lsslib import stages

params = stages.stage_parameters("distill", {params!r}, profile=None)
stages.distill(params, {buffers!r}, sys.argv[1], torch.device("cpu"), profile=None, world_size=2)
"""


def _processes_naming(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text`` (Linux ``/proc``)."""
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmd.read_bytes().decode(errors="replace"):
                pids.append(int(cmd.parent.name))
        except OSError:  # gone meanwhile
            pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_stage_stops_its_ranks(world, tmp_path):
    """SIGKILL of the stage's process (no ``finally`` runs) still stops torchrun and both
    ranks, and leaves a checkpoint that loads."""
    root, base = world
    script = tmp_path / "stage.py"
    cfg = {**base, **DISTILL, "grad_mode": "sharded", "iterations": 10**6}
    script.write_text(STAGE_SCRIPT.format(params=cfg, buffers=str(root / "buffers")))
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=HERE.parents[1],
    )
    try:
        for line in proc.stdout:  # rank 0 is iterating once it has said so
            if "ranks on cpu" in line:
                break
        others = set(_processes_naming(str(run))) - {proc.pid}
        assert len(others) == 3  # torchrun and its 2 ranks
    finally:
        proc.kill()
        proc.communicate()
    deadline = time.monotonic() + 60
    while _processes_naming(str(run)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_naming(str(run)) == []
    t, meta = load_artifact(run / "checkpoint", kind="distill_checkpoint")
    assert meta["iteration"] >= 0 and "syn_lr" in t


@pytest.fixture
def no_work(monkeypatch):
    """Any data loading or process start fails the test."""

    def refuse(*_a, **_k):
        raise AssertionError("work started before the parameters were checked")

    monkeypatch.setattr(stages.data, "load_data", refuse)
    monkeypatch.setattr(launch.subprocess, "Popen", refuse)


@pytest.mark.parametrize(
    "kw,world_size,device,match",
    [
        (
            {"grad_mode": "sharded", "batch_syn": 2},
            3,
            "cpu",
            r"world_size=3: allowed at most batch_syn=2",
        ),
        (
            {"grad_mode": "checkpointed"},
            2,
            "cpu",
            r"world_size=2: allowed 1 with grad_mode='checkpointed'",
        ),
        ({"grad_mode": "sharded"}, 0, "cpu", r"world_size=0: allowed an int >= 1"),
        ({"grad_mode": "sharded"}, "2", "cpu", r"world_size='2': allowed an int >= 1"),
        ({"grad_mode": "sharded"}, True, "cpu", r"world_size=True: allowed an int >= 1"),
        ({"grad_mode": "sharded"}, None, "cpu", r"world_size=None: allowed an int >= 2"),
        ({"grad_mode": "sharded"}, 2, "mps", r"device='mps': allowed cpu \(gloo\) or cuda"),
        (
            {"grad_mode": "sharded"},
            64,
            "cuda",
            r"world_size=64: allowed at most the \d+ visible CUDA",
        ),
    ],
)
def test_bad_world_size_is_refused_before_any_work(
    tmp_path, no_work, kw, world_size, device, match
):
    base = dict(DATA, dataset="cifar10", train_per_class=2)
    with pytest.raises(ValueError, match=match):
        stages.distill(
            params(base, **kw),
            tmp_path / "buffers",
            tmp_path / "run",
            torch.device(device),
            profile=None,
            world_size=world_size,
            make_missing=True,
        )
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the run folder


def test_data_given_in_process_is_refused_with_two_ranks(tmp_path, no_work, lss_tiny_data):
    base = dict(DATA, dataset="cifar10")
    with pytest.raises(ValueError, match=r"invalid parameter real=<48 images>: allowed None"):
        stages.distill(
            params(base, grad_mode="sharded"),
            tmp_path / "buffers",
            tmp_path / "run",
            CPU,
            profile=None,
            real=lss_tiny_data,
            world_size=2,
            make_missing=True,
        )
    assert list(tmp_path.iterdir()) == []


def _profile(tmp_path: Path, runs: dict, distill: dict | None = None) -> Path:
    prof = {"extends": "smoke", "runs": runs, "ablations": None, "compare": None}
    prof["main"] = {"lss": next(iter(runs)), "mtt": "mtt"}
    if distill:
        prof["distill"] = distill
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


@pytest.mark.parametrize(
    "runs,distill,match",
    [
        (
            {"lss": {"world_size": 2}},
            None,
            r"runs\.lss\.world_size=2: allowed 1 with grad_mode='unrolled'",
        ),
        (
            {"lss": {"grad_mode": "sharded", "world_size": 0}},
            None,
            r"runs\.lss\.world_size=0: allowed an int >= 1",
        ),
        (
            {"lss": {"grad_mode": "sharded", "batch_syn": 4, "world_size": 5}},
            None,
            r"runs\.lss\.world_size=5: allowed at most batch_syn=4",
        ),
        (
            {"lss": {"grad_mode": "sharded", "world_size": 10**6}},
            None,
            r"world_size=1000000: allowed at most the set size \d+",
        ),
        (
            {"lss": {"grad_mode": "sharded"}},
            {"world_size": 1.5},
            r"distill\.world_size=1\.5: allowed an int >= 1",
        ),
    ],
)
def test_profile_world_size_is_checked_where_profiles_are_loaded(tmp_path, runs, distill, match):
    with pytest.raises(ValueError, match=match):
        profiles.load_profile(_profile(tmp_path, runs, distill))


def test_world_size_is_a_launch_option_not_a_run_parameter():
    prof = profiles.load_profile("smoke_sharded")
    assert profiles.world_size(prof, "lss") == 2
    assert profiles.world_size(prof, "lss_single") == profiles.world_size(prof, "mtt") == 1
    flat = profiles.stage_parameters(prof, "distill", "lss")
    assert "world_size" not in flat and flat["grad_mode"] == "sharded"
    single = profiles.stage_parameters(prof, "distill", "lss_single")
    # the two runs differ by grad_mode alone: the same configuration, one process or two
    assert {k: v for k, v in flat.items() if k != "grad_mode"} == {
        k: v for k, v in single.items() if k != "grad_mode"
    }


def test_slurm_dry_run_asks_for_the_ranks_gpus(tmp_path):
    from test_workflow import PROFILES, REPO, snakemake, write_stub_notebooks

    stubs = write_stub_notebooks(tmp_path / "nb")
    slurm = str(REPO / "workflow" / "profiles" / "slurm")
    cfg = {"notebook_dir": stubs, "device": "cuda"}
    proc = snakemake(
        tmp_path / "w", PROFILES / "smoke_sharded.yaml", "-n", "--profile", slurm, config=cfg
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {}
    for block in re.split(r"\n(?=rule )", proc.stdout):
        if block.startswith("rule distill:"):
            run = re.search(r"wildcards: run=(\S+)", block).group(1)
            jobs[run] = block
    assert set(jobs) == {"lss", "mtt", "lss_single"}
    for run, block in jobs.items():
        n = 2 if run == "lss" else 1
        resources = re.search(r"resources: (.+)", block).group(1)
        assert re.search(rf"\bgpu={n}\b", resources), block
        assert ("world_size: 2" in block) == (run == "lss"), block  # in the notebook's -y mapping
    cpu = snakemake(
        tmp_path / "w",
        PROFILES / "smoke_sharded.yaml",
        "-n",
        "-p",
        "--cores",
        "2",
        config={"notebook_dir": stubs},
    )
    lss = next(b for b in re.split(r"\n(?=rule )", cpu.stdout) if "wildcards: run=lss\n" in b)
    assert "gpu=" not in lss and "OMP_NUM_THREADS=2 " in lss  # 1 thread per rank


def test_launch_command_and_rank_spec():
    cmd = launch.command({"params": {"ipc": 1}, "device": "cpu"}, 4)
    assert cmd[1:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "4",
        "-m",
    ]
    assert cmd[7] == "lsslib.launch" and json.loads(cmd[-1])["params"] == {"ipc": 1}
    with pytest.raises(ValueError, match=r"invalid parameter spec=\['device'\]: allowed exactly"):
        launch.run_rank({"device": "cpu"})
