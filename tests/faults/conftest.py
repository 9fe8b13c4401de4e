"""Fault-injection suite: kills at every file operation of a write,
concurrent writers, a full disk, corrupted files and respelled paths.

Every case appends ``(group, case, outcome)`` to a table through the ``outcome``
fixture; at the end of the session the table is printed (and written to
``$LSS_FAULT_TABLE`` when that is set). Everything is tiny and synthetic (4
classes of 3x8x8 images, ConvNets of width 4); children are forked from the test
process (``harness.py``), so the suite runs in a minute or two on 2 cores.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for p in (str(HERE), str(REPO)):
    if p not in sys.path[:2]:
        sys.path.insert(0, p)

_TABLE: list[tuple[str, str, str]] = []

#: The tiny network and buffer of these tests.
TINY_MODEL = {"net_depth": 2, "net_width": 4}
TINY_BUFFER = {
    "num_experts": 2,
    "train_epochs": 4,
    "batch_train": 16,
    "lr_teacher": 0.05,
    "experts_per_group": 2,
}
#: A distillation run of 4 iterations, checkpointing every 2 (3 checkpoints and a set).
TINY_DISTILL = {
    "ipc": 1,
    "rank": 1,
    "subspaces": 2,
    "iterations": 4,
    "syn_steps": 2,
    "expert_epochs": 2,
    "max_start_epoch": 2,
    "lr_factors": 100.0,
    "lr_lr": 1e-5,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # forked children and tiny tensors: one intra-op thread (also keeps fork safe)
    torch.set_num_threads(1)
    yield


def make_tiny_data(seed: int = 0):
    """4 classes x 12 training / 4 test images of 3x8x8 as a RealData (no files)."""
    from lsslib.config import DataConfig
    from lsslib.data import Normaliser, RealData

    g = torch.Generator().manual_seed(seed)
    proto = 1.5 * torch.randn(4, 3, 8, 8, generator=g)

    def draw(m):
        y = torch.arange(4).repeat_interleave(m)
        return proto[y] + 0.5 * torch.randn(4 * m, 3, 8, 8, generator=g), y

    (xtr, ytr), (xte, yte) = draw(12), draw(4)
    cfg = DataConfig(dataset="cifar10", normalisation="none")
    return RealData(
        xtr,
        ytr,
        xte,
        yte,
        [f"c{i}" for i in range(4)],
        Normaliser(torch.zeros(3), torch.ones(3)),
        cfg,
    )


@pytest.fixture(scope="session")
def tiny_data():
    return make_tiny_data()


@pytest.fixture(scope="session")
def tiny_buffer_dir(tmp_path_factory, tiny_data) -> Path:
    """A finished tiny buffer (2 experts x 4 epochs); tests copy it before changing it."""
    from lsslib.config import BufferConfig, ModelConfig
    from lsslib.experts import train_experts

    folder = tmp_path_factory.mktemp("faults_buffer") / "buffers"
    train_experts(
        tiny_data,
        ModelConfig(**TINY_MODEL),
        BufferConfig(**TINY_BUFFER),
        folder,
        log=lambda _l: None,
    )
    return folder


@pytest.fixture
def outcome() -> Callable[[str, str, str], None]:
    """Record one row of the fault table: ``outcome(group, case, result)``."""

    def add(group: str, case: str, result: str) -> None:
        _TABLE.append((group, case, result))

    return add


def format_table(rows: list[tuple[str, str, str]]) -> str:
    head = ("group", "case", "outcome")
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _TABLE:
        return
    text = format_table(_TABLE)
    terminalreporter.section("fault-injection table")
    for row in text.splitlines():
        terminalreporter.write_line(row)
    target = os.environ.get("LSS_FAULT_TABLE")
    if target:
        Path(target).write_text(text + "\n")
