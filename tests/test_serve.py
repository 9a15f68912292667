"""`chronos-flows serve` as a real process on 127.0.0.1, called over HTTP: the SageMaker hosting
contract (/ping, /invocations in the JumpStart Chronos format), numbers equal to the models'
own predict (Seasonal Naive; Chronos-2 against upstream predict_quantiles), the bad-input corpus,
API keys, hot load and hot swap of the champion while clients keep calling."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from chronos_flows.models.local.seasonal_naive import SeasonalNaive
from chronos_flows.champion.registry import decide_champion, promote, read_champion
from tests.conftest import free_port, wait_for_port
from tests.test_docker import run_hadolint
from tests.test_forecast import seed_champion

REPO = Path(__file__).resolve().parents[1]
KEY_ENV, KEY_FILE = "env-key-0123456789", "file-key-9876543210"


class Server:
    """``python -m app.cli serve`` on a free port; its log goes to ``log_path``."""

    def __init__(self, store_dir: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        full_env = {k: v for k, v in os.environ.items() if k != "CHRONOS_FLOWS_API_KEYS"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--store", str(store_dir), "--poll-seconds", "0.2", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
        )
        wait_for_port(self.port, timeout=60)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 90.0, headers: dict | None = None) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.client.get("/ping", headers=headers)
            if r.status_code == 200:
                return r
            time.sleep(0.1)
        raise AssertionError(f"/ping never answered 200; server log:\n{self.log()[-3000:]}")

    def stop(self) -> int:
        self.client.close()
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc


def series(n: int, seed: int = 0, level: float = 10.0) -> list[float]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return [float(v) for v in level + 3 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 0.5, n)]


def long_frame(targets: list[list[float]], start: str, freq: str) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"unique_id": f"u{i}", "ds": pd.date_range(start, periods=len(y), freq=freq), "y": y})
                      for i, y in enumerate(targets)], ignore_index=True)


# ------------------------------------------------------------------------ seasonal naive champion


@pytest.fixture(scope="module")
def sn_server(tmp_path_factory):
    """A seasonal_naive (season 7) champion behind API keys from the environment and from a file."""
    root = tmp_path_factory.mktemp("serve-sn")
    seed_champion(root / "store", "seasonal_naive", {"season_length": 7}, run_id="sn-run")
    (root / "keys.txt").write_text(f"# serving keys\n{KEY_FILE}\n")
    server = Server(root / "store", root / "server.log", "--api-keys-file", str(root / "keys.txt"),
                    env={"CHRONOS_FLOWS_API_KEYS": f"other-key, {KEY_ENV}"})
    server.wait_ready()
    yield server
    assert server.stop() == 0  # SIGTERM: graceful shutdown, exit 0


def invoke(server: Server, body, *, key: str | None = KEY_ENV, **kw) -> httpx.Response:
    headers = {"x-api-key": key} if key else {}
    headers.update(kw.pop("headers", {}))
    if isinstance(body, (bytes, str)):
        return server.client.post("/invocations", content=body, headers={"content-type": "application/json", **headers})
    return server.client.post("/invocations", json=body, headers=headers, **kw)


def test_when_a_seasonal_naive_champion_serves_then_forecasts_equal_seasonal_naive_predict_in_input_order(sn_server):
    targets = [series(60, seed=1), series(33, seed=2, level=50.0)]
    body = {"inputs": [{"target": targets[0], "item_id": "zeta", "start": "2024-01-01"},
                       {"target": targets[1], "item_id": "alpha", "start": "2024-03-04"}],
            "parameters": {"prediction_length": 10, "quantile_levels": [0.9, 0.2, 0.5], "freq": "W-MON"}}
    r = invoke(sn_server, body)
    assert r.status_code == 200, r.text
    assert r.headers["X-Champion-Run-Id"] == "sn-run" and r.headers["X-Champion-Family"] == "seasonal_naive"
    preds = r.json()["predictions"]
    assert [p["item_id"] for p in preds] == ["zeta", "alpha"]
    assert set(preds[0]) == {"mean", "0.9", "0.2", "0.5", "item_id", "start"}
    for y, start, p in zip(targets, ["2024-01-01", "2024-03-04"], preds):
        frame = long_frame([y], start, "W-MON")
        want = SeasonalNaive(7).predict(frame, 10, "W-MON", [0.2, 0.5, 0.9])
        np.testing.assert_allclose(p["mean"], want["mean"].to_numpy(), rtol=1e-12)
        for q in (0.2, 0.5, 0.9):
            np.testing.assert_allclose(p[str(q)], want[f"{q:g}"].to_numpy(), rtol=1e-12)
        assert pd.Timestamp(p["start"]) == want["ds"].iloc[0] == frame["ds"].iloc[-1] + pd.Timedelta(weeks=1)


def test_when_parameters_are_omitted_then_the_documented_defaults_apply_and_no_item_id_or_start_is_returned(sn_server):
    y = series(20)
    r = invoke(sn_server, {"inputs": [{"target": y}]})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert set(p) == {"mean", "0.1", "0.5", "0.9"} and all(len(v) == 1 for v in p.values())
    want = SeasonalNaive(7).predict(long_frame([y], "2020-01-01", "D"), 1, "D", [0.1, 0.5, 0.9])
    assert p["mean"] == pytest.approx(want["mean"].tolist()) and p["0.9"] == pytest.approx(want["0.9"].tolist())


GOOD = series(12)
BAD_PAYLOADS = [
    ("too-short", {"inputs": [{"target": GOOD}, {"target": [1, 2, 3, 4], "item_id": "short"}]}, 400,
     "inputs[1] (item_id 'short').target: 4 observations"),
    ("start-without-freq", {"inputs": [{"target": GOOD, "start": "2024-01-01"}]}, 400, "inputs[0].start: given without parameters.freq"),
    ("freq-without-start", {"inputs": [{"target": GOOD}], "parameters": {"freq": "D"}}, 400, "inputs[0].start: missing"),
    ("duplicate-item-id", {"inputs": [{"target": GOOD, "item_id": "A"}, {"target": GOOD, "item_id": "B"},
                                      {"target": GOOD, "item_id": "A"}]}, 400, "inputs[2] (item_id 'A').item_id: duplicate of inputs[0]"),
    ("covariates-to-local-family", {"inputs": [{"target": GOOD}, {"target": GOOD, "item_id": "cov",
                                                "past_covariates": {"price": GOOD}}]}, 400,
     "inputs[1] (item_id 'cov').past_covariates: the serving champion (seasonal_naive"),
    ("non-numeric", {"inputs": [{"target": [1, 2, "x", 4, 5, 6], "item_id": "s"}]}, 400, "inputs[0] (item_id 's').target[2]: must be a number"),
    ("nan", b'{"inputs": [{"target": [1, 2, 3, NaN, 5, 6]}]}', 400, "inputs[0].target[3]: nan is not a finite number"),
    ("prediction-length-0", {"inputs": [{"target": GOOD}], "parameters": {"prediction_length": 0}}, 400, "parameters.prediction_length"),
    ("prediction-length-1025", {"inputs": [{"target": GOOD}], "parameters": {"prediction_length": 1025}}, 400, "parameters.prediction_length"),
    ("quantile-1", {"inputs": [{"target": GOOD}], "parameters": {"quantile_levels": [0.5, 1.0]}}, 400,
     "parameters.quantile_levels[1]: 1.0 is not strictly between 0 and 1"),
    ("too-many-series", {"inputs": [{"target": GOOD}] * 1001}, 400, "1001 series; at most 1000"),
    ("unknown-key", {"inputs": [{"target": GOOD, "colour": "red"}]}, 400, "inputs[0].colour: unknown key"),
    ("future-covariate-length", {"inputs": [{"target": GOOD, "past_covariates": {"p": GOOD}, "future_covariates": {"p": [1, 2]}}],
                                 "parameters": {"prediction_length": 3}}, 400, "inputs[0].future_covariates.p: 2 values"),
    ("past-covariate-length", {"inputs": [{"target": GOOD, "item_id": "pc", "past_covariates": {"p": [1.0, 2.0]}}]}, 400,
     "inputs[0] (item_id 'pc').past_covariates.p: 2 values; must be as long as the target"),
    ("bad-start", {"inputs": [{"target": GOOD, "item_id": "w", "start": "2024-01-02"}], "parameters": {"freq": "W-MON"}}, 400,
     "inputs[0] (item_id 'w').start: 2024-01-02 is not on frequency W-MON"),
    ("bad-freq", {"inputs": [{"target": GOOD, "start": "2024-01-01"}], "parameters": {"freq": "fortnightly"}}, 400, "parameters.freq"),
    ("malformed-json", b'{"inputs": [', 400, "not valid JSON"),
    ("no-inputs", {"parameters": {}}, 400, "inputs"),
]


@pytest.mark.parametrize("body,status,message", [c[1:] for c in BAD_PAYLOADS], ids=[c[0] for c in BAD_PAYLOADS])
def test_when_the_payload_is_bad_then_a_json_error_names_the_series_and_field_and_the_server_keeps_serving(sn_server, body, status, message):
    r = invoke(sn_server, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    assert r.headers["X-Champion-Run-Id"] == "sn-run"
    assert invoke(sn_server, {"inputs": [{"target": GOOD}]}).status_code == 200


def test_when_the_content_type_is_not_json_then_415(sn_server):
    r = sn_server.client.post("/invocations", content=b"target=1", headers={"x-api-key": KEY_ENV,
                                                                           "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]


def test_when_api_keys_are_configured_then_invocations_need_a_valid_key_and_ping_does_not(sn_server):
    body = {"inputs": [{"target": GOOD}]}
    no_key = invoke(sn_server, body, key=None)
    assert no_key.status_code == 401 and no_key.json() == {"error": "missing x-api-key header"}
    assert invoke(sn_server, body, key="wrong-key").status_code == 403
    assert invoke(sn_server, body, key=KEY_ENV[:-1]).status_code == 403
    assert invoke(sn_server, body, key=KEY_ENV).status_code == 200
    assert invoke(sn_server, body, key=KEY_FILE).status_code == 200
    assert sn_server.client.get("/ping").status_code == 200
    assert sn_server.client.get("/nowhere").status_code == 401
    log = sn_server.log()
    assert '"status":403' in log and KEY_ENV not in log and KEY_FILE not in log and "wrong-key" not in log


# ---------------------------------------------------------------------------- hot load and hot swap


def test_when_no_champion_is_promoted_then_ping_is_503_until_one_is_and_then_it_serves_it(tmp_path):
    server = Server(tmp_path / "store", tmp_path / "server.log")
    try:
        assert server.client.get("/ping").status_code == 503
        r = invoke(server, {"inputs": [{"target": GOOD}]}, key=None)
        assert r.status_code == 503 and "no champion" in r.json()["error"]
        seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 7}, run_id="first-run")
        ping = server.wait_ready(timeout=20)
        assert ping.headers["X-Champion-Run-Id"] == "first-run"
        r = invoke(server, {"inputs": [{"target": GOOD}]}, key=None)
        assert r.status_code == 200 and r.headers["X-Champion-Run-Id"] == "first-run"
    finally:
        assert server.stop() == 0


def test_when_a_new_champion_is_promoted_during_a_20_s_load_then_no_request_fails_and_responses_switch_to_it(tmp_path):
    """Four clients call without pause for 20 s; 5 s in, a Chronos-2 champion replaces the Seasonal
    Naive one (its model is downloaded and loaded in the background while the old one serves)."""
    from chronos_flows.core import layout
    from chronos_flows.models.chronos.configs import build_random_pipeline

    store = seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 7}, run_id="run-a")
    build_random_pipeline("chronos-2", "tiny", 64, 6, seed=4).save_pretrained(tmp_path / "model")
    server = Server(tmp_path / "store", tmp_path / "server.log", "--device", "cpu")
    server.wait_ready()
    y = series(40, seed=5)
    body = {"inputs": [{"target": y, "item_id": "x"}], "parameters": {"prediction_length": 6}}
    results: list[list[tuple[int, str, list]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def client(slot: list) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/invocations", json=body)
                    slot.append((r.status_code, r.headers.get("X-Champion-Run-Id"), r.json()["predictions"][0]["mean"]
                                 if r.status_code == 200 else r.text))
                except httpx.HTTPError as exc:  # a dropped connection is a failed request too
                    slot.append((-1, None, repr(exc)))

    threads = [threading.Thread(target=client, args=(slot,)) for slot in results]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        time.sleep(5.0)
        champ, etag = read_champion(store, "dev")
        prefix = layout.registry_model_prefix("dev", "run-b", "chronos")
        store.upload_dir(tmp_path / "model", prefix)
        entry = {"run_id": "run-b", "family": "chronos", "model_uri": store.uri(prefix),
                 "config": {"chronos_family": "chronos-2", "context_length": 64, "batch_size": 2},
                 "judged_on": champ["judged_on"]}
        assert promote(store, "dev", entry, decide_champion({"chronos": {"wql": 0.01}}, champ), etag)
        # at least 20 s of load; past the swap (its background load of Chronos may take longer on a busy
        # machine) a few more seconds so every client has answers from the new champion
        swapped_at = None
        while time.monotonic() - t0 < 20.0 or swapped_at is None or time.monotonic() - swapped_at < 3.0:
            if swapped_at is None and "replacing run-a" in server.log():
                swapped_at = time.monotonic()
            if time.monotonic() - t0 > 120.0:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        rc = server.stop()
    flat = [r for s in results for r in s]
    assert len(flat) > 100
    assert all(status == 200 for status, _, _ in flat), [r for r in flat if r[0] != 200][:3]
    sn_mean = SeasonalNaive(7).predict(long_frame([y], "2020-01-01", "D"), 6, "D", [0.5])["mean"].tolist()
    chronos_means = {tuple(mean) for s in results for _, run, mean in s if run == "run-b"}
    assert len(chronos_means) == 1 and list(chronos_means.pop()) != pytest.approx(sn_mean)  # one model, deterministic
    for slot in results:
        runs = [run for _, run, _ in slot]
        assert runs[0] == "run-a" and runs[-1] == "run-b"
        switch = runs.index("run-b")
        assert set(runs[:switch]) == {"run-a"} and set(runs[switch:]) == {"run-b"}  # one switch, never back
        for _, run, mean in slot[:switch]:
            assert mean == pytest.approx(sn_mean)  # each answer is wholly from the champion it names
    assert "replacing run-a" in server.log()
    assert rc == 0


# ------------------------------------------------------------------------------ a Chronos-2 champion


def test_when_the_champion_is_chronos2_then_forecasts_equal_upstream_predict_quantiles(tmp_path):
    import torch
    from chronos import BaseChronosPipeline

    from chronos_flows.models.chronos.configs import build_random_pipeline

    model_dir = tmp_path / "model"
    build_random_pipeline("chronos-2", "tiny", 64, 8, seed=3).save_pretrained(model_dir)
    seed_champion(tmp_path / "store", "chronos", {"chronos_family": "chronos-2", "context_length": 64, "batch_size": 2},
                  model_dir=model_dir, run_id="c2-run")
    server = Server(tmp_path / "store", tmp_path / "server.log", "--device", "cpu")
    try:
        server.wait_ready(timeout=120)
        targets = [series(90, seed=1), series(40, seed=2, level=100.0), series(70, seed=3, level=-5.0)]
        levels = [0.1, 0.5, 0.9]
        r = invoke(server, {"inputs": [{"target": y, "item_id": f"c{i}", "start": "2024-01-01T00:00:00"}
                                       for i, y in enumerate(targets)],
                            "parameters": {"prediction_length": 8, "quantile_levels": levels, "freq": "h"}}, key=None)
        assert r.status_code == 200, r.text
        assert r.headers["X-Champion-Run-Id"] == "c2-run" and r.headers["X-Champion-Family"] == "chronos"
        preds = r.json()["predictions"]
        assert preds[1]["start"] == "2024-01-02T16:00:00"  # 40 hourly points from midnight

        pipe = BaseChronosPipeline.from_pretrained(str(model_dir), device_map="cpu", dtype=torch.float32)
        ctx = [torch.tensor(np.asarray(y[-64:], dtype=np.float32)) for y in targets]
        q_list, m_list = pipe.predict_quantiles(ctx, prediction_length=8, quantile_levels=levels)
        for i, p in enumerate(preds):
            up_q = np.sort(q_list[i][0].numpy(), axis=-1)
            np.testing.assert_allclose(p["mean"], m_list[i][0].numpy(), rtol=1e-5, atol=1e-5)
            for j, q in enumerate(levels):
                np.testing.assert_allclose(p[str(q)], up_q[:, j], rtol=1e-5, atol=1e-5)

        # covariates go to Chronos-2: equal to upstream on the same dict inputs
        y = targets[0]
        price = [float(v) for v in np.linspace(1, 2, len(y) + 8)]
        body = {"inputs": [{"target": y, "past_covariates": {"price": price[:-8]}, "future_covariates": {"price": price[-8:]}}],
                "parameters": {"prediction_length": 8}}
        r = invoke(server, body, key=None)
        assert r.status_code == 200, r.text
        (p,) = r.json()["predictions"]
        q_cov, m_cov = pipe.predict_quantiles(
            [{"target": np.asarray(y[-64:], dtype=np.float32),
              "past_covariates": {"price": np.asarray(price[:-8], dtype=np.float32)[-64:]},
              "future_covariates": {"price": np.asarray(price[-8:], dtype=np.float32)}}],
            prediction_length=8, quantile_levels=levels)
        np.testing.assert_allclose(p["mean"], m_cov[0][0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p["0.5"], np.sort(q_cov[0][0].numpy(), axis=-1)[:, 1], rtol=1e-5, atol=1e-5)
        assert not np.allclose(p["mean"], preds[0]["mean"])  # the covariate was used
    finally:
        assert server.stop() == 0


# ------------------------------------------------------------------------------------ serving image


def test_when_hadolint_lints_the_serving_dockerfile_then_it_finds_nothing_and_it_serves_as_non_root_on_ping():
    dockerfile = REPO / "docker" / "Dockerfile.serve"
    assert run_hadolint(dockerfile) == []
    text = dockerfile.read_text()
    assert "USER 10001:10001" in text and "--uid 10001" in text
    assert 'ENTRYPOINT ["chronos-flows"]' in text and text.rstrip().endswith('CMD ["serve"]')
    assert "HEALTHCHECK" in text and "/ping" in text


# ------------------------------------------------------------------- model failures (core + app, in process)


class _Holder:
    def __init__(self, champ):
        self.current, self.last_error, self.swaps = champ, None, 1


def _champion_of(model):
    from chronos_flows.serving import LoadedChampion

    return LoadedChampion(run_id="broken-run", family="seasonal_naive", doc={}, etag="e", model=model, min_history=5,
                          load_seconds=0.0)


def test_when_the_model_cannot_forecast_one_series_then_the_error_names_that_series():
    from chronos_flows.serving import ModelError, parse_request, predict

    class DropsOne(SeasonalNaive):
        def predict(self, context, horizon, freq, quantiles):
            out = super().predict(context, horizon, freq, quantiles)
            uid = sorted(context["unique_id"].unique())[1]  # the server's internal id of the second input
            self.last_failures = {uid: f"series {uid!r} would not converge"}
            return out[out["unique_id"] != uid]

    parsed = parse_request({"inputs": [{"target": GOOD, "item_id": "a"}, {"target": GOOD, "item_id": "b"}]})
    with pytest.raises(ModelError, match=r"inputs\[1\] \(item_id 'b'\): .*would not converge"):
        predict(_champion_of(DropsOne(7)), parsed)


def test_when_the_model_raises_then_the_client_gets_500_with_a_request_id_and_no_traceback():
    from fastapi.testclient import TestClient

    from app.server import create_app

    class Explodes(SeasonalNaive):
        def predict(self, context, horizon, freq, quantiles):
            raise RuntimeError("secret internals at 0xdeadbeef")

    with TestClient(create_app(_Holder(_champion_of(Explodes(7))))) as client:
        r = client.post("/invocations", json={"inputs": [{"target": GOOD}]})
    assert r.status_code == 500 and r.headers["X-Champion-Run-Id"] == "broken-run"
    body = r.json()
    assert body["request_id"] == r.headers["X-Request-Id"] and body["request_id"] in body["error"]
    assert "deadbeef" not in r.text and "Traceback" not in r.text


# ------------------------------------------------------------------------------------ micro-batching


class _Gated(SeasonalNaive):
    """Seasonal Naive that records each call's series count; a call waits while ``gate`` is clear."""

    def __init__(self, season_length: int):
        super().__init__(season_length)
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict(self, context, horizon, freq, quantiles):
        self.entered.set()
        self.gate.wait(10)
        if (context["y"] < -1e6).any():  # a request the model refuses
            from chronos_flows.core.errors import BadInputError

            bad = context.loc[context["y"] < -1e6, "unique_id"].iloc[0]
            raise BadInputError(f"series {bad!r}: value below the model's range")
        self.calls.append(context["unique_id"].nunique())
        return super().predict(context, horizon, freq, quantiles)


