"""The run-state lock: ``{env}/system-state.json`` is both the live status of the one training run
allowed per environment and its mutual-exclusion lock. Pure protocol over any
:class:`~chronos_flows.core.store.ObjectStore` (no boto3/prefect here).

Protocol (after litestream's S3 leaser):

* **acquire** — exclusive create (``put_if_absent``). A state file whose heartbeat is younger than
  its lease → :class:`LockedError` at once. One that looks stale by the wall clock is taken over only
  after this contender has also seen its ETag stay unchanged for a whole lease on its *own* monotonic
  clock (so clock skew between machines cannot steal a live lock); the takeover is a
  ``put_if_match`` on that ETag and records the previous run as failed in its ``training.json``.
* **generation** — a fencing token, +1 on every acquisition (including takeovers), kept monotone
  across releases by the counter object ``{env}/lock-generation.json``, which only the holder of
  the state file advances (CAS).
* every write of the holder is a compare-and-swap on the ETag; each write bumps ``seq`` so content
  (and so the MD5 ETag) never repeats. A lost CAS is re-read: still ours but ``killed`` →
  :class:`RunKilledError` (the handle adopts the new ETag so it can still go killed → cleanup →
  release); another run/generation or gone → :class:`LostLockError`.

The state file's codec, :class:`StateSnapshot`, :func:`read_state` and :func:`kill` live in
:mod:`chronos_flows.runstate.statefile`, the launcher→flow hand-off in :mod:`chronos_flows.runstate.handoff`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any, Callable, Iterator

from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.core.errors import (
    BadInputError,
    ChronosFlowsError,
    LeaseExpiredError,
    LockedError,
    LostLockError,
    PreconditionFailed,
    RunKilledError,
    TransientStoreError,
)
from chronos_flows.core.cas import Write, compare_and_swap
from chronos_flows.core.clock import iso, utc_now
from chronos_flows.core.retry import Backoff, OutageLog, retry_while
from chronos_flows.runstate.statefile import (
    TERMINAL_STATES,
    InvalidTransition,
    StateSnapshot,
    check_transition,
    dump_state,
    read_state,
    write_transition,
)
from chronos_flows.core.store import ObjectStore, single_attempt


SCHEMA_VERSION = 1


def _counter_value(got: tuple[bytes, str] | None) -> int:
    """The generation the counter object holds (0 when absent or unreadable)."""
    if got is None:
        return 0
    try:
        return int(json.loads(got[0])["generation"])
    except (ValueError, KeyError, TypeError):
        return 0


class RunLock:
    """The lock of one environment. Keep one instance per contender: it remembers since when (on
    its monotonic clock) it has seen the current ETag, so a contender that keeps polling takes over
    a crashed holder about one lease after the holder's last heartbeat."""

    def __init__(
        self,
        store: ObjectStore,
        env: str,
        lease_seconds: float = 120.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utc_now,
        poll_seconds: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if lease_seconds <= 0:
            raise BadInputError(f"lease_seconds must be > 0 (got {lease_seconds})")
        self.store = store
        self.env = env
        self.key = layout.state_key(env)
        self.lease_seconds = float(lease_seconds)
        self.monotonic = monotonic
        self.wall = wall
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self._seen_etag: str | None = None
        self._seen_since: float = 0.0

    # -- reading ---------------------------------------------------------------------------------
    def read(self) -> StateSnapshot | None:
        snap = read_state(self.store, self.env)
        self._observe(snap)
        return snap

    def _observe(self, snap: StateSnapshot | None) -> float:
        """Record the ETag seen now; return for how long (monotonic) it has been unchanged."""
        now = self.monotonic()
        etag = snap.etag if snap else None
        if etag != self._seen_etag:
            self._seen_etag = etag
            self._seen_since = now
        return now - self._seen_since

    def _lease_of(self, snap: StateSnapshot) -> float:
        try:
            return float(snap.state.get("lease_seconds") or self.lease_seconds)
        except (TypeError, ValueError):
            return self.lease_seconds

    # -- generation counter ----------------------------------------------------------------------
    def _read_counter(self) -> int:
        return _counter_value(self.store.get(layout.generation_key(self.env)))

    def _advance_counter(self, generation: int) -> int:
        """Set the counter to ``generation`` (compare-and-swap). If it reached ``generation`` meanwhile,
        claim the next free one. Returns the generation actually claimed."""
        def step(current):
            claimed = max(generation, _counter_value(current) + 1)
            body = json.dumps({"generation": claimed, "env": self.env, "at": iso(self.wall())}).encode()
            return Write(body, claimed)

        claimed, _ = compare_and_swap(
            self.store, layout.generation_key(self.env), step,
            exhausted=lambda uri: TransientStoreError(f"could not advance {uri}: too much contention; retry"))
        return claimed

    # -- acquiring -------------------------------------------------------------------------------
    def _new_state(self, run_id: str, generation: int, flow_run_id: str | None, info: dict | None,
                   details: dict | None = None) -> dict:
        now = iso(self.wall())
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "env": self.env,
            "generation": generation,
            "status": "initialization",
            "started_at": now,
            "updated_at": now,
            "heartbeat_at": now,
            "seq": 1,
            "holder": {"host": socket.gethostname(), "pid": os.getpid()},
            "flow_run_id": flow_run_id,
            "history": [{"status": "initialization", "at": now, "details": details or {}}],
            "info": dict(info or {}),
            "lease_seconds": self.lease_seconds,
        }

    def _locked(self, snap: StateSnapshot) -> LockedError:
        return LockedError(snap.run_id, snap.state.get("started_at", "?"), snap.status,
                           heartbeat_age=round(snap.heartbeat_age(self.wall()), 3))

    def acquire(
        self,
        run_id: str,
        *,
        flow_run_id: str | None = None,
        info: dict | None = None,
        takeover_wait: float | None = None,
    ) -> "LockHandle":
        """Take the lock for ``run_id`` (status ``initialization``) or raise :class:`LockedError`.

        A stale-looking holder is watched for up to ``takeover_wait`` seconds (default 1.5 leases)
        until its ETag has been unchanged for a whole lease on our monotonic clock, then taken over."""
        if not run_id:
            raise BadInputError("run_id must be a non-empty string")
        for _ in range(20):
            snap = self.read()
            if snap is None:
                handle = self._try_create(run_id, flow_run_id, info)
                if handle is not None:
                    return handle
                continue  # lost the create race or it vanished again: look at what is there now
            if snap.run_id == run_id:
                raise self._locked(snap)
            lease = self._lease_of(snap)
            if snap.heartbeat_age(self.wall()) < lease:
                raise self._locked(snap)
            # Stale by the wall clock: also require the ETag to stay unchanged for a whole lease.
            wait = lease * 1.5 if takeover_wait is None else max(0.0, float(takeover_wait))
            deadline = self.monotonic() + wait
            poll = self.poll_seconds or min(max(lease / 20.0, 0.02), 1.0)
            while True:
                unchanged = self._observe(snap)
                if unchanged >= lease:
                    return self._takeover(snap, run_id, flow_run_id, info, unchanged)
                remaining = deadline - self.monotonic()
                if remaining <= 0:
                    raise self._locked(snap)
                self.sleep(min(poll, remaining, lease - unchanged + 0.001))
                current = self.read()
                if current is None:
                    break  # released meanwhile: try a fresh create
                if current.etag != snap.etag:
                    raise self._locked(current)  # the holder (or someone) is alive
        raise TransientStoreError(f"could not acquire {self.store.uri(self.key)}: the state file keeps changing; retry")

    def _try_create(self, run_id: str, flow_run_id: str | None, info: dict | None) -> "LockHandle | None":
        counter = self._read_counter()
        state = self._new_state(run_id, counter + 1, flow_run_id, info)
        sent = self.monotonic()  # the lease runs from when the write was sent, not when it returned
        try:
            etag = self.store.put_if_absent(self.key, dump_state(state))
        except PreconditionFailed:
            snap = self.read()
            if snap is None:
                return None
            if snap.run_id != run_id or snap.generation != state["generation"] or snap.state.get("seq") != 1:
                raise self._locked(snap)
            etag = snap.etag  # our create landed (seen through a retry)
        handle = LockHandle(self.store, self.env, state, etag, wall=self.wall, monotonic=self.monotonic,
                            renewed_at=sent, sleep=self.sleep)
        handle._claim_generation(self)
        return handle

    def _takeover(self, snap: StateSnapshot, run_id: str, flow_run_id: str | None, info: dict | None,
                  unchanged_for: float) -> "LockHandle":
        counter = self._read_counter()
        generation = max(counter, snap.generation) + 1
        prev = snap.state
        reason = (
            f"lease expired: no heartbeat from run {prev['run_id']} (generation {snap.generation}, "
            f"status {prev['status']}, holder {prev.get('holder')}) since {prev.get('heartbeat_at')}; "
            f"state file unchanged for {unchanged_for:.1f}s (lease {self._lease_of(snap)}s); "
            f"taken over by run {run_id}"
        )
        state = self._new_state(run_id, generation, flow_run_id, info,
                                details={"takeover_of": prev["run_id"], "previous_generation": snap.generation})
        sent = self.monotonic()
        try:
            etag = self.store.put_if_match(self.key, dump_state(state), snap.etag)
        except PreconditionFailed:
            current = self.read()
            if current is None:
                raise LockedError(prev["run_id"], prev.get("started_at", "?"), "released") from None
            if current.run_id == run_id and current.generation == generation and current.state.get("seq") == 1:
                etag = current.etag
            else:
                raise self._locked(current) from None
        handle = LockHandle(self.store, self.env, state, etag, wall=self.wall, monotonic=self.monotonic,
                            renewed_at=sent, sleep=self.sleep)
        handle._claim_generation(self)
        handle.previous = snap
        runlog.mark_failed(self.store, self.env, prev["run_id"], reason, at=self.wall(), generation=snap.generation)
        return handle


