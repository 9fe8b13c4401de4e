"""Artifacts on disk: safetensors for tensors, JSON for metadata, atomic commits.

An artifact ``NAME`` is two files: ``NAME.<sha12>.safetensors`` (the tensors,
named by the first 12 hex digits of their sha256) and ``NAME.json`` (schema
version, lsslib and torch versions, the artifact kind, the full configuration,
the name of the tensor file and its sha256). The JSON is the commit record:

1. stale temporary files and orphaned tensor files of ``NAME`` (left by a killed
   write) are removed;
2. the tensors go to a temporary file, which is fsynced and renamed to its
   versioned name (a name no committed JSON points at yet), then the folder is
   fsynced;
3. the JSON goes to a temporary file, fsynced, and renamed onto ``NAME.json``
   (the commit), then the folder is fsynced;
4. the superseded tensor file is deleted.

A kill at any moment therefore leaves the previous complete artifact or the new
complete one, never new tensors beside old JSON. Loading follows the
JSON to its tensor file and checks the schema version, the kind and the
checksum; nothing is ever unpickled. Artifacts of the older layout (a fixed
``NAME.safetensors``) still load. Concurrent writers of one artifact are
serialised by a short lock (:func:`lsslib.locking.file_lock`).

Every file is created with the modes the umask allows (``0o666 & ~umask``), as
``open()`` would, not mkstemp's ``0600``.

Two hooks serve the fault-injection tests (``tests/faults``):

* :data:`fault_hook`, called as ``fault_hook(point, path)`` at every write point
  (after each file operation of a write); the environment variable
  ``LSS_KILL_AT_WRITE=N`` SIGKILLs the process at the N-th write point (1-based)
  and ``LSS_TRACE_WRITES=FILE`` appends ``point<TAB>path`` lines to ``FILE``;
* :data:`free_bytes`, through which :func:`check_free_space` reads the free
  space of a folder (the environment variable ``LSS_FAKE_FREE_BYTES=N`` makes
  every folder report ``N`` bytes free).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from . import __version__
from .locking import file_lock

__all__ = [
    "SCHEMA_VERSION",
    "ArtifactError",
    "DiskFull",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_path",
    "save_artifact",
    "load_artifact",
    "read_metadata",
    "clean_stale",
    "artifact_files",
    "sha256_file",
    "check_free_space",
    "check_outputs_fit",
    "tensors_bytes",
    "free_bytes",
    "config_diff",
    "tensor_digest",
    "fault_hook",
    "provenance",
]

#: Version of the on-disk layout. Bumped when a field changes meaning.
SCHEMA_VERSION = 1

#: Margin added to every disk estimate by :func:`check_free_space` (fraction).
DISK_MARGIN = 0.05

#: Called as ``fault_hook(point, path)`` after every file operation of a write
#: (tests replace it to kill or fail the process there); ``None`` = no hook.
fault_hook: Callable[[str, Path], None] | None = None

_points_seen = 0
_umask_lock = threading.Lock()


class ArtifactError(ValueError):
    """An artifact is missing, corrupted, of another schema or of another kind."""


class DiskFull(OSError):
    """Not enough free disk space for what a stage is about to write."""


def _write_point(point: str, path: Path) -> None:
    """One write point: the test hooks (module docstring) run here."""
    global _points_seen
    _points_seen += 1
    trace = os.environ.get("LSS_TRACE_WRITES")
    if trace:
        with open(trace, "a") as fh:
            fh.write(f"{point}\t{path}\n")
    kill_at = os.environ.get("LSS_KILL_AT_WRITE")
    if kill_at and int(kill_at) == _points_seen:
        os.kill(os.getpid(), signal.SIGKILL)
    if fault_hook is not None:
        fault_hook(point, path)


def _umask() -> int:
    with _umask_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def provenance() -> dict[str, str]:
    """Versions and time recorded in every artifact."""
    return {
        "lsslib_version": __version__,
        "torch_version": torch.__version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _remove_stale_tmp(path: Path) -> None:
    """Remove the temporaries ``.NAME.<random>.tmp`` that killed writes of ``path`` left
    (the caller is ``path``'s one writer: its stage holds the folder's lock)."""
    pattern = re.compile(r"\." + re.escape(path.name) + r"\.[^.]+\.tmp")
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if pattern.fullmatch(p.name):
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Temporaries of ``path`` that a killed write left are removed first. The
    temporary file is ``.NAME.<random>.tmp`` with the umask's modes; on
    success it is fsynced, renamed onto ``path`` and the folder fsynced. On an
    exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        _write_point("tmp_written", tmp_path)
        os.replace(tmp_path, path)
        _write_point("renamed", path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """Hex sha256 of the dtypes, shapes and bytes of ``tensors`` (copied to CPU).

    Used as a content fingerprint (e.g. of the real images a distillation run
    starts from); equal tensors give equal digests on every machine.
    """
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
    return h.hexdigest()


def _free_bytes_default(folder: Path) -> int:
    fake = os.environ.get("LSS_FAKE_FREE_BYTES")
    if fake:
        return int(fake)
    return shutil.disk_usage(folder).free


#: Reads the free bytes of an existing folder; tests replace it to simulate a full disk.
free_bytes: Callable[[Path], int] = _free_bytes_default


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def check_free_space(folder: str | Path, need_bytes: int, *, what: str = "artifact") -> None:
    """Refuse up front when ``need_bytes`` (plus 5 % margin) do not fit in ``folder``.

    The free space is read through :data:`free_bytes` on ``folder`` or its
    nearest existing parent.

    Args:
        folder: where the bytes will be written (need not exist yet).
        need_bytes: the peak number of new bytes on disk (bytes).
        what: names the output in the message.

    Raises:
        DiskFull: (an ``OSError``) naming the folder, the bytes needed and the bytes free.
    """
    folder = Path(folder)
    if need_bytes <= 0:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = free_bytes(probe)
    need = need_bytes * (1 + DISK_MARGIN)
    if need > free:
        raise DiskFull(
            f"not enough disk space for the {what} in {folder}: need about {_mb(need)} "
            f"(peak {_mb(need_bytes)} + {DISK_MARGIN:.0%} margin), {_mb(free)} free. "
            "Free some space or choose another folder."
        )


def tensors_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Payload bytes of a set of tensors (what their safetensors file holds, headers aside)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check_outputs_fit(
    folder: str | Path,
    outputs: Mapping[str, tuple[int, int]],
    *,
    what: str = "run",
    slack: int = 1 << 20,
) -> None:
    """Refuse a stage whose artifacts in ``folder`` will not fit at their peak.

    Args:
        folder: the stage's output folder.
        outputs: artifact name -> ``(bytes of one version, versions on disk at the
            peak)``; an artifact rewritten in place (a checkpoint) has 2 at the peak,
            the old one staying until the new one is committed.
        what: names the stage in the message.
        slack: bytes added for JSON files, logs and figures.

    The bytes the artifacts already occupy in ``folder`` are subtracted.

    Raises:
        DiskFull: naming the folder, the bytes needed and the bytes free.
    """
    folder = Path(folder)
    peak = sum(size * versions for size, versions in outputs.values()) + slack
    have = sum(f.stat().st_size for name in outputs for f in artifact_files(folder / name))
    parts = ", ".join(f"{n} {s / 1e6:.1f} MB x{v}" for n, (s, v) in outputs.items())
    check_free_space(folder, peak - have, what=f"{what} ({parts})")


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two nested dicts differ, with both values.

    Args:
        a, b: JSON-like values (dicts are compared key by key, recursively).
        prefix: prepended to every key (used by the recursion).

    Returns:
        Lines ``"key.sub: <a's value> -> <b's value>"`` (``<missing>`` for an absent
        key), sorted by key; empty when equal.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                va = repr(a[k]) if k in a else "<missing>"
                vb = repr(b[k]) if k in b else "<missing>"
                out.append(f"{key}: {va} -> {vb}")
            else:
                out.extend(config_diff(a[k], b[k], key))
        return out
    if a != b:
        return [f"{prefix or '<value>'}: {a!r} -> {b!r}"]
    return []


def _stem_paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def _tensor_name_re(stem: Path) -> re.Pattern[str]:
    return re.compile(re.escape(stem.name) + r"(\.[0-9a-f]{12})?\.safetensors")


def _tmp_name_re(stem: Path) -> re.Pattern[str]:
    # atomic_path's temporary names: .TARGET.<random>.tmp (mkstemp's random part has no dot)
    target = r"(json|([0-9a-f]{12}\.)?safetensors)"
    return re.compile(r"\." + re.escape(stem.name) + r"\." + target + r"\.[^.]+\.tmp")


def _committed_tensor_name(jpath: Path) -> str | None:
    try:
        meta = json.loads(jpath.read_text())
    except (OSError, ValueError):
        return None
    name = meta.get("tensor_file") if isinstance(meta, dict) else None
    stem = jpath.with_name(jpath.name[: -len(".json")])
    # only a tensor file of this artifact, in this folder, is ever followed (or deleted)
    return name if isinstance(name, str) and _tensor_name_re(stem).fullmatch(name) else None


def clean_stale(stem: str | Path) -> list[Path]:
    """Remove what killed writes of artifact ``stem`` left behind.

    That is the temporary files ``.NAME.*.tmp`` and every ``NAME[.<sha12>].safetensors``
    that ``NAME.json`` does not point at (all of them when there is no JSON; none when
    the JSON is unreadable, which loading refuses and leaves for inspection). Call it
    only as the artifact's one writer (:func:`save_artifact` does, under its lock).

    Returns:
        The removed paths.
    """
    stem = Path(stem)
    folder = stem.parent
    if not folder.is_dir():
        return []
    jpath, _ = _stem_paths(stem)
    keep = _committed_tensor_name(jpath)
    # an unreadable JSON is evidence to keep (loading refuses it): then only temporaries go
    orphans = keep is not None or not jpath.exists()
    tmp_re, tensor_re = _tmp_name_re(stem), _tensor_name_re(stem)
    removed = []
    for p in folder.iterdir():
        if tmp_re.fullmatch(p.name) or (orphans and tensor_re.fullmatch(p.name) and p.name != keep):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        _write_point("cleaned", folder)
    return removed


def artifact_files(stem: str | Path) -> list[Path]:
    """The committed files of artifact ``stem``: its JSON and the tensor file it names."""
    stem = Path(stem)
    jpath, legacy = _stem_paths(stem)
    if not jpath.is_file():
        return []
    name = _committed_tensor_name(jpath)
    tpath = stem.with_name(name) if name else legacy
    return [jpath] + ([tpath] if tpath.is_file() else [])


def save_artifact(
    stem: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: str,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``stem.<sha12>.safetensors`` and commit it with ``stem.json`` (module docstring).

    Args:
        stem: path without suffix.
        tensors: name -> tensor (any dtype safetensors supports; moved to CPU, made
            contiguous).
        kind: what the artifact is (``expert``, ``synset``, ``checkpoint``, ``dataset`` ...);
            checked on load.
        config: the full configuration that produced it (JSON-serialisable).
        extra: further JSON metadata.

    Returns:
        The JSON path.

    Raises:
        DiskFull: the tensor file does not fit on the disk (checked before writing).
    """
    stem = Path(stem)
    jpath, _ = _stem_paths(stem)
    blob = st_save_bytes({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    digest = hashlib.sha256(blob).hexdigest()
    tpath = stem.with_name(f"{stem.name}.{digest[:12]}.safetensors")
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "tensor_file": tpath.name,
        "sha256": digest,
        "config": dict(config or {}),
        **provenance(),
        **dict(extra or {}),
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    stem.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(stem.with_name(f".{stem.name}.lock")):
        clean_stale(stem)
        check_free_space(stem.parent, len(blob) + len(text), what=f"{kind} {stem.name}")
        old = _committed_tensor_name(jpath)
        atomic_write_bytes(tpath, blob)
        atomic_write_text(jpath, text)  # the commit
        if old and old != tpath.name:
            stem.with_name(old).unlink(missing_ok=True)
            _write_point("superseded_removed", stem.with_name(old))
    return jpath


def read_metadata(
    stem: str | Path, *, kind: str | None = None, rebuild_hint: str = ""
) -> dict[str, Any]:
    """Read and check ``stem.json`` (schema version and kind), without the tensors.

    Raises:
        ArtifactError: missing file, invalid JSON, another schema version or kind;
            the message names the file and ``rebuild_hint``.
    """
    stem = Path(stem)
    jpath = stem.with_name(stem.name + ".json")
    hint = f" {rebuild_hint}" if rebuild_hint else ""
    if not jpath.is_file():
        raise ArtifactError(f"{jpath}: metadata file missing (incomplete or never written).{hint}")
    try:
        meta = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{jpath}: not valid JSON ({exc}).{hint}") from exc
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{jpath}: schema version {meta.get('schema_version')!r}, this lsslib reads "
            f"{SCHEMA_VERSION}.{hint}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise ArtifactError(
            f"{jpath}: artifact kind {meta.get('kind')!r}, expected {kind!r}.{hint}"
        )
    return meta


def load_artifact(
    stem: str | Path,
    *,
    kind: str | None = None,
    device: str | torch.device = "cpu",
    rebuild_hint: str = "",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify an artifact written by :func:`save_artifact`.

    Args:
        stem: path without suffix.
        kind: the expected kind (``None`` = any).
        device: where to put the tensors.
        rebuild_hint: appended to error messages (how to rebuild the file).

    Returns:
        ``(tensors, metadata)``.

    Raises:
        ArtifactError: missing files, schema or kind mismatch, a checksum that does
            not match (truncated or corrupted tensor file), or an unreadable file.
    """
    stem = Path(stem)
    hint = f" {rebuild_hint}" if rebuild_hint else ""
    for attempt in range(3):
        meta = read_metadata(stem, kind=kind, rebuild_hint=rebuild_hint)
        name = meta.get("tensor_file", stem.name + ".safetensors")
        if not isinstance(name, str) or not _tensor_name_re(stem).fullmatch(name):
            raise ArtifactError(
                f"{stem.with_name(stem.name + '.json')}: tensor_file {name!r} is not a tensor "
                f"file of this artifact.{hint}"
            )
        tpath = stem.with_name(name)
        try:
            blob = tpath.read_bytes()
            break
        except FileNotFoundError:
            # a writer may have committed a new version (and removed this one) between
            # the two reads: read the JSON again before giving up
            if attempt == 2 or _committed_tensor_name(stem.with_name(stem.name + ".json")) == name:
                raise ArtifactError(f"{tpath}: tensor file missing.{hint}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("sha256"):
        raise ArtifactError(
            f"{tpath}: sha256 {digest[:12]}... does not match the recorded "
            f"{str(meta.get('sha256'))[:12]}... (truncated or corrupted).{hint}"
        )
    try:
        tensors = st_load_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:  # pragma: no cover - sha guards
        raise ArtifactError(f"{tpath}: unreadable safetensors ({exc}).{hint}") from exc
    return {k: v.to(device) for k, v in tensors.items()}, meta
