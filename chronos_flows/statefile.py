"""The state file ``{env}/system-state.json`` as data: its codec, the :class:`StateSnapshot` read
from it, and :func:`kill`, which marks the holder's run ``killed`` from outside. Pure (any
:class:`~chronos_flows.store.ObjectStore`); the lock protocol itself is :mod:`chronos_flows.lock`,
which re-exports all of these."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from . import layout, runlog
from .errors import BadInputError, PreconditionFailed, TransientStoreError
from .store import ObjectStore


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


def kill(store: ObjectStore, env: str, run_id: str | None = None, reason: str = "killed by user",
         wall: Callable[[], datetime] = utc_now) -> StateSnapshot | None:
    """Mark the current run ``killed`` (CAS, retried on concurrent updates). Idempotent: a run already
    killed or in cleanup is left as is; a kill that moved the state file is also recorded in the run's
    training.json. Returns the resulting snapshot, or ``None`` if no run holds
    the lock. ``run_id`` given and different from the holder → :class:`BadInputError`."""
    target = run_id
    for _ in range(50):
        snap = read_state(store, env)
        if snap is None:
            return None
        if target is None:
            target = snap.run_id
        if snap.run_id != target:
            raise BadInputError(
                f"cannot kill run {target}: the lock of env {env!r} is held by run {snap.run_id} "
                f"(status {snap.status}); pass --run-id {snap.run_id} to kill that one"
            )
        if snap.status in ("killed", "cleanup"):
            return snap
        at = iso(wall())
        new = json.loads(json.dumps(snap.state))
        new["status"] = "killed"
        new["seq"] = int(new.get("seq", 0)) + 1
        new["updated_at"] = at
        new.setdefault("history", []).append({"status": "killed", "at": at, "details": {"reason": reason}})
        try:
            etag = store.put_if_match(layout.state_key(env), dump_state(new), snap.etag)
        except PreconditionFailed:
            continue
        # the state file first, then the same transition in training.json (created if missing)
        runlog.record_transition(store, env, target, "killed", at, {"reason": reason})
        return StateSnapshot(new, etag)
    raise TransientStoreError(f"could not kill run {target}: the state file of env {env!r} keeps changing; retry")
