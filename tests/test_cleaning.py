"""clean / season_length / infer_frequency / CleaningReport."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from statsmodels.tsa.seasonal import STL

from chronos_flows.data.cleaning import CleaningReport, clean, infer_frequency
from chronos_flows.data.frequency import normalize_freq, season_length
from chronos_flows.config.params import DEFAULT_DATA, CleaningConfig, DataConfig
from chronos_flows.core.errors import BadInputError
from chronos_flows.data.ingest import load_dataset

SPIKES = {300: 3.0, 700: -2.5, 1100: 3.5}


@pytest.fixture(scope="module")
def gasoline() -> pd.DataFrame:
    return load_dataset(str(DEFAULT_DATA), DataConfig())


def frame(series: dict[str, tuple[str, list[float]]], freq: str = "D") -> pd.DataFrame:
    """{id: (start, values)} → long frame on a regular ``freq`` grid."""
    parts = [
        pd.DataFrame({"unique_id": sid, "ds": pd.date_range(start, periods=len(ys), freq=freq), "y": ys})
        for sid, (start, ys) in series.items()
    ]
    return pd.concat(parts, ignore_index=True)


def run(df: pd.DataFrame, min_length: int = 3, horizon: int = 2, **cfg):
    """clean() on a small frame; outlier detection off unless asked for."""
    cfg.setdefault("outliers", "off")
    return clean(df, CleaningConfig(**cfg), min_length=min_length, horizon=horizon)


def reference_outliers(y: np.ndarray, period: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """The seed project's rule, computed directly with statsmodels."""
    fit = STL(y, period=period, robust=True).fit()
    q75, q25 = np.quantile(fit.resid, 0.75), np.quantile(fit.resid, 0.25)
    iqr = q75 - q25
    flags = np.logical_or(fit.resid > q75 + k * iqr, fit.resid < q25 - k * iqr)
    return flags, fit.trend + fit.seasonal


# ----------------------------------------------------------------------------------- shipped data
def test_when_shipped_gasoline_cleaned_then_weekly_freq_and_1355_points(gasoline):
    cleaned, report = clean(gasoline, CleaningConfig(), min_length=39, horizon=13)
    assert report.freq == "W-MON" and report.season_length == 52
    assert len(cleaned) == report.rows_out == report.rows_in == 1355
    assert list(cleaned.columns) == ["unique_id", "ds", "y", "is_outlier"]
    assert cleaned["y"].dtype == "float64" and not cleaned["y"].isna().any()
    assert cleaned["is_outlier"].dtype == bool
    pd.testing.assert_series_equal(cleaned["y"], gasoline["y"])  # "flag" never changes values
    stats = report.per_series["us_gasoline"]
    assert stats["duplicates"] == 0 and stats["gaps_filled"] == 0
    assert stats["outliers"] == int(cleaned["is_outlier"].sum())


def test_when_spikes_injected_in_gasoline_then_flagged_like_statsmodels_reference(gasoline):
    spiked = gasoline.copy()
    for pos, delta in SPIKES.items():
        spiked.loc[pos, "y"] += delta
    cleaned, report = clean(spiked, CleaningConfig(outliers="flag", outlier_method="stl_iqr", outlier_iqr_k=3.0), min_length=39, horizon=13)
    flags = cleaned["is_outlier"].to_numpy()
    assert flags[list(SPIKES)].all()
    expected, _ = reference_outliers(spiked["y"].to_numpy(), 52, 3.0)
    np.testing.assert_array_equal(flags, expected)
    assert report.per_series["us_gasoline"]["outliers"] == int(expected.sum())
    assert "STL" in report.outlier_method and "52" in report.outlier_method


def test_when_outliers_replace_then_flagged_values_become_trend_plus_seasonal(gasoline):
    spiked = gasoline.copy()
    for pos, delta in SPIKES.items():
        spiked.loc[pos, "y"] += delta
    before = spiked.copy()
    cleaned, _ = clean(spiked, CleaningConfig(outliers="replace", outlier_method="stl_iqr", outlier_max_share=1.0), min_length=39, horizon=13)
    pd.testing.assert_frame_equal(spiked, before)  # the input is not modified
    flags, fit = reference_outliers(spiked["y"].to_numpy(), 52, 3.0)
    np.testing.assert_allclose(cleaned["y"].to_numpy()[flags], fit[flags])
    np.testing.assert_array_equal(cleaned["y"].to_numpy()[~flags], spiked["y"].to_numpy()[~flags])
    for pos in SPIKES:
        assert abs(cleaned.loc[pos, "y"] - gasoline.loc[pos, "y"]) < 1.0


