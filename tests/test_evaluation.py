"""run_backtest and write_outputs on the shipped panels."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pytest

from chronos_flows.evaluation import metrics as M
from chronos_flows.core.errors import BadInputError, ChronosFlowsError
from chronos_flows.evaluation.backtest import run_backtest, write_outputs
from chronos_flows.models.base import DEFAULT_QUANTILES, Forecaster, future_index, quantile_column
from chronos_flows.models.local.prophet import ProphetForecaster
from chronos_flows.models.local.seasonal_naive import SeasonalNaive
from chronos_flows.evaluation.windows import backtest_cutoffs, split_window

from tests.conftest import livestock
QCOLS = [quantile_column(q) for q in DEFAULT_QUANTILES]


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return livestock(5)


class Oracle(Forecaster):
    """Knows the future (the full history): a perfect forecast with a fixed ±1 band."""

    name = "oracle"

    def __init__(self, full: pd.DataFrame):
        self.full = full.set_index(["unique_id", "ds"])["y"]

    def predict(self, context, horizon, freq, quantiles: Sequence[float] = DEFAULT_QUANTILES):
        rows = []
        for uid, g in context.groupby("unique_id"):
            for ds in future_index(g["ds"].max(), horizon, freq):
                y = self.full[(uid, ds)]
                rows.append({"unique_id": uid, "ds": ds, "mean": y, **{quantile_column(q): y + (q - 0.5) * 2 for q in quantiles}})
        return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def backtest_with_failing_series(panel):
    # a series Prophet cannot fit in the first window (one observed value in its context)
    ds = panel["ds"].drop_duplicates().sort_values().iloc[-30:]
    y = np.r_[np.full(17, np.nan), np.linspace(1.0, 13.0, 13)]
    broken = pd.DataFrame({"unique_id": "mostly-missing", "ds": ds.to_numpy(), "y": y})
    history = pd.concat([panel, broken], ignore_index=True)
    calls: list[tuple[int, int]] = []
    result = run_backtest(
        {"seasonal_naive": SeasonalNaive(12), "prophet": ProphetForecaster(n_jobs=2, uncertainty_samples=50)},
        history,
        horizon=6,
        n_windows=2,
        step=6,
        freq="MS",
        season_length=12,
        quantiles=DEFAULT_QUANTILES,
        progress=lambda d, t: calls.append((d, t)),
    )
    return history, result, calls


def test_when_prophet_fails_on_a_series_then_the_run_completes_and_reports_it(backtest_with_failing_series):
    history, result, calls = backtest_with_failing_series
    assert set(result.failures["prophet"]) == {"mostly-missing"}
    assert "window 0" in result.failures["prophet"]["mostly-missing"]
    assert result.failures["seasonal_naive"] == {}
    prophet_rows = result.metrics[result.metrics["model"] == "prophet"]
    assert "mostly-missing" not in set(prophet_rows.loc[prophet_rows["window"] == 0, "unique_id"])
    assert result.leaderboard.loc["prophet", "failures"] == 1
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_when_backtested_then_metrics_exist_per_series_window_and_model(backtest_with_failing_series, panel):
    history, result, _ = backtest_with_failing_series
    m = result.metrics
    ids = set(panel["unique_id"])
    for model in ("seasonal_naive", "prophet"):
        for w in (0, 1):
            got = set(m.loc[(m["model"] == model) & (m["window"] == w), "unique_id"])
            assert ids <= got
    assert not m.duplicated(["unique_id", "window", "model"]).any()
    assert set(M.METRICS) <= set(m.columns)
    # forecasts cover exactly each window's test span
    cut = backtest_cutoffs(history, 6, 2, 6, min_context=2)
    fc = result.forecasts
    for _, row in cut.iterrows():
        sel = fc[(fc["unique_id"] == row["unique_id"]) & (fc["window"] == row["window"]) & (fc["model"] == "seasonal_naive")]
        assert sel["ds"].min() == row["test_start"] and sel["ds"].max() == row["test_end"] and len(sel) == 6


def test_when_backtested_then_stored_metrics_equal_a_direct_recomputation(backtest_with_failing_series):
    history, result, _ = backtest_with_failing_series
    cut = backtest_cutoffs(history, 6, 2, 6, min_context=2)
    context, _ = split_window(history, cut[cut["window"] == 1])
    fc = result.forecasts[(result.forecasts["model"] == "prophet") & (result.forecasts["window"] == 1)]
    direct = M.evaluate_all(fc, season_length=12, insample=context[context["unique_id"].isin(fc["unique_id"])])
    stored = result.metrics[(result.metrics["model"] == "prophet") & (result.metrics["window"] == 1)].set_index("unique_id")
    pd.testing.assert_frame_equal(stored[list(M.METRICS)].sort_index(), direct.sort_index(), check_names=False)


def test_when_leaderboard_built_then_relative_scores_are_geomeans_on_common_pairs(backtest_with_failing_series):
    _, result, _ = backtest_with_failing_series
    lb = result.leaderboard
    assert lb.loc["seasonal_naive", "wql_relative"] == pytest.approx(1.0)
    assert lb.loc["seasonal_naive", "mase_relative"] == pytest.approx(1.0)
    m = result.metrics.set_index(["unique_id", "window"])
    p, s = m[m["model"] == "prophet"]["wql"], m[m["model"] == "seasonal_naive"]["wql"]
    p, s = p.align(s, join="inner")
    ok = np.isfinite(p) & np.isfinite(s)
    expected = float(np.exp(np.mean(np.log(np.clip(p[ok] / s[ok], 0.01, 100)))))
    assert lb.loc["prophet", "wql_relative"] == pytest.approx(expected)
    # both models are averaged over the same pairs (the failed one is left out for everyone)
    assert lb.loc["prophet", "n_pairs"] == lb.loc["seasonal_naive", "n_pairs"]
    assert list(lb["rank"]) == [1, 2]
    assert lb["wql_relative"].is_monotonic_increasing


def test_when_a_model_is_perfect_then_it_ranks_first_with_zero_error(panel):
    result = run_backtest(
        {"seasonal_naive": SeasonalNaive(12), "oracle": Oracle(panel)},
        panel, horizon=6, n_windows=2, step=3, freq="MS", season_length=12,
    )
    assert result.best_model == "oracle"
    assert result.leaderboard.loc["oracle", "mae"] == 0.0
    assert result.leaderboard.loc["oracle", "coverage_80"] == 1.0
    assert result.scores("oracle")["mase"] == 0.0


def test_when_a_forecaster_returns_wrong_timestamps_then_the_error_names_model_and_series(panel):
    class Shifted(Oracle):
        def predict(self, context, horizon, freq, quantiles=DEFAULT_QUANTILES):
            fc = super().predict(context, horizon, freq, quantiles)
            fc["ds"] = fc["ds"] + pd.Timedelta(days=3)
            return fc

    with pytest.raises(ChronosFlowsError, match="'shifted'.*timestamps"):
        run_backtest({"shifted": Shifted(panel)}, panel, horizon=3, freq="MS", season_length=12)


def test_when_history_is_too_short_then_run_backtest_names_the_series(panel):
    short = panel.groupby("unique_id").tail(10)
    with pytest.raises(BadInputError, match="too short"):
        run_backtest({"seasonal_naive": SeasonalNaive(12)}, short, horizon=6, n_windows=3, freq="MS", season_length=12)


def test_when_outputs_written_then_parquet_csv_report_and_plots_exist(backtest_with_failing_series, tmp_path):
    history, result, _ = backtest_with_failing_series
    paths = write_outputs(result, tmp_path / "evaluation", history=history, plot_series=3)
    assert {"metrics", "leaderboard", "report", "plot_best", "plot_median", "plot_worst"} <= set(paths)
    back = pd.read_parquet(paths["metrics"])
    assert len(back) == len(result.metrics) and set(M.METRICS) <= set(back.columns)
    lb = pd.read_csv(paths["leaderboard"])
    assert list(lb["model"]) == list(result.leaderboard.index)
    report = paths["report"].read_text()
    assert "mostly-missing" in report and "| prophet |" in report and "plots/" in report
    for key in ("plot_best", "plot_median", "plot_worst"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert paths[key].parent == tmp_path / "evaluation" / "plots"
    # no temporary files left behind by the atomic writes
    assert not [p for p in (tmp_path / "evaluation").rglob(".*.tmp")]


def test_when_backtests_of_different_models_are_merged_then_the_leaderboard_equals_a_joint_run(panel):
    kw = dict(horizon=6, n_windows=2, step=3, freq="MS", season_length=12)
    from chronos_flows.evaluation.backtest import merge_results

    joint = run_backtest({"seasonal_naive": SeasonalNaive(12), "oracle": Oracle(panel)}, panel, **kw)
    merged = merge_results(
        run_backtest({"seasonal_naive": SeasonalNaive(12)}, panel, **kw),
        run_backtest({"oracle": Oracle(panel)}, panel, **kw),
    )
    pd.testing.assert_frame_equal(merged.leaderboard.sort_index(), joint.leaderboard.sort_index())
    with pytest.raises(ChronosFlowsError, match="horizon"):
        merge_results(joint, run_backtest({"x": SeasonalNaive(12)}, panel, **{**kw, "horizon": 3}))


def test_when_all_series_share_the_final_cutoff_then_the_report_prints_one_date_else_the_range(panel):
    from chronos_flows.evaluation.backtest import render_report

    aligned = run_backtest({"seasonal_naive": SeasonalNaive(12)}, panel, horizon=6, n_windows=2, step=6, freq="MS",
                           season_length=12, quantiles=DEFAULT_QUANTILES)
    final = aligned.cutoffs.loc[aligned.cutoffs["window"] == 1, "cutoff"]
    assert final.nunique() == 1
    lines = [ln for ln in render_report(aligned).splitlines() if "final-window cutoff" in ln]
    assert lines == [f"- final-window cutoff: {final.iloc[0]:%Y-%m-%d} (all series)"]

    # one series ends a month earlier: its cutoff differs, so the report gives the range
    first = panel["unique_id"].iloc[0]
    last_ds = panel.loc[panel["unique_id"] == first, "ds"].max()
    staggered = panel[~((panel["unique_id"] == first) & (panel["ds"] == last_ds))]
    result = run_backtest({"seasonal_naive": SeasonalNaive(12)}, staggered, horizon=6, n_windows=2, step=6, freq="MS",
                          season_length=12, quantiles=DEFAULT_QUANTILES)
    final = result.cutoffs.loc[result.cutoffs["window"] == 1, "cutoff"]
    lines = [ln for ln in render_report(result).splitlines() if "final-window cutoff" in ln]
    assert lines == [f"- final-window cutoffs: {final.min():%Y-%m-%d} … {final.max():%Y-%m-%d}"]
    assert final.min() < final.max()


class DropsOne(Forecaster):
    """Seasonal Naive that fails one series whenever its context ends on an even month."""

    name = "drops_one"

    def __init__(self, uid: str):
        self.inner, self.uid = SeasonalNaive(12), uid

    def predict(self, context, horizon, freq, quantiles: Sequence[float] = DEFAULT_QUANTILES):
        fc = self.inner.predict(context, horizon, freq, quantiles).copy()
        fc[[c for c in fc.columns if c not in ("unique_id", "ds")]] *= 1.1
        if context.loc[context["unique_id"] == self.uid, "ds"].max().month % 2 == 0:
            fc = fc[fc["unique_id"] != self.uid]
        return fc


def test_when_backtested_then_every_score_equals_a_plain_window_by_window_reference(panel):
    # ragged ends, so each series has its own cutoffs; one model fails a series in some windows
    parts = [g.iloc[: len(g) - i] for i, (_, g) in enumerate(panel.groupby("unique_id"))]
    history = pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=0)  # any row order
    first = sorted(history["unique_id"].unique())[0]
    models = {"seasonal_naive": SeasonalNaive(12), "drops_one": DropsOne(first)}
    kw = dict(horizon=6, n_windows=3, step=4, freq="MS", season_length=12)
    result = run_backtest(models, history, **kw)

    cut = backtest_cutoffs(history, 6, 3, 4, min_context=2)
    rows, fc_rows = [], []
    for w in range(3):
        context, actuals = split_window(history, cut[cut["window"] == w])
        for name, model in models.items():
            fc = model.predict(context, 6, "MS")
            merged = actuals.merge(fc, on=["unique_id", "ds"])
            scores = M.evaluate_all(merged, season_length=12, insample=context[context["unique_id"].isin(fc["unique_id"])])
            rows.append(scores.reset_index().assign(window=w, model=name))
            fc_rows.append(merged.assign(window=w, model=name))
    expected = pd.concat(rows, ignore_index=True)
    got = result.metrics.drop(columns="cutoff")[expected.columns]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_exact=True)
    assert list(result.failures["drops_one"]) == [first] and result.failures["seasonal_naive"] == {}

    common = set(map(tuple, expected.loc[expected["model"] == "drops_one", ["unique_id", "window"]].to_numpy().tolist()))
    fcs = pd.concat(fc_rows, ignore_index=True)
    for name in models:
        sub = expected[(expected["model"] == name) & [p in common for p in zip(expected["unique_id"], expected["window"])]]
        fsub = fcs[(fcs["model"] == name) & [p in common for p in zip(fcs["unique_id"], fcs["window"])]]
        for metric in M.METRICS:
            assert result.leaderboard.loc[name, metric] == float(sub[metric].mean()), (name, metric)
        assert result.leaderboard.loc[name, "wql_pooled"] == M.wql_pooled(fsub)
        assert result.leaderboard.loc[name, "n_pairs"] == len(common)