def test_when_requests_arrive_while_the_model_is_busy_then_they_share_one_call_and_each_gets_its_own_answer():
    from chronos_flows.serving import MicroBatcher, parse_request, predict

    model = _Gated(7)
    champ = _champion_of(model)
    seen: list[tuple[int, int]] = []
    batcher = MicroBatcher(max_wait_seconds=0.05, on_batch=lambda r, n, _s: seen.append((r, n)))
    bodies = [{"inputs": [{"target": series(30 + i, seed=i), "item_id": f"i{i}"}], "parameters": {"prediction_length": 4}}
              for i in range(9)]
    bodies[4]["inputs"][0]["target"][-1] = -1e9  # one request the model refuses
    bodies[7]["parameters"]["prediction_length"] = 6  # another horizon: its own call
    answers: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            answers[i] = batcher.submit(champ, parse_request(bodies[i]))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            answers[i] = exc

    try:
        first = threading.Thread(target=call, args=(0,))
        first.start()
        assert model.entered.wait(10)  # request 0 is inside the model: the others queue behind it
        rest = [threading.Thread(target=call, args=(i,)) for i in range(1, 9)]
        for t in rest:
            t.start()
        time.sleep(0.3)
        model.gate.set()
        for t in [first, *rest]:
            t.join(30)
    finally:
        batcher.stop()
    # request 0 alone; then the seven horizon-4 requests in one merged call that the bad one made the
    # model refuse, so they were answered one by one; the horizon-6 request in its own call
    assert seen[0] == (1, 1) and sorted(seen[1:]) == [(1, 1), (7, 7)], seen
    assert "inputs[0] (item_id 'i4').target" not in str(answers[4])  # named by the client's id ...
    assert "item_id 'i4'" in str(answers[4]) and type(answers[4]).__name__ == "RequestError"
    model.gate.set()
    for i in (0, 1, 2, 3, 5, 6, 7, 8):
        assert answers[i] == predict(_champion_of(SeasonalNaive(7)), parse_request(bodies[i])), i


