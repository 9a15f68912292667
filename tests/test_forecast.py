"""Batch forecasts from the champion: the domain function, Chronos numbers against upstream, the
flow through the CLI on the shipped data, and every refusal (which writes nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from blocks.store import LocalStore
from chronos_flows.core import layout
from chronos_flows.config.params import REPO_ROOT, ForecastParams
from chronos_flows.core.errors import BadInputError
from chronos_flows.forecasting.batch import forecast_panel
from chronos_flows.data.ingest import fingerprint, to_parquet_bytes
from chronos_flows.models.base import quantile_column
from chronos_flows.models.local.seasonal_naive import SeasonalNaive
from chronos_flows.champion.registry import decide_champion, promote, read_champion

GASOLINE = REPO_ROOT / "data" / "us_gasoline.csv"
Q = (0.1, 0.5, 0.9)


def panel(n_series: int = 3, n: int = 60, freq: str = "W-MON") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for i in range(n_series):
        t = np.arange(n)
        parts.append(pd.DataFrame({"unique_id": f"s{i}", "ds": pd.date_range("2020-01-06", periods=n, freq=freq),
                                   "y": 10 + i + np.sin(t / 4) + rng.normal(0, 0.1, n)}))
    return pd.concat(parts, ignore_index=True)


def seed_champion(store_dir: Path, family: str, config: dict, *, freq: str = "W-MON", horizon: int = 8,
                  data: pd.DataFrame | None = None, model_dir: Path | None = None, run_id: str = "champ-run") -> LocalStore:
    """A store whose champion (of ``family``) was judged on ``data`` (default: the shipped gasoline series)."""
    store = LocalStore(store_dir)
    raw = data if data is not None else pd.read_csv(GASOLINE, parse_dates=["ds"])
    fp = fingerprint(raw)
    key = layout.dataset_key(fp, 2026, 11)
    store.put(key, to_parquet_bytes(raw))
    entry = {"run_id": run_id, "family": family, "config": config,
             "judged_on": {"dataset_uri": store.uri(key), "freq": freq, "horizon": horizon, "quantiles": list(Q),
                           "season_length": 52, "data_fingerprint": fp, "cleaning": {"freq": None}}}
    if family == "chronos":
        prefix = layout.registry_model_prefix("dev", run_id, "chronos")
        store.upload_dir(model_dir, prefix)
        entry["model_uri"] = store.uri(prefix)
    d = decide_champion({family: {"wql": 0.03}}, None)
    assert promote(store, "dev", entry, d, None)
    return store


# ------------------------------------------------------------------------------------------ domain


def test_when_a_panel_is_forecast_in_chunks_then_every_series_gets_horizon_rows_with_ordered_quantiles():
    df = panel(5)
    chunks = []
    run = forecast_panel(SeasonalNaive(4), df, horizon=6, freq="W-MON", quantiles=Q, family="seasonal_naive",
                         champion_run_id="r1", chunk_size=2, sink=chunks.append)
    out = pd.concat(chunks, ignore_index=True)
    assert run.chunks == 3 and [c["unique_id"].nunique() for c in chunks] == [2, 2, 1]
    assert run.n_series == 5 and run.n_rows == len(out) == 5 * 6 and not run.skipped
    assert list(out.columns) == ["unique_id", "ds", "mean", "0.1", "0.5", "0.9", "family", "champion_run_id"]
    q = out[["0.1", "0.5", "0.9"]].to_numpy()
    assert (np.diff(q, axis=1) >= 0).all()
    last = df.groupby("unique_id")["ds"].max()
    first = out.groupby("unique_id")["ds"].min()
    assert all(first[u] == last[u] + pd.Timedelta(weeks=1) for u in last.index)
    assert set(out["family"]) == {"seasonal_naive"} and set(out["champion_run_id"]) == {"r1"}


def test_when_a_series_is_too_short_for_the_family_then_it_is_skipped_with_the_reason_and_the_others_forecast():
    df = pd.concat([panel(2), panel(1, n=3).assign(unique_id="short")], ignore_index=True)
    chunks = []
    run = forecast_panel(SeasonalNaive(4), df, horizon=4, freq="W-MON", quantiles=Q, family="chronos",
                         champion_run_id="r", min_history=5, sink=chunks.append)
    assert run.skipped == {"short": "3 observations; a chronos forecast needs at least 5"}
    assert set(pd.concat(chunks)["unique_id"]) == {"s0", "s1"}


def test_when_every_series_is_too_short_then_the_batch_is_refused():
    with pytest.raises(BadInputError, match="no series can be forecast"):
        forecast_panel(SeasonalNaive(4), panel(2, n=3), horizon=4, freq="W-MON", quantiles=Q, family="chronos",
                       champion_run_id="r", min_history=5, sink=lambda c: None)


def test_when_a_forecaster_crosses_its_quantiles_then_the_batch_sorts_them():
    class Crossing(SeasonalNaive):
        def predict(self, context, horizon, freq, quantiles=Q):
            out = super().predict(context, horizon, freq, quantiles)
            out["0.1"], out["0.9"] = out["0.9"] + 1, out["0.1"] - 1
            return out

    chunks = []
    forecast_panel(Crossing(4), panel(1), horizon=3, freq="W-MON", quantiles=Q, family="x", champion_run_id="r", sink=chunks.append)
    q = chunks[0][["0.1", "0.5", "0.9"]].to_numpy()
    assert (np.diff(q, axis=1) >= 0).all()


def _tiny_chronos(tmp_path, context: int = 64, horizon: int = 8):
    from chronos_flows.config.params import ChronosConfig
    from chronos_flows.models.chronos.forecasters import ChronosForecaster
    from chronos_flows.models.chronos.configs import build_random_pipeline

    build_random_pipeline("chronos-2", "tiny", context, horizon, seed=3).save_pretrained(tmp_path / "model")
    cfg = ChronosConfig(family="chronos-2", context_length=context, batch_size=2, device="cpu")
    return ChronosForecaster.load(tmp_path / "model", cfg, workdir=tmp_path)


@pytest.mark.parametrize("family", ["seasonal_naive", "chronos"])
@pytest.mark.parametrize("shuffled", [False, True])
def test_when_a_panel_is_forecast_in_many_chunks_then_the_file_equals_the_single_chunk_one(tmp_path, family, shuffled):
    from chronos_flows.forecasting.batch import ParquetSink, forecast_columns

    model = SeasonalNaive(4) if family == "seasonal_naive" else _tiny_chronos(tmp_path)
    df = panel(23, n=40)
    df.loc[df["unique_id"] == "s5", "y"] = np.nan  # a series with no finite value: skipped either way
    if shuffled:  # rows in any order: sorted into arrays, the same output
        df = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    files, runs = [], []
    for chunk_size in (3, 10_000):
        sink = ParquetSink(tmp_path / f"chunks-{chunk_size}.parquet", forecast_columns(Q), preview_series=2)
        try:
            runs.append(forecast_panel(model, df, horizon=8, freq="W-MON", quantiles=Q, family=family,
                                       champion_run_id="r", min_history=2, chunk_size=chunk_size, sink=sink))
        finally:
            sink.close()
        files.append(pd.read_parquet(sink.path))
        assert sink.largest_chunk <= min(chunk_size, 22) * 8
        # the preview is the file's first rows and its first two series, nothing more
        pd.testing.assert_frame_equal(sink.head, files[-1].head(20))
        pd.testing.assert_frame_equal(sink.preview, files[-1][files[-1]["unique_id"].isin(["s0", "s1"])])
    many, one = files
    assert runs[0].chunks == 8 and runs[1].chunks == 1
    assert runs[0].skipped == runs[1].skipped and list(runs[0].skipped) == ["s5"]
    assert len(many) == 22 * 8 and list(many["unique_id"].unique()) == sorted(set(df["unique_id"]) - {"s5"})
    pd.testing.assert_frame_equal(many, one, rtol=1e-5, atol=1e-5)


def test_when_a_large_panel_is_forecast_in_chunks_then_peak_memory_is_a_chunk_of_output_not_the_panel(tmp_path):
    """3,000 series whose output (156,000 rows) is ~20x the input: with chunks of 100 series the
    forecast holds a small fraction of what forecasting the whole panel at once holds."""
    import tracemalloc

    from chronos_flows.forecasting.batch import ParquetSink, forecast_columns

    class LastValue(SeasonalNaive):
        """A global model as cheap as possible (the batched path Chronos takes), so memory is ours."""

        def predict_arrays(self, arrays, horizon, quantiles):
            last = np.array([a[-1] for a in arrays], dtype="float32")
            mean = np.repeat(last[:, None], horizon, axis=1)
            return mean, mean[:, :, None] + np.asarray(quantiles, dtype="float32") - 0.5

    n_series, n, horizon = 3000, 8, 52
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"unique_id": np.repeat([f"s{i:04d}" for i in range(n_series)], n),
                       "ds": np.tile(pd.date_range("2020-01-06", periods=n, freq="W-MON"), n_series),
                       "y": rng.normal(10, 1, n_series * n)})

    def peak(chunk_size: int) -> tuple[int, ParquetSink]:
        sink = ParquetSink(tmp_path / f"f-{chunk_size}.parquet", forecast_columns(Q))
        tracemalloc.start()
        try:
            forecast_panel(LastValue(1), df, horizon=horizon, freq="W-MON", quantiles=Q, family="last_value",
                           champion_run_id="r", chunk_size=chunk_size, sink=sink)
            sink.close()
            return tracemalloc.get_traced_memory()[1], sink
        finally:
            tracemalloc.stop()

    chunked, sink = peak(100)
    whole, _ = peak(n_series)
    assert sink.rows == n_series * horizon and sink.largest_chunk == 100 * horizon
    assert chunked < 0.25 * whole, (chunked, whole)


def test_when_forecasts_are_published_then_the_file_is_streamed_to_the_store_and_never_read_back(prefect_api, tmp_path, monkeypatch):
    import tasks.forecast as tf

    seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 4})
    data = tmp_path / "panel.csv"
    panel(7, n=40).to_csv(data, index=False)

    class NoWholeUpload(LocalStore):
        def put(self, key, data):
            assert not key.endswith("forecasts.parquet"), "the forecasts were uploaded from memory"
            return super().put(key, data)

    store = NoWholeUpload(tmp_path / "store")
    params = ForecastParams(store=str(tmp_path / "store"), forecast_id="fc-stream", horizon=5, chunk_size=2,
                            data={"path": str(data)}, plot_series=2)
    champ, _ = read_champion(store, "dev")
    inputs, cleaned, report = tf.load_forecast_data(params, champ)
    monkeypatch.setattr(tf.pd, "read_parquet", lambda *a, **k: pytest.fail("the output file was read back whole"))
    (tmp_path / "work").mkdir()
    path, run, preview = tf.forecast(store, params, champ, inputs, cleaned, report.freq, "fc-stream", tmp_path / "work")
    assert run.chunks == 4 and len(preview["preview"]) == 2 * 5 and len(preview["head"]) == 20
    doc = tf.publish.fn(store, params, champ, inputs, report, cleaned, path, run, "fc-stream", "now", preview)
    monkeypatch.undo()
    prefix = layout.forecasts_prefix("dev", "fc-stream")
    stored = pd.read_parquet(store.uri(f"{prefix}/forecasts.parquet").removeprefix("file://"))
    pd.testing.assert_frame_equal(stored, pd.read_parquet(path))
    assert len(stored) == 7 * 5 and doc["counts"]["rows"] == 35 and store.exists(f"{prefix}/forecast.json")


# ------------------------------------------------------------------------------- a Chronos champion


def test_when_the_champion_is_chronos_then_batch_forecasts_equal_upstream_predict_quantiles(tmp_path):
    import torch
    from chronos import BaseChronosPipeline

    from chronos_flows.forecasting.batch import champion_forecaster
    from chronos_flows.models.chronos.configs import build_random_pipeline

    model_dir = tmp_path / "model"
    build_random_pipeline("chronos-2", "tiny", 64, 8, seed=3).save_pretrained(model_dir)
    df = panel(7, n=90)
    store = seed_champion(tmp_path / "store", "chronos", {"chronos_family": "chronos-2", "context_length": 64,
                                                         "batch_size": 2}, model_dir=model_dir, data=df)
    champ, _ = read_champion(store, "dev")
    model = champion_forecaster(store, "dev", champ, tmp_path / "work", device="cpu")
    chunks = []
    forecast_panel(model, df, horizon=8, freq="W-MON", quantiles=Q, family="chronos", champion_run_id="champ-run",
                   chunk_size=3, sink=chunks.append)
    out = pd.concat(chunks, ignore_index=True)

    pipe = BaseChronosPipeline.from_pretrained(str(model_dir), device_map="cpu", dtype=torch.float32)
    ctx = [torch.tensor(g["y"].to_numpy()[-64:]) for _, g in df.groupby("unique_id", sort=True)]
    q_list, m_list = pipe.predict_quantiles(ctx, prediction_length=8, quantile_levels=list(Q))
    up_q = np.sort(torch.stack([x[0] for x in q_list]).numpy(), axis=-1)  # (series, h, Q); the batch never crosses
    up_mean = torch.stack([x[0] for x in m_list]).numpy()
    mine_q = np.stack([out[quantile_column(q)].to_numpy().reshape(7, 8) for q in Q], axis=-1)
    np.testing.assert_allclose(mine_q, up_q, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["mean"].to_numpy().reshape(7, 8), up_mean, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- the flow through the CLI


def _forecast_keys(store) -> list[str]:
    return store.list("dev/forecasts/")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``chronos-flows ARGS`` as a real process, against the session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT)


def test_when_forecast_runs_on_the_shipped_data_then_it_writes_series_times_horizon_rows_and_a_record(prefect_api, tmp_path):
    store = seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 52})
    res = run_cli("forecast", "--store", str(tmp_path / "store"), "--forecast-id", "fc-1", "--horizon", "13",
                  "--quantiles", "0.9,0.1,0.5")
    out = res.stdout
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fc-1: 1 series × 13 steps = 13 rows from the seasonal_naive champion (run champ-run)" in out
    prefix = layout.forecasts_prefix("dev", "fc-1")
    frame = pd.read_parquet(store.uri(f"{prefix}/forecasts.parquet").removeprefix("file://"))
    assert len(frame) == 13 and list(frame.columns)[:6] == ["unique_id", "ds", "mean", "0.1", "0.5", "0.9"]
    assert (np.diff(frame[["0.1", "0.5", "0.9"]].to_numpy(), axis=1) >= 0).all()
    gas = pd.read_csv(GASOLINE, parse_dates=["ds"])
    assert frame["ds"].min() == gas["ds"].max() + pd.Timedelta(weeks=1)
    # seasonal naive: the value 52 weeks before each forecast step
    np.testing.assert_allclose(frame["mean"].to_numpy(), gas["y"].to_numpy()[-52:-39])
    doc = json.loads(store.get(f"{prefix}/forecast.json")[0])
    assert doc["champion"]["run_id"] == "champ-run" and doc["champion"]["family"] == "seasonal_naive"
    assert doc["counts"] == {"series_forecast": 1, "rows": 13, "series_skipped": 0, "chunks": 1}
    assert doc["data"]["fingerprint"] and doc["data"]["freq"] == "W-MON" and doc["quantiles"] == [0.1, 0.5, 0.9]
    assert doc["timings"]["forecast_seconds"] >= 0 and doc["skipped"] == {}


def test_when_the_data_has_a_short_series_then_it_is_listed_as_skipped_and_the_others_are_forecast(prefect_api, tmp_path):
    from flows.forecast import chronos_forecast

    seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 52})
    data = tmp_path / "panel.csv"
    pd.concat([panel(2, n=80), panel(1, n=3).assign(unique_id="tiny")]).to_csv(data, index=False)
    # seasonal naive forecasts even one point: force a minimum through a family that needs more
    store = LocalStore(tmp_path / "store")
    champ, etag = read_champion(store, "dev")
    doc = chronos_forecast(params=ForecastParams(store=str(tmp_path / "store"), forecast_id="fc-short", horizon=4,
                                                 data={"path": str(data)}))
    assert doc["counts"]["series_forecast"] == 3 and doc["skipped"] == {}
    # the same panel against a Prophet champion (needs 2 points) with one single-point series
    pd.concat([panel(2, n=80), panel(1, n=1).assign(unique_id="one")]).to_csv(data, index=False)
    entry = {"run_id": "p-run", "family": "prophet", "config": {"uncertainty_samples": 20, "seed": 0},
             "judged_on": champ["judged_on"]}
    assert promote(store, "dev", entry, decide_champion({"prophet": {"wql": 0.01}}, champ), etag)
    doc = chronos_forecast(params=ForecastParams(store=str(tmp_path / "store"), forecast_id="fc-short-2", horizon=4,
                                                 data={"path": str(data)}, n_jobs=1))
    assert doc["counts"]["series_forecast"] == 2 and list(doc["skipped"]) == ["one"]
    assert "minimum length 2" in doc["skipped"]["one"]


def test_when_there_is_no_champion_then_forecast_exits_2_and_writes_nothing(tmp_path, capsys):
    from app.cli import main

    store = LocalStore(tmp_path / "store")
    assert main(["forecast", "--store", str(tmp_path / "store")]) == 2
    assert "no champion in env dev: run chronos-flows run first" in capsys.readouterr().err
    assert not store.list("")


def test_when_the_data_frequency_differs_from_the_champions_then_forecast_exits_2_naming_both(tmp_path, capsys):
    from app.cli import main

    store = seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 52})
    before = sorted(store.list(""))
    data = tmp_path / "daily.csv"
    panel(2, n=60, freq="D").to_csv(data, index=False)
    assert main(["forecast", "--store", str(tmp_path / "store"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "frequency D" in err and "judged on W-MON" in err and str(data) in err
    assert sorted(store.list("")) == before


def test_when_a_training_run_holds_the_lock_then_forecast_still_runs(prefect_api, tmp_path):
    from chronos_flows.runstate.lock import RunLock
    from flows.forecast import chronos_forecast

    store = seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 52})
    handle = RunLock(store, "dev", lease_seconds=120).acquire("training-now")
    doc = chronos_forecast(params=ForecastParams(store=str(tmp_path / "store"), forecast_id="fc-locked"))
    assert doc["counts"]["rows"] == 8  # the champion's horizon
    assert json.loads(store.get(layout.state_key("dev"))[0])["run_id"] == "training-now"
    assert handle.generation >= 1
