"""Data capture of ``chronos-flows serve`` (opt-in): requests with item_id, start and freq and their
forecasts in batched Parquet objects under ``{env}/capture/`` (the format the monitor reads)."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from blocks.store import LocalStore
from chronos_flows.core import layout
from chronos_flows.models.local.seasonal_naive import SeasonalNaive
from chronos_flows.serving import CaptureWriter, LoadedChampion, parse_request, predict
from tests.test_forecast import seed_champion
from tests.test_serve import Server, series

COLUMNS = ["unique_id", "ds", "step", "origin", "freq", "mean"]
TRAILER = ["family", "champion_run_id", "request_id", "captured_at"]


def _champ() -> LoadedChampion:
    return LoadedChampion(run_id="sn-run", family="seasonal_naive", doc={}, etag="e", model=SeasonalNaive(7),
                          min_history=5, load_seconds=0.0)


def _body(k: int, *, ids=True, n_series: int = 1, freq: str = "W-MON", levels=(0.1, 0.5, 0.9), horizon: int = 4) -> dict:
    inputs = []
    for i in range(n_series):
        s = {"target": series(20 + k + i, seed=k * 10 + i), "start": "2024-01-01"}
        if ids:
            s["item_id"] = f"item-{k}-{i}"
        inputs.append(s)
    return {"inputs": inputs, "parameters": {"prediction_length": horizon, "quantile_levels": list(levels), "freq": freq}}


def _read_all(root) -> pd.DataFrame:
    files = sorted((root / "dev" / "capture").rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_when_requests_carry_item_id_start_and_freq_then_the_captured_rows_follow_the_capture_format(tmp_path):
    store = LocalStore(tmp_path / "store")
    champ = _champ()
    writer = CaptureWriter(store, "dev", max_requests=100, max_seconds=3600)
    bodies = {"a": _body(1, n_series=2), "b": _body(2, levels=(0.9, 0.5)), "c": _body(3, ids=False),
              "d": {"inputs": [{"target": series(15)}, {"target": series(16), "item_id": "no-start"}]}}
    answers = {}
    for rid, body in bodies.items():
        parsed = parse_request(body)
        answers[rid] = predict(champ, parsed)
        writer.add(champ, parsed, answers[rid], rid)
    before = time.time()
    assert writer.flush(force=True) == 3 * 4  # a: two series, b: one; c has no item ids, d no start/freq
    keys = store.list(layout.capture_prefix("dev"))
    assert len(keys) == 1 and keys[0].endswith(".parquet")
    day = keys[0].split("/")[-2]
    assert day == pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d")
    got = pd.read_parquet(tmp_path / "store" / keys[0])
    assert list(got.columns) == COLUMNS + ["0.1", "0.5", "0.9"] + TRAILER
    for col in ("ds", "origin", "captured_at"):
        assert str(got[col].dtype) == "datetime64[ns]"
    assert got["step"].dtype == np.int64 and got["mean"].dtype == float
    assert sorted(got["unique_id"].unique()) == ["item-1-0", "item-1-1", "item-2-0"]
    assert set(got["family"]) == {"seasonal_naive"} and set(got["champion_run_id"]) == {"sn-run"}
    assert set(got["freq"]) == {"W-MON"}
    for rid, i, uid in (("a", 0, "item-1-0"), ("a", 1, "item-1-1"), ("b", 0, "item-2-0")):
        rows = got[got["unique_id"] == uid].sort_values("step")
        answer = answers[rid]["predictions"][i]
        assert rows["step"].tolist() == [1, 2, 3, 4] and set(rows["request_id"]) == {rid}
        n = len(bodies[rid]["inputs"][i]["target"])
        last = pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=n - 1)
        assert (rows["origin"] == last).all()
        assert rows["ds"].tolist() == list(pd.date_range(last + pd.Timedelta(weeks=1), periods=4, freq="W-MON"))
        assert pd.Timestamp(answer["start"]) == rows["ds"].iloc[0]
        assert rows["mean"].tolist() == answer["mean"]
        for q in ("0.9", "0.5"):
            assert rows[q].tolist() == answer[q]
        if rid == "b":
            assert rows["0.1"].isna().all()  # a level this request did not ask for
    assert (got["captured_at"] <= pd.Timestamp.fromtimestamp(before, tz="UTC").tz_localize(None)).all()


def test_when_the_frequency_has_months_or_the_start_a_time_zone_then_the_timestamps_are_the_calendars_in_naive_utc():
    from chronos_flows.serving import capture_frame

    champ = _champ()
    monthly = {"inputs": [{"target": series(14), "item_id": "m", "start": "2023-11-01"}],
               "parameters": {"prediction_length": 3, "freq": "MS"}}
    hourly = {"inputs": [{"target": series(10), "item_id": "h", "start": "2024-03-31T00:00:00+02:00"}],
              "parameters": {"prediction_length": 2, "freq": "h", "quantile_levels": [0.5]}}
    records = []
    for rid, body in (("m", monthly), ("h", hourly)):
        parsed = parse_request(body)
        records.append((time.time(), rid, "run", "seasonal_naive", parsed, predict(champ, parsed)))
    got = capture_frame(records)
    m, h = got[got["unique_id"] == "m"], got[got["unique_id"] == "h"]
    assert m["ds"].tolist() == list(pd.date_range("2025-01-01", periods=3, freq="MS"))  # 14 months from Nov 2023
    assert (m["origin"] == pd.Timestamp("2024-12-01")).all()
    assert h["ds"].tolist() == [pd.Timestamp("2024-03-31T08:00"), pd.Timestamp("2024-03-31T09:00")]  # 22:00 UTC + 10 h
    assert h["0.1"].isna().all() and h["0.5"].notna().all() and h["step"].tolist() == [1, 2]


def test_when_many_requests_are_captured_then_objects_hold_batches_of_n_never_one_per_request(tmp_path):
    store = LocalStore(tmp_path / "store")
    champ = _champ()
    writer = CaptureWriter(store, "dev", max_requests=5, max_seconds=3600).start()
    try:
        for k in range(12):
            parsed = parse_request(_body(k))
            writer.add(champ, parsed, predict(champ, parsed), f"r{k}")
        deadline = time.monotonic() + 10
        while len(store.list(layout.capture_prefix("dev"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(store.list(layout.capture_prefix("dev"))) == 2  # 10 of 12: two batches of 5; 2 wait
    finally:
        writer.stop()
    keys = store.list(layout.capture_prefix("dev"))
    assert len(keys) == 3  # the last 2 written when the writer stops
    got = _read_all(tmp_path / "store")
    assert len(got) == 12 * 4 and got.groupby("request_id").size().eq(4).all()
    assert writer.stats["rows_written"] == 48 and writer.stats["objects_written"] == 3


class _FlakyStore(LocalStore):
    """A local store whose puts fail while ``down`` is set (an outage)."""

    down = True
    failures = 0

    def put(self, key, data):
        if self.down:
            self.failures += 1
            raise OSError("store unreachable (simulated outage)")
        return super().put(key, data)


def test_when_the_store_is_down_during_capture_then_requests_succeed_and_the_batches_are_written_when_it_is_back(tmp_path):
    from fastapi.testclient import TestClient

    from app.server import create_app

    class Holder:
        current, last_error, swaps = _champ(), None, 1

    store = _FlakyStore(tmp_path / "store")
    writer = CaptureWriter(store, "dev", max_requests=3, max_seconds=3600, retry_seconds=0.1).start()
    app = create_app(Holder(), capture=writer)
    with TestClient(app) as client:
        for k in range(7):
            r = client.post("/invocations", json=_body(k))
            assert r.status_code == 200, r.text  # the outage never reaches the client
        deadline = time.monotonic() + 10
        while store.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.failures >= 2 and store.list(layout.capture_prefix("dev")) == []
        metrics = client.get("/metrics").text
        assert 'chronos_serve_capture{what="write_failures"}' in metrics
        assert 'chronos_serve_capture{what="rows_held"} 24.0' in metrics  # two batches of 3 requests x 4 steps
        store.down = False
        deadline = time.monotonic() + 10
        while len(store.list(layout.capture_prefix("dev"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(store.list(layout.capture_prefix("dev"))) == 2  # retried, in order, once the store is back
    # leaving the client ends the app's lifespan: the 7th request's batch is written too
    got = _read_all(tmp_path / "store")
    assert len(got) == 7 * 4 and got["request_id"].nunique() == 7
    assert writer.stats["write_failures"] >= 2 and writer.stats["rows_held"] == 0 and writer.stats["rows_dropped"] == 0


def test_when_the_store_refuses_for_too_long_then_the_oldest_batch_is_dropped_and_counted(tmp_path, caplog):
    store = _FlakyStore(tmp_path / "store")
    champ = _champ()
    writer = CaptureWriter(store, "dev", max_requests=1, max_seconds=3600, retry_seconds=3600, max_rows_held=8)
    for k in range(3):
        parsed = parse_request(_body(k))
        writer.add(champ, parsed, predict(champ, parsed), f"r{k}")
        writer.flush()
    assert writer.stats["rows_dropped"] == 4 and writer.stats["rows_held"] == 8
    assert "dropped the oldest batch" in caplog.text
    store.down = False
    writer.stop()
    assert sorted(_read_all(tmp_path / "store")["request_id"].unique()) == ["r1", "r2"]


def test_when_capture_is_off_then_nothing_is_written(tmp_path):
    from fastapi.testclient import TestClient

    from app.server import create_app

    class Holder:
        current, last_error, swaps = _champ(), None, 1

    app = create_app(Holder())
    assert app.capture is None
    with TestClient(app) as client:
        assert client.post("/invocations", json=_body(1)).status_code == 200


def test_when_sigterm_reaches_the_server_then_no_captured_request_is_lost(tmp_path):
    """The real server process with capture on (batches far larger than the run) under load from
    four threads; SIGTERM while they call: every answered request is in the store."""
    clients = 4
    seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 7}, run_id="sn-run")
    server = Server(tmp_path / "store", tmp_path / "server.log", "--capture", "--capture-max-requests", "100000",
                    "--capture-max-seconds", "3600")
    server.wait_ready()
    answered: list[list[tuple[str, dict]]] = [[] for _ in range(clients)]
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            j = 0
            while not stop.is_set():
                body = _body(k * 1000 + j, n_series=1 + j % 2)
                try:
                    r = c.post("/invocations", json=body)
                except httpx.HTTPError:
                    return  # the server stopped accepting
                if r.status_code == 200:
                    answered[k].append((r.headers["X-Request-Id"], r.json()))
                j += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(map(len, answered)) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store_objects(tmp_path) == 0  # nothing written yet: the batch is not due
    server.proc.send_signal(15)
    rc = server.proc.wait(timeout=60)
    stop.set()
    for t in threads:
        t.join(30)
    server.client.close()
    assert rc == 0, server.log()[-2000:]
    flat = [a for slot in answered for a in slot]
    assert len(flat) >= 20
    got = _read_all(tmp_path / "store")
    assert store_objects(tmp_path) == 1
    want_rows = sum(4 * len(body["predictions"]) for _, body in flat)
    assert len(got) == want_rows and set(got["request_id"]) == {rid for rid, _ in flat}
    for rid, body in flat[:: max(1, len(flat) // 10)]:
        for p in body["predictions"]:
            rows = got[(got["request_id"] == rid) & (got["unique_id"] == p["item_id"])].sort_values("step")
            assert rows["mean"].tolist() == p["mean"] and rows["0.9"].tolist() == p["0.9"]
    assert "data capture: %d rows written" % len(got) in server.log()


def store_objects(root) -> int:
    return len(list((root / "store" / "dev" / "capture").rglob("*.parquet")))


def test_when_served_requests_are_captured_and_actuals_arrive_then_the_monitor_scores_them(tmp_path):
    """Serve (capture on) -> reveal actuals -> monitor: the captured format is the one the monitor reads,
    each (champion, origin) becomes one scored forecast, and its live WQL is the served answer's."""
    from chronos_flows.monitoring.history import read_history
    from tests.test_monitoring import champion, panel, run

    store = LocalStore(tmp_path / "store")
    data = panel(n_series=3)
    cut = pd.Timestamp(data["ds"].iloc[100])
    history = data[data["ds"] <= cut]
    champ = _champ()
    writer = CaptureWriter(store, "dev", max_requests=1000, max_seconds=3600)
    served = {}
    for uid, g in history.groupby("unique_id"):
        body = {"inputs": [{"target": g["y"].tolist(), "item_id": uid, "start": str(g["ds"].iloc[0].date())}],
                "parameters": {"prediction_length": 4, "quantile_levels": [0.1, 0.5, 0.9], "freq": "W-MON"}}
        parsed = parse_request(body)
        answer = predict(champ, parsed)
        writer.add(champ, parsed, answer, f"req-{uid}")
        served[uid] = answer["predictions"][0]
    assert writer.flush(force=True) == 3 * 4

    res = run(store, data, champion(run_id="sn-run"))
    [score] = res.scores
    assert score.source == "capture" and score.n_points == 12
    assert score.forecast_id == f"capture-sn-run-{cut:%Y%m%dT%H%M%S}"
    truth = data[(data["ds"] > cut)].groupby("unique_id").head(4).sort_values(["unique_id", "ds"])
    act = truth["y"].to_numpy()
    qs = {float(lvl): np.concatenate([served[u][lvl] for u in sorted(served)]) for lvl in ("0.1", "0.5", "0.9")}
    want = np.mean([2 * np.sum(np.maximum(q * (act - f), (q - 1) * (act - f))) / np.sum(np.abs(act)) for q, f in qs.items()])
    assert score.wql == pytest.approx(want, rel=1e-9)
    hist = read_history(store, "dev")
    assert list(hist["forecast_id"]) == [score.forecast_id] and set(hist["champion_run_id"]) == {"sn-run"}