def test_when_requests_share_a_call_then_the_answers_equal_one_call_per_request():
    from chronos_flows.serving import parse_request, predict, predict_batch

    champ = _champion_of(SeasonalNaive(7))
    bodies = [{"inputs": [{"target": series(20 + 3 * i, seed=i), "item_id": "same"},
                          {"target": series(12, seed=100 + i)}],
               "parameters": {"prediction_length": 5, "quantile_levels": [0.9, 0.1]}} for i in range(5)]
    together = predict_batch(champ, [parse_request(b) for b in bodies])
    assert together == [predict(champ, parse_request(b)) for b in bodies]
    assert list(together[0]["predictions"][0]) == ["mean", "0.9", "0.1", "item_id"]


def test_when_metrics_are_scraped_then_requests_latency_batches_and_the_champion_are_in_prometheus_format(sn_server):
    from prometheus_client.parser import text_string_to_metric_families

    for _ in range(3):
        assert invoke(sn_server, {"inputs": [{"target": GOOD}, {"target": GOOD}]}).status_code == 200
    assert invoke(sn_server, {"inputs": []}).status_code == 400
    assert sn_server.client.get("/metrics").status_code == 401  # behind the API key like every route but /ping
    r = sn_server.client.get("/metrics", headers={"x-api-key": KEY_ENV})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(r.text) for s in fam.samples}
    assert samples[("chronos_serve_requests_total", (("path", "/invocations"), ("status", "200")))] >= 3
    assert samples[("chronos_serve_requests_total", (("path", "/invocations"), ("status", "400")))] >= 1
    assert samples[("chronos_serve_request_seconds_count", (("path", "/invocations"),))] >= 4
    assert samples[("chronos_serve_series_total", ())] >= 6
    assert samples[("chronos_serve_batch_series_count", ())] >= 3
    assert samples[("chronos_serve_champion", (("family", "seasonal_naive"), ("run_id", "sn-run")))] == 1
    assert samples[("chronos_serve_champion_load_seconds", ())] >= 0
    assert KEY_ENV not in r.text and KEY_FILE not in r.text and KEY_ENV not in sn_server.log()


