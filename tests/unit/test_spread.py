"""Expert groups and evaluation networks spread over 2 gloo ranks equal one process.

One launch of 2 ranks (CPU, gloo, ``env://`` rendezvous on 127.0.0.1, one thread each,
started as in ``test_sharded.py``) trains a 5-expert buffer in groups of 2 (rank 0 the
groups of experts 0-1 and 4, rank 1 that of experts 2-3) and evaluates 3 networks
(rank 0 networks 0 and 2, rank 1 network 1); this process trains the same buffer and
evaluation alone and compares: every expert file bitwise (sha256), ``buffer.json`` and
each expert's JSON apart from ``created_utc``, the buffer's identity digest, and the
:class:`~lsslib.evaluate.EvalResult` field for field (bitwise: on the CPU a network's
training does not depend on the networks trained beside it). The same launch checks
that a world size above the expert groups or ``num_eval`` is refused before any work, and
that a failure on rank 1 fails both ranks without ``buffer.json`` (one process then
resumes the buffer to the same files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from test_sharded import HERE, REPO, _free_port, finish

from lsslib import experts, sharded
from lsslib.artifacts import artifact_files, sha256_file
from lsslib.config import BufferConfig, EvalConfig, ModelConfig
from lsslib.evaluate import evaluate_images
from lsslib.experts import ExpertBuffer, train_experts
from lsslib.models import ConvNetSpec, init_flat
from lsslib.training import TrainState, train_nets

MODEL = {"net_depth": 2, "net_width": 4}
BUFFER = {
    "num_experts": 5,
    "experts_per_group": 2,
    "train_epochs": 2,
    "batch_train": 16,
    "lr_teacher": 0.05,
}
EVAL = {"num_eval": 3, "eval_epochs": 4, "batch_eval": 16}
EVAL_KW = {"lr": 0.01, "curve_points": 3, "progress": False}


def _spec(data) -> ConvNetSpec:
    return ConvNetSpec.from_config(
        ModelConfig(**MODEL), channels=data.channels, side=data.side, num_classes=data.num_classes
    )


def _buffer(data, folder: Path, log=lambda _line: None, **buffer) -> ExpertBuffer:
    cfg = BufferConfig(**{**BUFFER, **buffer})
    return train_experts(data, ModelConfig(**MODEL), cfg, folder, log=log)


def _evaluate(data, world: tuple[int, int] | None = None, **cfg) -> dict:
    val = (data.x_test[:8], data.y_test[:8])
    ecfg = EvalConfig(**{**EVAL, **cfg})
    x, y = data.x_train, data.y_train
    res = evaluate_images(_spec(data), x, y, data, ecfg, val=val, world=world, **EVAL_KW)
    return {k: v for k, v in asdict(res).items() if k != "seconds"}


def _injected_failure(*_args, **_kwargs):
    raise OSError("injected failure")


def rank_spread(out: Path) -> None:
    """Run on every rank: the refusals, the spread buffer, the spread evaluation."""
    from conftest import _make_tiny_data  # the data of the lss_tiny_data fixture

    rank, ws = sharded.world()
    assert ws == 2
    data = _make_tiny_data()
    refused = {}
    try:  # one group of 2 experts for 2 ranks
        _buffer(data, out / "one_group", num_experts=2)
    except ValueError as exc:
        refused["buffer"] = str(exc)
    try:
        _evaluate(data, num_eval=1)
    except ValueError as exc:
        refused["eval"] = str(exc)
    real_train_nets = experts.train_nets
    if rank == 1:  # rank 1 fails in its group; rank 0 trains its own, then learns of it
        experts.train_nets = _injected_failure
    try:
        _buffer(data, out / "failed")
    except (RuntimeError, OSError) as exc:
        refused["failed"] = f"{type(exc).__name__}: {exc}"
    finally:
        experts.train_nets = real_train_nets
    lines: list[str] = []
    buf = _buffer(data, out / "spread", log=lines.append)
    res = _evaluate(data)
    record = {"refused": refused, "log": lines, "eval": res, "digest": buf.identity_digest()}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


RANK_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
import test_spread as T
from lsslib import sharded
from pathlib import Path

sharded.launch(T.rank_spread, Path(sys.argv[1]))
print("DONE", flush=True)
"""


