"""Killing a live run from another process, the abort hook, and resuming a killed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from blocks.store import LocalStore
from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.runstate.lock import RunLock
from chronos_flows.runstate.handoff import abandon
from chronos_flows.runstate.statefile import read_state
from chronos_flows.runstate.runs import kill_run
from tasks.cleanup import release_after_abort
from tests.test_cli import cli
from tests.test_flow_e2e import SMALL

REPO = Path(__file__).resolve().parents[1]


def test_when_the_flow_run_is_cancelled_then_the_abort_hook_releases_its_lock(tmp_path):
    store_dir = tmp_path / "store"
    store = open_store(str(store_dir))
    h = RunLock(store, "dev", lease_seconds=600).acquire("cancelled-run", flow_run_id="fr-1")
    runlog.record_transition(store, "dev", "cancelled-run", "initialization", h.state["updated_at"], {})
    h.transition("data_sync")
    params = {"store": str(store_dir)}

    # another flow run's hook must not touch this run's lock
    release_after_abort(None, SimpleNamespace(id="fr-other", parameters={"params": params}), SimpleNamespace(name="Cancelled"))
    assert read_state(store, "dev").run_id == "cancelled-run"

    release_after_abort(None, SimpleNamespace(id="fr-1", parameters={"params": params}), SimpleNamespace(name="Cancelled"))
    assert read_state(store, "dev") is None
    log = runlog.load_training_log(store, "dev", "cancelled-run")
    assert log.status == "killed" and log.error.startswith("cancelled from Prefect (flow run fr-1)"), log.error
    assert [t.status for t in log.transitions][-2:] == ["killed", "cleanup"]
    assert runlog.load_cleanup_status(store, "dev", "cancelled-run").complete


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run exited {proc.returncode} while waiting for {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_when_a_live_run_is_killed_then_it_cleans_up_and_resume_reaches_the_same_step_count(tmp_path):
    store_dir = tmp_path / "store"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    overrides = [a for o in SMALL if not o.startswith(("chronos.max_steps", "chronos.checkpoint_every")) for a in ("--set", o)]
    args = [
        "--store", str(store_dir), *overrides,
        "--set", "chronos.max_steps=300", "--set", "chronos.random_max_steps=300", "--set", "chronos.checkpoint_every=10",
        "--set", "lock.heartbeat_seconds=1", "--set", "lock.lease_seconds=30",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--set", "run_id=kr-1", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    store = open_store(str(store_dir))
    try:
        _wait_for(lambda: store.list(layout.checkpoints_prefix("dev", "kr-1") + "/"), 240, "a stored checkpoint", proc)
        assert read_state(store, "dev").status == "training"
        res = cli("kill", "--store", str(store_dir), "--wait", "90", env=env)
        assert res.returncode == 0, res.stderr
        assert "kr-1" in res.stdout and "the run cleaned up and released the lock" in res.stdout, res.stdout
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # a kill is not a crash: its own exit code, the summary, no traceback
    assert proc.returncode == 4, err[-3000:]
    assert "run kr-1: killed" in out and "Traceback" not in out + err, (out, err[-3000:])
    assert "model_metadata" not in out and "evaluation:" not in out  # never written: not listed
    assert read_state(store, "dev") is None
    log = runlog.load_training_log(store, "dev", "kr-1")
    assert log.status == "killed"
    assert [t.status for t in log.transitions][-2:] == ["killed", "cleanup"]
    assert runlog.load_cleanup_status(store, "dev", "kr-1").complete

    killed_log = store.get(layout.training_log_key("dev", "kr-1"))[0]

    # resume continues the run as it was: its recorded parameters (a changed training setting is
    # refused), up to its recorded max_steps, as a new attempt; kr-1's own record is never rewritten
    refused = cli("run", "--resume", "kr-1", "--store", str(store_dir), "--set", "chronos.max_steps=5", env=env)
    assert refused.returncode == 2 and "cannot change chronos.max_steps when resuming run kr-1" in refused.stderr
    res = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", "--resume", "kr-1", "--json", "--store", str(store_dir),
         "--set", "lock.heartbeat_seconds=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["status"] == "succeeded" and summary["run_id"] == "kr-1-resume-1"
    md = json.loads(store.get(layout.metadata_key("dev", "kr-1-resume-1"))[0])
    chronos = md["models"]["chronos"]
    assert chronos["resumed_checkpoints"] >= 1
    assert chronos["steps_done"] == 300  # kr-1's recorded max_steps
    assert md["params"]["chronos"]["max_steps"] == 300 and md["params"]["resume_from"] == "kr-1"
    attempt = runlog.load_training_log(store, "dev", "kr-1-resume-1")
    assert attempt.resumed_from == "kr-1" and attempt.status == "succeeded"
    assert [t.status for t in attempt.transitions][0] == "initialization" and attempt.transitions[-1].status == "cleanup"
    assert store.get(layout.training_log_key("dev", "kr-1"))[0] == killed_log  # untouched
    assert runlog.load_training_log(store, "dev", "kr-1").status == "killed"


class ReleaseWatchingStore(LocalStore):
    """A LocalStore that keeps the state file's last content as it is deleted (the release)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.released_state: dict | None = None

    def delete_if_match(self, key: str, etag: str) -> None:
        if key == layout.state_key("dev") and (got := self.get(key)) is not None:
            self.released_state = json.loads(got[0])
        return super().delete_if_match(key, etag)


