"""One writer per output folder: advisory locks that die with their process.

Snakemake's own lock does not cover papermill or the library run directly, so
every stage takes a lock of its own:

* :func:`hold_folder` / :func:`folder_lock` guard a stage's output folder (the
  buffer folder, a distillation run folder, an evaluation folder). A second
  writer is refused at once with :class:`LockBusy`, whose message names the
  holder's pid and command line.
* :func:`file_lock` serialises writers of one file or cache entry (one artifact,
  one decoded split, one unpacked archive); a second writer waits for the first.

A lock is ``fcntl.flock`` on a lock file (``FOLDER/.lsslib.lock``, or the path
given): the kernel releases it when its process dies, however it dies (SIGKILL
included), so a killed run never leaves a lock to clean up by hand. The holder
writes its pid, command line, parent's command line, host and start time into
the lock file, and removes the file when it releases the lock normally. Within
one process the locks are re-entrant (counted per path). POSIX only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_NAME",
    "LockBusy",
    "FolderLock",
    "check_output_folder",
    "hold_folder",
    "folder_lock",
    "file_lock",
    "read_holder",
    "remove_stale_locks",
]

#: Name of the lock file inside a guarded folder.
LOCK_NAME = ".lsslib.lock"

_held: dict[str, list[Any]] = {}  # key -> [fd, count, path]
_guard = threading.RLock()


def _forget_in_child() -> None:
    # a forked child shares its parent's lock descriptions: it must neither count on
    # them nor release (unlink) them; its own acquisitions start afresh
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class LockBusy(RuntimeError):
    """Another process holds the lock.

    Attributes:
        path: the lock file.
        holder: what the holder wrote into it (``pid``, ``cmd``, ``parent_cmd``,
            ``host``, ``since_utc``, ``what``); empty when it could not be read.
    """

    def __init__(self, message: str, path: Path, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder


def _cmdline(pid: int | None = None) -> str:
    try:
        import psutil

        proc = psutil.Process(pid) if pid else psutil.Process()
        return " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - best effort: psutil missing, process gone, no access
        return " ".join([sys.executable, *sys.argv]) if pid is None else "?"


def _holder_record(what: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "cmd": _cmdline(),
        "parent_cmd": _cmdline(os.getppid()),
        "host": socket.gethostname(),
        "since_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "what": what,
    }


def read_holder(path: str | Path) -> dict[str, Any]:
    """What the holder of lock file ``path`` wrote into it (``{}`` if unreadable)."""
    for _ in range(3):  # the holder writes its record just after taking the lock
        try:
            rec = json.loads(Path(path).read_text())
            if isinstance(rec, dict):
                return rec
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (its pid could not be read)"
    cmd = str(holder.get("cmd", "?"))
    parent = str(holder.get("parent_cmd", ""))
    text = f"pid {holder.get('pid', '?')} (command: {cmd}"
    if parent and parent != "?":
        text += f"; started by: {parent}"
    return text + f") on {holder.get('host', '?')} since {holder.get('since_utc', '?')}"


def _key(path: Path) -> str:
    return str(path.parent.resolve() / path.name)


def _acquire(
    path: Path,
    *,
    what: str,
    wait: float | None,
    busy_message: Callable[[dict[str, Any]], str],
    on_wait: Callable[[str], None] | None = None,
) -> str:
    key = _key(path)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return key
    deadline = None if wait is None else time.monotonic() + wait
    told = False
    pause = 0.02
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(path)
            if deadline is not None and time.monotonic() >= deadline:
                raise LockBusy(busy_message(holder), path, holder) from None
            if on_wait is not None and not told:
                on_wait(f"waiting for {_describe(holder)}, which is writing {what}")
                told = True
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
            continue
        # the previous holder may have removed the file between our open and our lock:
        # then we hold a lock on a file nobody else can see; start again
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        record = json.dumps(_holder_record(what), indent=1).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        with _guard:
            _held[key] = [fd, 1, path]
        return key


def _release(key: str) -> None:
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
    fd, _, path = entry
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)  # still holding the lock: nobody can be between open and lock
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_folder(folder: str | Path, param: str) -> Path:
    """Refuse an output folder that is, or lies under, an existing file.

    Args:
        folder: the output folder (need not exist).
        param: the parameter's name, for the message (``buffer_dir``, ``out_dir`` ...).

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: naming the parameter, the value and the file in the way.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is an existing file" if probe == folder else f"lies under the file {probe}"
        raise ValueError(
            f"invalid parameter {param}={str(folder)!r}: it {where}; allowed a folder "
            "(existing or to be created)"
        )
    return folder


