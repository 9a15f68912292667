"""Cleanup, status and verification operations; run-log schemas."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.core.errors import BadInputError
from chronos_flows.runstate.lock import RunLock
from chronos_flows.runstate.statefile import mark_killed, read_state
from chronos_flows.runstate.cleanup import RELEASE_STEP, run_cleanup, status_report, verify_cleanup
from chronos_flows.runstate.runlog import ModelMetadata, TrainingLog

ENV = "dev"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    return open_store(request.getfixturevalue("s3_store_url"))


class Steps:
    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.calls: list[str] = []
        self.fail = set(fail)

    def step(self, name: str):
        def fn() -> str:
            self.calls.append(name)
            if name in self.fail:
                raise RuntimeError(f"{name} broke")
            return f"{name} ok"

        return (name, fn)


def test_when_cleanup_runs_twice_then_the_second_redoes_nothing(store):
    h = RunLock(store, ENV).acquire("run-1")
    h.transition("data_sync")
    h.transition("failed", reason="boom")
    steps = Steps()
    st = run_cleanup(store, ENV, "run-1", [steps.step("terminate_ec2"), steps.step("delete_checkpoints")], h)
    assert st.complete and steps.calls == ["terminate_ec2", "delete_checkpoints"]
    assert st.steps["terminate_ec2"].outcome == "done" and st.steps["terminate_ec2"].detail == "terminate_ec2 ok"
    assert st.steps[RELEASE_STEP].outcome == "done"
    assert read_state(store, ENV) is None
    st2 = run_cleanup(store, ENV, "run-1", [steps.step("terminate_ec2"), steps.step("delete_checkpoints")], None)
    assert steps.calls == ["terminate_ec2", "delete_checkpoints"]  # nothing re-run
    assert {n: s.outcome for n, s in st2.steps.items()} == {
        "terminate_ec2": "already_done", "delete_checkpoints": "already_done", RELEASE_STEP: "already_done"}
    assert runlog.load_cleanup_status(store, ENV, "run-1") == st2


def test_when_a_cleanup_step_fails_then_others_run_and_a_rerun_retries_only_it(store):
    h = RunLock(store, ENV).acquire("run-1")
    steps = Steps(fail={"b"})
    st = run_cleanup(store, ENV, "run-1", [steps.step("a"), steps.step("b"), steps.step("c")], h)
    assert steps.calls == ["a", "b", "c"] and not st.complete
    assert st.steps["b"].outcome == "failed" and "RuntimeError: b broke" in st.steps["b"].detail
    # the lock is released anyway (the handle moved initialization -> failed -> cleanup)
    assert read_state(store, ENV) is None
    ok, findings = verify_cleanup(store, ENV)
    assert ok  # no training.json says the run finished yet
    runlog.save_training_log(store, TrainingLog(run_id="run-1", env=ENV, status="failed"))
    ok, findings = verify_cleanup(store, ENV)
    assert not ok and any("run-1" in f and "b=failed" in f for f in findings)
    steps.fail.clear()
    st2 = run_cleanup(store, ENV, "run-1", [steps.step("a"), steps.step("b"), steps.step("c")], None)
    assert steps.calls == ["a", "b", "c", "b"] and st2.complete
    assert verify_cleanup(store, ENV) == (True, [])


def test_when_a_dead_run_was_killed_then_cleanup_without_handle_deletes_its_state_file(store):
    RunLock(store, ENV, lease_seconds=300).acquire("dead-run")
    st = run_cleanup(store, ENV, "dead-run", [], None)
    assert st.steps[RELEASE_STEP].outcome == "skipped" and "still active" in st.steps[RELEASE_STEP].detail
    assert read_state(store, ENV).run_id == "dead-run"
    mark_killed(store, ENV, "dead-run")
    st = run_cleanup(store, ENV, "dead-run", [], None)
    assert st.steps[RELEASE_STEP].outcome == "done" and st.complete
    assert read_state(store, ENV) is None


def test_when_cleanup_targets_another_run_then_the_state_file_is_left_alone(store):
    RunLock(store, ENV).acquire("current-run")
    mark_killed(store, ENV)
    st = run_cleanup(store, ENV, "old-run", [], None)
    # the lock passed to another run: nothing of old-run's to release, and the new holder's file stays
    assert st.steps[RELEASE_STEP].outcome == "done" and "belongs to run current-run now" in st.steps[RELEASE_STEP].detail
    assert read_state(store, ENV).run_id == "current-run"


def test_when_the_run_was_killed_while_cleaning_then_cleanup_still_releases(store):
    h = RunLock(store, ENV).acquire("run-1")
    h.transition("data_sync")
    mark_killed(store, ENV)  # the holder has not noticed yet
    st = run_cleanup(store, ENV, "run-1", [Steps().step("a")], h)
    assert st.complete and read_state(store, ENV) is None


def test_when_status_is_asked_then_it_reports_idle_or_the_run_with_phases(store):
    assert status_report(store, ENV) == {"state": "idle", "env": ENV}
    h = RunLock(store, ENV, lease_seconds=30).acquire("run-1", flow_run_id="fr-9")
    h.transition("data_sync")
    h.transition("training")
    rep = status_report(store, ENV)
    assert rep["run_id"] == "run-1" and rep["status"] == "training" and rep["generation"] == 1
    assert rep["flow_run_id"] == "fr-9" and rep["stale"] is False and rep["heartbeat_age_s"] < 5
    assert set(rep["phases"]) == {"initialization", "data_sync", "training"}
    later = lambda: datetime.now(timezone.utc) + timedelta(seconds=60)  # noqa: E731
    rep2 = status_report(store, ENV, wall=later)
    assert rep2["stale"] is True and rep2["heartbeat_age_s"] >= 59
    # the lease the holder recorded (30 s) decides, not the asker's
    assert status_report(store, ENV, lease_seconds=3600, wall=later)["stale"] is True


def test_when_verifying_then_leftover_state_files_and_extra_findings_are_reported(store):
    RunLock(store, ENV).acquire("run-1")
    ok, findings = verify_cleanup(store, ENV, extra=[lambda: ["instance i-1 still running (tag run-1)"]])
    assert not ok
    assert any("active state file" in f and "run-1" in f for f in findings)
    assert "instance i-1 still running (tag run-1)" in findings
    runlog.save_training_log(store, TrainingLog(run_id="run-0", env=ENV, status="succeeded"))
    ok, findings = verify_cleanup(store, ENV)
    assert any("run-0" in f and "no cleanup record" in f for f in findings)


def test_when_run_logs_are_written_then_they_round_trip_with_schema_version(store):
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    runlog.record_transition(store, ENV, "run-1", "initialization", at, {"x": 1})
    log = runlog.record_transition(store, ENV, "run-1", "data_sync", at + timedelta(seconds=5))
    assert [t.status for t in log.transitions] == ["initialization", "data_sync"]
    assert log.started_at == "2030-01-02T03:04:05.000Z" and log.schema_version == 1
    runlog.mark_failed(store, ENV, "run-1", "lease expired", generation=4)
    log = runlog.load_training_log(store, ENV, "run-1")
    assert log.status == "failed" and log.error == "lease expired" and log.generation == 4 and log.ended_at
    created = runlog.mark_failed(store, ENV, "never-logged", "taken over")
    assert created.status == "failed" and runlog.load_training_log(store, ENV, "never-logged").error == "taken over"
    md = ModelMetadata(run_id="run-1", env=ENV, params={"h": 24}, data_fingerprint="abc",
                       models={"bolt": {"path": "x"}}, leaderboard=[{"model": "bolt", "mase": 0.8}])
    runlog.save_model_metadata(store, md)
    assert runlog.load_model_metadata(store, ENV, "run-1") == md
    assert runlog.load_model_metadata(store, ENV, "run-2") is None


def test_when_a_run_log_is_corrupt_then_bad_input_names_the_file(store):
    store.put(layout.training_log_key(ENV, "run-1"), b'{"run_id": 3}')
    with pytest.raises(BadInputError, match="training.json"):
        runlog.load_training_log(store, ENV, "run-1")
    store.put(layout.state_key(ENV), b"not json")
    with pytest.raises(BadInputError, match="system-state.json"):
        read_state(store, ENV)


def test_when_cleanup_starts_before_the_run_finished_then_state_file_and_training_json_both_record_failed_then_cleanup(store):
    h = RunLock(store, ENV).acquire("run-early")
    h.record_transition("data_sync")

    st = run_cleanup(store, ENV, "run-early", [], h)

    assert st.complete and read_state(store, ENV) is None
    assert [x["status"] for x in h.state["history"]] == ["initialization", "data_sync", "failed", "cleanup"]
    log = runlog.load_training_log(store, ENV, "run-early")
    assert [t.status for t in log.transitions] == ["data_sync", "failed", "cleanup"]
    assert log.transitions[1].details == h.state["history"][2]["details"] == {"reason": "cleanup started before the run finished"}
    assert log.transitions[-1].at == h.state["updated_at"]
