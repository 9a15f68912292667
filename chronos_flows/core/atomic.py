"""Atomic local-file writes: a reader sees the old file or the new one, never a partial one.

:func:`write_bytes` writes a temporary file in the target's directory, fsyncs it and ``os.replace``-s
it over the target (then fsyncs the directory, where the platform allows); a crash or an error
mid-write leaves the old file and no temporary behind. :func:`write_with` does the same for writers
that want a path (``fig.savefig``, ``save_pretrained`` of one file). Every local write that another
reader may see goes through them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path, suffix: str = ".tmp") -> Path:
    """A unique hidden temporary name beside ``path`` (same directory, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")


def write_with(path: str | os.PathLike, write: Callable[[Path], Any], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` to produce the file at a temporary path beside ``path``, then move it over
    ``path`` atomically. ``suffix`` keeps a writer that infers the format from the name happy
    (``.png`` for matplotlib). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, doc: Any) -> Path:
    return write_bytes(path, json.dumps(doc, default=str).encode())