def test_when_outliers_off_then_nothing_flagged(gasoline):
    spiked = gasoline.copy()
    spiked.loc[300, "y"] += 5.0
    cleaned, report = clean(spiked, CleaningConfig(outliers="off"), min_length=39, horizon=13)
    assert not cleaned["is_outlier"].any() and report.outlier_method == "off"


def test_when_shipped_livestock_panel_cleaned_then_42_monthly_series():
    df = load_dataset(str(DEFAULT_DATA.with_name("aus_livestock.csv")), DataConfig())
    cleaned, report = clean(df, CleaningConfig(outlier_method="stl_iqr"), min_length=24, horizon=12)
    assert report.freq == "MS" and report.season_length == 12
    assert report.series_out == 42 and len(cleaned) == 42 * 120 and not report.dropped
    assert sum(s["outliers"] for s in report.per_series.values()) == int(cleaned["is_outlier"].sum()) > 0


# ---------------------------------------------------------------------------------- duplicates
@pytest.mark.parametrize(("rule", "value"), [("mean", 4.0), ("first", 2.0), ("last", 6.0), ("sum", 8.0)])
def test_when_duplicate_timestamps_then_combined_by_rule_and_counted(rule, value):
    df = frame({"a": ("2024-01-01", [1.0, 2.0, 3.0, 4.0]), "b": ("2024-01-01", [9.0, 9.0, 9.0])})
    dup = pd.DataFrame({"unique_id": ["a"], "ds": [pd.Timestamp("2024-01-02")], "y": [6.0]})
    cleaned, report = run(pd.concat([df, dup], ignore_index=True), duplicates=rule)
    a = cleaned[cleaned["unique_id"] == "a"].set_index("ds")["y"]
    assert a[pd.Timestamp("2024-01-02")] == value and len(a) == 4
    assert report.per_series["a"]["duplicates"] == 1 and report.per_series["b"]["duplicates"] == 0
    assert report.duplicates_resolved_rule == rule and report.rows_in == 8 and report.rows_out == 7


# ------------------------------------------------------------------------------------------ gaps
@pytest.mark.parametrize(("method", "filled"), [("interpolate", [2.0, 4.0]), ("ffill", [1.0, 3.0]), ("zero", [0.0, 0.0])])
def test_when_timestamps_missing_or_nan_then_filled_and_counted(method, filled):
    # Jan..Aug: two leading NaN, April missing entirely, June NaN, trailing August NaN.
    df = frame({"a": ("2024-01-01", [np.nan, np.nan, 1.0, 2.0, 3.0, 4.0, 5.0, np.nan])}, freq="MS")
    df = df.drop(index=3)
    df.loc[5, "y"] = np.nan
    df = pd.concat([df, frame({"b": ("2024-03-01", [5.0, 6.0, 7.0, 8.0, 9.0])}, freq="MS")], ignore_index=True)
    cleaned, report = run(df, fill_method=method, max_fill_fraction=1.0)
    assert report.freq == "MS"
    a = cleaned[cleaned["unique_id"] == "a"]
    assert a["ds"].tolist() == list(pd.date_range("2024-03-01", "2024-07-01", freq="MS"))
    assert a["y"].tolist() == [1.0, filled[0], 3.0, filled[1], 5.0]
    stats = report.per_series["a"]
    assert stats["gaps_filled"] == 2 and stats["trimmed"] == 3 and stats["rows_out"] == 5
    assert report.per_series["b"]["gaps_filled"] == 0 and report.fill_method == method


def test_when_gaps_filled_then_no_value_leaks_between_series():
    df = frame({"a": ("2024-01-01", [1.0, 1.0, 1.0, 1.0]), "b": ("2024-01-01", [100.0, np.nan, 100.0, 100.0])})
    cleaned, _ = run(df, fill_method="interpolate")
    assert (cleaned.loc[cleaned["unique_id"] == "b", "y"] == 100.0).all()


