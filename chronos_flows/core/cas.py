"""Compare-and-swap on one store object: the read → decide → conditional write → retry loop that
every shared record (state file, lock generation counter, training.json, champion.json) uses.

``step(current)`` gets the object as read (``(data, etag)`` or ``None`` when absent) and returns
either :class:`Write` (the new bytes and the value to return once written) or :class:`Keep` (write
nothing, return the value). The write is ``put_if_absent`` when the object was absent, else
``put_if_match`` on the ETag just read, so a concurrent writer makes it fail with
:class:`~chronos_flows.core.errors.PreconditionFailed`; then the object is read again and ``step``
decides again. ``step`` may raise to stop (e.g. the lock belongs to another run). After
``attempts`` lost races, ``exhausted(key_uri)`` is raised (a :class:`TransientStoreError` naming the
object unless the caller says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Optional, TypeVar

from chronos_flows.core.errors import PreconditionFailed, TransientStoreError
from chronos_flows.core.store import ObjectStore

T = TypeVar("T")
Current = Optional[tuple[bytes, str]]


@dataclass(frozen=True)
class Write(Generic[T]):
    data: bytes
    value: T


@dataclass(frozen=True)
class Keep(Generic[T]):
    value: T


def _contention(uri: str) -> Exception:
    return TransientStoreError(f"{uri} keeps changing (concurrent writers); retry")


def compare_and_swap(store: ObjectStore, key: str, step: Callable[[Current], "Write[T] | Keep[T]"], *,
                     attempts: int = 50, exhausted: Callable[[str], Exception] = _contention) -> tuple[T, Optional[str]]:
    """Run ``step`` on the current object and write what it returns conditionally, retrying lost
    races. Returns ``(value, etag)``: the ETag written, or the one read when ``step`` kept it."""
    for _ in range(attempts):
        current = store.get(key)
        out = step(current)
        if isinstance(out, Keep):
            return out.value, (current[1] if current is not None else None)
        try:
            etag = store.put_if_absent(key, out.data) if current is None else store.put_if_match(key, out.data, current[1])
        except PreconditionFailed:
            continue
        return out.value, etag
    raise exhausted(store.uri(key))
