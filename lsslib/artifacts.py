"""Artifacts on disk: safetensors for tensors, JSON for metadata, atomic writes.

An artifact ``NAME`` is two files: ``NAME.safetensors`` (the tensors) and
``NAME.json`` (schema version, lsslib and torch versions, the artifact kind, the
full configuration, and the sha256 of the tensor file). Both are written to a
temporary file in the same folder and renamed, tensors first: the JSON is the
commit record, so a crash leaves either the previous artifact or none, never a
half-written one that loads. Loading checks the schema version, the kind and the
checksum; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from . import __version__

__all__ = [
    "SCHEMA_VERSION",
    "ArtifactError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_path",
    "save_artifact",
    "load_artifact",
    "read_metadata",
    "sha256_file",
    "check_free_space",
    "provenance",
]

#: Version of the on-disk layout. Bumped when a field changes meaning.
SCHEMA_VERSION = 1


class ArtifactError(ValueError):
    """An artifact is missing, corrupted, of another schema or of another kind."""


def provenance() -> dict[str, str]:
    """Versions and time recorded in every artifact."""
    return {
        "lsslib_version": __version__,
        "torch_version": torch.__version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
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


def check_free_space(folder: str | Path, need_bytes: int, *, what: str = "artifact") -> None:
    """Refuse up front when ``need_bytes`` (plus 5 % margin) do not fit in ``folder``.

    Raises:
        OSError: naming the folder, the bytes needed and the bytes free.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need_bytes * 1.05 > free:
        raise OSError(
            f"not enough disk space for the {what} in {folder}: need about "
            f"{need_bytes / 1e6:.1f} MB, {free / 1e6:.1f} MB free"
        )


def save_artifact(
    stem: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: str,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``stem.safetensors`` and ``stem.json`` atomically.

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
    """
    stem = Path(stem)
    tpath = stem.with_name(stem.name + ".safetensors")
    jpath = stem.with_name(stem.name + ".json")
    blob = st_save_bytes({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    atomic_write_bytes(tpath, blob)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "tensor_file": tpath.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "config": dict(config or {}),
        **provenance(),
        **dict(extra or {}),
    }
    atomic_write_json(jpath, meta)
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
    meta = read_metadata(stem, kind=kind, rebuild_hint=rebuild_hint)
    tpath = stem.with_name(meta.get("tensor_file", stem.name + ".safetensors"))
    hint = f" {rebuild_hint}" if rebuild_hint else ""
    if not tpath.is_file():
        raise ArtifactError(f"{tpath}: tensor file missing.{hint}")
    blob = tpath.read_bytes()
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