# ---------------------------------------------------------------------------------------- lengths
def test_when_series_shorter_than_min_length_then_dropped_and_reported():
    df = frame({"long": ("2024-01-01", list(range(20))), "short": ("2024-01-05", [1.0, 2.0, 3.0, 4.0])})
    cleaned, report = run(df, min_length=10, horizon=3)
    assert set(cleaned["unique_id"]) == {"long"} and report.series_in == 2 and report.series_out == 1
    assert "4 points" in report.dropped["short"] and "10" in report.dropped["short"]
    assert report.per_series["short"]["rows_out"] == 0


def test_when_no_series_reaches_min_length_then_error_lists_them():
    df = frame({"x1": ("2024-01-01", [1.0] * 5), "x2": ("2024-01-01", [2.0] * 6)})
    with pytest.raises(BadInputError) as info:
        run(df, min_length=10, horizon=3)
    assert "'x1: 5 points" in str(info.value) and "'x2: 6 points" in str(info.value)


def test_when_one_series_is_shorter_than_horizon_plus_one_then_it_is_dropped_with_the_reason_and_the_rest_go_on():
    df = frame({"ok": ("2024-01-01", list(range(30))), "tiny": ("2024-01-01", [1.0, 2.0, 3.0, 4.0])})
    cleaned, report = run(df, min_length=3, horizon=4)
    assert set(cleaned["unique_id"]) == {"ok"}
    assert report.dropped == {"tiny": "4 points after cleaning < minimum length 5 (horizon 4 + 1)"}
    assert any("1 of 2 series dropped" in w for w in report.warnings)


def test_when_a_series_has_a_single_point_or_is_blank_then_only_it_is_dropped():
    df = frame({"ok": ("2024-01-01", list(range(30))), "one": ("2024-01-01", [7.0]),
                "blank": ("2024-01-01", [np.nan] * 30)})
    cleaned, report = run(df, min_length=5, horizon=2)
    assert set(cleaned["unique_id"]) == {"ok"}
    assert report.dropped["blank"] == "blank: no values"
    assert report.dropped["one"].startswith("1 points after cleaning < minimum length 5")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, 1e308])
def test_when_a_series_holds_non_finite_or_absurd_values_then_it_is_dropped_and_reported(bad):
    df = frame({"ok": ("2024-01-01", list(range(30))), "bad": ("2024-01-01", [1.0] * 29 + [bad])})
    cleaned, report = run(df, min_length=5, horizon=2)
    assert set(cleaned["unique_id"]) == {"ok"}
    assert "1 non-finite or absurd value(s)" in report.dropped["bad"]
    assert any("|y| >= 1e+30" in n for n in report.notes)


def test_when_a_series_would_be_mostly_filled_then_it_is_dropped_with_the_fill_share():
    ys = [1.0, np.nan, np.nan, np.nan, 5.0, np.nan, np.nan, 8.0] + list(range(9, 31))
    df = frame({"ok": ("2024-01-01", list(range(30))), "holey": ("2024-01-01", [float(v) for v in ys])})
    df = df[df["y"].notna() | (df["unique_id"] == "ok")]
    df = df.sample(frac=1.0, random_state=0)  # shuffled rows: sorting is a normalisation
    cleaned, report = run(df, min_length=5, horizon=2, max_fill_fraction=0.1, freq="D")
    assert set(cleaned["unique_id"]) == {"ok"}
    assert report.dropped["holey"] == "5 of 30 points (17%) would be filled > cleaning.max_fill_fraction 0.1"
    assert "rows were not in (series, time) order: sorted" in report.notes
    kept, report2 = run(df, min_length=5, horizon=2, max_fill_fraction=0.2, freq="D")
    assert set(kept["unique_id"]) == {"ok", "holey"} and report2.dropped == {}
    assert any(w.startswith("heavy repair: 5 of 60 points (8%) were filled") for w in report2.warnings)
    assert "heavy repair" in report2.to_markdown()


def test_when_weekly_rows_are_mixed_with_daily_ones_then_the_ambiguous_frequency_is_refused_naming_the_spacings():
    weekly = pd.date_range("2020-01-06", periods=150, freq="W-MON")
    daily = pd.date_range("2023-01-02", periods=50, freq="D")
    df = pd.DataFrame({"unique_id": "mix", "ds": weekly.append(daily), "y": np.arange(200, dtype=float)})
    with pytest.raises(BadInputError) as info:
        run(df, min_length=5, horizon=2)
    message = str(info.value)
    assert "ambiguous frequency" in message and "7×D" in message and "1×D" in message and "cleaning.freq" in message
    cleaned, report = run(df[df["ds"] < "2023-01-01"], min_length=5, horizon=2)  # the weekly part alone is fine
    assert report.freq == "W-MON"


