"""Backtest windows on the shipped data: boundaries, context/actual split, short-series errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chronos_flows.core.errors import BadInputError
from chronos_flows.evaluation.windows import backtest_cutoffs, split_window

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def gasoline() -> pd.DataFrame:
    return pd.read_csv(DATA / "us_gasoline.csv", parse_dates=["ds"])


@pytest.fixture(scope="module")
def livestock() -> pd.DataFrame:
    return pd.read_csv(DATA / "aus_livestock.csv", parse_dates=["ds"])


def test_when_gasoline_backtested_then_the_final_window_is_the_last_26_weeks(gasoline):
    cut = backtest_cutoffs(gasoline, horizon=26, n_windows=1)
    assert len(cut) == 1
    row = cut.iloc[0]
    ds = gasoline["ds"]
    assert row["test_end"] == ds.iloc[-1] == pd.Timestamp("2017-01-16")
    assert row["test_start"] == ds.iloc[-26]
    assert row["cutoff"] == ds.iloc[-27]
    assert row["n_context"] == len(gasoline) - 26


def test_when_rolling_windows_requested_then_cutoffs_step_back_by_step(gasoline):
    cut = backtest_cutoffs(gasoline, horizon=26, n_windows=4, step=13)
    ds = gasoline["ds"].reset_index(drop=True)
    n = len(ds)
    assert list(cut["window"]) == [0, 1, 2, 3]
    for _, row in cut.iterrows():
        back = (3 - row["window"]) * 13
        assert row["cutoff"] == ds[n - 27 - back]
        assert row["test_start"] == ds[n - 26 - back]
        assert row["test_end"] == ds[n - 1 - back]
        assert row["n_context"] == n - 26 - back
    # consecutive cutoffs are 13 weeks apart; windows overlap by 13 weeks
    assert (cut["cutoff"].diff().dropna() == pd.Timedelta(weeks=13)).all()


def test_when_a_window_is_split_then_context_ends_at_the_cutoff_and_actuals_fill_the_horizon(gasoline):
    cut = backtest_cutoffs(gasoline, horizon=26, n_windows=3, step=26)
    for w in range(3):
        context, actuals = split_window(gasoline, cut[cut["window"] == w])
        row = cut[cut["window"] == w].iloc[0]
        assert context["ds"].max() == row["cutoff"] and len(context) == row["n_context"]
        assert len(actuals) == 26
        assert actuals["ds"].min() == row["test_start"] and actuals["ds"].max() == row["test_end"]
        assert context["ds"].max() < actuals["ds"].min()
    # a single row (one series) works too
    context, actuals = split_window(gasoline, cut.iloc[0])
    assert len(actuals) == 26


def test_when_series_end_at_different_dates_then_each_gets_its_own_final_window(livestock):
    ids = livestock["unique_id"].unique()[:3]
    panel = livestock[livestock["unique_id"].isin(ids)]
    # drop the last 5 months of one series: its final window must end 5 months earlier
    shorter = panel[~((panel["unique_id"] == ids[1]) & (panel["ds"] > panel["ds"].max() - pd.DateOffset(months=5)))]
    cut = backtest_cutoffs(shorter, horizon=12, n_windows=2, step=6)
    last = shorter.groupby("unique_id")["ds"].max()
    final = cut[cut["window"] == 1].set_index("unique_id")
    assert (final["test_end"] == last.reindex(final.index)).all()
    assert final.loc[ids[1], "test_end"] == panel["ds"].max() - pd.DateOffset(months=5)
    context, actuals = split_window(shorter, cut[cut["window"] == 0])
    assert actuals.groupby("unique_id").size().eq(12).all()
    assert set(context["unique_id"]) == set(ids)


def test_when_a_series_is_too_short_then_the_error_names_it(livestock):
    ids = livestock["unique_id"].unique()[:2]
    panel = livestock[livestock["unique_id"].isin(ids)]
    tiny = pd.DataFrame({"unique_id": "tiny-series", "ds": pd.date_range("2018-01-01", periods=20, freq="MS"), "y": 1.0})
    with pytest.raises(BadInputError, match="tiny-series.*20 points") as err:
        backtest_cutoffs(pd.concat([panel, tiny]), horizon=12, n_windows=2, step=6, min_context=4)
    assert "n_windows" in str(err.value)


def test_when_a_window_spec_lists_a_series_twice_then_split_refuses(gasoline):
    cut = backtest_cutoffs(gasoline, horizon=26, n_windows=2)
    with pytest.raises(BadInputError, match="more than once"):
        split_window(gasoline, cut)


def test_when_columns_are_missing_then_the_error_names_them(gasoline):
    with pytest.raises(BadInputError, match=r"\['y'\]"):
        backtest_cutoffs(gasoline.rename(columns={"y": "value"}), horizon=4)


# ------------------------------------------------------------------ utilsforecast's backtest_splits


def _aligned_panel(ends: dict[str, str], n: int = 30) -> pd.DataFrame:
    parts = [pd.DataFrame({"unique_id": uid, "ds": pd.date_range(end=end, periods=n, freq="W-MON"),
                           "y": np.arange(n, dtype=float) + i}) for i, (uid, end) in enumerate(ends.items())]
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("ends", [
    {"a": "2024-06-03", "b": "2024-06-03", "c": "2024-06-03"},   # aligned
    {"early": "2024-01-01", "mid": "2024-03-04", "late": "2024-06-03"},  # each series its own last date
])
def test_when_series_are_regular_then_the_windows_equal_utilsforecast_backtest_splits(ends):
    """utilsforecast's ``backtest_splits`` is the reference. The windows here stay positional (no
    frequency needed, ``n_context`` per window for the report): on the regular series cleaning
    produces, position and date arithmetic are the same thing."""
    from utilsforecast.processing import backtest_splits

    df = _aligned_panel(ends)
    cuts = backtest_cutoffs(df, horizon=4, n_windows=3, step=2)
    theirs = list(backtest_splits(df, n_windows=3, h=4, id_col="unique_id", time_col="ds", freq="W-MON", step_size=2))
    assert len(theirs) == 3
    for w, (cutoffs, train, valid) in enumerate(theirs):  # chronological, like ours
        mine = cuts[cuts.window == w]
        context, actuals = split_window(df, mine)
        pd.testing.assert_frame_equal(context, train.sort_values(["unique_id", "ds"]).reset_index(drop=True)[context.columns])
        pd.testing.assert_frame_equal(actuals, valid.sort_values(["unique_id", "ds"]).reset_index(drop=True)[actuals.columns])
        got = dict(zip(cutoffs["unique_id"], pd.to_datetime(cutoffs["cutoff"])))
        assert got == dict(zip(mine["unique_id"], mine["cutoff"]))