def test_when_sigterm_arrives_during_a_request_then_it_is_answered_and_the_server_exits_0(tmp_path):
    panel = long_frame([series(60, seed=i, level=20.0 + i) for i in range(25)], "2024-01-01", "D")
    seed_champion(tmp_path / "store", "prophet", {"uncertainty_samples": 50, "seasonality_mode": "additive", "seed": 0},
                  freq="D", data=panel, run_id="slow-run")
    server = Server(tmp_path / "store", tmp_path / "server.log")
    server.wait_ready()
    body = {"inputs": [{"target": series(60, seed=i)} for i in range(25)], "parameters": {"prediction_length": 3}}
    got: dict[str, object] = {}

    def call() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            t0 = time.monotonic()
            r = c.post("/invocations", json=body)
            got.update(status=r.status_code, n=len(r.json().get("predictions", [])), seconds=time.monotonic() - t0)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.8)  # the request is in the model (25 Prophet fits take seconds)
    server.proc.send_signal(15)
    t.join(120)
    rc = server.proc.wait(timeout=60)
    assert got.get("status") == 200 and got["n"] == 25, (got, server.log()[-2000:])
    assert got["seconds"] > 0.8  # it was still in flight when the signal came
    assert rc == 0
    log = server.log()
    assert "Shutting down" in log and "Traceback" not in log
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/ping", timeout=2)  # no longer accepting
    server.client.close()