def test_when_duplicates_are_combined_then_the_report_says_so():
    df = frame({"a": ("2024-01-01", list(range(10)))})
    df = pd.concat([df, df.iloc[[2]]], ignore_index=True)
    _, report = run(df, min_length=5, horizon=2)
    assert "1 duplicate (series, timestamp) rows combined by mean" in report.notes


# ------------------------------------------------------------------------------------- frequency
def test_when_series_frequencies_disagree_then_error_names_series_and_cleaning_freq():
    daily = frame({"d": ("2024-01-01", list(range(10)))}, freq="D")
    weekly = frame({"w": ("2024-01-01", list(range(10)))}, freq="W-MON")
    with pytest.raises(BadInputError) as info:
        run(pd.concat([daily, weekly]))
    message = str(info.value)
    assert "'d'" in message and "'w'" in message and "cleaning.freq" in message


def test_when_timestamps_irregular_then_error_names_series_and_cleaning_freq():
    df = pd.DataFrame(
        {
            "unique_id": "odd",
            "ds": [pd.Timestamp(t) for t in ("2024-01-01", "2024-01-02", "2024-01-04", "2024-01-09", "2024-01-10 05:00")],
            "y": 1.0,
        }
    )
    with pytest.raises(BadInputError) as info:
        run(df)
    assert "'odd'" in str(info.value) and "cleaning.freq" in str(info.value)


def test_when_explicit_freq_does_not_match_timestamps_then_error_names_series():
    df = frame({"sundays": ("2024-01-07", list(range(10)))}, freq="W-SUN")
    with pytest.raises(BadInputError) as info:
        run(df, freq="W-MON")
    assert "'sundays'" in str(info.value) and "W-MON" in str(info.value)


def test_when_freq_not_a_pandas_alias_then_error_names_setting():
    with pytest.raises(BadInputError) as info:
        run(frame({"a": ("2024-01-01", [1.0] * 5)}), freq="fortnightly")
    assert "fortnightly" in str(info.value) and "cleaning.freq" in str(info.value)


def test_when_series_have_gaps_then_frequency_still_inferred():
    df = frame({"a": ("2020-01-01", list(range(40)))}, freq="MS").drop(index=[5, 6, 20])
    df = pd.concat([df, frame({"b": ("2021-04-01", list(range(12)))}, freq="MS")])
    assert infer_frequency(df) == "MS"


def test_when_quarterly_series_start_in_different_months_then_one_frequency():
    df = pd.concat([frame({"jan": ("2020-01-01", list(range(8)))}, "QS-JAN"), frame({"apr": ("2020-04-01", list(range(8)))}, "QS-APR")])
    assert infer_frequency(df) == "QS-JAN"
    cleaned, report = run(df)
    assert report.season_length == 4 and len(cleaned) == 16


@pytest.mark.parametrize(
    ("freq", "season"),
    [("W", 52), ("W-MON", 52), ("2W-SUN", 26), ("D", 7), ("B", 5), ("h", 24), ("H", 24), ("30min", 48),
     ("15min", 96), ("MS", 12), ("ME", 12), ("M", 12), ("QS-OCT", 4), ("QE", 4), ("Q", 4), ("YS", 1),
     ("YE", 1), ("A", 1), ("Y", 1), ("3ME", 4)],
)  # fmt: skip
def test_when_frequency_given_then_season_length_from_offset(freq, season):
    assert season_length(freq) == season


def test_when_old_aliases_normalised_then_current_pandas_spelling():
    assert [normalize_freq(f) for f in ["M", "W", "A-DEC", "H", "QS-OCT"]] == ["ME", "W-SUN", "YE-DEC", "h", "QS-JAN"]


def test_when_seasonal_period_set_then_it_overrides_the_frequency_default(gasoline):
    _, report = clean(gasoline, CleaningConfig(seasonal_period=13, outliers="off"), min_length=39, horizon=13)
    assert report.season_length == 13 and report.freq == "W-MON"


