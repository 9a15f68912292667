"""Killing a live run from another process, the abort hook, and resuming a killed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from blocks.store import open_store
from chronos_flows import layout, runlog
from chronos_flows.lock import RunLock, read_state
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
        "--set", "chronos.max_steps=300", "--set", "chronos.checkpoint_every=10",
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