def test_when_the_body_is_over_the_size_limit_then_413_and_the_server_keeps_serving():
    from fastapi.testclient import TestClient

    from app.server import create_app

    champ = _champion_of(SeasonalNaive(7))
    with TestClient(create_app(_Holder(champ), max_body_bytes=2_000)) as client:
        big = {"inputs": [{"target": series(400)}]}
        r = client.post("/invocations", json=big)
        assert r.status_code == 413 and "2000-byte limit" in r.json()["error"]
        ok = client.post("/invocations", json={"inputs": [{"target": GOOD}]})
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_when_a_chronos_champion_answers_requests_together_then_each_equals_its_own_call(tmp_path):
    """The Chronos fast path (arrays straight to the model, no frames): a shared call gives each
    request what it gets alone."""
    from chronos_flows.config.params import ChronosConfig
    from chronos_flows.models.chronos.forecasters import ChronosForecaster
    from chronos_flows.models.chronos.configs import build_random_pipeline
    from chronos_flows.serving import LoadedChampion, parse_request, predict, predict_batch

    build_random_pipeline("chronos-2", "tiny", 64, 8, seed=5).save_pretrained(tmp_path / "model")
    model = ChronosForecaster.load(tmp_path / "model", ChronosConfig(family="chronos-2", context_length=64, device="cpu"),
                                   workdir=tmp_path / "work")
    champ = LoadedChampion(run_id="c2", family="chronos", doc={}, etag="e", model=model, min_history=5, load_seconds=0.0)
    bodies = [{"inputs": [{"target": series(30 + 7 * i, seed=i, level=10.0 * (i + 1))} for i in range(k)],
               "parameters": {"prediction_length": 8, "quantile_levels": [0.9, 0.1, 0.5]}} for k in (1, 3, 2)]
    together = predict_batch(champ, [parse_request(b) for b in bodies])
    for body, got in zip(bodies, together):
        alone = predict(champ, parse_request(body))
        assert len(got["predictions"]) == len(body["inputs"])
        for a, b in zip(got["predictions"], alone["predictions"]):
            for key in ("mean", "0.1", "0.5", "0.9"):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)
            assert all(x <= y <= z for x, y, z in zip(a["0.1"], a["0.5"], a["0.9"]))  # never crossing


