"""The state file ``{env}/system-state.json`` as data: its codec, the :class:`StateSnapshot` read
from it, and :func:`kill`, which marks the holder's run ``killed`` from outside. Pure (any
:class:`~chronos_flows.core.store.ObjectStore`); the lock protocol itself is :mod:`chronos_flows.runstate.lock`,
which re-exports all of these."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.core.errors import BadInputError, PreconditionFailed, TransientStoreError
from chronos_flows.core.store import ObjectStore


def generation_key(env: str) -> str:
    return f"{env}/lock-generation.json"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


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
                     skip_if: tuple[str, ...] = (), wall: Callable[[], datetime] = utc_now) -> StateSnapshot | None:
    """The one writer of a transition for a process that does not hold the lock (``kill``, the
    cleanup of a run whose process is gone): the state file of ``run_id`` moved to ``status``
    (compare-and-swap, retried on concurrent updates), then the same transition, at the same time
    stamp, appended to training.json (created if missing) — in that order, as
    ``LockHandle.record_transition`` does for the holder, so the two never disagree.

    A run already in one of ``skip_if`` is left as is (its snapshot returned, nothing written);
    ``None`` when no run holds the lock. Another run holding it → :class:`BadInputError`."""
    for _ in range(50):
        snap = read_state(store, env)
        if snap is None:
            return None
        if snap.run_id != run_id:
            raise BadInputError(
                f"cannot move run {run_id} to {status}: the lock of env {env!r} is held by run {snap.run_id} "
                f"(status {snap.status}); pass --run-id {snap.run_id} to act on that one"
            )
        if snap.status in skip_if:
            return snap
        at = iso(wall())
        new = json.loads(json.dumps(snap.state))
        new["status"] = status
        new["seq"] = int(new.get("seq", 0)) + 1
        new["updated_at"] = at
        new.setdefault("history", []).append({"status": status, "at": at, "details": dict(details or {})})
        try:
            etag = store.put_if_match(layout.state_key(env), dump_state(new), snap.etag)
        except PreconditionFailed:
            continue
        runlog.record_transition(store, env, run_id, status, at, dict(details or {}))
        return StateSnapshot(new, etag)
    raise TransientStoreError(f"could not move run {run_id} to {status}: the state file of env {env!r} keeps changing; retry")


def kill(store: ObjectStore, env: str, run_id: str | None = None, reason: str = "killed by user",
         wall: Callable[[], datetime] = utc_now) -> StateSnapshot | None:
    """Mark the current run ``killed`` (:func:`write_transition`: the state file, then training.json).
    Idempotent: a run already killed or in cleanup is left as is. Returns the resulting snapshot, or
    ``None`` if no run holds the lock. ``run_id`` given and different from the holder →
    :class:`BadInputError`."""
    if run_id is None:
        snap = read_state(store, env)
        if snap is None:
            return None
        run_id = snap.run_id
    try:
        return write_transition(store, env, run_id, "killed", {"reason": reason}, skip_if=("killed", "cleanup"), wall=wall)
    except BadInputError as exc:
        holder = read_state(store, env)
        if holder is None:
            return None
        raise BadInputError(
            f"cannot kill run {run_id}: the lock of env {env!r} is held by run {holder.run_id} "
            f"(status {holder.status}); pass --run-id {holder.run_id} to kill that one"
        ) from exc