def _folder_busy(folder: Path, param: str, stage: str) -> Callable[[dict[str, Any]], str]:
    def message(holder: dict[str, Any]) -> str:
        return (
            f"{param}={str(folder)!r} is being written by another {stage} run: "
            f"{_describe(holder)}. Two writers would overwrite each other's files: wait for it "
            f"to finish (or stop it), or choose another {param}. (Lock file: {folder / LOCK_NAME}; "
            "it is released automatically when its process ends.)"
        )

    return message


class FolderLock:
    """A held folder lock (see :func:`hold_folder`); released by :meth:`release`,
    when the object is garbage-collected, at interpreter exit, or when the process dies."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self._finalizer = weakref.finalize(self, _release, key)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Release the lock now (idempotent)."""
        self._finalizer()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_folder(folder: str | Path, *, param: str, stage: str, wait: float = 0.0) -> FolderLock:
    """Take the one-writer lock of a stage's output folder and keep it.

    Creates ``folder`` (after :func:`check_output_folder`) and locks
    ``folder/.lsslib.lock``. The lock lasts as long as the returned object (or
    until :meth:`FolderLock.release`), at most as long as the process.

    Args:
        folder: the output folder.
        param: its parameter name, for messages.
        stage: the stage, for messages (``expert buffer``, ``distillation``, ``evaluation``).
        wait: seconds to wait for another holder (0 = refuse at once).

    Returns:
        The :class:`FolderLock`.

    Raises:
        ValueError: ``folder`` is or lies under a file.
        LockBusy: another process holds the lock; the message names its pid and command.
    """
    folder = check_output_folder(folder, param)
    folder.mkdir(parents=True, exist_ok=True)
    key = _acquire(
        folder / LOCK_NAME,
        what=f"{stage} output {folder}",
        wait=wait,
        busy_message=_folder_busy(folder, param, stage),
    )
    remove_stale_locks(folder)
    return FolderLock(folder, key)


def remove_stale_locks(folder: str | Path) -> list[Path]:
    """Remove the per-file lock files (``.*.lock``) in ``folder`` that no process holds.

    A process killed while it held one leaves the file (not the lock) behind;
    :func:`hold_folder` sweeps them once it owns the folder.

    Returns:
        The removed paths.
    """
    removed = []
    for p in Path(folder).glob(".*.lock"):
        if p.name == LOCK_NAME or _key(p) in _held:
            continue
        try:
            fd = os.open(p, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(p).st_ino == os.fstat(fd).st_ino:
                os.unlink(p)
                removed.append(p)
        except OSError:  # held by a live process (or gone): leave it
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def folder_lock(
    folder: str | Path, *, param: str, stage: str, wait: float = 0.0
) -> Iterator[FolderLock]:
    """:func:`hold_folder` as a context manager (released on exit)."""
    lock = hold_folder(folder, param=param, stage=stage, wait=wait)
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def file_lock(
    path: str | Path,
    *,
    what: str | None = None,
    wait: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the lock file ``path`` (created beside what it guards) for a block.

    Args:
        path: the lock file (its folder must exist); removed on release.
        what: names the guarded thing in messages (default: ``path``).
        wait: seconds to wait for another holder; ``None`` = as long as it takes.
        on_wait: receives one line when the lock is busy and we start waiting.

    Raises:
        LockBusy: still busy after ``wait`` seconds.
    """
    path = Path(path)
    what = what or str(path)

    def message(holder: dict[str, Any]) -> str:
        return f"{what} is being written by {_describe(holder)}; gave up after {wait} s"

    key = _acquire(path, what=what, wait=wait, busy_message=message, on_wait=on_wait)
    try:
        yield path
    finally:
        _release(key)