def test_when_requests_await_the_batcher_on_the_event_loop_then_those_waiting_share_one_call_and_get_their_own_answers():
    """The server's door (``submit_async``): requests gather on the event loop while the model is
    busy and go to it in one call; a failure stays with the request that caused it."""
    import asyncio

    from chronos_flows.serving import MicroBatcher, parse_request, predict

    model = _Gated(7)
    champ = _champion_of(model)
    seen: list[tuple[int, int]] = []
    batcher = MicroBatcher(max_wait_seconds=0.0, on_batch=lambda r, n, _s: seen.append((r, n)))
    bodies = [{"inputs": [{"target": series(30 + i, seed=i), "item_id": f"i{i}"}], "parameters": {"prediction_length": 4}}
              for i in range(9)]
    bodies[4]["inputs"][0]["target"][-1] = -1e9  # one request the model refuses
    bodies[7]["parameters"]["prediction_length"] = 6  # another horizon: its own call

    async def scenario():
        first = asyncio.ensure_future(batcher.submit_async(champ, parse_request(bodies[0])))
        while not model.entered.is_set():
            await asyncio.sleep(0.01)  # request 0 is inside the model: the others gather behind it
        rest = [asyncio.ensure_future(batcher.submit_async(champ, parse_request(bodies[i]))) for i in range(1, 9)]
        await asyncio.sleep(0.2)
        model.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    try:
        answers = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert seen[0] == (1, 1) and sorted(seen[1:]) == [(1, 1), (7, 7)], seen
    assert type(answers[4]).__name__ == "RequestError" and "item_id 'i4'" in str(answers[4])
    for i in (0, 1, 2, 3, 5, 6, 7, 8):
        assert answers[i] == predict(_champion_of(SeasonalNaive(7)), parse_request(bodies[i])), i


@pytest.mark.parametrize("body", [
    {"inputs": [{"target": [1, 2.5, 3, 4, 5, 6], "item_id": "a", "start": "2024-01-01"}, {"target": GOOD, "item_id": "b",
                "start": "2024-01-08"}], "parameters": {"prediction_length": 3, "quantile_levels": [0.9, 0.1], "freq": "W-MON",
                                                         "batch_size": 8, "predict_batches_jointly": True}},
    {"inputs": [{"target": GOOD}]},
], ids=["every-field", "defaults"])
def test_when_a_body_takes_the_fast_validation_then_the_request_equals_pydantics(body):
    from chronos_flows.serving import InvocationRequest
    from chronos_flows.serving.schema import _well_formed

    fast = _well_formed(body)
    assert fast is not None  # the common shape skips pydantic's per-value validation ...
    assert fast.model_dump() == InvocationRequest.model_validate(body).model_dump()  # ... and means the same


@pytest.mark.parametrize("body", [
    {"inputs": [{"target": [1, 2, True, 4, 5]}]},  # a bool is not a number
    {"inputs": [{"target": GOOD}], "parameters": {"prediction_length": True}},
    {"inputs": [{"target": GOOD, "past_covariates": {"p": GOOD}}]},
    {"inputs": [{"target": GOOD}], "parameters": {"prediction_length": 0}},
    {"inputs": [{"target": GOOD, "item_id": 7}]},
], ids=["bool-value", "bool-length", "covariates", "length-0", "int-item-id"])
def test_when_a_body_is_unusual_then_pydantic_validates_it(body):
    from chronos_flows.serving.schema import _well_formed

    assert _well_formed(body) is None


def test_when_a_target_holds_an_integer_too_large_for_a_float_then_400_names_it(sn_server):
    r = invoke(sn_server, b'{"inputs": [{"target": [1, 2, 3, 4, 5, ' + str(10**400).encode() + b']}]}')
    assert r.status_code == 400 and "inputs[0].target[5]: an integer too large" in r.json()["error"]


def test_when_a_route_or_method_is_unknown_then_404_or_405_in_json_with_the_request_id():
    from fastapi.testclient import TestClient

    from app.server import create_app

    with TestClient(create_app(_Holder(_champion_of(SeasonalNaive(7))))) as client:
        missing = client.get("/nowhere", headers={"x-amzn-requestid": "req-123"})
        wrong = client.get("/invocations")
    assert missing.status_code == 404 and "GET /ping, POST /invocations" in missing.json()["error"]
    assert missing.headers["X-Request-Id"] == "req-123" and missing.headers["X-Champion-Run-Id"] == "broken-run"
    assert wrong.status_code == 405 and wrong.json() == {"error": "/invocations answers POST, not GET"}
    assert len(wrong.headers["X-Request-Id"]) == 32


