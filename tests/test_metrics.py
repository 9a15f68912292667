"""Metric code against an independent plain-Python reference (loops, no pandas) on the same forecasts."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest

from chronos_flows.evaluation import metrics as M
from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import DEFAULT_QUANTILES, quantile_column

Q = list(DEFAULT_QUANTILES)


# ----------------------------------------------------------------- reference implementation (loops)


def ref_pinball(y: float, f: float, q: float) -> float:
    return q * (y - f) if y >= f else (1 - q) * (f - y)


def ref_metrics(rows: list[dict], insample: list[float], season: int) -> dict[str, float]:
    """Textbook definitions, one series, written independently of chronos_flows.evaluation.metrics."""
    rows = [r for r in rows if not math.isnan(r["y"])]
    n = len(rows)
    abs_err = [abs(r["y"] - r["mean"]) for r in rows]
    out = {"mae": sum(abs_err) / n, "rmse": math.sqrt(sum(e * e for e in abs_err) / n)}
    pct = [abs(r["y"] - r["mean"]) / abs(r["y"]) for r in rows if r["y"] != 0]
    out["mape"] = sum(pct) / len(pct) if pct else float("nan")
    s = 0.0
    for r in rows:
        d = abs(r["y"]) + abs(r["mean"])
        s += 0.0 if d == 0 else 2 * abs(r["y"] - r["mean"]) / d
    out["smape"] = s / n
    m = season if len(insample) > season else 1
    diffs = [abs(insample[t] - insample[t - m]) for t in range(m, len(insample))]
    scale = sum(diffs) / len(diffs)
    out["mase"] = out["mae"] / scale if scale > 0 else float("nan")
    denom = sum(abs(r["y"]) for r in rows)
    per_q = []
    for q in Q:
        loss = sum(ref_pinball(r["y"], r[quantile_column(q)], q) for r in rows)
        per_q.append(2 * loss / denom)
    out["wql"] = sum(per_q) / len(per_q)
    inside = sum(1 for r in rows if r["0.1"] <= r["y"] <= r["0.9"])
    out["coverage_80"] = inside / n
    return out


def random_forecasts(seed: int, n_series: int = 7, horizon: int = 11, season: int = 5):
    rng = random.Random(seed)
    fc_rows, ins_rows, ref_in = [], [], {}
    for s in range(n_series):
        uid = f"s{s}"
        n_in = rng.randint(3, 40)  # some series shorter than the season → period-1 fallback
        level = rng.uniform(-5, 50)
        ins = [level + rng.gauss(0, 3) + 4 * math.sin(t) for t in range(n_in)]
        ref_in[uid] = ins
        start = pd.Timestamp("2020-01-06")
        for t, v in enumerate(ins):
            ins_rows.append({"unique_id": uid, "ds": start + pd.Timedelta(weeks=t), "y": v})
        for h in range(horizon):
            y = level + rng.gauss(0, 4)
            if s == 0 and h < 3:
                y = 0.0  # zero actuals: MAPE skips them, sMAPE handles 0/0
            mean = y + rng.gauss(0, 2) if not (s == 0 and h == 0) else 0.0
            qs = sorted(mean + rng.gauss(0, 3) for _ in Q)
            row = {"unique_id": uid, "ds": start + pd.Timedelta(weeks=n_in + h), "y": y, "mean": mean}
            row.update({quantile_column(q): v for q, v in zip(Q, qs)})
            fc_rows.append(row)
    return pd.DataFrame(fc_rows), pd.DataFrame(ins_rows), ref_in


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_when_metrics_computed_then_they_match_the_loop_reference(seed):
    season = 5
    fc, ins, ref_in = random_forecasts(seed, season=season)
    got = M.evaluate_all(fc, season_length=season, insample=ins, quantiles=Q)
    assert list(got.columns) == list(M.METRICS)
    assert sorted(got.index) == sorted(ref_in)
    for uid, g in fc.groupby("unique_id"):
        expected = ref_metrics(g.to_dict("records"), ref_in[uid], season)
        for name, value in expected.items():
            np.testing.assert_allclose(got.loc[uid, name], value, rtol=1e-12, atol=1e-12, err_msg=f"{name} {uid}")


def test_when_actuals_are_missing_then_those_steps_are_ignored():
    fc, ins, ref_in = random_forecasts(3)
    holed = fc.copy()
    holed.loc[holed.index[::4], "y"] = np.nan
    got = M.evaluate_all(holed, season_length=5, insample=ins, quantiles=Q)
    for uid, g in holed.groupby("unique_id"):
        expected = ref_metrics(g.to_dict("records"), ref_in[uid], 5)
        for name, value in expected.items():
            np.testing.assert_allclose(got.loc[uid, name], value, rtol=1e-12, err_msg=name)


def test_when_a_forecast_is_missing_then_the_series_scores_nan_not_a_partial_mean():
    fc, ins, _ = random_forecasts(4)
    broken = fc.copy()
    first = broken["unique_id"] == "s1"
    broken.loc[broken.index[first][2], ["mean", "0.1"]] = np.nan
    got = M.evaluate_all(broken, season_length=5, insample=ins, quantiles=Q)
    assert np.isnan(got.loc["s1", "mae"]) and np.isnan(got.loc["s1", "wql"]) and np.isnan(got.loc["s1", "coverage_80"])
    assert got.drop(index="s1")[["mae", "wql"]].notna().all().all()


def test_when_all_metrics_share_one_signature_then_each_returns_a_series_by_unique_id():
    fc, ins, _ = random_forecasts(5)
    for name, fn in M.METRICS.items():
        out = fn(fc, season_length=5, insample=ins, quantiles=Q)
        assert isinstance(out, pd.Series) and out.index.name == "unique_id", name


def test_when_mase_has_no_insample_then_a_bad_input_error_explains():
    fc, _, _ = random_forecasts(6)
    with pytest.raises(BadInputError, match="in-sample"):
        M.mase(fc, season_length=5, insample=None, quantiles=Q)


def test_when_quantile_columns_are_missing_then_the_error_names_them():
    fc, ins, _ = random_forecasts(7)
    with pytest.raises(BadInputError, match="0.9"):
        M.wql(fc.drop(columns=["0.9"]), season_length=5, insample=ins, quantiles=Q)


def test_when_pooled_wql_computed_then_it_matches_the_reference():
    fc, _, _ = random_forecasts(8)
    rows = fc.to_dict("records")
    denom = sum(abs(r["y"]) for r in rows)
    expected = sum(2 * sum(ref_pinball(r["y"], r[quantile_column(q)], q) for r in rows) / denom for q in Q) / len(Q)
    np.testing.assert_allclose(M.wql_pooled(fc, quantiles=Q), expected, rtol=1e-12)


def test_when_relative_geomean_computed_then_it_matches_the_reference_and_reference_is_one():
    rng = random.Random(9)
    ids = [f"s{i}" for i in range(20)]
    ref = {i: rng.uniform(0.5, 2.0) for i in ids}
    a = {i: rng.uniform(0.2, 3.0) for i in ids}
    a["s0"] = float("nan")  # dropped
    b = {i: ref[i] * 0.5 for i in ids[:10]}  # only half the series: compared on those
    got = M.relative_geomean(
        {"seasonal_naive": pd.Series(ref), "a": pd.Series(a), "b": pd.Series(b)}, "seasonal_naive", clip=None
    )
    logs = [math.log(a[i] / ref[i]) for i in ids if not math.isnan(a[i])]
    np.testing.assert_allclose(got["a"], math.exp(sum(logs) / len(logs)), rtol=1e-12)
    np.testing.assert_allclose(got["b"], 0.5, rtol=1e-12)
    assert got["seasonal_naive"] == pytest.approx(1.0)


def test_when_a_relative_score_is_degenerate_then_clipping_keeps_the_geomean_finite():
    ref = pd.Series({"x": 1.0, "y": 1.0, "z": 2.0})
    model = pd.Series({"x": 0.0, "y": 1.0, "z": 2.0})  # a perfect forecast on x
    got = M.relative_geomean({"seasonal_naive": ref, "m": model})
    np.testing.assert_allclose(got["m"], (0.01 * 1 * 1) ** (1 / 3), rtol=1e-12)


def test_when_reference_model_is_absent_then_relative_geomean_says_so():
    with pytest.raises(BadInputError, match="seasonal_naive"):
        M.relative_geomean({"prophet": pd.Series({"a": 1.0})})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_when_metrics_computed_then_they_equal_utilsforecasts_losses_exactly(seed):
    import utilsforecast.losses as ufl

    fc, ins, _ = random_forecasts(seed, season=5)
    fc.loc[fc.index[7], "y"] = np.nan  # a missing actual is skipped by both
    got = M.evaluate_all(fc, season_length=5, insample=ins, quantiles=Q)
    f = fc[fc["y"].notna()]
    cols = [quantile_column(q) for q in Q]
    lib = {
        "mae": ufl.mae(f, models=["mean"]).set_index("unique_id")["mean"],
        "rmse": ufl.rmse(f, models=["mean"]).set_index("unique_id")["mean"],
        "mape": ufl.mape(f, models=["mean"]).set_index("unique_id")["mean"],
        "smape": 2.0 * ufl.smape(f, models=["mean"]).set_index("unique_id")["mean"],
        "wql": ufl.scaled_crps(f, models={"m": cols}, quantiles=np.asarray(Q)).set_index("unique_id")["m"],
        "coverage_80": ufl.coverage(f.rename(columns={"0.1": "m-lo-80", "0.9": "m-hi-80"}), models=["m"], level=80)
        .set_index("unique_id")["m"].astype(float),
    }
    for name, expected in lib.items():
        np.testing.assert_array_equal(got[name].to_numpy(), expected.reindex(got.index).to_numpy(), err_msg=name)


def test_when_many_contexts_are_scaled_at_once_then_each_equals_its_own_nanmean():
    rng = np.random.default_rng(3)
    y = rng.normal(100, 20, 500)
    y[[40, 41, 300]] = np.nan
    starts = np.array([0, 0, 0, 100, 100, 250, 290, 400, 499])
    lengths = np.array([30, 60, 90, 60, 3, 120, 20, 99, 1])
    got = M.seasonal_scales(y, starts, lengths, 12)
    for k, (s, n) in enumerate(zip(starts, lengths)):
        ctx = y[s:s + n]
        p = 12 if n > 12 else 1
        diffs = np.abs(ctx[p:] - ctx[:-p]) if n > p else np.array([np.nan])
        expected = np.nanmean(diffs) if np.isfinite(diffs).any() else np.nan
        np.testing.assert_array_equal(got[k], expected, err_msg=f"context {k}")
