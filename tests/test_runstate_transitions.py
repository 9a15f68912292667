"""Every state transition of every run goes through one function that checks the allowed table:
each (from, to) pair of the seven states, from every entry point — the lock holder, ``kill``, the
cleanup of a run whose process is gone, a holder ending its run, a takeover of a stale holder."""

from __future__ import annotations

import itertools
import json

import pytest

from blocks.store import LocalStore
from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.runstate.cleanup import enter_cleanup
from chronos_flows.runstate.lock import LockHandle, RunLock
from chronos_flows.runstate.statefile import (
    ALLOWED,
    STATES,
    TERMINAL_STATES,
    InvalidTransition,
    dump_state,
    mark_killed,
    read_state,
    write_transition,
)

ENV = "dev"
PAIRS = list(itertools.product(STATES, STATES))


def run_in(tmp_path, status: str, lease: float = 120.0):
    """A store whose state file names run ``r1`` in ``status`` (written as a holder would leave it)."""
    store = LocalStore(tmp_path / "store")
    handle = RunLock(store, ENV, lease_seconds=lease).acquire("r1")
    state = json.loads(json.dumps(handle.state))
    state["status"], state["seq"] = status, state["seq"] + 1
    if status != "initialization":
        state["history"].append({"status": status, "at": state["updated_at"], "details": {}})
    store.put_if_match(layout.state_key(ENV), dump_state(state), handle.etag)
    return store, LockHandle.from_snapshot(store, ENV, read_state(store, ENV))


def test_when_the_table_is_read_then_every_state_is_covered_and_cleanup_is_final():
    assert set(ALLOWED) == set(STATES)
    assert all(set(targets) <= set(STATES) for targets in ALLOWED.values())
    assert ALLOWED["cleanup"] == ()


@pytest.mark.parametrize("current,target", PAIRS)
def test_when_the_holder_moves_its_run_then_only_allowed_pairs_are_written(tmp_path, current, target):
    store, handle = run_in(tmp_path, current)
    before = read_state(store, ENV)
    if target in ALLOWED[current]:
        handle.transition(target)
        assert read_state(store, ENV).status == target == handle.status
    else:
        with pytest.raises(InvalidTransition, match=f"{current} -> {target}"):
            handle.transition(target)
        assert read_state(store, ENV).etag == before.etag  # nothing written


@pytest.mark.parametrize("current,target", PAIRS)
def test_when_another_process_moves_a_run_then_only_allowed_pairs_are_written(tmp_path, current, target):
    store, _ = run_in(tmp_path, current)
    before = read_state(store, ENV)
    if target in ALLOWED[current]:
        snap = write_transition(store, ENV, "r1", target, {"by": "test"})
        assert snap.status == target == read_state(store, ENV).status
        assert runlog.load_training_log(store, ENV, "r1").transitions[-1].status == target  # then recorded
    else:
        with pytest.raises(InvalidTransition):
            write_transition(store, ENV, "r1", target)
        assert read_state(store, ENV).etag == before.etag


@pytest.mark.parametrize("current", STATES)
def test_when_a_run_is_killed_from_outside_then_only_an_active_run_moves_and_a_finishing_one_is_left(tmp_path, current):
    store, _ = run_in(tmp_path, current)
    before = read_state(store, ENV)
    snap = mark_killed(store, ENV, "r1", reason="operator")
    if "killed" in ALLOWED[current]:
        assert snap.status == "killed" and snap.heartbeat_at == before.heartbeat_at  # an outsider renews no lease
    else:
        assert current in TERMINAL_STATES and snap.etag == before.etag  # idempotent: nothing written


@pytest.mark.parametrize("current", STATES)
def test_when_a_dead_runs_cleanup_moves_it_then_only_a_failed_or_killed_run_enters_cleanup(tmp_path, current):
    store, _ = run_in(tmp_path, current)
    if "cleanup" in ALLOWED[current]:
        assert write_transition(store, ENV, "r1", "cleanup", skip_if=("cleanup",)).status == "cleanup"
    elif current == "cleanup":
        assert write_transition(store, ENV, "r1", "cleanup", skip_if=("cleanup",)).status == "cleanup"
    else:  # an active run is killed first, never sent to cleanup directly
        with pytest.raises(InvalidTransition, match=f"{current} -> cleanup"):
            write_transition(store, ENV, "r1", "cleanup", skip_if=("cleanup",))


@pytest.mark.parametrize("current", STATES)
@pytest.mark.parametrize("outcome", ["succeeded", "failed", "killed"])
def test_when_a_holder_ends_its_run_then_every_move_on_the_way_to_cleanup_is_allowed(tmp_path, current, outcome):
    store, handle = run_in(tmp_path, current)
    final = enter_cleanup(handle, outcome, reason="test")
    statuses = [h["status"] for h in read_state(store, ENV).state["history"]]
    path = statuses if current == "initialization" else statuses[1:]  # [0]: the acquisition, then the setup
    assert path[-1] == "cleanup" == handle.status
    assert all(b in ALLOWED[a] for a, b in zip(path, path[1:])), path
    assert final == ("killed" if "killed" in (outcome, current) else outcome)
    if current == "results_sync" and outcome == "succeeded":
        assert path == ["results_sync", "cleanup"]
    assert enter_cleanup(handle, outcome) == final  # idempotent: nothing more to do


@pytest.mark.parametrize("current", STATES)
def test_when_a_stale_holder_is_taken_over_then_its_record_ends_without_a_forbidden_move(tmp_path, current):
    clock = [0.0]
    store, _ = run_in(tmp_path, current, lease=0.05)
    lock = RunLock(store, ENV, lease_seconds=0.05, monotonic=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    import time as _t
    _t.sleep(0.06)  # the heartbeat is older than the lease
    new = lock.acquire("r2")
    assert new.status == "initialization" and new.generation > 1
    log = runlog.load_training_log(store, ENV, "r1")
    assert log.status == "failed" and "lease expired" in log.error
    if current not in ("failed", "killed", "cleanup"):
        assert "failed" in ALLOWED[current]  # the takeover ends an active run as failed: an allowed move