#: a holder that takes the lock, goes to training and then stops heartbeating (its process hangs)
HANGING_HOLDER = """
import sys, time
from blocks.resolve import open_store
from chronos_flows.runstate.lock import RunLock
h = RunLock(open_store(sys.argv[1]), "dev", lease_seconds=600).acquire("hung-run")
h.record_status({"generation": h.generation})
h.record_transition("data_sync")
h.record_transition("training")
print("training", flush=True)
time.sleep(600)
"""


def test_when_a_hung_run_is_killed_from_another_process_then_the_state_file_and_training_json_agree(tmp_path):
    store = ReleaseWatchingStore(tmp_path / "store")
    holder = subprocess.Popen([sys.executable, "-c", HANGING_HOLDER, str(tmp_path / "store")], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "training"
        result = kill_run(store, "dev", "hung-run", wait_seconds=1.0, poll_seconds=0.2, reason="operator")
    finally:
        holder.kill()
        holder.wait()

    assert result["killed"] and result["cleanup_complete"], result
    assert read_state(store, "dev") is None
    history = store.released_state["history"]
    log = runlog.load_training_log(store, "dev", "hung-run")
    assert [h["status"] for h in history] == [t.status for t in log.transitions] == [
        "initialization", "data_sync", "training", "killed", "cleanup"]
    # the kill's two transitions, written from outside: the same time stamps and details in both
    assert [(h["at"], h["details"]) for h in history[-2:]] == [(t.at, t.details) for t in log.transitions[-2:]]
    assert store.released_state["status"] == "cleanup" and log.status == "killed"
    assert log.error.startswith("operator; its process did not respond") and log.ended_at


def test_when_a_launcher_gives_back_a_lock_its_flow_never_adopted_then_training_json_follows_the_state_file(tmp_path):
    store = ReleaseWatchingStore(tmp_path / "store")
    handle = RunLock(store, "dev", lease_seconds=600).acquire("never-started")

    abandon(handle, "the flow run did not start")

    assert read_state(store, "dev") is None and handle.released
    history = store.released_state["history"]
    log = runlog.load_training_log(store, "dev", "never-started")
    assert [h["status"] for h in history] == ["initialization", "failed", "cleanup"]
    assert [t.status for t in log.transitions] == ["failed", "cleanup"]  # initialization was never recorded
    assert log.transitions[0].details == history[1]["details"] == {"reason": "the flow run did not start"}
    assert log.status == "failed" and log.error == "the flow run did not start" and log.ended_at
