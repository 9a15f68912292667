"""The local statsforecast families backtest every window in one ``cross_validation`` call: the same
forecasts, failures and scores as one ``forecast`` per window, and the window-by-window path stays
for what that call cannot do (missing values, irregular windows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chronos_flows.evaluation.backtest import run_backtest
from chronos_flows.evaluation.windows import backtest_cutoffs, split_window
from chronos_flows.models.families import local_forecaster
from tests.conftest import livestock as livestock_series

CONFIGS = {
    "autoets": {"season_length": 12, "model": "ZZZ", "damped": None},
    "theta": {"season_length": 12, "decomposition_type": "multiplicative", "model": None},
}


@pytest.fixture(scope="module")
def livestock() -> pd.DataFrame:
    return livestock_series(6)


class OneWindowAtATime:
    """The same forecaster with the one-call path switched off (the reference)."""

    def __init__(self, inner):
        self.inner = inner

    def forecast(self, *args, **kwargs):
        return self.inner.forecast(*args, **kwargs)

    def forecast_windows(self, *args, **kwargs):
        return None


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_when_all_windows_are_forecast_in_one_call_then_each_equals_its_own_window_forecast(livestock, family):
    model = local_forecaster(family, CONFIGS[family], n_jobs=2)
    cutoffs = backtest_cutoffs(livestock, 12, 3, 6, min_context=2)
    at_once = model.forecast_windows(livestock, cutoffs, 12, 6, "MS")
    assert at_once is not None and sorted(at_once) == [0, 1, 2]
    for w in range(3):
        context, _ = split_window(livestock, cutoffs[cutoffs["window"] == w])
        alone = model.forecast(context, 12, "MS")
        pd.testing.assert_frame_equal(at_once[w].frame, alone.frame.reset_index(drop=True), check_dtype=False)
        assert dict(at_once[w].failures) == dict(alone.failures)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_when_the_backtest_uses_the_one_call_path_then_its_scores_equal_the_window_by_window_ones(livestock, family):
    model = local_forecaster(family, CONFIGS[family], n_jobs=1)
    kw = dict(horizon=12, n_windows=3, freq="MS", season_length=12)
    fast = run_backtest({family: model}, livestock, **kw)
    slow = run_backtest({family: OneWindowAtATime(model)}, livestock, **kw)
    pd.testing.assert_frame_equal(fast.metrics, slow.metrics)
    pd.testing.assert_frame_equal(fast.forecasts, slow.forecasts)
    assert fast.failures == slow.failures

def test_when_a_series_has_a_missing_value_then_the_backtest_goes_window_by_window(livestock):
    model = local_forecaster("theta", CONFIGS["theta"], n_jobs=1)
    holed = livestock.copy()
    holed.loc[5, "y"] = np.nan
    cutoffs = backtest_cutoffs(holed, 12, 2, 12, min_context=2)
    assert model.forecast_windows(holed, cutoffs, 12, 12, "MS") is None


def test_when_a_series_cannot_be_fitted_in_a_window_then_its_failure_names_the_window_and_the_others_are_scored():
    rng = np.random.default_rng(0)
    ds = pd.date_range("2010-01-01", periods=60, freq="MS")
    good = pd.DataFrame({"unique_id": "good", "ds": ds, "y": 100 + 10 * np.sin(np.arange(60) * np.pi / 6) + rng.normal(0, 1, 60)})
    bad = good.assign(unique_id="bad")
    bad.loc[50, "y"] = 1e300  # in the context of window 1 only: no Theta variant fits it there
    df = pd.concat([good, bad], ignore_index=True)
    model = local_forecaster("theta", CONFIGS["theta"], n_jobs=1)
    fast = run_backtest({"theta": model}, df, horizon=6, n_windows=2, freq="MS", season_length=12)
    slow = run_backtest({"theta": OneWindowAtATime(model)}, df, horizon=6, n_windows=2, freq="MS", season_length=12)
    assert fast.failures == slow.failures == {"theta": {"bad": "window 1: Exception: no model able to be fitted"}}
    assert fast.metrics[["unique_id", "window"]].values.tolist() == [["bad", 0], ["good", 0], ["good", 1]]
