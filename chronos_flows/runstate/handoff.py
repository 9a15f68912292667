"""Hand-off of a lock from a launcher to the flow in the same process: ``chronos-flows run``
acquires the lock before Prefect starts (so a losing launch exits at once) and leaves the handle
here for the flow run to adopt. Re-exported by :mod:`chronos_flows.runstate.lock`."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from chronos_flows.runstate import runlog
from chronos_flows.runstate.cleanup import enter_cleanup

if TYPE_CHECKING:
    from chronos_flows.runstate.lock import LockHandle


#: Handles taken by a launcher (``chronos-flows run`` acquires the lock before Prefect starts, so a
#: losing launch exits at once) and waiting for the flow run of the same process to adopt them.
_HANDOFF: dict[tuple[str, str, str], LockHandle] = {}
_HANDOFF_MUTEX = threading.Lock()


def hand_off(handle: LockHandle) -> None:
    """Leave ``handle`` for the flow of this process that runs ``handle.run_id`` to adopt."""
    with _HANDOFF_MUTEX:
        _HANDOFF[(handle.store.url, handle.env, handle.run_id)] = handle


def take_handed_off(store_url: str, env: str, run_id: str) -> LockHandle | None:
    """The handle a launcher of this process left for ``run_id``, once (None if there is none)."""
    with _HANDOFF_MUTEX:
        return _HANDOFF.pop((store_url, env, run_id), None)


def abandon(handle: LockHandle, reason: str) -> None:
    """Give back a lock a launcher took when its flow never adopted it (e.g. Prefect did not start):
    ``failed`` with the reason, then ``cleanup`` — each through the handle's one writer (state file,
    then training.json) — release, and the run's final status and cause in training.json."""
    with _HANDOFF_MUTEX:
        _HANDOFF.pop((handle.store.url, handle.env, handle.run_id), None)
    if handle.released:
        return
    final = enter_cleanup(handle, "failed", reason=reason)  # killed meanwhile: that is recorded
    handle.release()
    runlog.finish_training_log(handle.store, handle.env, handle.run_id, final, reason)


def is_handed_off(store_url: str, env: str, run_id: str | None) -> bool:
    """Whether a launcher of this process holds the lock for ``run_id`` and waits for its flow."""
    with _HANDOFF_MUTEX:
        return run_id is not None and (store_url, env, run_id) in _HANDOFF
