"""The global gradient-boosted family (``lightgbm``, chronos_flows.models.global_boost): shapes and
quantiles, determinism, short series dropped with a reason, inputs untouched, accuracy against
Seasonal Naive on a shipped panel, and a whole run → champion → batch forecast → endpoint with the
family forced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chronos_flows.core.errors import BadInputError
from chronos_flows.evaluation.backtest import run_backtest
from chronos_flows.models.families import GLOBAL_BOOST, local_forecaster
from chronos_flows.models.global_boost import GlobalBoostForecaster, feature_plan
from chronos_flows.models.local.seasonal_naive import SeasonalNaive

REPO = Path(__file__).resolve().parents[1]
QCOLS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]


def livestock(n_series: int) -> pd.DataFrame:
    """The first ``n_series`` series of the shipped aus_livestock panel (monthly, 120 points each)."""
    df = pd.read_csv(REPO / "data" / "aus_livestock.csv", parse_dates=["ds"])
    ids = sorted(df["unique_id"].unique())[:n_series]
    return df[df["unique_id"].isin(ids)].sort_values(["unique_id", "ds"], ignore_index=True)


def with_short(df: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    short = pd.DataFrame({"unique_id": "short", "ds": pd.date_range("2015-01-01", periods=n, freq="MS"),
                          "y": np.linspace(100.0, 200.0, n)})
    return pd.concat([df, short], ignore_index=True)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return livestock(6)


def test_when_a_panel_is_forecast_then_every_series_gets_horizon_rows_with_non_crossing_quantiles(panel):
    fc = GlobalBoostForecaster(12).forecast(panel, 12, "MS")

    frame = fc.frame
    assert fc.failures == {}
    assert list(frame.columns) == ["unique_id", "ds", "mean", *QCOLS]
    assert len(frame) == 6 * 12 and sorted(frame["unique_id"].unique()) == sorted(panel["unique_id"].unique())
    assert np.isfinite(frame[["mean", *QCOLS]].to_numpy()).all()
    assert (np.diff(frame[QCOLS].to_numpy(), axis=1) >= 0).all()
    assert (frame[QCOLS[0]] < frame[QCOLS[-1]]).all()  # a real interval, not a point
    first = frame[frame["unique_id"] == panel["unique_id"].iloc[0]]
    assert first["ds"].min() == panel["ds"].max() + pd.offsets.MonthBegin(1) and first["ds"].is_monotonic_increasing


def test_when_the_quantile_method_is_quantile_then_each_level_has_its_own_model_and_quantiles_never_cross(panel):
    model = GlobalBoostForecaster(12, quantile_method="quantile", n_estimators=50)
    frame = model.forecast(panel, 6, "MS", quantiles=(0.9, 0.1, 0.5)).frame

    assert list(frame.columns) == ["unique_id", "ds", "mean", "0.9", "0.1", "0.5"]
    assert (frame["0.1"] <= frame["0.5"]).all() and (frame["0.5"] <= frame["0.9"]).all()
    assert (frame["0.1"] < frame["0.9"]).any()


def test_when_the_model_is_fitted_twice_then_the_forecasts_are_identical(panel):
    a = GlobalBoostForecaster(12).fit(panel, "MS", 12).forecast(panel, 12, "MS").frame
    b = GlobalBoostForecaster(12).fit(panel, "MS", 12).forecast(panel, 12, "MS").frame

    pd.testing.assert_frame_equal(a, b)


def test_when_a_series_is_too_short_for_the_lags_then_it_is_dropped_with_the_reason_and_the_others_forecast(panel):
    data = with_short(panel, 20)
    model = GlobalBoostForecaster(12)

    fc = model.forecast(data, 12, "MS")
    fitted = model.fit(data, "MS", 12)

    assert set(fc.failures) == {"short"}
    assert "too short" in fc.failures["short"] and "20 observations" in fc.failures["short"]
    assert "short" not in set(fc.frame["unique_id"]) and fc.frame["unique_id"].nunique() == 6
    assert fitted.fit_info["dropped"].keys() == {"short"} and fitted.fit_info["n_series"] == 6


def test_when_every_series_is_too_short_then_nothing_is_forecast_and_each_is_reported():
    tiny = with_short(livestock(0), 5)

    fc = GlobalBoostForecaster(12).forecast(tiny, 12, "MS")

    assert fc.frame.empty and set(fc.failures) == {"short"} and "too short" in fc.failures["short"]


def test_when_a_series_is_constant_then_its_forecast_is_finite_and_stays_near_its_value(panel):
    const = pd.DataFrame({"unique_id": "const", "ds": pd.date_range("2009-01-01", periods=120, freq="MS"), "y": 5.0})

    fc = GlobalBoostForecaster(12).forecast(pd.concat([panel, const], ignore_index=True), 12, "MS")

    mine = fc.frame[fc.frame["unique_id"] == "const"]
    assert fc.failures == {} and len(mine) == 12
    assert np.isfinite(mine[["mean", *QCOLS]].to_numpy()).all() and np.allclose(mine["mean"], 5.0, atol=1.0)


@pytest.mark.parametrize("season,freq,lags,calendar", [
    (12, "MS", tuple(range(1, 14)), ["month"]),
    (4, "QS", (1, 2, 3, 4, 5), ["quarter"]),
    (52, "W-MON", tuple(range(1, 54)), ["week_of_year"]),
    (168, "h", (1, 2, 3, 4, 5, 6, 167, 168, 169), ["hour", "dayofweek"]),
])
def test_when_the_history_is_long_then_the_lags_cover_a_season_and_the_calendar_suits_the_frequency(season, freq, lags, calendar):
    plan = feature_plan(season, 8, freq, [2000] * 3, conformal_windows=4)

    assert plan.seasonal and plan.lags == lags and plan.rolling == tuple(sorted({3, season}))
    assert plan.describe()["date_features"] == calendar
    assert plan.min_length == max(lags[-1], season) + 1 + 2 + 4 * 8  # lags, one difference, 2 rows, 4 windows of h


def test_when_the_panel_is_short_then_the_seasonal_lag_is_left_out_and_the_series_still_forecast():
    short_panel = livestock(4).groupby("unique_id").tail(24).reset_index(drop=True)  # 24 months, h=6, 2 windows

    plan = feature_plan(12, 6, "MS", [24] * 4, conformal_windows=2)
    fc = GlobalBoostForecaster(12, conformal_windows=2).forecast(short_panel, 6, "MS")

    assert not plan.seasonal and 12 not in plan.lags and plan.min_length <= 24
    assert fc.failures == {} and len(fc.frame) == 4 * 6


def test_when_the_model_fits_and_forecasts_then_its_inputs_and_itself_are_unchanged(panel):
    data = with_short(panel)
    before = data.copy()
    model = GlobalBoostForecaster(12)

    fitted = model.fit(data, "MS", 12)
    first = fitted.forecast(data, 12, "MS").frame
    fitted.forecast(data.assign(unique_id=data["unique_id"] + "-new"), 12, "MS")  # new series: a copy of its state
    again = fitted.forecast(data, 12, "MS").frame

    pd.testing.assert_frame_equal(data, before)
    assert not model.fitted and fitted.fitted
    pd.testing.assert_frame_equal(first, again)


def test_when_a_fitted_model_forecasts_its_training_panel_then_it_equals_training_on_that_context(panel):
    trained_here = GlobalBoostForecaster(12).forecast(panel, 12, "MS").frame
    fitted = GlobalBoostForecaster(12).fit(panel, "MS", 12).forecast(panel, 12, "MS").frame

    pd.testing.assert_frame_equal(trained_here, fitted)


def test_when_a_fitted_model_forecasts_a_new_series_then_it_applies_the_trained_model_with_rescaled_intervals(panel):
    fitted = GlobalBoostForecaster(12).fit(panel, "MS", 12)
    one = panel[panel["unique_id"] == panel["unique_id"].iloc[0]]
    own = fitted.forecast(one, 12, "MS").frame
    new = fitted.forecast(one.assign(unique_id="new"), 12, "MS").frame

    np.testing.assert_allclose(new["mean"].to_numpy(), own["mean"].to_numpy())  # same model, same history
    assert (new["0.1"] < new["mean"]).all() and (new["0.9"] > new["mean"]).all()


def test_when_a_fitted_model_is_asked_for_a_longer_horizon_then_it_retrains_for_it_and_forecasts_every_step(panel):
    fitted = GlobalBoostForecaster(12, conformal_windows=2).fit(panel, "MS", 6)

    fc = fitted.forecast(panel, 12, "MS")

    assert fc.failures == {} and len(fc.frame) == 6 * 12 and fitted.fit_info["horizon"] == 6
    assert (fc.frame.groupby("unique_id").size() == 12).all()


def test_when_a_context_has_another_frequency_than_the_fit_then_the_forecast_steps_follow_the_contexts(panel):
    fitted = GlobalBoostForecaster(12).fit(panel, "MS", 12)
    one = panel[panel["unique_id"] == panel["unique_id"].iloc[0]]
    daily = one.assign(ds=pd.date_range("2020-01-01", periods=len(one), freq="D"))

    frame = fitted.forecast(daily, 5, "D").frame

    assert list(frame["ds"]) == list(pd.date_range(daily["ds"].max(), periods=6, freq="D")[1:])


def test_when_the_settings_are_bad_then_a_bad_input_error_names_the_setting():
    with pytest.raises(BadInputError, match="target_transform"):
        GlobalBoostForecaster(12, target_transform="log")
    with pytest.raises(BadInputError, match="conformal_windows"):
        GlobalBoostForecaster(12, conformal_windows=1)
    with pytest.raises(BadInputError, match="unknown lightgbm setting"):
        local_forecaster(GLOBAL_BOOST, {"season_length": 12, "depth": 3})


def test_when_backtested_on_the_livestock_panel_then_it_beats_seasonal_naive_on_wql():
    df = livestock(100)  # the whole shipped panel (42 series): a global model needs a panel to learn across

    res = run_backtest({"lightgbm": GlobalBoostForecaster(12), "seasonal_naive": SeasonalNaive(12)}, df,
                       horizon=12, n_windows=2, freq="MS", season_length=12)

    board = res.leaderboard
    assert board.loc["lightgbm", "wql"] < board.loc["seasonal_naive", "wql"], board
    assert board.loc["lightgbm", "mase"] < 1.5 * board.loc["seasonal_naive", "mase"], board
    assert 0.4 < board.loc["lightgbm", "coverage_80"] <= 1.0


def test_when_the_run_params_name_lightgbm_then_its_recorded_config_recreates_the_forecaster():
    from chronos_flows.config.params import build_params
    from chronos_flows.models.families import baseline_config

    params = build_params(overrides=["lightgbm.n_estimators=50", "lightgbm.quantile_method=quantile"])
    cfg = baseline_config(params, GLOBAL_BOOST, 12)
    model = local_forecaster(GLOBAL_BOOST, cfg)

    assert cfg["n_estimators"] == 50 and cfg["quantile_method"] == "quantile" and "n_jobs" not in cfg
    assert model.settings() == cfg and GLOBAL_BOOST in params.evaluation.baselines


def test_when_the_flow_backtests_lightgbm_then_it_is_one_whole_panel_chunk_equal_to_backtesting_the_panel(prefect_api):
    from prefect import flow

    from chronos_flows.config.params import build_params
    from chronos_flows.evaluation.splits import backtest_windows
    from chronos_flows.training.specs import RunSpec
    from tasks.evaluate import backtest_baseline
    from tasks.runners import chunk_runner

    df = with_short(livestock(4), 20)
    params = build_params(overrides=["evaluation.horizon=6", "evaluation.n_windows=2", "compute.chunk_series=2",
                                     "compute.cache=false", "lightgbm.n_estimators=30", "lightgbm.conformal_windows=2"])

    @flow(name="lightgbm-backtest-test", persist_result=False)
    def backtest():
        spec = RunSpec(params=params, store=None, run_id="gb-backtest", workdir=None)
        with chunk_runner(params.compute) as runner:
            return backtest_baseline(spec, GLOBAL_BOOST, df, "MS", 12, runner)

    record = backtest()
    direct = run_backtest({GLOBAL_BOOST: local_forecaster(GLOBAL_BOOST, record.config)}, df, horizon=6,
                          n_windows=backtest_windows(params.evaluation), freq="MS", season_length=12)

    assert record.chunks == 1  # trained across all five series, not in chunks of two
    pd.testing.assert_frame_equal(record.result.leaderboard, direct.leaderboard, check_exact=True)
    assert set(record.failures) == {"short"} and record.fit_seconds > 0


def _champion_store(tmp_path, panel, doc_extra):
    from blocks.resolve import open_store
    from chronos_flows.data.ingest import to_parquet_bytes

    store = open_store(str(tmp_path / "store"))
    key = "dev/registry/ens-run/history/cleaned.parquet"
    store.put(key, to_parquet_bytes(panel))
    doc = {"run_id": "ens-run", "judged_on": {"freq": "MS", "horizon": 12},
           "needs_history": {"key": key, "reason": "a global model"}, **doc_extra}
    return store, doc


def test_when_an_ensemble_champion_has_a_lightgbm_member_then_it_is_trained_on_the_recorded_history(tmp_path, panel):
    from chronos_flows.forecasting.batch import champion_forecaster

    lgbm_cfg = {"season_length": 12, "n_estimators": 50}
    store, doc = _champion_store(tmp_path, panel, {"family": "ensemble", "config": {"members": [
        {"family": GLOBAL_BOOST, "weight": 0.5, "config": lgbm_cfg},
        {"family": "seasonal_naive", "weight": 0.5, "config": {"season_length": 12}}]}})

    model = champion_forecaster(store, "dev", doc, tmp_path / "work")
    got = model.forecast(panel, 12, "MS").frame

    member = dict(model.members)[GLOBAL_BOOST]
    assert member.fitted and member.fit_info["n_series"] == panel["unique_id"].nunique()
    alone = GlobalBoostForecaster(12, n_estimators=50).forecast(panel, 12, "MS").frame
    naive = SeasonalNaive(12).forecast(panel, 12, "MS").frame
    np.testing.assert_allclose(got["mean"].to_numpy(), 0.5 * alone["mean"].to_numpy() + 0.5 * naive["mean"].to_numpy())


def test_when_the_history_a_lightgbm_champion_needs_is_missing_then_loading_it_fails_naming_the_key(tmp_path, panel):
    from chronos_flows.core.errors import ChronosFlowsError
    from chronos_flows.forecasting.batch import champion_forecaster

    store, doc = _champion_store(tmp_path, panel, {"family": GLOBAL_BOOST, "config": {"season_length": 12}})
    store.delete(doc["needs_history"]["key"])

    with pytest.raises(ChronosFlowsError, match="history/cleaned.parquet"):
        champion_forecaster(store, "dev", doc, tmp_path / "work")


def test_when_a_champion_entry_holds_lightgbm_alone_or_in_an_ensemble_then_it_needs_history():
    from chronos_flows.champion.promotion import needs_history

    assert needs_history({"family": GLOBAL_BOOST})
    assert needs_history({"family": "ensemble", "config": {"members": [{"family": "theta"}, {"family": GLOBAL_BOOST}]}})
    assert not needs_history({"family": "ensemble", "config": {"members": [{"family": "theta"}, {"family": "chronos"}]}})
    assert not needs_history({"family": "autoets"}) and not needs_history({"family": "chronos"})


def test_when_a_lightgbm_champion_is_packaged_for_an_endpoint_then_the_package_holds_its_history(tmp_path, panel):
    import tarfile

    from chronos_flows.champion.package import build_package, model_prefixes

    store, doc = _champion_store(tmp_path, panel, {"family": GLOBAL_BOOST, "config": {"season_length": 12}})

    manifest = build_package(store, "dev", doc, tmp_path / "model.tar.gz")

    assert model_prefixes("dev", doc) == ["dev/registry/ens-run/history"] == manifest["models"]
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        assert doc["needs_history"]["key"] in tar.getnames()
    assert model_prefixes("dev", {"family": "theta", "run_id": "r"}) == []


# ------------------------------------------------------------------------------ end to end
E2E = [
    "evaluation.horizon=8",
    "evaluation.n_windows=2",
    "evaluation.ensemble=false",
    "evaluation.baselines=[lightgbm]",
    "lightgbm.n_estimators=50",
    "lightgbm.conformal_windows=2",
    "chronos.context_length=64",
    "chronos.max_steps=5",
    "chronos.batch_size=8",
    "chronos.eval_every=5",
    "chronos.checkpoint_every=5",
]


def test_when_a_run_is_forced_to_crown_lightgbm_then_the_champion_forecasts_in_batch_and_serves(prefect_api, tmp_path, monkeypatch):
    from blocks.resolve import open_store
    from chronos_flows.champion import promotion
    from chronos_flows.config.params import build_params
    from chronos_flows.core import layout
    from chronos_flows.serving import load_champion, parse_request, predict
    from chronos_flows.config.params import ForecastParams
    from chronos_flows.data.ingest import from_parquet_bytes
    from chronos_flows.forecasting.batch import champion_forecaster
    from flows.forecast import chronos_forecast
    from flows.training import chronos_training

    real = promotion.candidates
    monkeypatch.setattr(promotion, "candidates", lambda params, result: {
        k: v for k, v in real(params, result).items() if k == GLOBAL_BOOST})  # the family forced
    store_dir = tmp_path / "store"
    summary = chronos_training(params=build_params(overrides=E2E, store=str(store_dir), run_id="gb-run"))

    assert summary["status"] == "succeeded", summary
    store = open_store(str(store_dir))
    doc = json.loads(store.get(layout.champion_key("dev"))[0])
    assert doc["family"] == GLOBAL_BOOST and doc["run_id"] == "gb-run"
    assert doc["config"]["n_estimators"] == 50 and doc["config"]["season_length"] == 52
    history = doc["needs_history"]
    assert store.get(history["key"]) is not None and "global model" in history["reason"]
    board = pd.read_csv(store.uri(f"{layout.evaluation_prefix('dev', 'gb-run')}/leaderboard.csv").removeprefix("file://"))
    row = board.set_index(board.columns[0]).loc[GLOBAL_BOOST]
    assert np.isfinite(row["wql"]) and np.isfinite(row["mase"])
    log = json.loads(store.get(layout.training_log_key("dev", "gb-run"))[0])
    assert log["phases"][GLOBAL_BOOST] > 0  # its fit time is in the phase log

    # batch forecast from the champion: trained on the panel it was judged on, applied to the batch's data
    record = chronos_forecast(params=ForecastParams(store=str(store_dir), forecast_id="fc-gb", horizon=8))
    assert record["counts"]["rows"] == 8 and record["champion"]["family"] == GLOBAL_BOOST
    frame = pd.read_parquet(store.uri(f"{layout.forecasts_prefix('dev', 'fc-gb')}/forecasts.parquet").removeprefix("file://"))
    assert len(frame) == 8 and np.isfinite(frame["mean"]).all()
    assert (np.diff(frame[["0.1", "0.5", "0.9"]].to_numpy(), axis=1) >= 0).all()
    cleaned = from_parquet_bytes(store.get(history["key"])[0])[["unique_id", "ds", "y"]]
    direct = champion_forecaster(store, "dev", doc, tmp_path / "direct").forecast(cleaned, 8, "W-MON").frame
    np.testing.assert_allclose(frame["mean"].to_numpy(), direct["mean"].to_numpy(), rtol=1e-9)

    # the endpoint's loader trains it on that history once; a request is a new series it is applied to
    loaded = load_champion(store, "dev", doc, "etag", tmp_path / "serve")
    assert loaded.model.fitted and loaded.lock is not None  # trained once at load; one call at a time
    gas = pd.read_csv(REPO / "data" / "us_gasoline.csv", parse_dates=["ds"])
    body = {"inputs": [{"target": gas["y"].tolist()[-300:], "start": str(gas["ds"].iloc[-300].date())}],
            "parameters": {"prediction_length": 8, "freq": "W-MON", "quantile_levels": [0.1, 0.5, 0.9]}}
    out = predict(loaded, parse_request(body))
    pred = out["predictions"][0]
    assert len(pred["mean"]) == 8 and np.isfinite(pred["mean"]).all()
    assert all(lo <= hi for lo, hi in zip(pred["0.1"], pred["0.9"]))
