"""The object-store interface every backend implements (local directory, S3).

Keys are ``/``-separated paths relative to the store root (``{env}/system-state.json``). The
conditional operations are what make the state file a lock: ``put_if_absent`` is an exclusive
create (S3 ``IfNoneMatch="*"``), ``put_if_match`` and ``delete_if_match`` are compare-and-swap on
the ETag (S3 ``IfMatch``). A lost condition raises :class:`~chronos_flows.core.errors.PreconditionFailed`;
never overwrite blindly after one. Every ``put`` is atomic: a reader sees the old object or the new
one, never a partial one. Implementations live in ``blocks/store.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class ObjectStore(Protocol):
    #: The URL the store was opened with (``file:///abs/path`` or ``s3://bucket/prefix``).
    url: str

    def get(self, key: str) -> tuple[bytes, str] | None:
        """Return ``(data, etag)`` or ``None`` if the key does not exist."""

    def put(self, key: str, data: bytes) -> str:
        """Atomically write ``data`` (overwriting); return the new ETag."""

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create ``key`` only if it does not exist; raise ``PreconditionFailed`` otherwise."""

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace ``key`` only if its current ETag is ``etag``; raise ``PreconditionFailed`` otherwise."""

    def delete(self, key: str) -> bool:
        """Delete ``key`` if present (idempotent). Return whether something was deleted."""

    def delete_if_match(self, key: str, etag: str) -> None:
        """Delete ``key`` only if its current ETag is ``etag``; raise ``PreconditionFailed`` otherwise."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    def list(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (recursive), sorted."""

    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]:
        """Upload every file below ``local_dir`` to ``prefix``; return the keys written."""

    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
        """Download every key under ``prefix`` into ``local_dir``; return the files written."""

    def uri(self, key: str) -> str:
        """A URL a person or another tool can use for ``key`` (``file://...`` or ``s3://...``)."""


def single_attempt(store: ObjectStore, timeout: float | None = None) -> ObjectStore:
    """``store`` making one attempt per request, where it offers that (``S3Store.single_attempt()``:
    the SDK's own retries off), else ``store`` itself: for callers that retry themselves against a
    time budget (the lock's lease, the training upload queue), so that no SDK retry of a write is
    sent after the caller has stopped. ``timeout`` bounds each request where the store can."""
    make = getattr(store, "single_attempt", None)
    if not callable(make):
        return store
    return make(timeout) if timeout is not None else make()


def put_file(store: ObjectStore, key: str, src: Path) -> None:
    """Write the local file ``src`` to ``key`` (streamed where the store can, else read whole)."""
    put = getattr(store, "put_file", None)
    if callable(put):
        put(key, src)
    else:
        store.put(key, Path(src).read_bytes())
