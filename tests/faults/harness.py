"""Fault-injection helpers: forked children killed after the N-th file operation.

A child is forked from the test process (torch already imported and warm, one
thread), so a trial costs milliseconds of start-up instead of seconds. In the
child, the file operations of a write (``tempfile.mkstemp``, ``os.fsync``,
``os.replace``, ``os.rename``, ``os.unlink``, ``os.rmdir``) are wrapped: each one
is counted after it returns, and the child SIGKILLs itself right after the N-th.
The wrapping is at the ``os`` level, so it does not depend on lsslib's own write
points (:data:`lsslib.artifacts.fault_hook`) and behaves the same on any version
of the library.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

OPS = ("fsync", "replace", "rename", "unlink", "rmdir")


def _describe(op: str, args: tuple) -> str:
    target = ""
    if op in ("replace", "rename") and len(args) >= 2:
        target = Path(str(args[1])).name
    elif op in ("unlink", "rmdir") and args:
        target = Path(str(args[0])).name
    elif op == "mkstemp":
        target = "(new temporary file)"
    elif op == "fsync":
        target = "(file or folder)"
    # versioned and temporary names vary from run to run: keep their shape
    target = re.sub(r"\.[0-9a-f]{12}\.safetensors", ".<sha12>.safetensors", target)
    target = re.sub(r"\.[A-Za-z0-9_]{8}\.tmp$", ".<random>.tmp", target)
    target = re.sub(r"epoch_\d{3}", "epoch_NNN", target)
    target = re.sub(r"expert_\d{3}", "expert_NNN", target)
    return f"{op} {target}".strip()


def _install(kill_after: int | None, trace: list[str]) -> None:
    def wrap(owner, name: str, label: str) -> None:
        real = getattr(owner, name)

        def op(*args, **kwargs):
            out = real(*args, **kwargs)
            trace.append(_describe(label, args))
            if kill_after is not None and len(trace) == kill_after:
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        setattr(owner, name, op)

    for name in OPS:
        wrap(os, name, name)
    wrap(tempfile, "mkstemp", "mkstemp")


def run_child(
    body: Callable[[], object],
    *,
    kill_after: int | None = None,
    trace_file: Path | None = None,
) -> int:
    """Run ``body()`` in a forked child; kill it right after file operation ``kill_after``.

    Args:
        body: what the child runs (its return value is ignored).
        kill_after: 1-based index of the file operation after which the child
            SIGKILLs itself; ``None`` = never.
        trace_file: where the child writes the list of its file operations (JSON) when
            ``body`` returns.

    Returns:
        0 when ``body`` returned, 1 when it raised (traceback on stderr), ``-9`` when
        it was killed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            trace: list[str] = []
            _install(kill_after, trace)
            body()
            if trace_file is not None:
                Path(trace_file).write_text(json.dumps(trace))
            code = 0
        except BaseException:  # noqa: BLE001 - report everything, then leave
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def count_ops(body: Callable[[], object], tmp: Path) -> list[str]:
    """The file operations ``body`` performs, in order (from an uninterrupted child)."""
    trace_file = tmp / "ops.json"
    code = run_child(body, trace_file=trace_file)
    assert code == 0, f"uninterrupted child failed with {code}"
    return json.loads(trace_file.read_text())


def hold_in_child(body: Callable[[Callable[[], None]], object]) -> tuple[int, Callable[[], None]]:
    """Fork a child that runs ``body(ready)`` and then waits to be killed.

    ``body`` calls ``ready()`` once it holds what the test needs (a lock, a run in
    progress) and may then block; if it returns, the child calls ``ready()`` itself,
    keeps what ``body`` returned alive and waits.

    Returns:
        ``(pid, kill)``: the child's pid (once it is ready) and a function that
        SIGKILLs and reaps it.
    """
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        sent = []

        def ready() -> None:
            if not sent:
                os.write(w, b"ok")
                sent.append(True)

        try:
            keep = body(ready)  # noqa: F841 - keep whatever body returns (a lock) alive
            ready()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            if not sent:
                os.write(w, b"no")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        while True:
            signal.pause()
    os.close(w)
    status = os.read(r, 2)
    os.close(r)

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    if status != b"ok":
        kill()
        raise AssertionError("the holding child failed (see its traceback above)")
    return pid, kill


def start_child(body: Callable[[], object]) -> Callable[[], int]:
    """Fork a child running ``body()`` now; returns ``wait()`` giving its exit code
    (0 returned, 1 raised, negative signal number when killed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def wait() -> int:
        _, status = os.waitpid(pid, 0)
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    return wait


def write_tiny_cifar_archive(root: Path, per_class: int = 2, side: int = 4, seed: int = 0) -> Path:
    """``root/cifar10-jpeg.tar.xz``: an ImageFolder tree (2 classes, PNGs) as the
    offline CIFAR-10 archive is laid out. Returns the archive."""
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    tree = root / "tree" / "cifar10-jpeg"
    for split in ("train", "test"):
        for cls in ("ant", "bee"):
            d = tree / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    archive = root / "cifar10-jpeg.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    import shutil

    shutil.rmtree(root / "tree")
    return archive


def tree(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted: what a refused stage must not change."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def make_file(path: Path) -> Path:
    """A small file at ``path`` (its folders made): a file where a folder belongs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


def assert_refused_cleanly(case: tuple, world: Path, match: str | None = None) -> None:
    """Run one ``(setup, call, message)`` case: set up the conflict, then the stage must
    raise ``ValueError`` matching the message and leave ``world`` exactly as it was."""
    setup, call, message = case
    if setup is not None:
        setup(world)
    before = tree(world)
    with pytest.raises(ValueError, match=match or message):
        call(world)
    assert tree(world) == before, "the refused stage wrote something"
