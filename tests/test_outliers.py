"""The default ('robust') outlier rule: log scale where the swing grows, local scale, first season
never flagged, intermittent series skipped, ``replace`` capped; the seed's rule stays available."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chronos_flows.config.params import DEFAULT_DATA, CleaningConfig, DataConfig
from chronos_flows.data.cleaning import (
    clean,
    detect_outliers,
    outlier_skip_reason,
    robust_outliers,
    stl_outliers,
    swing_grows_with_level,
)
from chronos_flows.data.ingest import load_dataset


def growing_seasonal(n: int = 144, seed: int = 0) -> np.ndarray:
    """Monthly, level x4 over the history, seasonal swing proportional to the level, 3 % noise."""
    t = np.arange(n)
    level = 100 * np.exp(np.log(4) * t / n)
    rng = np.random.default_rng(seed)
    return level * (1 + 0.3 * np.sin(2 * np.pi * t / 12)) * (1 + 0.03 * rng.standard_normal(n))


def frame(ys: dict[str, np.ndarray], freq: str = "MS") -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"unique_id": k, "ds": pd.date_range("2000-01-01", periods=len(v), freq=freq), "y": v})
                      for k, v in ys.items()], ignore_index=True)


def test_when_a_clean_seasonal_series_has_a_growing_swing_then_almost_nothing_is_flagged_and_the_seed_flags_more():
    rates, seed_rates = [], []
    for seed in range(5):
        y = growing_seasonal(seed=seed)
        found = robust_outliers(y, 12, 4.5)
        assert found.log_scale
        rates.append(found.flags.mean())
        seed_rates.append(stl_outliers(y, 12, 3.0)[0].mean())
    assert max(rates) <= 0.01, rates
    assert np.mean(seed_rates) > np.mean(rates)


def test_when_spikes_are_injected_then_they_are_found_at_their_positions():
    y = growing_seasonal(seed=1)
    spiked = y.copy()
    positions = [20, 61, 100, 140]
    for p, sign in zip(positions, [1, -1, 1, -1]):
        spiked[p] *= 1 + sign * 0.25  # ~8 noise SDs on the log scale
    flags = robust_outliers(spiked, 12, 4.5).flags
    assert flags[positions].all()
    assert set(np.flatnonzero(flags)) - set(positions) == set() or flags.sum() <= len(positions) + 1


def test_when_a_spike_falls_in_the_first_season_then_it_is_not_flagged():
    y = growing_seasonal(seed=2)
    y[5] *= 2
    assert not robust_outliers(y, 12, 4.5).flags[:12].any()


def test_when_noise_triples_in_the_second_half_then_the_calm_half_spike_is_found_and_far_fewer_noisy_points_flagged():
    ours = seeds = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        t = np.arange(240)
        y = 50 + 5 * np.sin(2 * np.pi * t / 12) + np.where(t < 120, 1.0, 3.0) * rng.standard_normal(240)
        y[60] += 7.0  # 7 SDs of the calm half, ordinary noise in the other
        found = robust_outliers(y, 12, 4.5)
        assert not found.log_scale and found.flags[60]
        ours += int(found.flags[120:].sum())
        seeds += int(stl_outliers(y, 12, 3.0)[0][120:].sum())
    # the whole-history IQR flags 16-30 ordinary points of each noisy half; the local scale a few
    assert ours <= seeds / 4, (ours, seeds)


def test_when_a_series_is_positive_with_constant_swing_then_it_is_decomposed_additively():
    t = np.arange(120)
    y = 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(4).normal(size=120)
    assert not swing_grows_with_level(y, 12)
    assert swing_grows_with_level(growing_seasonal(), 12)
    assert not swing_grows_with_level(growing_seasonal() - 500, 12)  # not positive
    near_zero = growing_seasonal() * np.where(np.arange(144) % 12 == 3, 0.05, 1.0)  # dips to 1/20 of the level
    assert near_zero.min() < 0.3 * np.median(near_zero) and not swing_grows_with_level(near_zero, 12)


def test_when_a_series_is_intermittent_then_the_robust_rule_skips_it_and_says_why():
    y = np.zeros(120)
    y[::4] = 5.0
    why = outlier_skip_reason(y, 12, "MS", CleaningConfig())
    assert why is not None and "intermittent" in why
    assert outlier_skip_reason(y, 12, "MS", CleaningConfig(outlier_method="stl_iqr")) is None
    _, report = clean(frame({"spiky": y}), CleaningConfig(), min_length=24, horizon=12)
    assert "intermittent" in report.outlier_skipped["spiky"]


def test_when_the_seed_rule_is_chosen_then_detect_outliers_is_exactly_stl_iqr():
    y = growing_seasonal(seed=5)
    expected, fit = stl_outliers(y, 12, 3.0)
    got = detect_outliers(y, 12, CleaningConfig(outlier_method="stl_iqr"))
    np.testing.assert_array_equal(got.flags, expected)
    np.testing.assert_allclose(got.fit, fit)


def test_when_replace_would_rewrite_more_than_the_cap_then_the_series_is_kept_and_reported():
    y = growing_seasonal(seed=6)
    spiked = y.copy()
    spiked[[30, 50, 70, 90, 110]] *= 1.5
    df = frame({"a": spiked})
    cfg = CleaningConfig(outliers="replace", outlier_max_share=0.01)
    cleaned, report = clean(df, cfg, min_length=24, horizon=12)
    np.testing.assert_array_equal(cleaned["y"].to_numpy(), spiked)  # not rewritten
    assert cleaned["is_outlier"].sum() >= 5
    assert "outlier_max_share" in report.outlier_not_replaced["a"]
    assert any("not rewritten" in w for w in report.warnings)
    cleaned2, report2 = clean(df, cfg.model_copy(update={"outlier_max_share": 0.05}), min_length=24, horizon=12)
    assert not report2.outlier_not_replaced
    flagged = cleaned2["is_outlier"].to_numpy()
    assert np.all(np.abs(cleaned2["y"].to_numpy()[flagged] / y[flagged] - 1) < 0.15)  # back near the clean value


def test_when_the_shipped_livestock_panel_is_cleaned_then_the_default_flags_far_fewer_points_than_the_seed():
    df = load_dataset(str(DEFAULT_DATA.with_name("aus_livestock.csv")), DataConfig())
    rates = {}
    for method in ("robust", "stl_iqr"):
        cleaned, report = clean(df, CleaningConfig(outlier_method=method), min_length=24, horizon=12)
        rates[method] = cleaned.groupby("unique_id")["is_outlier"].mean().median()
    assert rates["robust"] <= 0.01 < rates["stl_iqr"]
    assert "local robust SDs" in report.outlier_method or "IQR" in report.outlier_method


@pytest.mark.parametrize("method", ["robust", "stl_iqr"])
def test_when_the_report_names_the_rule_then_it_says_which(method):
    df = load_dataset(str(DEFAULT_DATA), DataConfig())
    _, report = clean(df, CleaningConfig(outlier_method=method), min_length=39, horizon=13)
    assert ("IQR" in report.outlier_method) == (method == "stl_iqr")
    assert ("robust SDs" in report.outlier_method) == (method == "robust")
