"""Store outages shorter than the lease are ridden out; longer ones end the run cleanly (issue 26).

S3 is the moto server behind ``tests.faultproxy.FaultProxy``, which answers 503 SlowDown (or drops
the connection) for every request during a timed window.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from blocks.store import S3Store
from chronos_flows.core import layout
from chronos_flows.core.errors import LeaseExpiredError
from chronos_flows.runstate.cleanup import run_cleanup, verify_cleanup
from chronos_flows.runstate.lock import RunLock
from chronos_flows.runstate.statefile import read_state
from tests.faultproxy import FaultProxy

ENV = "dev"
LEASE = 4.0
BEAT = 0.4


def _state_writes(proxy: FaultProxy, bucket: str) -> list[tuple[float, int | None]]:
    path = f"/{bucket}/chronos/{layout.state_key(ENV)}"
    return [(t, status) for t, m, p, _, status in proxy.timed if m in ("PUT", "DELETE") and p.split("?")[0] == path]


@pytest.mark.parametrize("kind", ["503", "drop"])
def test_when_the_store_is_away_for_half_the_lease_then_the_heartbeat_rides_it_out_and_records_the_outage(aws_env, kind):
    bucket = aws_env.new_bucket()
    direct = S3Store(bucket, "chronos")
    with FaultProxy(aws_env.endpoint_url) as proxy:
        store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url)
        h = RunLock(store, ENV, lease_seconds=LEASE).acquire("run-1")
        h.transition("data_sync")
        h.transition("training")
        with h.heartbeat_thread(BEAT):
            time.sleep(BEAT * 1.5)
            start, end = proxy.outage(kind, LEASE * 0.5)
            slowest = 0.0
            while time.monotonic() < end + 3 * BEAT:
                t0 = time.monotonic()
                h.check()  # never raises, never waits on the store through the outage
                slowest = max(slowest, time.monotonic() - t0)
                time.sleep(0.05)
            after = read_state(direct, ENV)
        h.transition("results_sync")
        h.transition("cleanup")
        h.release()
    assert slowest < 1.0, f"a lock check waited {slowest:.2f}s on the store"
    # the heartbeat renewed the lease after the outage (a write landed after its end)
    landed = [t for t, status in _state_writes(proxy, bucket) if status == 200]
    assert any(t > end for t in landed) and after.status == "training" and after.run_id == "run-1"
    refused = [t for t, status in _state_writes(proxy, bucket) if status is None]
    assert refused and all(start <= t <= end + 0.5 for t in refused)
    [outage] = h.outages.records()
    assert "heartbeat" in outage["waited"] and outage["end"] is not None
    assert LEASE * 0.5 - 2 * BEAT <= outage["seconds"] <= LEASE * 0.5 + 3 * BEAT
    assert read_state(direct, ENV) is None


def test_when_the_store_is_away_longer_than_the_lease_then_the_holder_fences_itself_and_writes_nothing_after(aws_env):
    bucket = aws_env.new_bucket()
    direct = S3Store(bucket, "chronos")
    with FaultProxy(aws_env.endpoint_url) as proxy:
        store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url)
        h = RunLock(store, ENV, lease_seconds=LEASE).acquire("run-2")
        h.transition("data_sync")
        h.transition("training")
        with h.heartbeat_thread(BEAT):
            time.sleep(BEAT * 1.5)
            start, end = proxy.outage("503", LEASE * 1.2)
            err = None
            while time.monotonic() < end + 1.0:
                try:
                    h.check()
                except LeaseExpiredError as e:
                    err, fenced_at = e, time.monotonic()
                    break
                time.sleep(0.05)
        assert err is not None, "the holder kept going past its lease"
        lease_end = h._renewed_at + LEASE
        assert fenced_at <= lease_end
        assert "store was unreachable" in str(err) and "run-2" in str(err)
        with pytest.raises(LeaseExpiredError):
            h.transition("failed", reason="should not be written")
        while time.monotonic() < end + 2 * BEAT:
            time.sleep(0.05)
        # the store is back: the state file still names the fenced run, stale, never written after the lease
        snap = read_state(direct, ENV)
        assert snap.run_id == "run-2" and snap.status == "training"
        assert not [t for t, status in _state_writes(proxy, bucket) if status is not None and t > lease_end]
        # the run's cleanup once the store is back: after the lease, as for a dead holder
        h.wait_out_lease()
        done = run_cleanup(store, ENV, "run-2", [], None)
    assert done.complete, done
    [outage] = h.outages.records()
    assert outage["outcome"].startswith("lease expired") and "heartbeat" in outage["waited"]
    ok, findings = verify_cleanup(direct, ENV)
    assert ok, findings


# ------------------------------------------------------------------------------- training under an outage

TRAIN = ["evaluation.horizon=8", "chronos.context_length=32", "chronos.batch_size=8", "chronos.eval_every=10",
         "chronos.checkpoint_every=10", "chronos.learning_rate=0.001", "chronos.seed=3", "chronos.num_threads=1",
         "chronos.keep_checkpoints=all"]


def _train(aws_env, tmp_path, *, max_steps: int, outage: tuple[str, float] | None = None, step_s: float = 0.1):
    """Fine-tune a tiny Chronos-2 through the proxy, holding the lock (heartbeat thread, ``guard`` =
    the handle's check) as the flow does; each step is slowed to ``step_s`` so the outage, started at
    the first progress event, falls inside training. Returns (fitted or error, handle, proxy, store)."""
    from chronos_flows.config.params import build_params
    from chronos_flows.training.fit import fit_and_store
    from tests.chronos_resume_worker import make_sine_frame

    bucket = aws_env.new_bucket()
    params = build_params(overrides=TRAIN + [f"chronos.max_steps={max_steps}", f"lock.lease_seconds={LEASE}",
                                             f"lock.heartbeat_seconds={BEAT}"],
                          store=f"s3://{bucket}/chronos", run_id="train-1", env=ENV)
    proxy = FaultProxy(aws_env.endpoint_url).start()
    store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url)
    h = RunLock(store, ENV, lease_seconds=LEASE).acquire("train-1")
    h.transition("data_sync")
    h.transition("training")

    def guard(refresh: bool = True) -> None:
        time.sleep(step_s / 2)  # a slower step, so that training outlasts the outage
        h.check(refresh)

    def report(ev: dict) -> None:
        if outage and proxy.outage_window is None:
            proxy.outage(*outage)

    out = None
    with h.heartbeat_thread(BEAT):
        try:
            fitted, info = fit_and_store(params, store, "train-1", tmp_path / "work", make_sine_frame(), "MS", guard=guard,
                                         report=report, fetch_dir=lambda uri, dest: None, outages=h.outages,
                                         progress_every_s=0.2)
            out = (fitted, info)
        except LeaseExpiredError as e:
            out = e
    return out, h, proxy, S3Store(bucket, "chronos")


def _stored_checkpoints(direct: S3Store) -> list[str]:
    prefix = layout.checkpoints_prefix(ENV, "train-1") + "/"
    return sorted({k[len(prefix):].split("/", 1)[0] for k in direct.list(prefix)})


@pytest.mark.parametrize("kind", ["503", pytest.param("drop", marks=pytest.mark.slow)])
def test_when_the_store_is_away_for_half_the_lease_during_training_then_it_completes_with_the_same_steps_and_checkpoints(aws_env, tmp_path, kind):
    (plain, plain_info), h0, p0, direct0 = _train(aws_env, tmp_path / "plain", max_steps=40)
    p0.stop()
    (fitted, info), h, proxy, direct = _train(aws_env, tmp_path / "outage", max_steps=40, outage=(kind, LEASE * 0.5))
    proxy.stop()
    start, end = proxy.outage_window
    # training went on through the outage: steps were taken while the store was away
    assert any(start <= t <= end for t, m, p, f, s in proxy.timed if f == kind)
    assert fitted.info.get("steps") == plain.info.get("steps") == 40 or \
        fitted.training_history[-1]["step"] == plain.training_history[-1]["step"] == 40
    assert _stored_checkpoints(direct) == _stored_checkpoints(direct0) and len(_stored_checkpoints(direct)) == 4
    assert direct.exists(f"{layout.models_prefix(ENV, 'train-1', 'chronos')}/config.json")
    [outage] = info["store_outages"]
    assert outage["end"] is not None and "heartbeat" in outage["waited"]
    assert read_state(direct, ENV).status == "training"  # the lock is still held, renewed after the outage


def test_when_the_store_is_away_longer_than_the_lease_during_training_then_it_stops_and_writes_nothing_after_the_lease(aws_env, tmp_path):
    err, h, proxy, direct = _train(aws_env, tmp_path, max_steps=200, outage=("503", LEASE * 1.2))
    start, end = proxy.outage_window
    while time.monotonic() < end + 0.5:
        time.sleep(0.05)
    proxy.stop()
    assert isinstance(err, LeaseExpiredError), err
    lease_end = h._renewed_at + LEASE
    writes_after = [(m, p) for t, m, p, f, s in proxy.timed if m in ("PUT", "POST", "DELETE") and s is not None and t > lease_end]
    assert writes_after == []
    assert not direct.exists(f"{layout.models_prefix(ENV, 'train-1', 'chronos')}/config.json")
    snap = read_state(direct, ENV)
    assert snap.run_id == "train-1" and snap.status == "training"  # left for the cleanup (stale after the lease)
    outages = h.outages.records()
    assert len(outages) == 1, outages
    assert outages[0]["outcome"].startswith("lease expired")


# ------------------------------------------------------------------------------- the whole flow (Prefect)

FLOW_SMALL = ["evaluation.horizon=8", "evaluation.n_windows=2", "evaluation.baselines=[]", "chronos.context_length=64",
              "chronos.batch_size=16", "chronos.eval_every=10", "chronos.checkpoint_every=10", "chronos.num_threads=1",
              "chronos.keep_checkpoints=all", f"lock.lease_seconds={LEASE}", f"lock.heartbeat_seconds={BEAT}"]


def _flow_run(aws_env, monkeypatch, run_id: str, max_steps: int, outage: tuple[str, float] | None):
    """The training flow on S3 behind the proxy; the outage starts at the first checkpoint upload."""
    from chronos_flows.config.params import build_params
    from flows.training import chronos_training

    bucket = aws_env.new_bucket()
    proxy = FaultProxy(aws_env.endpoint_url).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
    if outage:
        proxy.outage_on(lambda m, p: m == "PUT" and "/checkpoints/" in p, *outage)
    params = build_params(overrides=FLOW_SMALL + [f"chronos.max_steps={max_steps}"], store=f"s3://{bucket}/chronos",
                          run_id=run_id, env=ENV)
    try:
        result = chronos_training(params=params, return_state=True)
    finally:
        proxy.stop()
    return result, proxy, S3Store(bucket, "chronos", endpoint_url=aws_env.endpoint_url)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["503", "drop"])
def test_when_s3_throttles_for_half_the_lease_during_the_training_flow_then_the_run_succeeds_and_training_json_has_the_outage(prefect_api, aws_env, monkeypatch, kind):
    import json

    state, proxy, direct = _flow_run(aws_env, monkeypatch, "flow-ok", 150, (kind, LEASE * 0.5))
    assert proxy.outage_window is not None
    summary = state.result()
    assert summary["status"] == "succeeded", summary
    log = json.loads(direct.get(layout.training_log_key(ENV, "flow-ok"))[0])
    assert log["status"] == "succeeded"
    [outage] = log["outages"]
    assert outage["end"] is not None and any(w.startswith("upload checkpoint") for w in outage["waited"])
    prefix = layout.checkpoints_prefix(ENV, "flow-ok") + "/"
    names = sorted({k[len(prefix):].split("/", 1)[0] for k in direct.list(prefix)})
    assert len(names) == 15  # every checkpoint of the 150 steps landed
    assert read_state(direct, ENV) is None
    ok, findings = verify_cleanup(direct, ENV)
    assert ok, findings


@pytest.mark.slow
def test_when_s3_throttles_past_the_lease_during_the_training_flow_then_the_run_fails_naming_it_and_cleans_up_after(prefect_api, aws_env, monkeypatch):
    import json

    state, proxy, direct = _flow_run(aws_env, monkeypatch, "flow-fenced", 3000, ("503", LEASE * 1.2))
    assert state.is_failed()
    log = json.loads(direct.get(layout.training_log_key(ENV, "flow-fenced"))[0])
    assert log["status"] == "failed" and "LeaseExpiredError" in log["error"] and "store was unreachable" in log["error"]
    assert log["outages"] and log["outages"][0]["outcome"].startswith("lease expired")
    cleanup = json.loads(direct.get(layout.cleanup_status_key(ENV, "flow-fenced"))[0])
    assert cleanup["complete"] is True
    start, end = proxy.outage_window
    # nothing of the run's work (checkpoints, model) was written after the outage began
    late = [p for t, m, p, f, s in proxy.timed if m == "PUT" and s is not None and t > start
            and ("/checkpoints/" in p or "/models/" in p)]
    assert late == []
    ok, findings = verify_cleanup(direct, ENV)
    assert ok, findings


# ------------------------------------------------------------------------------- the other store paths


def _copy_to(local, s3) -> None:
    for key in local.list(""):
        s3.put(key, local.get(key)[0])


def test_when_s3_is_away_during_serving_then_the_endpoint_answers_throughout_with_the_loaded_champion(aws_env, tmp_path):
    from fastapi.testclient import TestClient

    from app.server import create_app
    from chronos_flows.serving.champion import ChampionHolder
    from tests.test_forecast import seed_champion

    bucket = aws_env.new_bucket()
    _copy_to(seed_champion(tmp_path / "seed", "seasonal_naive", {"season_length": 7}, run_id="sn-run"), S3Store(bucket, "chronos"))
    with FaultProxy(aws_env.endpoint_url) as proxy:
        # one attempt per poll, so the poll itself meets the outage (botocore would absorb a short one)
        holder = ChampionHolder(S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url, max_attempts=1), "dev", poll_seconds=0.1,
                                workdir=tmp_path / "serve").start()
        try:
            deadline = time.monotonic() + 30
            while holder.current is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert holder.current is not None and holder.current.run_id == "sn-run"
            with TestClient(create_app(holder)) as client:
                start, end = proxy.outage("503", 1.5)
                answers = []
                while time.monotonic() < end + 0.5:
                    r = client.post("/invocations", json={"inputs": [{"target": [float(i % 7) for i in range(30)]}],
                                                          "parameters": {"prediction_length": 3}})
                    answers.append((r.status_code, r.headers.get("X-Champion-Run-Id")))
                    time.sleep(0.05)
        finally:
            holder.stop()
    assert answers and set(answers) == {(200, "sn-run")}
    assert proxy.requests(forwarded=False)  # the poll did hit the outage
    [outage] = holder.outages.records()
    assert outage["waited"] == ["champion poll"] and outage["end"] is not None


def test_when_s3_is_away_while_forecasts_are_published_then_the_batch_completes_after_it(prefect_api, aws_env, tmp_path):
    import tasks.forecast as tf
    from chronos_flows.champion.registry import read_champion
    from chronos_flows.config.params import ForecastParams
    from tests.test_forecast import panel, seed_champion

    bucket = aws_env.new_bucket()
    local = seed_champion(tmp_path / "seed", "seasonal_naive", {"season_length": 4})
    _copy_to(local, S3Store(bucket, "chronos"))
    data = tmp_path / "panel.csv"
    panel(5, n=40).to_csv(data, index=False)
    with FaultProxy(aws_env.endpoint_url) as proxy:
        store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url)
        params = ForecastParams(store=f"s3://{bucket}/chronos", forecast_id="fc-outage", horizon=5, chunk_size=2,
                                data={"path": str(data)}, plot_series=1)
        champ, _ = read_champion(store, "dev")
        inputs, cleaned, report = tf.load_forecast_data(params, champ)
        (tmp_path / "work").mkdir()
        path, run, preview = tf.forecast(store, params, champ, inputs, cleaned, report.freq, "fc-outage", tmp_path / "work")
        proxy.outage("503", 2.0)
        doc = tf.publish.fn(store, params, champ, inputs, report, cleaned, path, run, "fc-outage", "now", preview)
    direct = S3Store(bucket, "chronos")
    prefix = layout.forecasts_prefix("dev", "fc-outage")
    assert direct.exists(f"{prefix}/forecasts.parquet") and direct.exists(f"{prefix}/forecast.json")
    assert doc["counts"]["rows"] == 25
    [outage] = doc["store_outages"]
    assert outage["waited"] == ["forecasts.parquet"] and outage["seconds"] >= 1.0


def test_when_s3_is_away_while_the_parent_follows_its_instance_then_it_keeps_waiting_and_reads_the_result(aws_env):
    import json
    import threading

    from chronos_flows.training.fit import follow_instance

    bucket = aws_env.new_bucket()
    direct = S3Store(bucket, "chronos")

    class Ec2:
        def describe(self, instance_id):
            return "running"

    with FaultProxy(aws_env.endpoint_url) as proxy:
        store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url)
        proxy.outage("503", 1.5)
        # the instance finishes during the outage (its own write goes straight to S3)
        timer = threading.Timer(0.7, lambda: direct.put(layout.instance_result_key(ENV, "r1"),
                                                       json.dumps({"outcome": "ok", "result": {"uri": "x"}}).encode()))
        timer.start()
        doc = follow_instance(store, ENV, "r1", Ec2(), "i-1", time.monotonic() + 30, 0.1, check=lambda: None,
                              report=lambda ev: None)
        timer.join()
    assert doc["outcome"] == "ok" and proxy.requests(forwarded=False)


def test_when_s3_is_away_as_the_instance_writes_its_result_then_it_retries_until_it_lands(aws_env):
    import json

    from app.bootstrap import _write_result, result_key

    bucket = aws_env.new_bucket()
    with FaultProxy(aws_env.endpoint_url) as proxy:
        store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url, max_attempts=1)
        proxy.outage("503", 1.5)
        _write_result(store, ENV, "r1", {"outcome": "ok"}, budget_s=30)
        assert time.monotonic() >= proxy.outage_window[1]
    got = S3Store(bucket, "chronos").get(result_key(ENV, "r1"))
    assert json.loads(got[0]) == {"outcome": "ok"}


def test_when_checkpoint_uploads_fail_and_training_is_retried_then_it_resumes_from_the_newest_local_checkpoint_keeping_the_step_count(aws_env, tmp_path):
    from chronos_flows.config.params import build_params
    from chronos_flows.models.chronos.checkpoints import list_checkpoints
    from chronos_flows.training.fit import fit_and_store
    from tests.chronos_resume_worker import make_sine_frame

    bucket = aws_env.new_bucket()
    params = build_params(overrides=TRAIN + ["chronos.max_steps=30", "chronos.checkpoint_every=5"],
                          store=f"s3://{bucket}/chronos", run_id="train-1", env=ENV)
    work = tmp_path / "work"
    with FaultProxy(aws_env.endpoint_url) as proxy:
        store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url)
        # the store refuses every checkpoint from step 10 on; the first attempt dies once step 20 is saved
        proxy.match = lambda m, p: m == "PUT" and any(f"checkpoint-000000{s}/" in p for s in ("10", "15", "20", "25"))
        proxy.outage("503", 3600)

        def crashing_report(ev: dict) -> None:  # progress comes after the step's checkpoint is in place
            if ev["step"] >= 20:
                raise RuntimeError("the training process died")

        with pytest.raises(Exception, match="the training process died"):
            fit_and_store(params, store, "train-1", work, make_sine_frame(), "MS", guard=lambda refresh=True: None,
                          report=crashing_report, fetch_dir=lambda uri, dest: None, progress_every_s=0.0)
        local = [p.name for p in list_checkpoints(work / "checkpoints")]
        # checkpoint 5 (uploaded) was pruned; 10 is older than the newest two but kept: it is the only copy
        assert local == ["checkpoint-00000010", "checkpoint-00000015", "checkpoint-00000020"]
        assert _stored_checkpoints(S3Store(bucket, "chronos")) == ["checkpoint-00000005"]

        proxy.outage_window = None  # the store is back; the step is retried in the same work directory
        steps2: list[int] = []
        fitted, info = fit_and_store(params, store, "train-1", work, make_sine_frame(), "MS", guard=lambda refresh=True: None,
                                     report=lambda ev: steps2.append(ev["step"]), fetch_dir=lambda uri, dest: None,
                                     progress_every_s=0.0)
    assert min(steps2) > 20 and max(steps2) == 30  # resumed from step 20, not restarted
    assert fitted.training_history[-1]["step"] == 30
    assert _stored_checkpoints(S3Store(bucket, "chronos")) == [f"checkpoint-{s:08d}" for s in (5, 10, 15, 20, 25, 30)]


# ------------------------------------------------------------------------------- the retry primitives


def test_when_a_call_keeps_failing_then_retry_while_stops_exactly_when_the_time_budget_is_spent():
    from chronos_flows.core.errors import TransientStoreError
    from chronos_flows.core.retry import Backoff, OutageLog, retry_while

    clock = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    def failing():
        raise TransientStoreError("503 SlowDown")

    outages = OutageLog(monotonic=lambda: clock[0])
    with pytest.raises(LeaseExpiredError, match="gave up"):
        retry_while(failing, what="heartbeat", alive=lambda: 10.0 - clock[0], outages=outages,
                    backoff=Backoff(base=0.5, cap=4.0), sleep=sleep, on_give_up=lambda e: LeaseExpiredError(f"gave up: {e}"))
    assert clock[0] == pytest.approx(10.0)  # never slept past the budget
    assert all(s <= 4.0 for s in slept) and slept[0] <= 0.5 and max(slept) > 2.0  # grew, capped
    [o] = outages.records()
    assert o["waited"] == ["heartbeat"] and o["failures"] == len(slept) + 1 and o["end"] is None

    calls = [0]

    def flaky():
        calls[0] += 1
        if calls[0] < 3:
            raise TransientStoreError("dropped")
        return "landed"

    assert retry_while(flaky, what="upload", alive=lambda: 1.0, outages=outages, sleep=lambda s: None) == "landed"
    assert outages.records()[-1]["end"] is not None and not outages.active


def test_when_the_model_download_meets_an_outage_then_it_waits_while_the_guard_passes_and_stops_when_it_raises(tmp_path):
    from blocks.store import LocalStore
    from chronos_flows.core.errors import RunKilledError, TransientStoreError
    from chronos_flows.training.fit import fetch_model

    class Flaky(LocalStore):
        failures = 0

        def list(self, prefix):
            if self.failures > 0:
                self.failures -= 1
                raise TransientStoreError("503 SlowDown")
            return super().list(prefix)

    store = Flaky(tmp_path / "store")
    store.put(f"{layout.models_prefix(ENV, 'r1', 'chronos')}/config.json", b"{}")
    store.failures = 2
    dest = fetch_model(store, ENV, "r1", tmp_path / "m", lambda refresh=True: None, 30)
    assert (dest / "config.json").read_bytes() == b"{}" and store.failures == 0

    store.failures = 1000

    def killed(refresh=True):
        raise RunKilledError("run r1 was killed")

    with pytest.raises(RunKilledError):
        fetch_model(store, ENV, "r1", tmp_path / "m2", killed, 30)


def test_when_the_store_throttles_while_the_evaluation_is_uploaded_then_every_file_lands_once(tmp_path):
    """The evaluation outputs (leaderboard, report, plots) go up file by file; a throttled file is
    retried, the ones that landed are not sent again, and a fenced run stops sending."""
    from blocks.store import LocalStore
    from chronos_flows.core.errors import LeaseExpiredError, TransientStoreError
    from chronos_flows.training.fit import upload_dir_durably

    class Flaky(LocalStore):
        fail_on: dict[str, int] = {}
        sent: list[str] = []

        def put_file(self, key, src):
            if self.fail_on.get(key, 0) > 0:
                self.fail_on[key] -= 1
                raise TransientStoreError("503 SlowDown")
            self.sent.append(key)
            return super().put(key, Path(src).read_bytes())

    out = tmp_path / "evaluation"
    (out / "plots").mkdir(parents=True)
    for name in ("leaderboard.csv", "report.md", "plots/best.png"):
        (out / name).write_bytes(name.encode())
    store = Flaky(tmp_path / "store")
    store.fail_on = {"dev/r1/evaluation/report.md": 2}
    keys = upload_dir_durably(store, out, "dev/r1/evaluation", lambda refresh=True: None, 30)
    assert sorted(store.sent) == sorted(keys) and len(keys) == 3  # each file exactly once
    assert store.get("dev/r1/evaluation/report.md")[0] == b"report.md"

    store.fail_on, store.sent = {"dev/r2/evaluation/report.md": 1000}, []

    def fenced(refresh=True):
        if store.sent:
            raise LeaseExpiredError("the lease of run r2 ran out while the store was away")

    with pytest.raises(LeaseExpiredError):
        upload_dir_durably(store, out, "dev/r2/evaluation", fenced, 30)
    assert store.sent == ["dev/r2/evaluation/leaderboard.csv"]  # nothing after the fence