def sagemaker_record(request: dict, response: dict, event_id: str, at: str, *, base64_output: bool = False) -> str:
    """One line of SageMaker's data capture (JSON Lines), as its documentation shows it."""
    import base64
    import json

    out = json.dumps(response)
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "application/json", "mode": "INPUT", "data": json.dumps(request),
                              "encoding": "JSON"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": base64.b64encode(out.encode()).decode() if base64_output else out,
                               "encoding": "BASE64" if base64_output else "JSON"},
        },
        "eventMetadata": {"eventId": event_id, "inferenceTime": at},
        "eventVersion": "0",
    })


def test_when_a_sagemaker_endpoint_captured_requests_then_the_monitor_scores_them_under_the_champion_that_answered(tmp_path):
    """The endpoint's deployment points SageMaker's capture at {env}/capture/sagemaker/{family}/{run_id}/;
    the monitor reads those JSON Lines like the server's own Parquet capture, and names what it skipped."""
    from chronos_flows.monitoring.history import read_history
    from tests.test_monitoring import champion, panel, run

    store = LocalStore(tmp_path / "store")
    data = panel(n_series=2)
    cut = pd.Timestamp(data["ds"].iloc[100])
    champ = _champ()
    lines, served = [], {}
    for k, (uid, g) in enumerate(data[data["ds"] <= cut].groupby("unique_id")):
        body = {"inputs": [{"target": g["y"].tolist(), "item_id": uid, "start": str(g["ds"].iloc[0].date())}],
                "parameters": {"prediction_length": 4, "quantile_levels": [0.1, 0.5, 0.9], "freq": "W-MON"}}
        answer = predict(champ, parse_request(body))
        served[uid] = answer["predictions"][0]
        lines.append(sagemaker_record(body, answer, f"ev-{k}", "2024-01-01T00:00:0%dZ" % k, base64_output=k == 1))
    lines.append(sagemaker_record({"inputs": [{"target": [1, 2, 3, 4, 5]}]}, {"predictions": [{"mean": [1.0]}]}, "ev-x",
                                  "2024-01-01T00:00:09Z"))  # no item_id: nothing to score
    lines.append("not json")
    prefix = layout.sagemaker_capture_prefix("dev", "seasonal_naive", "sm-run")
    assert prefix == "dev/capture/sagemaker/seasonal_naive/sm-run"
    store.put(f"{prefix}/chronos-flows-dev/AllTraffic/2024/01/01/00/00-00-000-abcd.jsonl", "\n".join(lines).encode())

    res = run(store, data, champion(run_id="sm-run"))
    [score] = res.scores
    assert score.source == "capture" and score.champion_run_id == "sm-run" and score.n_points == 8
    truth = data[data["ds"] > cut].groupby("unique_id").head(4).sort_values(["unique_id", "ds"])
    act = truth["y"].to_numpy()
    qs = {float(lvl): np.concatenate([served[u][lvl] for u in sorted(served)]) for lvl in ("0.1", "0.5", "0.9")}
    want = np.mean([2 * np.sum(np.maximum(q * (act - f), (q - 1) * (act - f))) / np.sum(np.abs(act)) for q, f in qs.items()])
    assert score.wql == pytest.approx(want, rel=1e-9)
    assert any("2 SageMaker capture record(s) not scorable" in i and "line 4: not a SageMaker capture record" in i
               for i in res.issues), res.issues
    assert list(read_history(store, "dev")["family"]) == ["seasonal_naive"]
