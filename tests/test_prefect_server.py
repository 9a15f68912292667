"""chronos-training deployed on a real ``prefect server start`` (SQLite) and run by a process worker.

The README sequence "Running on a Prefect server", for real: server on 127.0.0.1 with its own
PREFECT_HOME, ``prefect work-pool create``, ``prefect deploy --all`` from the repo root (prefect.yaml),
``prefect deployment run 'chronos-training/adhoc'`` with the small config of test_flow_e2e, a
``prefect worker start --run-once`` started outside the repo (the pull step must move it there),
then the run's state, artifacts and history read back through the API and the CLI.
About a minute on 2 cores (server start ~20 s, one worker run ~40 s); part of the default suite.
The run's pictures are checked twice: through the API (PNG data in the artifacts) and in headless
Chromium driven over the DevTools protocol (the image on the report's artifact page has loaded).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
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

from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.config.params import build_params, parse_overrides
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
        # The UI (served by the same process) calls the API address it is given at start; without
        # it a server on another port than 4200 serves a UI that talks to port 4200.
        self.server_env = dict(base, PREFECT_UI_API_URL=self.url)
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
    assert {r["model"] for r in rows} == {"chronos", "autoets", "theta", "prophet", "seasonal_naive", "lightgbm", "ensemble"}
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
    # what a reviewer reads: a line per phase with its time, a phase summary, each model's metrics,
    # one champion line, and not the task runs' "Finished in state Completed()" (only the flow's own)
    for phase in ("preflight", "data_sync", "training", "autoets", "prophet", "evaluate", "results_sync"):
        assert re.search(rf"- phase {phase}: \d+\.\d s$", logs, re.M), phase
    assert len(re.findall(r"- phases: preflight .* total \d+\.\d s$", logs, re.M)) == 1
    for model in ("chronos", "autoets", "prophet", "seasonal_naive"):
        assert re.search(rf"- {model}: wql [0-9.e-]+, mase ", logs), model
    assert len(re.findall(r"- champion: ", logs)) == 1
    assert logs.count("Finished in state Completed()") == 1
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    records: list = []
    with deployed.client() as client:
        while True:
            page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=len(records))
            records += page
            if len(page) < 200:
                break
    assert any(r.task_run_id for r in records)  # the task runs' own lines still arrive
    finished = [r for r in records if r.message.startswith("Finished in state")]
    assert [r.task_run_id for r in finished] == [None], [(r.task_run_id, r.message) for r in finished]  # the flow run's only

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


# ----------------------------------------------------------------------------------- pictures

DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _run_artifacts(server: PrefectServer, flow_run_id: str) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with server.client() as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in artifacts if a.key}


def _embedded_pngs(markdown: str) -> list[bytes]:
    return [base64.b64decode(m) for m in DATA_URI.findall(markdown)]


def test_when_the_adhoc_run_has_completed_then_its_report_and_plot_artifacts_hold_decodable_pngs(deployed, adhoc_run):
    """The UI cannot open store paths: every picture is in the artifact itself, and in the store too."""
    assert adhoc_run["state"] is not None and adhoc_run["state"].is_completed(), _failure_context(deployed, adhoc_run)
    by_key = _run_artifacts(deployed, adhoc_run["flow_run_id"])
    params = adhoc_run["params"]
    store = open_store(params.store_url())
    prefix = layout.evaluation_prefix(params.env, RUN_ID)
    stored = {key.rsplit("/", 1)[-1]: store.get(key)[0] for key in store.list(prefix + "/") if key.endswith(".png")}

    report = by_key[f"evaluation-report-{RUN_ID}"]
    assert report.type == "markdown"
    pngs = _embedded_pngs(report.data)
    assert pngs, report.data[:2000]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000 for png in pngs)
    assert "](plots/" not in report.data and "file://" not in report.data

    plots = [a for key, a in by_key.items() if key.startswith("plot-") and key.endswith(RUN_ID)]
    assert len(plots) == len(pngs)  # one artifact per plot of the report (the data has one series: "best")
    for plot in plots:
        assert plot.type == "markdown", plot.type
        (png,) = _embedded_pngs(plot.data)
        assert png.startswith(b"\x89PNG") and png in pngs
        assert png in stored.values()  # the same picture is kept in the store

    curve = by_key[f"loss-curve-{RUN_ID}"]
    assert curve.type == "markdown"
    (png,) = _embedded_pngs(curve.data)
    assert png.startswith(b"\x89PNG") and png == stored["loss_curve.png"]

    # the form's empty data file resolved at run time, in the worker's working directory (the checkout)
    champion = json.loads(store.get(layout.champion_key(params.env))[0])
    assert champion["judged_on"]["source"] == str(REPO / "data" / "us_gasoline.csv")
    with deployed.client() as client:
        adhoc = client.read_deployment_by_name("chronos-training/adhoc")
    assert adhoc.parameter_openapi_schema["definitions"]["DataConfig"]["properties"]["path"]["default"] is None


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Cdp:
    """The smallest DevTools-protocol client: one page target, commands answered in order."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, timeout: float = 30.0, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@contextmanager