# ------------------------------------------------------------------------------------ outliers
def test_when_series_too_short_for_stl_then_detection_skipped_and_reported():
    rng = np.random.default_rng(0)
    df = frame({"short": ("2020-01-01", list(10 + rng.normal(size=30)))}, freq="MS")
    cleaned, report = clean(df, CleaningConfig(outliers="flag"), min_length=10, horizon=3)
    assert not cleaned["is_outlier"].any() and "seasons" in report.outlier_skipped["short"]


def test_when_spike_in_monthly_panel_series_then_only_that_point_flagged_there():
    t = np.arange(120)
    base = 100 + 10 * np.sin(2 * np.pi * t / 12) + 0.1 * t
    noisy = base + np.random.default_rng(1).normal(scale=1.0, size=120)
    spiked = noisy.copy()
    spiked[60] += 40
    df = frame({"clean": ("2010-01-01", list(noisy)), "spiked": ("2010-01-01", list(spiked))}, freq="MS")
    cleaned, report = clean(df, CleaningConfig(outliers="flag", outlier_method="stl_iqr"), min_length=24, horizon=12)
    got = cleaned[cleaned["unique_id"] == "spiked"]["is_outlier"].to_numpy()
    assert got[60]
    np.testing.assert_array_equal(got, reference_outliers(spiked, 12, 3.0)[0])
    np.testing.assert_array_equal(
        cleaned[cleaned["unique_id"] == "clean"]["is_outlier"].to_numpy(), reference_outliers(noisy, 12, 3.0)[0]
    )


# -------------------------------------------------------------------------------------- report
def test_when_report_serialised_then_json_round_trips_and_markdown_names_series():
    df = frame({"a": ("2024-01-01", [1.0, np.nan, 3.0, 4.0, 5.0]), "b": ("2024-01-01", [1.0] * 5)})
    _, report = run(df)
    data = json.loads(json.dumps(report.to_dict()))
    assert CleaningReport.model_validate(data) == report
    assert data["per_series"]["a"]["gaps_filled"] == 1 and data["freq"] == "D"
    md = report.to_markdown()
    assert "| a |" in md and "`D`" in md and "gaps filled" in md
    with pytest.raises(ValidationError):
        report.freq = "W"  # frozen


def test_when_frame_lacks_columns_then_error_names_them():
    with pytest.raises(BadInputError) as info:
        run(pd.DataFrame({"ds": [], "value": []}))
    assert "unique_id" in str(info.value) and "'y'" in str(info.value)


def test_when_panel_of_300_monthly_series_cleaned_then_it_takes_seconds():
    rng = np.random.default_rng(2)
    n, length = 300, 72
    ds = pd.date_range("2015-01-01", periods=length, freq="MS")
    season = 10 * np.sin(2 * np.pi * np.arange(length) / 12)
    df = pd.DataFrame(
        {
            "unique_id": np.repeat([f"s{i:03d}" for i in range(n)], length),
            "ds": np.tile(ds, n),
            "y": np.tile(season, n) + rng.normal(size=n * length),
        }
    )
    df = df.drop(index=rng.choice(len(df), 900, replace=False))
    start = time.perf_counter()
    cleaned, report = clean(df, CleaningConfig(outliers="flag"), min_length=26, horizon=13)
    elapsed = time.perf_counter() - start
    assert report.series_out == n and report.freq == "MS" and not report.outlier_skipped
    assert report.rows_out == len(cleaned) == report.rows_in + report.totals()["gaps_filled"]
    # ≈2.5 s on an idle 2-core machine; the bound leaves room for a loaded CI box.
    assert elapsed < 20.0, f"cleaning 300 monthly series took {elapsed:.1f}s"


def test_when_a_wide_file_has_two_blank_columns_then_those_series_are_dropped_and_the_rest_cleaned(tmp_path):
    from chronos_flows.config.params import DataConfig
    from chronos_flows.data.ingest import load_dataset

    dates = pd.date_range("2024-01-01", periods=40, freq="D")
    wide = pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "a": np.arange(40.0), "empty1": "", "b": np.arange(40.0) * 2, "empty2": ""})
    path = tmp_path / "wide.csv"
    wide.to_csv(path, index=False)
    df = load_dataset(str(path), DataConfig(layout="wide", timestamp_column="date"))
    cleaned, report = run(df, min_length=5, horizon=2)
    assert set(cleaned["unique_id"]) == {"a", "b"}
    assert report.dropped == {"empty1": "blank: no values", "empty2": "blank: no values"}
