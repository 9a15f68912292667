"""The monitoring domain (chronos_flows.monitoring): scoring published forecasts, the history, the rule."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pandas as pd
import pytest

from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError
from chronos_flows.monitoring.history import read_history
from chronos_flows.monitoring.monitor import monitor
from chronos_flows.monitoring.rule import DegradationRule, evaluate_rule, live_status

FREQ = "W-MON"


def panel(n_series: int = 2, n: int = 120, shift_from: pd.Timestamp | None = None, shift: float = 0.0) -> pd.DataFrame:
    """Seasonal-ish weekly series with a little noise; ``shift`` added from ``shift_from`` on."""
    rng = np.random.default_rng(0)
    ds = pd.date_range("2020-01-06", periods=n, freq=FREQ)
    rows = []
    for k in range(n_series):
        y = 10 + k + np.sin(np.arange(n) * 2 * np.pi / 52) + rng.normal(0, 0.1, n)
        if shift_from is not None:
            y = y + np.where(ds >= shift_from, shift, 0.0)
        rows.append(pd.DataFrame({"unique_id": f"s{k}", "ds": ds, "y": y}))
    return pd.concat(rows, ignore_index=True)


def publish_batch(store, data: pd.DataFrame, cut: pd.Timestamp, *, forecast_id: str, horizon: int = 8,
                  run_id: str = "run-1", family: str = "seasonal_naive", env: str = "dev") -> pd.DataFrame:
    """A batch forecast in the chronos-forecast flow's format made at ``cut``: the truth (from ``data``
    without shifts) as mean, a +-0.3 band."""
    rows = []
    for uid, g in data[data["ds"] <= cut].groupby("unique_id"):
        ds = pd.date_range(cut, periods=horizon + 1, freq=FREQ)[1:]
        base = g["y"].tail(52).to_numpy()[:horizon]  # last year's values: a seasonal naive
        rows.append(pd.DataFrame({"unique_id": uid, "ds": ds, "mean": base, "0.1": base - 0.3, "0.5": base, "0.9": base + 0.3,
                                  "family": family, "champion_run_id": run_id}))
    frame = pd.concat(rows, ignore_index=True)
    prefix = layout.forecasts_prefix(env, forecast_id)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    store.put(f"{prefix}/forecasts.parquet", buf.getvalue())
    doc = {"schema_version": 1, "forecast_id": forecast_id, "env": env, "created_at": f"{cut:%Y-%m-%d}T10:00:00+00:00",
           "champion": {"run_id": run_id, "family": family}, "data": {"freq": FREQ}, "horizon": horizon,
           "quantiles": [0.1, 0.5, 0.9], "skipped": {}}
    store.put(f"{prefix}/forecast.json", json.dumps(doc).encode())
    return frame


def champion(run_id: str = "run-1", wql: float = 0.01) -> dict:
    return {"run_id": run_id, "family": "seasonal_naive", "scores": {"wql": wql, "mase": 1.0}}


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


def run(store, data, champ, **kw):
    return monitor(store, "dev", raw=data, cleaned=data, season_length=52, data_source="test-data", champion=champ, **kw)


def test_when_actuals_arrive_then_each_forecast_is_scored_once_and_rescoring_is_idempotent(store):
    data = panel()
    cut = data["ds"].sort_values().unique()[100]
    publish_batch(store, data, pd.Timestamp(cut), forecast_id="fc-1")
    revealed = data[data["ds"] <= cut + pd.Timedelta(weeks=5)]  # 5 of 8 steps

    first = run(store, revealed, champion(wql=0.05))
    assert first.rows_written == 1
    score = first.scores[0]
    assert score.n_series == 2 and score.steps_scored == 5 and score.n_points == 10 and not score.complete
    assert any("partial: 10 of 16" in i for i in first.issues)
    assert 0 <= score.wql < 1 and score.mase > 0 and 0 <= score.coverage_80 <= 1 and np.isfinite(score.bias)
    assert [s["step"] for s in score.by_step] == [1, 2, 3, 4, 5]

    again = run(store, revealed, champion(wql=0.05))
    assert again.rows_written == 0 and len(read_history(store, "dev")) == 1

    full = run(store, data, champion(wql=0.05))
    hist = read_history(store, "dev")
    assert full.rows_written == 1 and len(hist) == 2
    assert hist.iloc[-1]["complete"] and hist.iloc[-1]["steps_scored"] == 8
    assert hist.iloc[-1]["promised_wql"] == pytest.approx(0.05) and hist.iloc[-1]["champion_run_id"] == "run-1"


def test_when_the_score_is_computed_then_it_matches_a_plain_loop(store):
    data = panel(n_series=1)
    cut = pd.Timestamp(data["ds"].iloc[100])
    fc = publish_batch(store, data, cut, forecast_id="fc-1", horizon=4)
    res = run(store, data, champion())
    s = res.scores[0]
    act = data.set_index("ds").loc[fc["ds"], "y"].to_numpy()
    qs = {0.1: fc["0.1"].to_numpy(), 0.5: fc["0.5"].to_numpy(), 0.9: fc["0.9"].to_numpy()}
    loss = np.mean([2 * np.sum(np.maximum(q * (act - f), (q - 1) * (act - f))) / np.sum(np.abs(act)) for q, f in qs.items()])
    assert s.wql == pytest.approx(loss)
    hist_y = data[data["ds"] <= cut]["y"].to_numpy()
    scale = np.mean(np.abs(hist_y[52:] - hist_y[:-52]))
    assert s.mase == pytest.approx(np.mean(np.abs(act - fc["mean"].to_numpy())) / scale)
    assert s.coverage_80 == pytest.approx(np.mean((act >= qs[0.1]) & (act <= qs[0.9])))
    assert s.bias == pytest.approx(np.sum(fc["mean"].to_numpy() - act) / np.sum(np.abs(act)))


def test_when_live_wql_exceeds_the_promise_on_k_forecasts_then_the_rule_fires_once_per_champion(store):
    cut1 = pd.Timestamp("2021-12-27")
    data = panel(shift_from=cut1 - pd.Timedelta(weeks=40), shift=3.0)
    base = panel()
    cuts = [cut1, cut1 + pd.Timedelta(weeks=8)]
    for i, cut in enumerate(cuts):
        publish_batch(store, base, cut, forecast_id=f"fc-{i}")  # forecasts of the unshifted world
    rule = DegradationRule(consecutive=2)
    res = run(store, data, champion(wql=0.01), rule=rule)
    assert res.evidence is not None and res.degradation_created
    assert res.evidence["fired"][0] == "wql" and [f["forecast_id"] for f in res.evidence["forecasts"]] == ["fc-0", "fc-1"]
    assert "above" in res.evidence["reason"]
    again = run(store, data, champion(wql=0.01), rule=rule)
    assert again.evidence is not None and not again.degradation_created
    assert again.degradation["write_id"] == res.degradation["write_id"]
    status = live_status(store, "dev", "run-1")
    assert status["degraded"] and status["n_forecasts"] == 2 and status["live_wql"] > 0.1


def test_when_only_one_forecast_is_bad_then_k_two_does_not_fire_and_a_good_one_never_does(store):
    cut = pd.Timestamp("2021-12-27")
    data = panel()
    publish_batch(store, data, cut, forecast_id="fc-0")
    hist_rule = DegradationRule(consecutive=1)
    res = run(store, data, champion(wql=0.05), rule=hist_rule)
    assert res.scores[0].wql < 0.05 * 1.5 and res.evidence is None and res.degradation is None
    bad = res.history.assign(wql=1.0)
    assert evaluate_rule(bad, "run-1", DegradationRule(consecutive=2)) is None
    assert evaluate_rule(bad, "run-1", DegradationRule(consecutive=1)) is not None
    assert evaluate_rule(res.history.assign(coverage_80=0.1), "run-1", DegradationRule(consecutive=1))["fired"] == ["coverage"]


@pytest.mark.parametrize("bad,message", [
    ("conflict", "overlapping revisions"),
    ("unknown", "no published forecast knows"),
    ("text", "non-numeric"),
])
def test_when_actuals_are_bad_then_a_clear_message_and_the_history_is_unchanged(store, bad, message):
    data = panel()
    cut = pd.Timestamp(data["ds"].iloc[100])
    publish_batch(store, data, cut, forecast_id="fc-1")
    run(store, data[data["ds"] <= cut + pd.Timedelta(weeks=3)], champion())
    before = {k: store.get(k)[1] for k in store.list("dev/monitoring/")}
    if bad == "conflict":
        extra = data[data["ds"] == cut + pd.Timedelta(weeks=5)].assign(y=lambda d: d["y"] + 1)
        broken = pd.concat([data, extra], ignore_index=True)
    elif bad == "unknown":
        broken = pd.concat([data, data[data["unique_id"] == "s0"].assign(unique_id="stranger")], ignore_index=True)
    else:
        broken = data.astype({"y": object})
        broken.loc[105, "y"] = "n/a"
    with pytest.raises(BadInputError, match=message) as err:
        run(store, broken, champion())
    assert "nothing was scored" in str(err.value)
    assert {k: store.get(k)[1] for k in store.list("dev/monitoring/")} == before


def test_when_unknown_ids_are_ignored_then_they_are_reported_and_duplicates_and_absent_series_are_too(store):
    data = panel(n_series=3)
    cut = pd.Timestamp(data["ds"].iloc[100])
    publish_batch(store, data, cut, forecast_id="fc-1")
    new = pd.concat([data[data["unique_id"] != "s2"], data[data["unique_id"] == "s0"].assign(unique_id="new"),
                     data.head(3)], ignore_index=True)
    # s1 misses step 2 although step 3 arrived: late data
    late_ds = cut + pd.Timedelta(weeks=2)
    new = new[~((new["unique_id"] == "s1") & (new["ds"] == late_ds))]
    res = run(store, new, champion(), unknown_ids="ignore")
    text = " | ".join(res.issues)
    assert "1 series without a published forecast left out: new" in text
    assert "3 duplicated (series, timestamp) row(s)" in text
    assert "1 series absent from the new data: s2" in text
    assert "late data: 1 step(s) of 1 series" in text and f"s1 {late_ds:%Y-%m-%d}" in text
    assert res.scores[0].n_series_scored == 2


def test_when_actuals_are_revised_then_a_new_row_names_the_scoring_it_revises(store):
    data = panel()
    cut = pd.Timestamp(data["ds"].iloc[100])
    publish_batch(store, data, cut, forecast_id="fc-1")
    run(store, data, champion())
    revised = data.copy()
    revised.loc[(revised["ds"] == cut + pd.Timedelta(weeks=2)), "y"] += 0.5
    res = run(store, revised, champion())
    hist = read_history(store, "dev")
    assert len(hist) == 2 and res.rows_written == 1
    assert hist.iloc[-1]["revision_of"] == hist.iloc[0]["actuals_sha"]
    assert any("revision: actuals of forecast fc-1" in i for i in res.issues)


def test_when_two_monitors_run_at_once_then_no_row_is_lost_or_duplicated(tmp_path):
    data = panel()
    url = str(tmp_path / "store")
    base = open_store(url)
    cuts = [pd.Timestamp(data["ds"].iloc[i]) for i in (90, 95, 100, 105)]
    for i, cut in enumerate(cuts):
        publish_batch(base, data, cut, forecast_id=f"fc-{i}")
    partial = data[data["ds"] <= cuts[-1] + pd.Timedelta(weeks=2)]
    inputs = [data, partial, data, partial]
    errors = []

    def go(d):
        try:
            run(open_store(url), d, champion())
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(d,)) for d in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    hist = read_history(base, "dev")
    # every forecast scored on the full data once; fc-2 and fc-3 also on the partial data (7 and 2 steps)
    assert len(hist) == 6 and not hist.duplicated(["forecast_id", "actuals_sha"]).any()
    assert sorted(hist[hist["forecast_id"] == "fc-2"]["steps_scored"]) == [7, 8]
    assert sorted(hist[hist["forecast_id"] == "fc-3"]["steps_scored"]) == [2, 8]


def capture_batch(store, data, cut, *, requests: int, day: str, batch: str, horizon: int = 4, levels=("0.1", "0.5", "0.9")):
    rows = []
    for r in range(requests):
        for uid, g in data[data["ds"] <= cut].groupby("unique_id"):
            ds = pd.date_range(cut, periods=horizon + 1, freq=FREQ)[1:]
            base = g["y"].tail(52).to_numpy()[:horizon]
            row = pd.DataFrame({"unique_id": uid, "ds": ds, "step": np.arange(1, horizon + 1), "origin": cut, "freq": FREQ,
                                "mean": base, "family": "seasonal_naive", "champion_run_id": "run-1",
                                "request_id": f"req-{batch}-{r}", "captured_at": pd.Timestamp("2024-01-01") + pd.Timedelta(seconds=r)})
            for q in levels:
                row[q] = base + (float(q) - 0.5)
            rows.append(row)
    buf = io.BytesIO()
    pd.concat(rows, ignore_index=True).to_parquet(buf, index=False)
    store.put(layout.capture_key("dev", day, batch), buf.getvalue())


def test_when_requests_were_captured_then_they_are_scored_as_forecasts_by_champion_and_origin(store):
    data = panel()
    cut = pd.Timestamp(data["ds"].iloc[100])
    capture_batch(store, data, cut, requests=2, day="2024-01-01", batch="20240101T000000-aaaaaaaa")
    capture_batch(store, data, cut + pd.Timedelta(weeks=1), requests=1, day="2024-01-02", batch="20240102T000000-bbbbbbbb",
                  levels=("0.5",))
    res = run(store, data, champion())
    ids = sorted(r.row["forecast_id"] for r in res.recorded)
    assert ids == [f"capture-run-1-{cut:%Y%m%dT%H%M%S}", f"capture-run-1-{cut + pd.Timedelta(weeks=1):%Y%m%dT%H%M%S}"]
    first, second = sorted(res.scores, key=lambda s: s.origin)
    assert first.n_points == 8 and first.source == "capture" and np.isfinite(first.coverage_80)
    assert any("requested again at the same origin" in i for i in res.issues)
    assert np.isfinite(second.wql) and np.isnan(second.coverage_80)  # only the median was captured: no 80% band


def test_when_the_cli_monitor_gets_overlapping_revisions_then_it_exits_2_before_prefect_and_writes_nothing(tmp_path, capsys):
    from app.cli import main

    store = open_store(str(tmp_path / "store"))
    data = panel()
    cut = pd.Timestamp(data["ds"].iloc[100])
    publish_batch(store, data, cut, forecast_id="fc-1")
    broken = pd.concat([data, data[data["ds"] == cut + pd.Timedelta(weeks=1)].assign(y=0.0)], ignore_index=True)
    path = tmp_path / "actuals.csv"
    broken.to_csv(path, index=False)
    assert main(["monitor", "--store", str(tmp_path / "store"), "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "overlapping revisions" in err and f"s0 {cut + pd.Timedelta(weeks=1):%Y-%m-%d}" in err
    assert store.list("dev/monitoring/") == []


class FlakyStore:
    """The store, answering ``TransientStoreError`` (as S3's 503 SlowDown becomes) to the first
    ``failures`` writes and existence checks."""

    def __init__(self, inner, failures: int):
        self.inner, self.left, self.refused = inner, failures, 0

    def _maybe_fail(self):
        from chronos_flows.core.errors import TransientStoreError

        if self.left > 0:
            self.left -= 1
            self.refused += 1
            raise TransientStoreError("503 SlowDown (injected)")

    def exists(self, key):
        self._maybe_fail()
        return self.inner.exists(key)

    def put_if_absent(self, key, data):
        self._maybe_fail()
        return self.inner.put_if_absent(key, data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_when_the_store_throttles_while_the_history_is_written_then_the_rows_land_once_the_outage_ends(store):
    data = panel()
    cut = pd.Timestamp(data["ds"].iloc[100])
    publish_batch(store, data, cut, forecast_id="fc-1", horizon=4)
    flaky = FlakyStore(store, failures=3)
    res = run(flaky, data, champion())
    assert flaky.refused == 3 and [r.written for r in res.recorded] == [True]
    assert list(read_history(store, "dev")["forecast_id"]) == ["fc-1"]


def test_when_the_store_stays_away_past_the_budget_then_the_step_fails_and_nothing_is_half_written(store, monkeypatch):
    from chronos_flows.core.errors import TransientStoreError
    from chronos_flows.monitoring import history

    monkeypatch.setattr(history, "OUTAGE_BUDGET_SECONDS", 1.0)
    data = panel()
    cut = pd.Timestamp(data["ds"].iloc[100])
    publish_batch(store, data, cut, forecast_id="fc-1", horizon=4)
    with pytest.raises(TransientStoreError, match="SlowDown"):
        run(FlakyStore(store, failures=10_000), data, champion())
    assert read_history(store, "dev").empty
