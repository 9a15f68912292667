"""The forecaster interface: ``forecast`` returns the frame and the series a family could not
forecast, with the reason — the one way callers learn of per-series failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chronos_flows.models.base import Forecast
from chronos_flows.models.families import local_forecaster


def _panel() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    good = pd.DataFrame({"unique_id": "good", "ds": pd.date_range("2020-01-01", periods=40, freq="MS"),
                         "y": 10 + rng.normal(0, 1, 40)})
    short = pd.DataFrame({"unique_id": "short", "ds": pd.date_range("2020-01-01", periods=3, freq="MS"), "y": [1.0, 2.0, 3.0]})
    return pd.concat([good, short], ignore_index=True)


@pytest.mark.parametrize("family,config", [
    ("autoets", {"season_length": 4, "model": "ZZZ", "damped": None}),
    ("theta", {"season_length": 4, "decomposition_type": "multiplicative", "model": None}),
    ("lightgbm", {"season_length": 4, "conformal_windows": 2, "n_estimators": 20}),
])
def test_when_a_series_cannot_be_forecast_then_forecast_names_it_with_the_reason_and_the_rest_are_forecast(family, config):
    model = local_forecaster(family, config, n_jobs=1)
    got = model.forecast(_panel(), 4, "MS", (0.1, 0.5, 0.9))
    assert isinstance(got, Forecast)
    assert set(got.frame["unique_id"]) == {"good"} and len(got.frame) == 4
    assert list(got.failures) == ["short"] and got.failures["short"]


def test_when_every_series_is_forecast_then_failures_are_empty_and_a_later_call_does_not_inherit_them():
    model = local_forecaster("autoets", {"season_length": 4, "model": "ZZZ", "damped": None}, n_jobs=1)
    assert model.forecast(_panel(), 4, "MS", (0.5,)).failures
    good = _panel().query("unique_id == 'good'")
    again = model.forecast(good, 4, "MS", (0.5,))
    assert dict(again.failures) == {} and set(again.frame["unique_id"]) == {"good"}