def test_when_model_threads_are_given_then_each_model_call_runs_with_that_many_torch_threads():
    import torch
    from fastapi.testclient import TestClient

    from app.server import create_app

    seen: list[int] = []

    class Counting(SeasonalNaive):
        def predict(self, context, horizon, freq, quantiles):
            seen.append(torch.get_num_threads())
            return super().predict(context, horizon, freq, quantiles)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # what a champion load sets (every core)
        with TestClient(create_app(_Holder(_champion_of(Counting(7))), model_threads=1)) as client:
            assert client.post("/invocations", json={"inputs": [{"target": GOOD}]}).status_code == 200
        with TestClient(create_app(_Holder(_champion_of(Counting(7))), model_threads=2)) as client:
            assert client.post("/invocations", json={"inputs": [{"target": GOOD}]}).status_code == 200
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]


def test_when_a_champion_is_swapped_in_then_the_heap_is_frozen_and_the_replaced_one_is_freed(tmp_path):
    """settle_heap: the serving champion's objects leave the collector's generations (gc.freeze), and a
    replaced champion held only in a reference cycle is still collected (unfreeze, collect, freeze)."""
    import gc
    import json
    import weakref

    from blocks.store import LocalStore
    from chronos_flows.core import layout
    from chronos_flows.serving.champion import ChampionHolder, LoadedChampion

    class Model:  # a model in a reference cycle, as module graphs are
        def __init__(self):
            self.me = self

    made: list = []

    def loader(store, env, doc, etag, workdir, device="auto"):
        made.append(weakref.ref(model := Model()))
        return LoadedChampion(run_id=doc["run_id"], family="seasonal_naive", doc=doc, etag=etag, model=model,
                              min_history=1, load_seconds=0.0)

    store = LocalStore(tmp_path / "store")
    holder = ChampionHolder(store, "dev", workdir=tmp_path / "work", loader=loader)
    try:
        for run in ("r1", "r2"):
            store.put(layout.champion_key("dev"), json.dumps({"schema_version": 2, "run_id": run, "family": "seasonal_naive",
                                                                "config": {"season_length": 7}}).encode())
            assert holder.check()
            assert gc.get_freeze_count() > 0
        assert holder.current.run_id == "r2" and made[0]() is None and made[1]() is not None
    finally:
        gc.unfreeze()


def test_when_requests_are_answered_then_each_has_one_json_access_log_line(caplog):
    import json
    import logging

    from fastapi.testclient import TestClient

    from app.server import create_app

    caplog.set_level(logging.INFO, logger="chronos_flows.access")
    with TestClient(create_app(_Holder(_champion_of(SeasonalNaive(7))))) as client:
        ok = client.post("/invocations", json={"inputs": [{"target": GOOD}, {"target": GOOD}]},
                         headers={"x-amzn-requestid": "req-ok"})
        bad = client.post("/invocations", json={"inputs": []}, headers={"x-amzn-requestid": "req-bad"})
    assert ok.status_code == 200 and bad.status_code == 400
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "chronos_flows.access"]
    assert [(x["request_id"], x["status"], x["series"]) for x in lines] == [("req-ok", 200, 2), ("req-bad", 400, None)]
    assert all(x["path"] == "/invocations" and x["latency_ms"] >= 0 and x["champion_run_id"] == "broken-run"
               for x in lines)


def test_when_serve_configures_uvicorn_then_http_is_parsed_by_httptools_on_uvloop():
    """The server's per-request cost: uvicorn's C parser and event loop (project dependencies), not
    the pure-Python h11/asyncio fallbacks it picks when they are missing."""
    from app.server import uvicorn_config

    config = uvicorn_config(lambda scope, receive, send: None, "127.0.0.1", free_port())
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
    assert config.get_loop_factory().__module__.startswith("uvloop")
    assert config.access_log is False  # ours is the JSON access log


@pytest.mark.parametrize("door", ["event loop", "thread"])
def test_when_a_request_arrives_alone_then_the_batch_window_does_not_delay_it(door):
    """Adaptive batching: a lone request goes to the model at once (only calls under load wait for
    more to join). With a 5-second window, a lone request on an idle batcher is answered far sooner."""
    import asyncio

    from chronos_flows.serving import MicroBatcher, parse_request, predict

    champ = _champion_of(SeasonalNaive(7))
    seen: list[tuple[int, int]] = []
    batcher = MicroBatcher(max_wait_seconds=5.0, on_batch=lambda r, n, _s: seen.append((r, n)))
    body = {"inputs": [{"target": series(40), "item_id": "a"}], "parameters": {"prediction_length": 4}}
    try:
        answers, took = [], []
        for _ in range(3):  # the first, and each after the model went idle again
            t0 = time.perf_counter()
            if door == "thread":
                answers.append(batcher.submit(champ, parse_request(body)))
            else:
                answers.append(asyncio.run(batcher.submit_async(champ, parse_request(body))))
            took.append(time.perf_counter() - t0)
    finally:
        batcher.stop()
    assert max(took) < 2.5, took  # half the window: no wait for company (a Seasonal Naive call takes milliseconds)
    assert seen == [(1, 1)] * 3
    expected = predict(champ, parse_request(body))
    assert all(a == expected for a in answers)


class _Where(SeasonalNaive):
    """Seasonal Naive that records the thread of each call and takes ``delay`` seconds."""

    def __init__(self, season_length: int, delay: float = 0.0):
        super().__init__(season_length)
        self.delay = delay
        self.threads: list[str] = []

    def predict(self, context, horizon, freq, quantiles):
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return super().predict(context, horizon, freq, quantiles)


