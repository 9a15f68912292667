"""The state file ``{env}/system-state.json`` as data, and THE transition function.

The states (``initialization → data_sync → training → results_sync → cleanup``, plus ``failed`` and
``killed``) and the allowed moves between them (:data:`ALLOWED`) live here, with the one function
that moves a run: :func:`write_transition`. Every transition of every run goes through it — the lock
holder (:class:`~chronos_flows.runstate.lock.LockHandle`, fenced on the ETag it holds), ``kill`` and
the cleanup of a run whose process is gone (from any process: read, check, compare-and-swap, retry)
— so the table is enforced for every writer, and the state file is written before the transition is
appended to the run's ``training.json``, never the other way round. Also the codec, the
:class:`StateSnapshot` read from the file and :func:`kill`. Pure (any
:class:`~chronos_flows.core.store.ObjectStore`); the lease/fencing protocol is
:mod:`chronos_flows.runstate.lock`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from chronos_flows.core import layout
from chronos_flows.core.cas import Keep, Write, compare_and_swap
from chronos_flows.core.clock import iso, parse_iso, utc_now
from chronos_flows.core.errors import BadInputError, ChronosFlowsError
from chronos_flows.core.store import ObjectStore
from chronos_flows.runstate import runlog

STATES = ("initialization", "data_sync", "training", "results_sync", "cleanup", "failed", "killed")
ACTIVE_STATES = ("initialization", "data_sync", "training", "results_sync")
TERMINAL_STATES = ("failed", "killed", "cleanup")

ALLOWED: dict[str, tuple[str, ...]] = {
    "initialization": ("data_sync", "failed", "killed"),
    "data_sync": ("training", "failed", "killed"),
    "training": ("results_sync", "failed", "killed"),
    "results_sync": ("cleanup", "failed", "killed"),
    "failed": ("cleanup",),
    "killed": ("cleanup",),
    "cleanup": (),
}


class InvalidTransition(ChronosFlowsError):
    """A state-machine transition that is not allowed."""

    exit_code = 1

    def __init__(self, current: str, target: str) -> None:
        self.current = current
        self.target = target
        allowed = ", ".join(ALLOWED.get(current, ())) or "none (release the lock)"
        super().__init__(
            f"invalid run-state transition {current} -> {target}; allowed from {current}: {allowed}"
        )


def check_transition(current: str, target: str) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> target`` is in :data:`ALLOWED`."""
    if target not in STATES or target not in ALLOWED.get(current, ()):
        raise InvalidTransition(current, target)


def dump_state(state: dict) -> bytes:
    return json.dumps(state, indent=2, sort_keys=True, default=str).encode()


def load_state(data: bytes, where: str) -> dict:
    try:
        state = json.loads(data)
    except ValueError as e:
        raise BadInputError(f"the state file {where} is not valid JSON ({e}); inspect it and delete it by hand") from e
    if not isinstance(state, dict) or "run_id" not in state or "status" not in state:
        raise BadInputError(f"the state file {where} is not a chronos-flows state file; inspect it and delete it by hand")
    return state


@dataclass(frozen=True)
class StateSnapshot:
    """The state file as read: the parsed JSON and its ETag."""

    state: dict
    etag: str

    @property
    def run_id(self) -> str:
        return self.state["run_id"]

    @property
    def status(self) -> str:
        return self.state["status"]

    @property
    def generation(self) -> int:
        return int(self.state.get("generation", 0))

    @property
    def heartbeat_at(self) -> datetime:
        return parse_iso(self.state.get("heartbeat_at") or self.state["started_at"])

    def heartbeat_age(self, now: datetime) -> float:
        return (now - self.heartbeat_at).total_seconds()


def transitioned(state: dict, status: str, at: str, details: dict[str, Any], *, heartbeat: bool) -> dict:
    """A copy of ``state`` moved to ``status`` at ``at`` (the table checked), with ``seq`` bumped so
    the content, and so the ETag, never repeats. ``heartbeat``: the holder's own move also renews
    its lease; a move from outside (kill, cleanup of a dead run) leaves the heartbeat as it was, so
    a silent holder still looks silent."""
    check_transition(state["status"], status)
    new = json.loads(json.dumps(state))
    new["status"] = status
    new["seq"] = int(new.get("seq", 0)) + 1
    new["updated_at"] = at
    if heartbeat:
        new["heartbeat_at"] = at
    new.setdefault("history", []).append({"status": status, "at": at, "details": dict(details)})
    return new