def start_ranks(tmp_path: Path, world: int = 2) -> list[subprocess.Popen]:
    """Start ``world`` ranks running :func:`rank_spread` under ``sharded.launch``."""
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
                [sys.executable, str(script), str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _meta(path: Path) -> dict:
    meta = json.loads(path.read_text())
    meta.pop("created_utc")
    return meta


def _same_buffer(spread: Path, single: Path) -> None:
    names = sorted(p.name for p in single.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in spread.iterdir() if not p.name.startswith("."))
    assert "buffer.json" in names and not any(n.startswith("group_") for n in names)
    for i in range(BUFFER["num_experts"]):
        a, b = (
            artifact_files(spread / f"expert_{i:03d}"),
            artifact_files(single / f"expert_{i:03d}"),
        )
        assert [f.name for f in a] == [f.name for f in b], i
        assert sha256_file(a[1]) == sha256_file(b[1]), i  # the trajectory, bitwise
        assert _meta(a[0]) == _meta(b[0]), i  # accuracies, config, identity
    assert _meta(spread / "buffer.json") == _meta(single / "buffer.json")


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_buffer_and_evaluation(tmp_path, lss_tiny_data):
    finish(start_ranks(tmp_path), timeout=240)
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    _buffer(lss_tiny_data, tmp_path / "single")
    _same_buffer(tmp_path / "spread", tmp_path / "single")
    digest = ExpertBuffer(tmp_path / "single").identity_digest()
    assert recs[0]["digest"] == recs[1]["digest"] == digest
    # each rank trained only its whole groups: rank 0 experts 0-1 and 4, rank 1 2-3
    done = [[line.split(" done")[0] for line in r["log"] if " done:" in line] for r in recs]
    assert done == [["experts 0-1", "experts 4-4"], ["experts 2-3"]]
    single = _evaluate(lss_tiny_data)
    assert len(single["curve_epochs"]) == 3 and single["val_accuracies"] is not None
    assert recs[0]["eval"] == recs[1]["eval"] == json.loads(json.dumps(single))
    for r in recs:  # refused before any work: nothing trained into the folder
        assert "invalid parameter world_size=2" in r["refused"]["buffer"]
        assert "num_experts=2, experts_per_group=2" in r["refused"]["buffer"]
        assert "invalid parameter world_size=2: allowed at most num_eval=1" in r["refused"]["eval"]
    assert not list((tmp_path / "one_group").glob("expert_*"))
    # a rank's failure fails every rank, and buffer.json is not written
    assert recs[1]["refused"]["failed"] == "OSError: injected failure"
    assert recs[0]["refused"]["failed"] == (
        "RuntimeError: expert training failed on another rank: rank 1: OSError: injected failure"
    )
    failed = tmp_path / "failed"
    assert not (failed / "buffer.json").exists() and (failed / "expert_004.json").exists()
    _buffer(lss_tiny_data, failed)  # one process resumes: trains only the missing group
    _same_buffer(failed, tmp_path / "single")
    assert not list((tmp_path / "one_group").glob("group_*"))


def test_a_world_other_than_the_process_group_is_refused(lss_tiny_data, tmp_path):
    for world in ((1, 2), (0, 0), (2, 2)):
        with pytest.raises(ValueError, match=r"invalid parameter world=.*allowed None"):
            _evaluate(lss_tiny_data, num_eval=2, world=world)
        with pytest.raises(ValueError, match=r"invalid parameter world="):
            train_experts(
                lss_tiny_data,
                ModelConfig(**MODEL),
                BufferConfig(**BUFFER),
                tmp_path / "b",
                world=world,
            )
    assert not list((tmp_path / "b").glob("expert_*"))


def test_spread_ids_cover_every_unit_once():
    got = [sharded.spread_ids(7, r, 3) for r in range(3)]
    assert got == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(got, [])) == list(range(7))


def test_one_process_default_is_unchanged(lss_tiny_data):
    """Without a process group ``world=None`` and ``world=(0, 1)`` are the same run."""
    assert sharded.world() == (0, 1)
    a = _evaluate(lss_tiny_data, num_eval=2, eval_epochs=2)
    b = _evaluate(lss_tiny_data, num_eval=2, eval_epochs=2, world=(0, 1))
    assert a == b and torch.tensor(a["accuracies"]).numel() == 2


def test_a_networks_training_does_not_depend_on_its_companions(lss_tiny_data):
    """What the evaluation's split relies on: on the CPU's loop over the nets, networks
    0-3 trained together end bitwise where 0 and 2, then 1 and 3, trained apart end."""
    spec, d = _spec(lss_tiny_data), lss_tiny_data

    def run(ids: list[int]) -> dict[int, torch.Tensor]:
        gens = [torch.Generator().manual_seed(7 + i) for i in ids]
        flats = torch.stack([init_flat(spec, g) for g in gens])
        st = TrainState(flats, torch.zeros_like(flats), gens, 0)
        kw = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 16}
        dsa = BufferConfig().dsa_strategy
        train_nets(spec, st, d.x_train, d.y_train, epochs=2, dsa_strategy=dsa, **kw)
        return dict(zip(ids, st.flats, strict=True))

    together, apart = run([0, 1, 2, 3]), {**run([0, 2]), **run([1, 3])}
    for i in range(4):
        assert torch.equal(together[i], apart[i]), i
