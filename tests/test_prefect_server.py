"""chronos-training deployed on a real ``prefect server start`` (SQLite) and run by a process worker.

The README sequence "Running on a Prefect server", for real: server on 127.0.0.1 with its own
PREFECT_HOME, ``prefect work-pool create``, ``prefect deploy --all`` from the repo root (prefect.yaml),
``prefect deployment run 'chronos-training/adhoc'`` with the small config of test_flow_e2e, a
``prefect worker start --run-once`` started outside the repo (the pull step must move it there),
then the run's state, artifacts and history read back through the API and the CLI.
About a minute on 2 cores (server start ~20 s, one worker run ~40 s); part of the default suite.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from blocks.store import open_store
from chronos_flows import layout
from chronos_flows.config import build_params, parse_overrides
from tests.conftest import free_port
from tests.test_flow_e2e import SMALL

# Runs in the default suite (~1 min): the deployment path is what users run.

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "chronos-local"
RUN_ID = "server-e2e-run-1"
SERVER_START_TIMEOUT = 150.0
RUN_TIMEOUT = 420.0


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return f"({path} missing)"


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group (server → uvicorn, worker → flow process), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class PrefectServer:
    """``prefect server start`` on a free port of 127.0.0.1 with its own PREFECT_HOME (SQLite)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        # Nothing inherited from the parent's Prefect settings (the test session's own harness
        # sets PREFECT_* variables): only the ones below.
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "CHRONOS_FLOWS_STORE"}
        base.update(
            PREFECT_HOME=str(home),
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PREFECT_CLI_PROMPT="false",
            PREFECT_CLI_WRAP_LINES="false",
            COLUMNS="250",  # full ids in the CLI's tables
        )
        self.server_env = dict(base)
        self.env = dict(base, PREFECT_API_URL=self.url)
        self.log_path = home / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--analytics-off"],
                cwd=home,
                env=self.server_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_in = self._wait_healthy()

    def _wait_healthy(self) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < SERVER_START_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"prefect server not healthy within {SERVER_START_TIMEOUT}s:\n{_tail(self.log_path)}")

    def cli(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180.0) -> str:
        """Run ``prefect ARGS`` against this server; fail the test with its output when it fails."""
        res = subprocess.run(
            [PREFECT, *args],
            cwd=cwd or self.home,
            env=env or self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if res.returncode != 0:
            pytest.fail(
                f"`prefect {' '.join(args)}` exited with {res.returncode}\n--- stdout\n{res.stdout[-4000:]}\n"
                f"--- stderr\n{res.stderr[-4000:]}\n--- server log\n{_tail(self.log_path, 40)}"
            )
        return res.stdout

    @contextmanager
    def client(self) -> Iterator["object"]:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            with get_client(sync_client=True) as client:
                yield client

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Iterator[PrefectServer]:
    """A running server with the work pool and every deployment of prefect.yaml."""
    home = tmp_path_factory.mktemp("prefect-server")
    server = PrefectServer(home)
    try:
        server.cli("work-pool", "create", POOL, "--type", "process")
        # From the repo root, as a shell does it: prefect.yaml's pull step records {{ $PWD }}.
        t0 = time.monotonic()
        server.deploy_output = server.cli("deploy", "--all", cwd=REPO, env=dict(server.env, PWD=str(REPO)))
        server.deploy_seconds = time.monotonic() - t0
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def adhoc_run(deployed: PrefectServer, tmp_path_factory) -> dict:
    """``prefect deployment run 'chronos-training/adhoc'`` with a small config, run by a one-shot worker."""
    work = tmp_path_factory.mktemp("adhoc-run")
    store_dir = work / "store"
    overrides = parse_overrides(SMALL)
    params = build_params(overrides=SMALL, store=str(store_dir), run_id=RUN_ID)  # valid before it is sent
    payload = dict(overrides, store=str(store_dir), run_id=RUN_ID)

    out = deployed.cli("deployment", "run", "chronos-training/adhoc", "--param", f"params={json.dumps(payload)}")
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, f"no flow run id in `prefect deployment run` output:\n{out}"
    flow_run_id = match.group(1)

    # Started outside the repo: the deployment's pull step has to move it to the checkout.
    worker_log = work / "worker.log"
    t0 = time.monotonic()
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--run-once", "--limit", "1"],
            cwd=work,
            env=deployed.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        state = None
        with deployed.client() as client:
            while time.monotonic() - t0 < RUN_TIMEOUT:
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_final():
                    break
                time.sleep(2)
        run_seconds = time.monotonic() - t0
        try:
            worker_rc = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker_rc = None
    finally:
        _stop(worker)
    return {
        "flow_run_id": flow_run_id,
        "state": state,
        "params": params,
        "store_dir": store_dir,
        "worker_rc": worker_rc,
        "worker_log": worker_log,
        "run_seconds": run_seconds,
    }


def _failure_context(server: PrefectServer, run: dict) -> str:
    return f"--- worker log\n{_tail(run['worker_log'])}\n--- server log\n{_tail(server.log_path, 30)}"


def test_when_deploy_all_runs_from_the_repo_root_then_both_deployments_exist_and_weekly_is_scheduled_in_utc(deployed):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with deployed.client() as client:
        weekly = client.read_deployment_by_name("chronos-training/weekly")
        adhoc = client.read_deployment_by_name("chronos-training/adhoc")

        for dep in (weekly, adhoc):
            assert dep.entrypoint == "flows/training.py:chronos_training"
            assert dep.work_pool_name == POOL
            # no git clone / docker step: the worker runs the code of this checkout
            assert dep.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ], dep.pull_steps
            assert "params" in dep.parameter_openapi_schema["properties"]

        assert adhoc.schedules == []
        assert len(weekly.schedules) == 1
        sched = weekly.schedules[0]
        assert sched.active
        assert sched.schedule.cron == "0 6 * * 1"
        assert sched.schedule.timezone == "UTC"

        # the server's scheduler creates the upcoming runs (it polls every few seconds)
        upcoming = []
        deadline = time.monotonic() + 90
        while not upcoming and time.monotonic() < deadline:
            upcoming = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[weekly.id])),
                flow_run_filter=FlowRunFilter(state=dict(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            )
            if not upcoming:
                time.sleep(2)
    assert upcoming, f"no scheduled runs of the weekly deployment after 90 s\n{_tail(deployed.log_path, 40)}"
    now = datetime.now(timezone.utc)
    for run in upcoming:
        start = run.expected_start_time.astimezone(timezone.utc)
        assert start > now
        assert (start.weekday(), start.hour, start.minute) == (0, 6, 0), start  # Mondays 06:00 UTC


def test_when_the_adhoc_deployment_runs_on_a_process_worker_then_the_run_completes_and_the_store_holds_it(deployed, adhoc_run):
    state = adhoc_run["state"]
    assert state is not None and state.is_completed(), f"flow run state {state}\n{_failure_context(deployed, adhoc_run)}"
    assert adhoc_run["worker_rc"] == 0, _failure_context(deployed, adhoc_run)

    with deployed.client() as client:
        run = client.read_flow_run(adhoc_run["flow_run_id"])
    assert run.deployment_id is not None
    assert run.parameters["params"]["run_id"] == RUN_ID

    params = adhoc_run["params"]
    store = open_store(params.store_url())
    log = json.loads(store.get(layout.training_log_key(params.env, RUN_ID))[0])
    assert log["status"] == "succeeded", log
    assert log["flow_run_id"] == adhoc_run["flow_run_id"]  # the store's record points back to Prefect's run


def test_when_the_adhoc_run_has_completed_then_its_artifacts_are_readable_through_the_api(deployed, adhoc_run):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    assert adhoc_run["state"] is not None and adhoc_run["state"].is_completed(), _failure_context(deployed, adhoc_run)
    with deployed.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[adhoc_run["flow_run_id"]]))
        )
    by_key = {a.key: a for a in artifacts if a.key}

    board = by_key[f"leaderboard-{RUN_ID}"]
    assert board.type == "table"
    rows = json.loads(board.data) if isinstance(board.data, str) else board.data
    assert {r["model"] for r in rows} == {"chronos", "autoets", "prophet", "seasonal_naive"}
    assert all(r["wql"] >= 0 for r in rows)

    report = by_key[f"evaluation-report-{RUN_ID}"]
    assert report.type == "markdown"
    assert "chronos" in report.data and "prophet" in report.data

    progress = by_key[f"training-progress-{RUN_ID}"]
    assert progress.type == "progress"
    assert float(progress.data) == pytest.approx(100.0)

    assert f"cleaning-report-{RUN_ID}" in by_key
    assert f"champion-decision-{RUN_ID}" in by_key