def read_state(store: ObjectStore, env: str) -> StateSnapshot | None:
    key = layout.state_key(env)
    got = store.get(key)
    if got is None:
        return None
    return StateSnapshot(load_state(got[0], store.uri(key)), got[1])


def training_turn_refusal(snap: StateSnapshot | None, env: str, run_id: str, generation: int | None) -> str | None:
    """Why the state file ``snap`` does not give ``run_id`` (launched for lock ``generation``, if
    known) its training turn — None if it does. A training instance or tuning trial checks it before
    it trains and at every refresh, so a run that lost the lock never writes another result."""
    if snap is None:
        return f"no {env}/system-state.json: no run holds the lock"
    if snap.run_id != run_id:
        return f"the state file names run {snap.run_id}, not {run_id}"
    if snap.status != "training":
        return f"run {run_id} is in status {snap.status}, not training"
    if generation is not None and snap.generation != generation:
        return f"lock generation is {snap.generation}, this instance was launched for {generation}"
    return None


def write_transition(store: ObjectStore, env: str, run_id: str, status: str, details: dict | None = None, *,
                     held: StateSnapshot | None = None, skip_if: tuple[str, ...] = (), record: bool = True,
                     wall: Callable[[], datetime] = utc_now) -> StateSnapshot | None:
    """THE transition: move ``run_id``'s state file to ``status`` (allowed table checked), then, with
    ``record``, append the same transition at the same time stamp to its training.json.

    * The lock holder passes ``held``, the snapshot it holds: one write conditional on that ETag
      (fencing: a state file changed by anyone else — a kill, a takeover — makes it raise
      :class:`~chronos_flows.core.errors.PreconditionFailed`, and the holder re-reads and decides).
      Its move also renews its heartbeat.
    * Any other process (``kill``, the cleanup of a run whose process is gone) passes nothing: the
      file is read, checked and compare-and-swapped, retried on concurrent updates. A run already
      in one of ``skip_if`` is left as is (its snapshot returned, nothing written); ``None`` when no
      run holds the lock; another run holding it → :class:`BadInputError`.

    A move the table does not allow raises :class:`InvalidTransition` for every writer."""
    details = dict(details or {})
    key = layout.state_key(env)
    at = iso(wall())
    if held is not None:
        new = transitioned(held.state, status, at, details, heartbeat=True)
        snap = StateSnapshot(new, store.put_if_match(key, dump_state(new), held.etag))
    else:
        def step(current):
            if current is None:
                return Keep(None)
            snap = StateSnapshot(load_state(current[0], store.uri(key)), current[1])
            if snap.run_id != run_id:
                raise BadInputError(
                    f"cannot move run {run_id} to {status}: the lock of env {env!r} is held by run {snap.run_id} "
                    f"(status {snap.status}); pass --run-id {snap.run_id} to act on that one"
                )
            if snap.status in skip_if:
                return Keep(snap)
            new = transitioned(snap.state, status, at, details, heartbeat=False)
            return Write(dump_state(new), new)

        value, etag = compare_and_swap(store, key, step)
        if value is None or isinstance(value, StateSnapshot):
            return value
        snap = StateSnapshot(value, etag)
    if record:
        runlog.record_transition(store, env, run_id, status, at, details)
    return snap


def mark_killed(store: ObjectStore, env: str, run_id: str | None = None, reason: str = "killed by user",
         wall: Callable[[], datetime] = utc_now) -> StateSnapshot | None:
    """Mark the current run ``killed`` (:func:`write_transition`: the state file, then training.json).
    Idempotent: a run already finishing (failed, killed or in cleanup) is left as is. Returns the resulting snapshot, or
    ``None`` if no run holds the lock. ``run_id`` given and different from the holder →
    :class:`BadInputError`."""
    if run_id is None:
        snap = read_state(store, env)
        if snap is None:
            return None
        run_id = snap.run_id
    try:
        return write_transition(store, env, run_id, "killed", {"reason": reason}, skip_if=TERMINAL_STATES, wall=wall)
    except BadInputError as exc:
        holder = read_state(store, env)
        if holder is None:
            return None
        raise BadInputError(
            f"cannot kill run {run_id}: the lock of env {env!r} is held by run {holder.run_id} "
            f"(status {holder.status}); pass --run-id {holder.run_id} to kill that one"
        ) from exc