def headless_chromium(tmp: Path) -> Iterator[Cdp]:
    """Debian's chromium, headless, fresh profile, no network chatter; its page over DevTools."""
    binary = _chromium()
    profile = tmp / "chromium-profile"
    profile.mkdir()
    log = open(tmp / "chromium.log", "wb")
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--window-size=1200,900", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    cdp = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open its DevTools port:\n{_tail(tmp / 'chromium.log')}")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        cdp = Cdp(page["webSocketDebuggerUrl"])
        yield cdp
    finally:
        if cdp is not None:
            cdp.close()
        _stop(proc, timeout=10)
        log.close()


IMAGES_JS = (
    "JSON.stringify(Array.from(document.images).map(i => ({src: i.src.slice(0, 200), "
    "complete: i.complete, width: i.naturalWidth})))"
)


@pytest.mark.parametrize("artifact, n_images", [("evaluation-report", 1), ("eda", 2)])
def test_when_the_report_artifact_page_opens_in_a_browser_then_its_plot_images_have_loaded(deployed, adhoc_run, tmp_path,
                                                                                          artifact, n_images):
    """What a user sees: the Prefect UI's artifact pages of the evaluation report and of the exploratory
    report, in real Chromium: the embedded plots have loaded."""
    if _chromium() is None:
        if os.environ.get("CHRONOS_FLOWS_REQUIRE_BROWSER"):
            pytest.fail("no chromium on PATH; .ci/run installs Debian's chromium (apt-get install -y chromium)")
        pytest.skip("no chromium on PATH (apt-get install -y chromium; .ci/run installs it)")
    assert adhoc_run["state"] is not None and adhoc_run["state"].is_completed(), _failure_context(deployed, adhoc_run)
    report = _run_artifacts(deployed, adhoc_run["flow_run_id"])[f"{artifact}-{RUN_ID}"]
    url = f"http://127.0.0.1:{deployed.port}/artifacts/artifact/{report.id}"

    def loaded_pngs(images: list[dict]) -> list[dict]:
        return [i for i in images if i["src"].startswith("data:image/png") and i["complete"] and i["width"] > 0]

    images: list[dict] = []
    with headless_chromium(tmp_path) as page:
        page.call("Page.enable")
        page.call("Page.navigate", url=url)
        deadline = time.monotonic() + 120  # the UI's bundle loads, then it fetches the artifact
        while time.monotonic() < deadline:
            images = json.loads(page.evaluate(IMAGES_JS) or "[]")
            if len(loaded_pngs(images)) >= n_images:
                break
            time.sleep(1)
        text = page.evaluate("document.body ? document.body.innerText.slice(0, 600) : ''")
        shot = tmp_path / f"{artifact}-artifact.png"  # what the page looked like, for a failure
        shot.write_bytes(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
    loaded = loaded_pngs(images)
    assert len(loaded) >= n_images, (f"{len(loaded)} loaded PNG image(s) on {url}, want {n_images}: images "
                                     f"{[dict(i, src=i['src'][:40]) for i in images]}\npage text: {text!r}\nscreenshot: {shot}")
    assert all(i["src"] in report.data for i in loaded)  # the report's own plots
    assert loaded[0]["width"] >= 400  # a plot at 100 dpi, not a placeholder icon


# ----------------------------------------------------------------------------------- cancel

CANCEL_RUN_ID = "server-cancel-run-1"


def test_when_a_running_training_run_is_cancelled_from_prefect_then_it_ends_cancelled_and_the_store_says_killed(deployed, tmp_path):
    """`prefect flow-run cancel` is a kill, as `chronos-flows kill` is: Cancelled in Prefect, `killed`
    with the cause "cancelled from Prefect" in training.json, and the lock released."""
    store_dir = tmp_path / "store"
    overrides = [o for o in SMALL if not o.startswith("chronos.max_steps")] + ["chronos.max_steps=100000", "chronos.random_max_steps=100000"]
    params = build_params(overrides=overrides, store=str(store_dir), run_id=CANCEL_RUN_ID)
    payload = dict(parse_overrides(overrides), store=str(store_dir), run_id=CANCEL_RUN_ID)
    out = deployed.cli("deployment", "run", "chronos-training/adhoc", "--param", f"params={json.dumps(payload)}")
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, out
    flow_run_id = match.group(1)
    store = open_store(params.store_url())
    log_path = tmp_path / "cancel-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--run-once", "--limit", "1"],
            cwd=tmp_path, env=deployed.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with deployed.client() as client:
            # Running in Prefect, and training under the lock in the store
            deadline = time.monotonic() + RUN_TIMEOUT
            while True:
                state = client.read_flow_run(flow_run_id).state
                held = store.get(layout.state_key(params.env))
                status = json.loads(held[0]).get("status") if held else None
                if state is not None and state.is_running() and status == "training":
                    break
                assert not (state is not None and state.is_final()), f"ended {state} before it was cancelled\n{_tail(log_path)}"
                assert time.monotonic() < deadline, f"not training after {RUN_TIMEOUT} s: {state}, {status}\n{_tail(log_path)}"
                time.sleep(1)

            deployed.cli("flow-run", "cancel", flow_run_id)

            deadline = time.monotonic() + 180
            while not (state is not None and state.is_final()):
                assert time.monotonic() < deadline, f"still {state} 180 s after the cancel\n{_tail(log_path)}"
                time.sleep(1)
                state = client.read_flow_run(flow_run_id).state
        worker.wait(timeout=60)
    finally:
        _stop(worker)
    assert state.is_cancelled(), f"{state}\n{_tail(log_path)}"
    record = json.loads(store.get(layout.training_log_key(params.env, CANCEL_RUN_ID))[0])
    assert record["status"] == "killed", record
    assert record["error"].startswith("cancelled from Prefect"), record["error"]
    assert record["flow_run_id"] == flow_run_id
    # the lock is released (also after the on_cancellation hook, which finds nothing left to release)
    time.sleep(10)
    assert store.get(layout.state_key(params.env)) is None
    cleanup = json.loads(store.get(layout.cleanup_status_key(params.env, CANCEL_RUN_ID))[0])
    assert cleanup["complete"] is True