def test_when_the_adhoc_run_has_completed_then_the_cli_shows_its_history_logs_and_artifacts(deployed, adhoc_run):
    flow_run_id = adhoc_run["flow_run_id"]

    listing = deployed.cli("flow-run", "ls")
    line = next((ln for ln in listing.splitlines() if flow_run_id in ln), None)
    assert line is not None, f"`prefect flow-run ls` does not list {flow_run_id}:\n{listing}"
    assert "COMPLETED" in line

    logs = deployed.cli("flow-run", "logs", flow_run_id)
    assert "set_working_directory" in logs
    assert "Finished in state Completed" in logs

    artifact = deployed.cli("artifact", "inspect", f"leaderboard-{RUN_ID}")
    assert flow_run_id in artifact and "seasonal_naive" in artifact


def test_when_forecast_adhoc_runs_after_the_training_run_then_the_champion_writes_forecasts(deployed, adhoc_run):
    """The forecast deployments: weekly on Mondays 09:00 UTC; adhoc run by a worker on the store the
    training run left a champion in."""
    assert adhoc_run["state"] is not None and adhoc_run["state"].is_completed(), _failure_context(deployed, adhoc_run)
    with deployed.client() as client:
        weekly = client.read_deployment_by_name("chronos-forecast/forecast-weekly")
        adhoc = client.read_deployment_by_name("chronos-forecast/forecast-adhoc")
    assert weekly.entrypoint == adhoc.entrypoint == "flows/forecast.py:chronos_forecast"
    assert [(s.schedule.cron, s.schedule.timezone) for s in weekly.schedules] == [("0 9 * * 1", "UTC")]
    assert adhoc.schedules == []

    store_dir = adhoc_run["store_dir"]
    payload = {"store": str(store_dir), "forecast_id": "server-forecast-1", "horizon": 5}
    out = deployed.cli("deployment", "run", "chronos-forecast/forecast-adhoc", "--param", f"params={json.dumps(payload)}")
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, out
    flow_run_id = match.group(1)
    work = store_dir.parent
    log_path = work / "forecast-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--run-once", "--limit", "1"],
            cwd=work, env=deployed.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        state = None
        t0 = time.monotonic()
        with deployed.client() as client:
            while time.monotonic() - t0 < RUN_TIMEOUT:
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_final():
                    break
                time.sleep(2)
        worker.wait(timeout=60)
    finally:
        _stop(worker)
    assert state is not None and state.is_completed(), f"{state}\n{_tail(log_path)}"
    store = open_store(adhoc_run["params"].store_url())
    doc = json.loads(store.get(f"{layout.forecasts_prefix('dev', 'server-forecast-1')}/forecast.json")[0])
    champion = json.loads(store.get(layout.champion_key("dev"))[0])
    assert doc["champion"]["run_id"] == RUN_ID == champion["run_id"]
    assert doc["counts"]["rows"] == doc["counts"]["series_forecast"] * 5 > 0
