"""The run-state lock on the local backend: state machine, kill, takeover, and multi-process races.

The scenario helpers (``race_scenario``, ``cas_scenario``, ``crash_scenario``, ``revive_scenario``)
are shared with ``test_lock_s3.py``, which runs them against the moto S3 server.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest

from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.core.errors import BadInputError, LockedError, LostLockError, RunKilledError
from chronos_flows.runstate.lock import LockHandle, RunLock
from chronos_flows.runstate.statefile import ALLOWED, STATES, InvalidTransition
from chronos_flows.runstate.statefile import mark_killed, read_state
from chronos_flows.core.clock import parse_iso
from chronos_flows.core.layout import generation_key
from tests.lock_worker import WorkerPool, spawn_holder

ENV = "dev"


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


# ---------------------------------------------------------------------------------------------
# Shared multi-process scenarios
# ---------------------------------------------------------------------------------------------


def race_scenario(pool: WorkerPool, store, env: str, rounds: int) -> None:
    generations = []
    for r in range(rounds):
        at = time.time() + 0.15
        cmds = [{"op": "acquire", "url": store.url, "env": env, "run_id": f"r{r}-w{i}", "at": at, "lease": 60}
                for i in range(len(pool.procs))]
        results = pool.run(cmds)
        assert not [x for x in results if "exception" in x], results
        winners = [i for i, x in enumerate(results) if x["won"]]
        assert len(winners) == 1, f"round {r}: winners {winners}"
        w = f"r{r}-w{winners[0]}"
        for x in results:
            if not x["won"]:
                assert x["holder"] == w and w in x["error"]
        snap = read_state(store, env)
        assert snap.run_id == w and snap.generation == results[winners[0]]["generation"]
        generations.append(snap.generation)
        store.delete(layout.state_key(env))
    assert generations == sorted(set(generations)) and len(generations) == rounds


def cas_scenario(pool: WorkerPool, store, key: str, k: int) -> None:
    at = time.time() + 0.3
    results = pool.run([{"op": "incr", "url": store.url, "key": key, "k": k, "at": at}] * len(pool.procs))
    assert not [x for x in results if "exception" in x], results
    assert int(store.get(key)[0]) == len(pool.procs) * k
    assert sum(x["attempts"] for x in results) >= len(pool.procs) * k


def _start_holder(store, env, run_id, lease, interval, extra_env=None):
    proc = spawn_holder(extra_env)
    proc.stdin.write(json.dumps({"op": "hold", "url": store.url, "env": env, "run_id": run_id,
                                 "lease": lease, "interval": interval}) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, f"holder died: {proc.poll()}"
    return proc, json.loads(line)


def _poll_takeover(lock: RunLock, run_id: str, timeout: float):
    """Call acquire repeatedly (each refused at once or after a short watch) until it succeeds."""
    refusals = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return lock.acquire(run_id, takeover_wait=0.2), refusals
        except LockedError as e:
            refusals.append((time.monotonic(), lock.wall(), e))
            time.sleep(0.05)
    raise AssertionError(f"no takeover within {timeout}s")


def crash_scenario(store, env: str, extra_env=None, lease: float = 2.0) -> float:
    proc, hello = _start_holder(store, env, "old-run", lease, interval=lease / 8, extra_env=extra_env)
    try:
        contender = RunLock(store, env, lease_seconds=lease)
        with pytest.raises(LockedError, match="old-run"):
            contender.acquire("new-run")
        time.sleep(lease / 4)
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        last = read_state(store, env)  # the dead holder's last write
        old_handle = LockHandle.from_snapshot(store, env, last)
        with pytest.raises(LockedError, match="old-run"):
            contender.acquire("new-run", takeover_wait=0.1)
        handle, refusals = _poll_takeover(contender, "new-run", timeout=4 * lease)
        t_take = time.monotonic()
        took_wall = datetime.now(timezone.utc)
        # refused while the lease ran, admitted only once the last heartbeat was a lease old
        assert (took_wall - last.heartbeat_at).total_seconds() >= lease
        assert all((w - last.heartbeat_at).total_seconds() < lease + 0.5 for _, w, _ in refusals)
        assert handle.generation == hello["generation"] + 1
        assert handle.state["history"][0]["details"]["takeover_of"] == "old-run"
        log = runlog.load_training_log(store, env, "old-run")
        assert log.status == "failed" and "lease expired" in log.error and "new-run" in log.error
        with pytest.raises(LostLockError, match="lost the lock to run new-run"):
            old_handle.transition("training")
        assert read_state(store, env).run_id == "new-run"
        handle.transition("failed", reason="test")
        handle.transition("cleanup")
        handle.release()
        return t_take - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def revive_scenario(store, env: str, extra_env=None, lease: float = 1.0) -> None:
    """A holder paused (SIGSTOP) past its lease is taken over; once resumed it finds out and stops."""
    proc, hello = _start_holder(store, env, "paused-run", lease, interval=lease / 5, extra_env=extra_env)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        contender = RunLock(store, env, lease_seconds=lease)
        handle, _ = _poll_takeover(contender, "live-run", timeout=5 * lease)
        os.kill(proc.pid, signal.SIGCONT)
        ready, _, _ = select.select([proc.stdout], [], [], 5 * lease)
        assert ready, "revived holder did not notice the takeover"
        msg = json.loads(proc.stdout.readline())
        assert msg["type"] == "LostLockError" and "lost the lock to run live-run" in msg["lost"]
        assert proc.wait(timeout=10) == 0
        snap = read_state(store, env)
        assert snap.run_id == "live-run" and snap.etag == handle.etag  # the revived holder wrote nothing
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# Multi-process tests on the local backend
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(20)
    yield p
    p.close()


def test_when_20_processes_race_for_the_local_lock_then_exactly_one_wins_each_round(pool, store):
    race_scenario(pool, store, ENV, rounds=20)


def test_when_20_processes_cas_increment_a_local_counter_then_no_update_is_lost(pool, store):
    cas_scenario(pool, store, "counters/c", k=10)


def test_when_local_holder_crashes_then_takeover_only_after_the_lease(store):
    delay = crash_scenario(store, ENV, lease=1.0)
    assert delay < 3.0


def test_when_local_holder_is_paused_past_its_lease_then_it_loses_the_lock_on_resume(store):
    revive_scenario(store, ENV)


# ---------------------------------------------------------------------------------------------
# State machine
# ---------------------------------------------------------------------------------------------


def test_when_run_goes_through_the_pipeline_then_history_records_each_step(store):
    h = RunLock(store, ENV).acquire("run-1", flow_run_id="fr-1", info={"instance_id": None})
    for s in ("data_sync", "training", "results_sync", "cleanup"):
        h.transition(s, note=s)
    st = read_state(store, ENV).state
    assert st["status"] == "cleanup" and st["flow_run_id"] == "fr-1" and st["schema_version"] == 1
    assert [x["status"] for x in st["history"]] == ["initialization", "data_sync", "training", "results_sync", "cleanup"]
    assert st["history"][2]["details"] == {"note": "training"}
    ats = [parse_iso(x["at"]) for x in st["history"]]
    assert ats == sorted(ats) and all(a.tzinfo is not None for a in ats)
    assert st["seq"] == 5 and st["holder"]["pid"] == os.getpid()
    h.release()
    assert read_state(store, ENV) is None
    h.release()  # idempotent


@pytest.mark.parametrize("path,bad", [
    ((), "training"),
    (("data_sync",), "results_sync"),
    (("data_sync", "training", "results_sync", "cleanup"), "failed"),
    (("failed",), "training"),
    (("killed",), "data_sync"),
    ((), "initialization"),
    ((), "finished"),
])
def test_when_transition_is_not_allowed_then_invalid_transition_names_it(store, path, bad):
    h = RunLock(store, ENV).acquire("run-1")
    for s in path:
        h.transition(s)
    with pytest.raises(InvalidTransition) as ei:
        h.transition(bad)
    assert f"{h.status} -> {bad}" in str(ei.value) and "allowed" in str(ei.value)
    assert read_state(store, ENV).status == h.status


def test_when_allowed_table_is_inspected_then_it_matches_the_spec():
    assert STATES == ("initialization", "data_sync", "training", "results_sync", "cleanup", "failed", "killed")
    for s in ("initialization", "data_sync", "training", "results_sync"):
        assert {"failed", "killed"} <= set(ALLOWED[s])
    assert ALLOWED["failed"] == ("cleanup",) and ALLOWED["killed"] == ("cleanup",) and ALLOWED["cleanup"] == ()


@pytest.mark.parametrize("end", ["failed", "killed"])
def test_when_run_fails_or_is_killed_then_it_can_clean_up_and_release(store, end):
    h = RunLock(store, ENV).acquire("run-1")
    h.transition("data_sync")
    h.transition(end, reason="x")
    with pytest.raises(InvalidTransition):
        h.release()
    h.transition("cleanup")
    h.release()
    assert not store.exists(layout.state_key(ENV))


def test_when_lock_is_held_then_a_contender_is_refused_at_once_naming_the_holder(store):
    RunLock(store, ENV, lease_seconds=60).acquire("holder-run")
    t0 = time.monotonic()
    with pytest.raises(LockedError) as ei:
        RunLock(store, ENV, lease_seconds=60).acquire("other-run")
    assert time.monotonic() - t0 < 0.5
    assert ei.value.run_id == "holder-run" and ei.value.status == "initialization"
    assert "holder-run" in str(ei.value) and "kill" in str(ei.value)


def test_when_lock_is_released_and_reacquired_then_generation_keeps_growing(store):
    lock = RunLock(store, ENV)
    gens = []
    for i in range(3):
        h = lock.acquire(f"run-{i}")
        gens.append(h.generation)
        h.transition("failed")
        h.transition("cleanup")
        h.release()
    assert gens == [1, 2, 3]
    assert json.loads(store.get(generation_key(ENV))[0])["generation"] == 3


def test_when_every_write_happens_then_seq_and_etag_change(store):
    from datetime import datetime, timezone

    same_instant = datetime(2026, 1, 1, tzinfo=timezone.utc)  # heartbeats within one clock tick still write
    h = RunLock(store, ENV, wall=lambda: same_instant).acquire("run-1")
    etags = {h.etag}
    for _ in range(3):
        h.heartbeat()
        etags.add(h.etag)
    h.update_info(instance_id="i-123")
    etags.add(h.etag)
    assert len(etags) == 5
    st = read_state(store, ENV).state
    assert st["seq"] == 5 and st["info"] == {"instance_id": "i-123"}


def test_when_killed_by_another_process_then_holder_gets_run_killed_and_still_cleans_up(store):
    h = RunLock(store, ENV).acquire("run-1")
    h.transition("data_sync")
    snap = mark_killed(store, ENV, "run-1", reason="operator said so")
    assert snap.status == "killed"
    with pytest.raises(RunKilledError, match="operator said so"):
        h.transition("training")
    assert h.status == "killed"
    with pytest.raises(RunKilledError):
        h.check()
    h.heartbeat()  # keeps the lease alive while cleaning up
    h.transition("cleanup")
    h.check()
    h.release()
    assert read_state(store, ENV) is None


def test_when_kill_is_repeated_or_misdirected_then_idempotent_or_refused(store):
    assert mark_killed(store, ENV) is None
    h = RunLock(store, ENV).acquire("run-1")
    with pytest.raises(BadInputError, match="run-2.*run-1"):
        mark_killed(store, ENV, "run-2")
    s1 = mark_killed(store, ENV)
    s2 = mark_killed(store, ENV, "run-1")
    assert s1.etag == s2.etag and s2.status == "killed"
    assert [x["status"] for x in s2.state["history"]] == ["initialization", "killed"]
    with pytest.raises(RunKilledError):
        h.heartbeat()
    h.transition("cleanup")
    assert mark_killed(store, ENV).status == "cleanup"


def test_when_heartbeat_thread_runs_then_the_lease_is_renewed_and_a_kill_surfaces(store):
    h = RunLock(store, ENV, lease_seconds=1).acquire("run-1")
    with h.heartbeat_thread(0.05):
        first = read_state(store, ENV).state["heartbeat_at"]
        time.sleep(0.3)
        assert read_state(store, ENV).state["heartbeat_at"] > first
        h.check()
        mark_killed(store, ENV)
        time.sleep(0.3)
        with pytest.raises(RunKilledError):
            h.check(refresh=False)
        h.transition("cleanup")
    h.release()
    assert read_state(store, ENV) is None


def test_when_lock_was_removed_or_taken_then_check_raises_lost_lock(store):
    h = RunLock(store, ENV).acquire("run-1")
    store.delete(layout.state_key(ENV))
    with pytest.raises(LostLockError, match="removed"):
        h.check()
    with pytest.raises(LostLockError):
        h.heartbeat()


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall0 = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> datetime:
        return self.wall0 + timedelta(seconds=self.mono - 1000.0)

    def sleep(self, s: float) -> None:
        self.mono += s


def test_when_a_stale_lock_is_watched_for_less_than_a_lease_then_no_takeover(store):
    clock = FakeClock()
    RunLock(store, ENV, lease_seconds=10, monotonic=clock.monotonic, wall=clock.wall).acquire("dead-run")
    clock.mono += 11  # stale by the wall clock
    contender = RunLock(store, ENV, lease_seconds=10, monotonic=clock.monotonic, wall=clock.wall, sleep=clock.sleep)
    t0 = clock.mono
    with pytest.raises(LockedError, match="dead-run"):
        contender.acquire("new-run", takeover_wait=5)
    assert clock.mono - t0 == pytest.approx(5, abs=0.01)
    h = contender.acquire("new-run", takeover_wait=6)  # observed unchanged for >= 10 s in total now
    assert clock.mono - t0 == pytest.approx(10, abs=0.01)
    assert h.generation == 2 and h.state["history"][0]["details"]["takeover_of"] == "dead-run"


def test_when_the_default_wait_is_used_then_takeover_happens_one_lease_after_first_sight(store):
    clock = FakeClock()
    RunLock(store, ENV, lease_seconds=10, monotonic=clock.monotonic, wall=clock.wall).acquire("dead-run")
    clock.mono += 30
    contender = RunLock(store, ENV, lease_seconds=60, monotonic=clock.monotonic, wall=clock.wall, sleep=clock.sleep)
    t0 = clock.mono
    h = contender.acquire("new-run")  # uses the holder's recorded lease (10 s), waits <= 15 s
    assert 10 <= clock.mono - t0 <= 10.5
    assert h.run_id == "new-run"


def test_when_holder_is_alive_but_the_contender_clock_runs_ahead_then_no_takeover(store):
    h = RunLock(store, ENV, lease_seconds=0.5).acquire("alive-run")
    skewed = lambda: datetime.now(timezone.utc) + timedelta(hours=1)  # noqa: E731
    contender = RunLock(store, ENV, lease_seconds=0.5, wall=skewed)
    with h.heartbeat_thread(0.1):
        for _ in range(3):
            with pytest.raises(LockedError, match="alive-run"):
                contender.acquire("thief-run", takeover_wait=1.0)
    assert read_state(store, ENV).run_id == "alive-run"


def test_when_transitions_are_recorded_then_the_state_file_and_training_json_agree(store):
    h = RunLock(store, ENV).acquire("run-rec")
    h.record_status({"generation": h.generation})
    h.record_transition("data_sync")
    h.record_transition("training", note="gpu")
    assert runlog.load_training_log(store, ENV, "run-rec").transitions[-1].at == read_state(store, ENV).state["updated_at"]
    mark_killed(store, ENV, "run-rec", reason="operator")  # from outside: recorded by the kill
    h.record_transition("failed", killed_ok=True, error="boom")  # the adopted kill is recorded
    h.record_transition("cleanup")
    state = read_state(store, ENV).state
    log = runlog.load_training_log(store, ENV, "run-rec")
    assert [x["status"] for x in state["history"]] == ["initialization", "data_sync", "training", "killed", "cleanup"]
    assert [t.status for t in log.transitions] == ["initialization", "data_sync", "training", "killed", "killed", "cleanup"]
    assert [t.details for t in log.transitions[:5]] == [
        {"generation": h.generation}, {}, {"note": "gpu"}, {"reason": "operator"}, {"error": "boom"}]
    assert log.status == state["status"] == "cleanup" and log.transitions[-1].at == state["updated_at"]

    h.release()  # without killed_ok a kill is an error, and nothing is recorded for it
    h = RunLock(store, ENV).acquire("run-rec2")
    mark_killed(store, ENV, "run-rec2")
    with pytest.raises(RunKilledError):
        h.record_transition("data_sync")
    assert [t.status for t in runlog.load_training_log(store, ENV, "run-rec2").transitions] == ["killed"]
