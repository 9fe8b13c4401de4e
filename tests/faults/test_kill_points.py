"""A SIGKILL right after every file operation of a write: the artifact on disk is
always the previous complete one or the new complete one, and every killed run
resumes to the same tensors, bitwise, as an uninterrupted one."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import torch
from conftest import TINY_BUFFER, TINY_DISTILL, TINY_MODEL
from harness import count_ops, run_child

from lsslib.artifacts import load_artifact, save_artifact


def _leftovers(folder: Path) -> list[str]:
    """Files that must not survive a finished write: temporaries, locks, orphans."""
    names = [p.name for p in folder.rglob("*")]
    bad = [n for n in names if n.endswith(".tmp") or n.endswith(".lock") or ".partial" in n]
    for stem in {n.split(".")[0] for n in names if n.endswith(".safetensors")}:
        tensors = [n for n in names if n.startswith(stem + ".") and n.endswith(".safetensors")]
        if len(tensors) != 1:
            bad += tensors
    return sorted(bad)


def _summarise(outcome, group: str, per_op: dict[str, list[str]], then: str) -> None:
    for op, states in per_op.items():
        seen = ", ".join(sorted(set(states)))
        outcome(group, f"kill after {op} (x{len(states)})", f"on disk: {seen}; {then}")


def test_artifact_kill_at_every_file_operation_leaves_old_or_new(tmp_path, outcome):
    stem = tmp_path / "a"
    old = {"t": torch.arange(6.0), "u": torch.ones(2, dtype=torch.int64)}
    new = {"t": torch.arange(6.0) + 1, "u": torch.zeros(2, dtype=torch.int64)}
    save_artifact(stem, old, kind="k", extra={"v": 1})
    ops = count_ops(lambda: save_artifact(stem, new, kind="k", extra={"v": 2}), tmp_path)
    (tmp_path / "ops.json").unlink()
    save_artifact(stem, old, kind="k", extra={"v": 1})
    per_op: dict[str, list[str]] = defaultdict(list)
    for k in range(1, len(ops) + 1):
        code = run_child(lambda: save_artifact(stem, new, kind="k", extra={"v": 2}), kill_after=k)
        assert code == -9, (k, ops[k - 1])
        t, meta = load_artifact(stem, kind="k")  # never a mix, never refused
        want = old if meta["v"] == 1 else new
        assert all(torch.equal(t[n], want[n]) for n in want), (k, ops[k - 1])
        per_op[ops[k - 1]].append(f"v{meta['v']}")
        save_artifact(stem, old, kind="k", extra={"v": 1})  # the next write cleans up
        assert _leftovers(tmp_path) == [], (k, ops[k - 1])
    _summarise(outcome, "kill: save_artifact", per_op, "loads, next save leaves no debris")


def _distill(buffer_dir: Path, out: Path, data) -> None:
    from lsslib.config import DistillConfig
    from lsslib.distill import Distiller
    from lsslib.experts import ExpertBuffer

    cfg = DistillConfig(**TINY_DISTILL)
    Distiller(cfg, data.config, ExpertBuffer(buffer_dir), data.x_train, data.y_train, out).run()


def _run_state(out: Path, data) -> str:
    """What a killed run left, checked loadable: ``ckpt@<iteration>`` and/or ``synset``."""
    parts = []
    if (out / "checkpoint.json").exists():
        _, meta = load_artifact(out / "checkpoint", kind="distill_checkpoint")
        parts.append(f"ckpt@{meta['iteration']}")
    if (out / "synset.json").exists():
        load_artifact(out / "synset", kind="synset")
        parts.append("synset")
    return "+".join(parts) or "nothing"


def _strip(log):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in log]


def test_distillation_kill_at_every_file_operation_resumes_bitwise(
    tmp_path, tiny_buffer_dir, tiny_data, outcome
):
    _distill(tiny_buffer_dir, tmp_path / "warm", tiny_data)  # forked children start warm
    ref = tmp_path / "ref"
    ops = count_ops(lambda: _distill(tiny_buffer_dir, ref, tiny_data), tmp_path)
    ref_syn, _ = load_artifact(ref / "synset", kind="synset")
    _, ref_ckpt = load_artifact(ref / "checkpoint", kind="distill_checkpoint")
    per_op: dict[str, list[str]] = defaultdict(list)
    for k in range(1, len(ops) + 1):
        out = tmp_path / "cut"
        code = run_child(lambda out=out: _distill(tiny_buffer_dir, out, tiny_data), kill_after=k)
        assert code == -9, (k, ops[k - 1])
        state = _run_state(out, tiny_data)  # loads, or raises: never a refused checkpoint
        assert run_child(lambda out=out: _distill(tiny_buffer_dir, out, tiny_data)) == 0, k
        syn, _ = load_artifact(out / "synset", kind="synset")
        _, ckpt = load_artifact(out / "checkpoint", kind="distill_checkpoint")
        assert set(syn) == set(ref_syn)
        assert all(torch.equal(syn[n], ref_syn[n]) for n in ref_syn), (k, ops[k - 1])
        assert _strip(ckpt["log"]) == _strip(ref_ckpt["log"]), (k, ops[k - 1])
        assert _leftovers(out) == [], (k, ops[k - 1])
        per_op[ops[k - 1]].append(state)
        shutil.rmtree(out)
    _summarise(outcome, "kill: distillation", per_op, "resumed bitwise")
    outcome(
        "kill: distillation",
        f"all {len(ops)} file operations of a run",
        "every kill resumed bitwise",
    )


def _experts(folder: Path, data) -> None:
    from lsslib.config import BufferConfig, ModelConfig
    from lsslib.experts import train_experts

    # two groups of one expert, 2 epochs: every kind of write point, in few operations
    cfg = BufferConfig(**{**TINY_BUFFER, "train_epochs": 2, "experts_per_group": 1})
    train_experts(data, ModelConfig(**TINY_MODEL), cfg, folder, log=lambda _l: None)


def test_expert_buffer_kill_at_every_file_operation_resumes_bitwise(tmp_path, tiny_data, outcome):
    from lsslib.experts import ExpertBuffer

    _experts(tmp_path / "warm", tiny_data)  # forked children start warm
    ref = tmp_path / "ref"
    ops = count_ops(lambda: _experts(ref, tiny_data), tmp_path)
    a = ExpertBuffer(ref)
    per_op: dict[str, list[str]] = defaultdict(list)
    for k in range(1, len(ops) + 1):
        out = tmp_path / "cut"
        assert run_child(lambda out=out: _experts(out, tiny_data), kill_after=k) == -9, k
        state = "index" if (out / "buffer.json").exists() else "partial"
        assert run_child(lambda out=out: _experts(out, tiny_data)) == 0, (k, ops[k - 1])
        b = ExpertBuffer(out)
        b.verify()
        for i in range(a.num_experts):
            assert torch.equal(a.trajectory(i), b.trajectory(i)), (k, ops[k - 1], i)
        assert a.accuracy_curves() == b.accuracy_curves()
        assert _leftovers(out) == [] and not list(out.glob("group_*")), (k, ops[k - 1])
        per_op[ops[k - 1]].append(state)
        shutil.rmtree(out)
    _summarise(outcome, "kill: expert buffer", per_op, "resumed bitwise")
