"""The one clock format of the store's records: UTC, ISO 8601 with milliseconds and a ``Z``."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(at: datetime | str | None = None) -> str:
    """``at`` (default: now) as ``2026-12-04T03:00:00.000Z``; a string is taken as already formatted."""
    if at is None:
        at = utc_now()
    if isinstance(at, str):
        return at
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))
