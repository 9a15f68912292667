"""Riding out store outages: exponential backoff with full jitter, a retry loop whose budget is a
*time* (the lock's lease, not a count of attempts), and the record of each outage (start, end,
what waited) that ``training.json`` keeps.

botocore already retries single requests (``standard`` mode: a few attempts, seconds); this is the
layer above it, for the writes a run cannot do without: they keep trying while the caller's
``alive()`` says the run may still write (its lease is valid), and stop the moment it does not.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime
from typing import Any, Callable, TypeVar

from chronos_flows.core.clock import iso, utc_now
from chronos_flows.core.errors import TransientStoreError

T = TypeVar("T")


class Backoff:
    """Delays drawn from ``[c/2, c]`` with ``c = min(cap, base * 2**n)`` ("equal jitter": spread out,
    never zero), ``n`` = failures so far."""

    def __init__(self, base: float = 0.5, cap: float = 20.0, rng: random.Random | None = None) -> None:
        self.base = float(base)
        self.cap = float(cap)
        self.n = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.n))
        self.n += 1
        return self._rng.uniform(ceiling / 2.0, ceiling)

    def reset(self) -> None:
        self.n = 0


class OutageLog:
    """Thread-safe record of store outages seen by one run. An outage starts at the first transient
    failure and ends at the next success; ``waited`` names what was held up (``heartbeat``,
    ``checkpoint checkpoint-10``, ...). :meth:`records` is what ``training.json`` keeps."""

    def __init__(self, wall: Callable[[], datetime] = utc_now, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._done: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None
        self._t0 = 0.0
        self._closed = False

    @property
    def active(self) -> bool:
        return self._current is not None

    def failed(self, what: str, error: BaseException | str) -> None:
        with self._lock:
            if self._closed:
                return  # the run stopped: what still fails afterwards is no new outage
            if self._current is None:
                self._t0 = self.monotonic()
                self._current = {"start": iso(self.wall()), "end": None, "seconds": None, "waited": [],
                                 "failures": 0, "first_error": str(error)[:300]}
            cur = self._current
            cur["failures"] += 1
            if what not in cur["waited"]:
                cur["waited"].append(what)

    def recovered(self) -> None:
        with self._lock:
            if self._current is None:
                return
            cur = self._current
            cur["end"] = iso(self.wall())
            cur["seconds"] = round(self.monotonic() - self._t0, 3)
            self._done.append(cur)
            self._current = None

    def close(self, outcome: str) -> None:
        """End an outage still open when the run stops (e.g. the lease expired), naming ``outcome``."""
        with self._lock:
            self._closed = True
            if self._current is None:
                return
            cur = self._current
            cur.update(end=iso(self.wall()), seconds=round(self.monotonic() - self._t0, 3), outcome=outcome)
            self._done.append(cur)
            self._current = None

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            out = [dict(r, waited=list(r["waited"])) for r in self._done]
            if self._current is not None:
                out.append(dict(self._current, waited=list(self._current["waited"])))
            return out


def time_budget(seconds: float, check: Callable[[], Any] | None = None,
                monotonic: Callable[[], float] = time.monotonic) -> Callable[[], float]:
    """An ``alive`` for :func:`retry_while`: the seconds left of a budget of ``seconds`` from now, after
    ``check()`` (e.g. a run's guard: it raises when the run is fenced, killed or lost)."""
    deadline = monotonic() + seconds

    def alive() -> float:
        if check is not None:
            check()
        return deadline - monotonic()

    return alive


def retry_while(
    fn: Callable[[], T],
    *,
    what: str,
    alive: Callable[[], float],
    outages: OutageLog | None = None,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_give_up: Callable[[TransientStoreError], BaseException] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying :class:`TransientStoreError` with backoff for as long
    as ``alive()`` returns seconds left > 0 (e.g. what is left of the lease). ``alive()`` may raise
    itself (the lock fenced the run): that ends the retries. When no time is left, raise
    ``on_give_up(last error)`` (default: the error itself)."""
    backoff = backoff or Backoff()
    while True:
        try:
            out = fn()
        except TransientStoreError as e:
            if outages is not None:
                outages.failed(what, e)
            left = alive()
            if left <= 0:
                raise (on_give_up(e) if on_give_up else e) from e
            sleep(min(backoff.next(), left))
            continue
        if outages is not None:
            outages.recovered()
        return out
