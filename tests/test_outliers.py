"""The outlier rules: the default ('esd': generalized ESD test on the robust STL residual, relative on the
log scale), the previous default ('robust': log scale where the swing grows, local scale), first season
never flagged, intermittent series skipped, ``replace`` capped; the seed's rule stays available."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chronos_flows.config.params import DEFAULT_DATA, CleaningConfig, DataConfig
from chronos_flows.data.cleaning import (
    clean,
    detect_outliers,
    esd_outliers,
    generalized_esd,
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


def test_when_the_previous_rule_checks_a_clean_growing_swing_series_then_almost_nothing_is_flagged_and_the_seed_flags_more():
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
    for method in ("esd", "robust", "stl_iqr"):
        cleaned, _ = clean(df, CleaningConfig(outlier_method=method), min_length=24, horizon=12)
        rates[method] = cleaned.groupby("unique_id")["is_outlier"].mean().median()
    assert CleaningConfig().outlier_method == "esd"
    assert rates["esd"] <= 0.01 < rates["stl_iqr"]
    assert rates["robust"] <= 0.01


@pytest.mark.parametrize("method", ["esd", "robust", "stl_iqr"])
def test_when_the_report_names_the_rule_then_it_says_which(method):
    df = load_dataset(str(DEFAULT_DATA), DataConfig())
    _, report = clean(df, CleaningConfig(outlier_method=method), min_length=39, horizon=13)
    assert ("IQR" in report.outlier_method) == (method == "stl_iqr")
    assert ("robust SDs" in report.outlier_method) == (method == "robust")
    assert ("generalized ESD test at alpha 0.01" in report.outlier_method) == (method == "esd")


# ------------------------------------------------------------------ the default rule: generalized ESD
#: NIST/SEMATECH e-Handbook §1.3.5.17.3: Rosner's 54 values; at alpha 0.05 with at most 10 outliers
#: the test finds 3 (R_1 = 3.118 < λ_1 = 3.158 and R_2 < λ_2: the two largest are masked by the third,
#: R_3 = 3.179 > λ_3 = 3.143).
ROSNER = [-0.25, 0.68, 0.94, 1.15, 1.20, 1.26, 1.26, 1.34, 1.38, 1.43, 1.49, 1.49, 1.55, 1.56, 1.58, 1.65,
          1.69, 1.70, 1.76, 1.77, 1.81, 1.91, 1.94, 1.96, 1.99, 2.06, 2.09, 2.10, 2.14, 2.15, 2.23, 2.24,
          2.26, 2.35, 2.37, 2.40, 2.47, 2.54, 2.62, 2.64, 2.90, 2.92, 2.92, 2.93, 3.21, 3.26, 3.30, 3.59,
          3.68, 4.30, 4.64, 5.34, 5.42, 6.01]


def test_when_the_esd_test_runs_on_rosners_example_then_it_finds_nists_three_outliers_despite_masking():
    x = np.array(ROSNER)
    order = np.random.default_rng(0).permutation(len(x))  # position must not matter
    flags = generalized_esd(x[order], 0.05, 10)
    assert sorted(x[order][flags]) == [5.34, 5.42, 6.01]
    assert not generalized_esd(x, 0.05, 2).any()  # the masked pair alone does not reach λ_1, λ_2


def test_when_series_are_gaussian_noise_then_the_share_with_any_flag_is_about_alpha_whatever_the_length():
    rng = np.random.default_rng(1)
    for n in (40, 200):
        any_flag = np.mean([generalized_esd(rng.standard_normal(n), 0.05, n // 10).any() for _ in range(400)])
        assert 0.02 <= any_flag <= 0.09, (n, any_flag)


def test_when_a_series_is_flat_but_for_one_spike_then_only_the_spike_is_flagged():
    y = np.full(120, 50.0)
    assert not esd_outliers(y, 12, 0.01).flags.any()
    y[70] = 80.0
    assert np.flatnonzero(esd_outliers(y, 12, 0.01).flags).tolist() == [70]


def test_when_a_clean_growing_swing_series_is_checked_by_the_default_then_almost_nothing_is_flagged():
    rates, seed_rates = [], []
    for seed in range(10):
        y = growing_seasonal(seed=seed)
        found = detect_outliers(y, 12, CleaningConfig())
        assert found.log_scale
        rates.append(found.flags.mean())
        seed_rates.append(stl_outliers(y, 12, 3.0)[0].mean())
    assert np.mean(rates) <= 0.005 and max(rates) <= 2 / 144, rates
    assert np.mean(seed_rates) > 4 * np.mean(rates)


def test_when_spikes_are_injected_then_the_default_finds_them_at_their_positions_and_nothing_else():
    for seed in range(3):
        y = growing_seasonal(seed=seed)
        spiked = y.copy()
        positions = [20, 61, 100, 140]
        for p, sign in zip(positions, [1, -1, 1, -1]):
            spiked[p] *= 1 + sign * 0.2  # ~7 noise SDs
        found = detect_outliers(spiked, 12, CleaningConfig())
        assert np.flatnonzero(found.flags).tolist() == positions, (seed, np.flatnonzero(found.flags))
        assert found.score[positions].min() > 4


def test_when_a_large_upward_spike_hits_a_log_scale_series_then_the_relative_residual_is_tested():
    y = growing_seasonal(seed=3)
    y[90] *= 2.0  # a doubling: +100 % of the fit, but only log 2 = 0.69 on the log scale
    found = esd_outliers(y, 12, 0.01)
    assert found.log_scale and found.flags[90]
    fit_ratio = y[90] / found.fit[90] - 1
    assert fit_ratio > 0.9 and found.score[90] > np.log(2) / 0.03  # scored on y / fit - 1, not on its log


def test_when_a_spike_falls_in_the_first_season_then_the_default_does_not_flag_it_and_still_finds_later_ones():
    y = growing_seasonal(seed=2)
    y[5] *= 3
    y[80] *= 1.3
    flags = detect_outliers(y, 12, CleaningConfig()).flags
    assert not flags[:12].any() and flags[80]


def test_when_noise_triples_in_the_second_half_then_the_default_does_not_flood_the_noisy_half_but_misses_the_calm_spike():
    ours = seeds = calm_found = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        t = np.arange(240)
        y = 50 + 5 * np.sin(2 * np.pi * t / 12) + np.where(t < 120, 1.0, 3.0) * rng.standard_normal(240)
        y[60] += 7.0  # 7 SDs of the calm half, ordinary noise in the other
        flags = esd_outliers(y, 12, 0.01).flags
        ours += int(flags[120:].sum())
        calm_found += int(flags[60])
        seeds += int(stl_outliers(y, 12, 3.0)[0][120:].sum())
    # one residual SD for the whole series: the noisy half's tail gives a few flags, the seed's IQR dozens;
    # the price (README): the calm half's spike is about 3 whole-series SDs, not found (the 'robust' rule finds it)
    assert ours <= seeds / 4, (ours, seeds)
    assert calm_found == 0


def test_when_the_test_level_is_out_of_range_then_the_config_refuses_it_naming_the_field():
    with pytest.raises(ValueError, match="outlier_alpha"):
        CleaningConfig(outlier_alpha=0)
    with pytest.raises(ValueError, match="outlier_alpha"):
        CleaningConfig(outlier_alpha=1.5)
