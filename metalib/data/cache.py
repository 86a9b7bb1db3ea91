"""A checksummed on-disk cache for tensors that are expensive to make (rendered or decoded data).

A cache entry is one file ``<key>.pt`` holding ``{"sha256": ..., "payload": bytes}``: the payload
is the ``torch.save`` of a dict of tensors and plain values. Writes are atomic (a temporary file in
the same folder, then ``os.replace``), so an interrupted run never leaves half a file; a file whose
checksum does not match is reported with a warning, removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def digest(*parts: Any) -> str:
    """A short, stable hex key for the given parts (strings, numbers, bytes, files' contents).

    ``Path`` parts are hashed by content, so editing a font or a source file changes the key.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            kind, data = "path", part.read_bytes()
        elif isinstance(part, bytes):
            kind, data = "bytes", part
        else:
            kind, data = type(part).__name__, repr(part).encode()
        # type and length before the data, so that no two different part lists collide
        h.update(f"{kind}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: Path, obj: dict[str, Any]) -> None:
    """Save ``obj`` (tensors and plain values) to ``path`` atomically, with a sha256 checksum."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    wrapper = io.BytesIO()
    torch.save({"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, wrapper)
    _write_atomic(Path(path), wrapper.getvalue())


def load(path: Path) -> dict[str, Any] | None:
    """The dict cached at ``path``; ``None`` if missing or corrupt (then warned of and removed)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        wrapper = torch.load(path, weights_only=True)
        payload = wrapper["payload"]
        if hashlib.sha256(payload).hexdigest() != wrapper["sha256"]:
            raise ValueError("checksum mismatch")
        return torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:  # any unreadable file is treated the same way: rebuilt
        warnings.warn(
            f"cache file {path} is corrupt ({type(err).__name__}: {err}); "
            "removing it and rebuilding",
            RuntimeWarning,
            stacklevel=2,
        )
        path.unlink(missing_ok=True)
        return None


def cached(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load ``path`` if it holds a valid entry, else ``build()`` it, save it and return it."""
    obj = load(path)
    if obj is None:
        obj = build()
        save(path, obj)
    return obj