def test_when_a_lone_request_follows_a_short_lone_call_then_it_is_answered_on_the_event_loop_without_a_thread_hand_off():
    """A champion's first call goes to the model thread (its duration is unknown); once a lone call
    is known to be short, the next lone request runs on the loop itself (no two thread hand-offs),
    with the same answer; one with more series than ``inline_max_series`` still goes to the thread."""
    import asyncio

    from chronos_flows.serving import MicroBatcher, parse_request, predict

    model = _Where(7)
    champ = _champion_of(model)
    seen: list[tuple[int, int]] = []
    batcher = MicroBatcher(max_wait_seconds=0.0, inline_max_series=2, on_batch=lambda r, n, _s: seen.append((r, n)))
    body = {"inputs": [{"target": series(40), "item_id": "a"}], "parameters": {"prediction_length": 4}}
    wide = {"inputs": [{"target": series(40, seed=k), "item_id": f"w{k}"} for k in range(3)],
            "parameters": {"prediction_length": 4}}

    async def scenario():
        loop_thread = threading.current_thread().name
        answers = [await batcher.submit_async(champ, parse_request(body)) for _ in range(3)]
        answers.append(await batcher.submit_async(champ, parse_request(wide)))
        return loop_thread, answers

    try:
        loop_thread, answers = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert model.threads[0].startswith("micro-batcher-loop"), model.threads
    assert model.threads[1:3] == [loop_thread, loop_thread], model.threads
    assert model.threads[3].startswith("micro-batcher-loop"), model.threads  # 3 series > inline_max_series
    assert seen == [(1, 1), (1, 1), (1, 1), (1, 3)]  # inline calls are observed (metrics) like the others
    assert answers[:3] == [predict(champ, parse_request(body))] * 3
    assert answers[3] == predict(champ, parse_request(wide))


def test_when_a_champion_is_swapped_out_then_the_batcher_does_not_keep_its_model_alive():
    import asyncio
    import gc
    import weakref

    from chronos_flows.serving import MicroBatcher, parse_request

    batcher = MicroBatcher(max_wait_seconds=0.0)
    body = {"inputs": [{"target": series(40), "item_id": "a"}], "parameters": {"prediction_length": 4}}
    old = _champion_of(_Where(7))
    gone = weakref.ref(old)
    try:
        asyncio.run(batcher.submit_async(old, parse_request(body)))
        del old
        gc.collect()
        assert gone() is None  # only the server's holder decides how long a champion lives
    finally:
        batcher.stop()


def test_when_a_call_on_the_event_loop_fails_outside_the_model_then_that_request_gets_the_error_and_the_next_is_served():
    """An inline call that raises (anything but the model, whose failures become answers) fails its
    request like a call on the model thread would; the batcher is not left busy for ever."""
    import asyncio

    from chronos_flows.serving import MicroBatcher, parse_request, predict

    champ = _champion_of(_Where(7))
    batcher = MicroBatcher(max_wait_seconds=0.0)
    body = {"inputs": [{"target": series(40), "item_id": "a"}], "parameters": {"prediction_length": 4}}
    answer = batcher._answer

    def broken(jobs):
        raise RuntimeError("the envelope broke")

    async def scenario():
        await batcher.submit_async(champ, parse_request(body))  # the first call, on the thread: now known short
        batcher._answer = broken
        try:
            await asyncio.wait_for(batcher.submit_async(champ, parse_request(body)), 5)
        except RuntimeError as exc:
            failed = str(exc)
        batcher._answer = answer
        return failed, await asyncio.wait_for(batcher.submit_async(champ, parse_request(body)), 5)

    try:
        failed, after = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert failed == "the envelope broke"
    assert after == predict(champ, parse_request(body))


def test_when_a_lone_call_is_slow_then_the_next_ones_stay_on_the_model_thread_and_the_loop_keeps_answering():
    """A model whose lone call took longer than ``inline_max_seconds`` never runs on the event loop:
    while it works, the loop stays free (a ticker keeps ticking, as /ping would keep answering)."""
    import asyncio

    from chronos_flows.serving import MicroBatcher, parse_request

    model = _Where(7, delay=0.15)
    champ = _champion_of(model)
    batcher = MicroBatcher(max_wait_seconds=0.0, inline_max_seconds=0.05)
    body = {"inputs": [{"target": series(40), "item_id": "a"}], "parameters": {"prediction_length": 4}}

    async def scenario():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(ticker())
        await batcher.submit_async(champ, parse_request(body))
        before = ticks
        await batcher.submit_async(champ, parse_request(body))
        during = ticks - before
        stop.set()
        await task
        return during

    try:
        during = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert all(t.startswith("micro-batcher-loop") for t in model.threads), model.threads
    assert during >= 5, during  # the loop ticked through the 150-ms call


def test_when_one_start_is_sent_with_two_frequencies_then_each_is_judged_on_its_own():
    """Starts and frequencies are parsed once and cached: the cache must not carry one frequency's
    verdict over to another, nor a refusal's absence to a bad timestamp."""
    from chronos_flows.serving import RequestError, parse_request

    def body(start, freq):
        return {"inputs": [{"target": series(30), "item_id": "a", "start": start}], "parameters": {"freq": freq}}

    for _ in range(2):  # the second round is answered from the caches
        assert str(parse_request(body("2020-01-06", "W-MON")).starts[0]) == "2020-01-06 00:00:00"
        with pytest.raises(RequestError, match=r"inputs\[0\] \(item_id 'a'\)\.start: 2020-01-06 is not on frequency W-TUE"):
            parse_request(body("2020-01-06", "W-TUE"))
        with pytest.raises(RequestError, match=r"start: 'not-a-date' is not a timestamp"):
            parse_request(body("not-a-date", "W-MON"))
        with pytest.raises(RequestError, match=r"parameters\.freq: 'W-XYZ' is not a pandas frequency"):
            parse_request(body("2020-01-06", "W-XYZ"))