class LockHandle:
    """The holder's side of the lock. Thread-safe (the heartbeat thread shares it).

    **Store outages.** Every successful write renews the lease (from when it was sent, on this
    process's monotonic clock). While the store fails transiently, writes through the handle
    (transitions, info, training.json records) and the heartbeat keep retrying with backoff and
    jitter for as long as the lease lasts — a check (:meth:`check`) keeps answering from what the
    handle last saw; once the lease (minus a safety margin) has run out with the store still away,
    the handle fences itself: :class:`LeaseExpiredError` from then on, no further write. Each
    outage (start, end, what waited) is kept in :attr:`outages` for ``training.json``."""

    def __init__(self, store: ObjectStore, env: str, state: dict, etag: str,
                 wall: Callable[[], datetime] = utc_now, *, monotonic: Callable[[], float] = time.monotonic,
                 renewed_at: float | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.env = env
        self.key = layout.state_key(env)
        self.state = dict(state)
        self.etag = etag
        self.wall = wall
        self.released = False
        self.previous: StateSnapshot | None = None
        self._mutex = threading.RLock()
        self._fence_lock = threading.Lock()
        #: see :attr:`_io`: one attempt per request, so the lease-bounded retries here decide, not the SDK's
        self._io_store: ObjectStore | None = None
        self._fatal: ChronosFlowsError | None = None
        self._thread_error: BaseException | None = None
        self.monotonic = monotonic
        self.sleep = sleep
        try:
            self.lease_seconds = float(self.state.get("lease_seconds") or 120.0)
        except (TypeError, ValueError):
            self.lease_seconds = 120.0
        #: the run stops writing this long before its lease runs out (a write in flight must land in time)
        self.fence_margin = min(0.1 * self.lease_seconds, 5.0)
        self._renewed_at = monotonic() if renewed_at is None else renewed_at
        self._beating = False
        self.outages = OutageLog(wall=wall, monotonic=monotonic)

    @classmethod
    def from_snapshot(cls, store: ObjectStore, env: str, snap: StateSnapshot,
                      wall: Callable[[], datetime] = utc_now) -> "LockHandle":
        """A handle on an existing state file (e.g. a revived holder that remembers its ETag)."""
        return cls(store, env, snap.state, snap.etag, wall=wall)

    @property
    def run_id(self) -> str:
        return self.state["run_id"]

    @property
    def generation(self) -> int:
        return int(self.state["generation"])

    @property
    def status(self) -> str:
        return self.state["status"]

    def __repr__(self) -> str:
        return f"LockHandle(run_id={self.run_id!r}, generation={self.generation}, status={self.status!r})"

    @property
    def _io(self) -> ObjectStore:
        """The store the handle's own requests go through (made on first use: a new SDK client
        costs CPU): one attempt each, bounded by the fence margin (at least 1 s), so a request that
        hangs cannot land long after the lease."""
        if self._io_store is None:
            self._io_store = single_attempt(self.store, timeout=min(max(self.fence_margin, 1.0), 30.0))
        return self._io_store

    # -- the lease under store outages -------------------------------------------------------------
    def lease_left(self) -> float:
        """Seconds this holder may still write: its lease from the last successful write, minus the
        safety margin (<= 0: it must stop)."""
        return self._renewed_at + self.lease_seconds - self.fence_margin - self.monotonic()

    def _expire(self, what: str, error: BaseException | str) -> LeaseExpiredError:
        """Fence the handle off: the lease ran out while the store was unreachable."""
        with self._fence_lock:  # not the write mutex: a check must never wait for a write in flight
            if isinstance(self._fatal, LeaseExpiredError):
                return self._fatal
            outage = self.outages.records()[-1:] or [{}]
            err = LeaseExpiredError(
                f"run {self.run_id} (generation {self.generation}) stopped: the store was unreachable since "
                f"{outage[0].get('start', '?')} ({what}: {error}) and its lease of {self.lease_seconds:g}s ran out; "
                f"it writes nothing more (its cleanup runs once the store is back; resume with "
                f"`chronos-flows run --resume {self.run_id}`)"
            )
            self._fatal = err
            self.outages.close("lease expired: run stopped")
            return err

    def _lease_alive(self) -> float:
        """For :func:`retry_while`: raise if fenced or lost, else the seconds of lease left."""
        if isinstance(self._fatal, LostLockError):
            raise self._fatal
        return self.lease_left()

    def _durable(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn`` retried through transient store errors for as long as the lease lasts; then fenced."""
        return retry_while(fn, what=what, alive=self._lease_alive, outages=self.outages,
                           backoff=Backoff(base=min(1.0, self.lease_seconds / 20.0), cap=max(self.lease_seconds / 4.0, 0.05)),
                           sleep=self.sleep, on_give_up=lambda e: self._expire(what, e))

    def wait_out_lease(self) -> None:
        """Sleep until the lease this handle last renewed has surely expired (after fencing: then
        a contender, or the run's own cleanup, may treat the state file as stale)."""
        left = self._renewed_at + self.lease_seconds - self.monotonic()
        if left > 0:
            self.sleep(left + 0.05)

    # -- core CAS write --------------------------------------------------------------------------
    def _lost(self, current: StateSnapshot | None) -> LostLockError:
        if current is None:
            msg = (f"run {self.run_id} (generation {self.generation}) lost the lock: the state file "
                   f"{self.store.uri(self.key)} was removed; it must stop writing")
        else:
            msg = (f"run {self.run_id} lost the lock to run {current.run_id} (generation "
                   f"{current.generation}); it must stop writing")
        err = LostLockError(msg)
        self._fatal = err
        return err

    def _write(self, mutate: Callable[[dict], None]) -> None:
        """CAS-write a modified copy of the state (not its status), retried through a store outage
        while the lease lasts. Raises RunKilledError / LostLockError / LeaseExpiredError."""
        self._durable("state-file write", lambda: self._fenced(lambda: self._put(mutate)))

    def _fenced(self, attempt: Callable[[], None]) -> None:
        """Run one write ``attempt`` conditional on the ETag this handle holds; after a lost
        condition re-read: another run/generation or gone → LostLockError, ``killed`` →
        RunKilledError (adopted), otherwise retry once on the adopted version."""
        with self._mutex:
            if isinstance(self._fatal, LostLockError):
                raise self._fatal
            if self.released:
                raise LostLockError(f"run {self.run_id} already released the lock; it must stop writing")
            if self.outages.active and self.lease_left() <= 0:
                raise self._expire("state-file write", "store unreachable")
            sent = self.monotonic()
            try:
                attempt()
                self._renewed_at = sent
                return
            except PreconditionFailed:
                self._adopt_after_lost_cas()
                # Changed but not killed (should not happen): retry once on the adopted version.
                sent = self.monotonic()
                try:
                    attempt()
                    self._renewed_at = sent
                except PreconditionFailed:
                    self._adopt_after_lost_cas()
                    raise TransientStoreError(f"state file {self.store.uri(self.key)} keeps changing; retry") from None

    def _put(self, mutate: Callable[[dict], None]) -> None:
        """One CAS attempt on our ETag: a modified copy with ``seq`` bumped (PreconditionFailed if moved)."""
        new = json.loads(json.dumps(self.state))
        mutate(new)
        new["seq"] = int(new.get("seq", 0)) + 1
        new["updated_at"] = iso(self.wall())
        self.etag = self._io.put_if_match(self.key, dump_state(new), self.etag)
        self.state = new

    def _adopt_after_lost_cas(self) -> None:
        """Re-read after a lost CAS: another run/generation or gone → LostLockError; still ours but
        changed by someone else → adopt it, and raise RunKilledError if it now says ``killed``."""
        current = read_state(self._io, self.env)
        if current is None or current.run_id != self.run_id or current.generation != self.generation:
            raise self._lost(current) from None
        self.state, self.etag = dict(current.state), current.etag
        if current.status == "killed":
            raise RunKilledError(self._killed_message()) from None

    def _killed_message(self) -> str:
        reason = ""
        for h in reversed(self.state.get("history", [])):
            if h.get("status") == "killed":
                reason = (h.get("details") or {}).get("reason", "")
                break
        return f"run {self.run_id} was killed{': ' + reason if reason else ''}; stop work and clean up"

    def _claim_generation(self, lock: RunLock) -> None:
        claimed = lock._advance_counter(self.generation)
        if claimed != self.generation:
            self._write(lambda s: s.__setitem__("generation", claimed))

    # -- public operations -----------------------------------------------------------------------
    def transition(self, status: str, **details: Any) -> None:
        """Move the run to ``status`` through :func:`~chronos_flows.runstate.statefile.write_transition`
        (the allowed table, a write fenced on the ETag this handle holds); training.json is not
        touched (:meth:`record_transition` appends it)."""
        with self._mutex:
            check_transition(self.status, status)
        tries = [0]

        def attempt() -> None:
            if tries[0] and self.status == status:
                return  # an earlier try landed (its reply was lost) and was adopted
            tries[0] += 1
            snap = write_transition(self._io, self.env, self.run_id, status, details,
                                    held=StateSnapshot(self.state, self.etag), record=False, wall=self.wall)
            self.state, self.etag = snap.state, snap.etag

        self._durable(f"transition to {status}", lambda: self._fenced(attempt))

    def record_transition(self, status: str, *, killed_ok: bool = False, **details: Any) -> None:
        """The one writer of a run's transition: move the state file to ``status`` (CAS), then
        append it to ``training.json`` (:meth:`record_status`) — in that order, so the record never
        names a status the state file did not reach. ``killed_ok``: a kill from outside meanwhile is
        no error; the ``killed`` state the handle adopted is recorded instead."""
        try:
            self.transition(status, **details)
        except RunKilledError:
            if not killed_ok:
                raise
        self.record_status(details)

    def record_status(self, details: dict[str, Any] | None = None) -> None:
        """Append the handle's current status, at the state file's ``updated_at``, to the run's
        ``training.json`` (created if missing); e.g. ``initialization`` right after acquiring."""
        status, at = self.status, self.state["updated_at"]
        done = [False]

        def record() -> None:
            if not done[0]:
                runlog.record_transition(self._io, self.env, self.run_id, status, at, dict(details or {}))
                done[0] = True

        self._durable(f"training.json record of {status}", record)

    def fail(self, reason: str, **details: Any) -> None:
        """Move to ``failed`` unless already failed/killed/cleanup (then do nothing)."""
        with self._mutex:
            if self.status in TERMINAL_STATES:
                return
            try:
                self.transition("failed", reason=reason, **details)
            except RunKilledError:
                pass  # the file now says killed: that is terminal too

    def heartbeat(self) -> None:
        """Renew the lease, retrying through a store outage for as long as the lease lasts."""
        at = iso(self.wall())
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            self._beat_once(at, adopt=tries > 1)

        self._durable("heartbeat", once)

    def _beat_once(self, at: str | None = None, *, adopt: bool = False) -> None:
        at = at or iso(self.wall())

        def attempt() -> None:
            if adopt and self.state.get("heartbeat_at") == at:
                return  # an earlier try of this heartbeat landed (its reply was lost) and was adopted
            self._put(lambda s: s.__setitem__("heartbeat_at", at))

        self._fenced(attempt)

    def update_info(self, **info: Any) -> None:
        self._write(lambda s: s.setdefault("info", {}).update(info))

    def release(self) -> None:
        """Delete the state file (conditional on our ETag). Only after status ``cleanup``; idempotent."""
        with self._mutex:
            if self.released:
                return
            if self.status != "cleanup":
                raise InvalidTransition(self.status, "released")
            for _ in range(3):
                try:
                    self.store.delete_if_match(self.key, self.etag)
                    self.released = True
                    return
                except PreconditionFailed:
                    current = read_state(self.store, self.env)
                    if current is None:
                        self.released = True
                        return
                    if current.run_id != self.run_id or current.generation != self.generation:
                        raise self._lost(current) from None
                    self.state, self.etag = dict(current.state), current.etag
            raise TransientStoreError(f"could not release {self.store.uri(self.key)}: it keeps changing; retry")

    def check(self, refresh: bool = True) -> None:
        """Raise :class:`RunKilledError` if the run was killed, :class:`LostLockError` if the lock was
        taken over or removed. ``refresh`` re-reads the state file (one GET).

        Through a store outage it answers from what the handle last saw while the lease lasts (while
        the heartbeat thread retries, without reading: the caller never waits on the store), and
        raises :class:`LeaseExpiredError` once the lease has run out with the store still away."""
        if isinstance(self._fatal, LostLockError):
            raise self._fatal
        expired = not self.released and self.lease_left() <= 0
        if expired and self.outages.active:
            raise self._expire("lock check", "store unreachable")
        # not renewed for a lease with the store seemingly fine (e.g. this process was paused): look
        if (refresh or (expired and self._beating)) and not self.released and not (self._beating and self.outages.active):
            try:
                current = read_state(self._io, self.env)
            except TransientStoreError as e:
                self.outages.failed("lock check", e)
                if self.lease_left() <= 0:
                    raise self._expire("lock check", e) from e
            else:
                if self.outages.active and not self._beating:
                    self.outages.recovered()
                if current is None or current.run_id != self.run_id or current.generation != self.generation:
                    raise self._lost(current)
                # adopt a newer version (a kill from outside); never wait for a write in flight
                if current.etag != self.etag and self._mutex.acquire(timeout=0.05):
                    try:
                        if int(current.state.get("seq", 0)) >= int(self.state.get("seq", 0)):
                            self.state, self.etag = dict(current.state), current.etag
                    finally:
                        self._mutex.release()
        if self.status == "killed":
            raise RunKilledError(self._killed_message())

    @contextlib.contextmanager
    def heartbeat_thread(self, interval: float) -> Iterator["LockHandle"]:
        """Renew the lease every ``interval`` seconds in a background thread while the block runs.
        A kill or a lost lock is remembered for :meth:`check`; a lost lock stops the thread."""
        stop = threading.Event()
        backoff = Backoff(base=min(1.0, interval / 4.0), cap=interval)

        def loop() -> None:
            delay = interval
            while not stop.wait(delay):
                try:
                    if self.released:
                        return
                    self._beat_once()
                    delay = interval
                    backoff.reset()
                    self.outages.recovered()
                except RunKilledError:
                    delay = interval
                    continue  # adopted; keep the lease alive through the cleanup
                except LostLockError:
                    return
                except (TransientStoreError, PreconditionFailed) as e:
                    # the store is away: retry with backoff until the lease would run out, then fence
                    self._thread_error = e
                    self.outages.failed("heartbeat", e)
                    left = self.lease_left()
                    if left <= 0:
                        self._expire("heartbeat", e)
                        return
                    delay = min(backoff.next(), left)
                except BaseException as e:  # noqa: BLE001 — remembered and surfaced by check()
                    self._thread_error = e
                    return

        t = threading.Thread(target=loop, name=f"chronos-heartbeat-{self.run_id}", daemon=True)
        self._beating = True
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join(timeout=max(5.0, interval * 2))
            self._beating = False