# Kept last in this module: the run the trigger creates is deleted at the end, so no worker of the
# tests above can pick it up.
def test_when_the_monitor_finds_the_champion_degraded_then_the_trigger_creates_a_training_run(deployed, tmp_path):
    """Issue 22: `chronos-flows monitor` (a level shift breaks a seasonal-naive champion's promise) emits
    chronos-flows.champion.degraded to this server; the automation that `prefect deploy` made from the
    trigger in prefect.yaml creates a flow run of chronos-training/adhoc."""
    import pandas as pd
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from tests.test_monitoring import panel, publish_batch

    store_dir = tmp_path / "store"
    store = open_store(str(store_dir))
    cut = pd.Timestamp("2021-12-27")
    publish_batch(store, panel(), cut, forecast_id="fc-srv", run_id="srv-champion")
    store.put(layout.champion_key("dev"), json.dumps({
        "schema_version": 2, "run_id": "srv-champion", "family": "seasonal_naive", "model": "seasonal_naive",
        "config": {}, "gate_metric": "wql", "score": 0.01, "scores": {"wql": 0.01, "mase": 1.0},
        "judged_on": {"freq": "W-MON", "season_length": 52, "horizon": 8}}).encode())
    data = tmp_path / "shifted.csv"
    panel(shift_from=cut, shift=5.0).to_csv(data, index=False)

    with deployed.client() as client:
        adhoc = client.read_deployment_by_name("chronos-training/adhoc")
        dep_filter = DeploymentFilter(id=DeploymentFilterId(any_=[adhoc.id]))
        before = {r.id for r in client.read_flow_runs(deployment_filter=dep_filter)}

    env = dict(deployed.env, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "app.cli", "monitor", "--store", str(store_dir), "--data", str(data),
                           "--set", "degradation.consecutive=1", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    record = json.loads(store.get(layout.degradation_key("dev", "srv-champion"))[0])
    assert record["event_emitted_at"] and record["event_id"] != "not-emitted", record

    created = []
    deadline = time.monotonic() + 90
    with deployed.client() as client:
        while not created and time.monotonic() < deadline:
            created = [r for r in client.read_flow_runs(deployment_filter=dep_filter) if r.id not in before]
            if not created:
                time.sleep(1)
        try:
            assert len(created) == 1, f"the trigger created no training run\n{_tail(deployed.log_path, 40)}"
            run = created[0]
            assert run.created_by is None or run.created_by.type == "AUTOMATION", run.created_by
        finally:
            for r in created:
                client.delete_flow_run(r.id)
