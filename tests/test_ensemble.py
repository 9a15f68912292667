"""The weighted ensemble (greedy forward selection, Caruana 2004): weights, honest windows, the
champion decision and the forecast path of an ensemble champion."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from blocks.store import LocalStore
from chronos_flows.core.errors import BadInputError
from chronos_flows.evaluation import metrics as M
from chronos_flows.config.params import TrainingParams, build_params
from chronos_flows.evaluation.backtest import render_report, run_backtest
from chronos_flows.forecasting.batch import champion_forecaster, forecast_panel
from chronos_flows.models.base import (
    DEFAULT_QUANTILES,
    ID,
    TARGET,
    TIME,
    Forecaster,
    future_index,
    quantile_column,
)
from chronos_flows.evaluation.ensemble import add_ensemble, excluded_windows, fast_pair_scores, greedy_weights, pair_scores
from chronos_flows.models.ensemble import EnsembleForecaster, champion_config, combine_forecasts
from chronos_flows.models.families import MIN_HISTORY, local_forecaster
from chronos_flows.models.local.seasonal_naive import SeasonalNaive
from chronos_flows.champion.registry import decide_champion, promote, read_champion
from chronos_flows.evaluation import splits

Q = DEFAULT_QUANTILES
QCOLS = [quantile_column(q) for q in Q]


def truth(ds: pd.DatetimeIndex | pd.Series) -> np.ndarray:
    """The noiseless quarterly signal every series follows (level differs by series below)."""
    k = (pd.DatetimeIndex(ds).year - 2000) * 4 + (pd.DatetimeIndex(ds).month - 1) // 3
    return 50 + 6 * np.sin(2 * np.pi * k / 4) + 0.3 * k


def panel(n_series: int = 6, n: int = 48, noise: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    ds = pd.date_range("2000-01-01", periods=n, freq="QS")
    return pd.concat([pd.DataFrame({ID: f"s{i}", TIME: ds, TARGET: truth(ds) + i + rng.normal(0, noise, n) if noise else truth(ds) + i})
                      for i in range(n_series)], ignore_index=True)


class Shifted(Forecaster):
    """Forecasts the true signal (+ the series' level) shifted by ``bias``, with a normal spread."""

    def __init__(self, bias: float, spread: float = 0.5):
        self.bias, self.spread, self.last_failures = bias, spread, {}

    def predict(self, context, horizon, freq, quantiles=Q):
        parts = []
        for uid, g in context.groupby(ID, sort=True):
            level = float(g[TARGET].iloc[-1] - truth(g[TIME].iloc[-1:])[0])
            ds = future_index(g[TIME].iloc[-1], horizon, freq)
            mean = truth(ds) + level + self.bias
            f = pd.DataFrame({ID: uid, TIME: ds, "mean": mean})
            for q in quantiles:
                f[quantile_column(q)] = mean + self.spread * norm.ppf(q)
            parts.append(f)
        return pd.concat(parts, ignore_index=True)


def backtest(models: dict[str, Forecaster], df: pd.DataFrame, n_windows: int = 3):
    return run_backtest(models, df, horizon=4, n_windows=n_windows, freq="QS", season_length=4, quantiles=Q)


# ------------------------------------------------------------------------------------------ weights


def test_when_two_members_err_in_opposite_directions_then_weights_are_non_negative_sum_to_1_and_beat_both():
    df = panel()
    res = add_ensemble(backtest({"up": Shifted(2.0), "down": Shifted(-2.0), "seasonal_naive": SeasonalNaive(4)}, df),
                       df, candidates=["up", "down"], gate_metric="wql", fit_windows=[0], shrinkage=0.0)
    fit = res.settings["ensemble"]
    w = np.array(list(fit["weights"].values()))
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert fit["weights"]["up"] == pytest.approx(0.5) and fit["weights"]["down"] == pytest.approx(0.5)
    assert fit["fit_score"] < min(fit["member_fit_scores"].values())
    board = res.leaderboard
    assert board.loc["ensemble", "mae"] == pytest.approx(0.0, abs=1e-9)  # the biases cancel exactly
    assert board.loc["ensemble", "wql"] < min(board.loc[m, "wql"] for m in ("up", "down"))


def test_when_one_member_dominates_then_the_ensemble_reduces_to_it():
    df = panel()
    res = add_ensemble(backtest({"exact": Shifted(0.0, spread=0.0), "up": Shifted(2.0), "seasonal_naive": SeasonalNaive(4)}, df),
                       df, candidates=["up", "exact", "seasonal_naive"], gate_metric="mase", fit_windows=[0])
    assert res.settings["ensemble"]["weights"] == {"up": 0.0, "exact": 1.0, "seasonal_naive": 0.0}
    fc = res.forecasts
    ens = fc[fc["model"] == "ensemble"].set_index([ID, "window", TIME])
    exact = fc[(fc["model"] == "exact") & fc["window"].isin([1, 2])].set_index([ID, "window", TIME])
    pd.testing.assert_frame_equal(ens[["mean", *QCOLS]], exact.loc[ens.index, ["mean", *QCOLS]])


def test_when_greedy_selection_runs_then_the_earliest_best_step_is_kept_and_weights_are_count_fractions():
    target = np.array([0.25, 0.75])
    weights, best, trace = greedy_weights(lambda w: float(np.abs(w - target).sum()), 2, iterations=20)
    assert weights.tolist() == [0.25, 0.75] and best == 0.0 and len(trace) == 20
    with pytest.raises(Exception, match="no combination"):
        greedy_weights(lambda w: float("nan"), 3)


def test_when_members_are_combined_then_quantiles_never_cross_and_equal_the_weighted_average():
    rng = np.random.default_rng(0)
    frames = []
    for m in range(3):
        base = rng.normal(10, 3, size=(5, 1))
        spread = np.sort(rng.normal(0, 2 + 3 * m, size=(5, len(QCOLS))), axis=1)  # each member ordered
        f = pd.DataFrame(base + spread, columns=QCOLS)
        f.insert(0, "mean", base[:, 0])
        f.insert(0, TIME, pd.date_range("2020-01-01", periods=5, freq="D"))
        f.insert(0, ID, "a")
        frames.append(f)
    frames[2].loc[:, QCOLS] = frames[2][QCOLS].to_numpy()[:, ::-1]  # a crossing member
    w = [0.2, 0.5, 0.3]
    out = combine_forecasts(frames, w, QCOLS)
    q = out[QCOLS].to_numpy()
    assert (np.diff(q, axis=1) >= 0).all()
    expected = np.sort(sum(wi * f[QCOLS].to_numpy() for wi, f in zip(w, frames)), axis=1)
    np.testing.assert_allclose(q, expected)
    np.testing.assert_allclose(out["mean"], sum(wi * f["mean"].to_numpy() for wi, f in zip(w, frames)))
    # a member missing a series: the others' weights are renormalised
    partial = combine_forecasts([frames[0], frames[1].iloc[:0]], [0.5, 0.5], QCOLS)
    np.testing.assert_allclose(partial["mean"], frames[0]["mean"])


def test_when_the_gate_metric_is_computed_on_arrays_then_it_equals_the_metrics_module():
    df = panel(noise=1.0)
    res = backtest({"sn": SeasonalNaive(4), "up": Shifted(1.0)}, df, n_windows=1)
    f = res.forecasts[res.forecasts["model"] == "up"].sort_values([ID, TIME])
    y = f[TARGET].to_numpy().reshape(6, 4)
    mean = f["mean"].to_numpy().reshape(6, 4)
    qs = f[QCOLS].to_numpy().reshape(6, 4, len(QCOLS))
    ctx = df.groupby(ID).head(44)
    scale = M.seasonal_scale(ctx, 4).to_numpy()
    for metric in ("wql", "mase", "mae", "rmse", "smape", "mape"):
        expected = M.METRICS[metric](f, season_length=4, insample=ctx, quantiles=Q).to_numpy()
        np.testing.assert_allclose(pair_scores(metric, y, mean, qs, Q, scale), expected, rtol=1e-10, err_msg=metric)


def test_when_the_greedy_search_scores_arrays_in_numpy_then_it_equals_the_metrics_module_even_with_gaps():
    rng = np.random.default_rng(1)
    y = rng.normal(10, 5, (30, 5))
    y[0, 2], y[1, :], y[2, :] = np.nan, np.nan, 0.0  # a missing actual, a pair without actuals, an all-zero pair
    mean = y + rng.normal(0, 2, y.shape)
    mean[3, 1] = np.nan  # a missing forecast
    qs = np.sort(mean[..., None] + rng.normal(0, 2, (*y.shape, len(Q))), axis=-1)
    qs[4, 0, 2] = np.nan
    scale = np.abs(rng.normal(2, 1, 30))
    scale[5] = 0.0
    for metric in ("wql", "mase", "mae", "rmse"):
        np.testing.assert_allclose(fast_pair_scores(metric, y, mean, qs, Q, scale), pair_scores(metric, y, mean, qs, Q, scale),
                                   rtol=1e-10, err_msg=metric)


# ------------------------------------------------------------------------------------- honest windows


class WindowBias(Shifted):
    """Shifted by ``early`` when the context has fewer than ``switch`` points per series, else by ``late``."""

    def __init__(self, early: float, late: float, switch: int):
        super().__init__(0.0)
        self.early, self.late, self.switch = early, late, switch

    def predict(self, context, horizon, freq, quantiles=Q):
        self.bias = self.early if context.groupby(ID).size().max() < self.switch else self.late
        return super().predict(context, horizon, freq, quantiles)


def test_when_weights_are_fitted_then_all_windows_are_used_and_each_judging_window_is_scored_with_weights_fitted_without_it():
    df = panel(noise=0.3)
    # windows 0, 1, 2 (contexts of 36, 40, 44 points): "a" is exact until window 2, "b" only in window 2
    models = {"a": WindowBias(0.0, 5.0, switch=44), "b": WindowBias(3.0, 0.0, switch=44)}
    res = add_ensemble(backtest(models, df), df, candidates=list(models), gate_metric="wql", fit_windows=[0], shrinkage=0.0)
    fit = res.settings["ensemble"]
    assert fit["fit_windows"] == [0, 1, 2] and fit["judge_windows"] == [1, 2] and res.settings["judge_windows"] == [1, 2]
    assert fit["weights"]["b"] > 0  # fitted in-sample on every window, b would forecast window 2
    assert fit["nested"]["2"] == {"a": 1.0, "b": 0.0}  # without window 2, only a was ever right
    fc = res.forecasts
    ens = fc[(fc["model"] == "ensemble") & (fc["window"] == 2)].set_index([ID, TIME])
    a = fc[(fc["model"] == "a") & (fc["window"] == 2)].set_index([ID, TIME])
    pd.testing.assert_frame_equal(ens[["mean", *QCOLS]], a.loc[ens.index, ["mean", *QCOLS]])
    m2 = res.metrics[res.metrics["window"] == 2].groupby("model")["wql"].mean()
    assert m2["ensemble"] == pytest.approx(m2["a"]) and m2["ensemble"] > m2["b"]  # honest: it pays for not seeing window 2
    assert (res.leaderboard["n_pairs"] == 6 * 2).all()  # 6 series × the 2 judging windows, for every model
    judged = res.metrics[res.metrics["window"].isin([1, 2])]
    assert res.leaderboard.loc["a", "wql"] == pytest.approx(judged.loc[judged["model"] == "a", "wql"].mean())
    report = render_report(res)
    assert "## Ensemble" in report and "| a | " in report and "windows 1–2 only" in report and "Nested weights" in report


def test_when_windows_overlap_then_a_nested_fit_also_leaves_out_every_window_sharing_actuals_with_the_scored_one():
    assert excluded_windows(2, 4, horizon=4, step=4) == [2]
    assert excluded_windows(2, 4, horizon=4, step=2) == [1, 2, 3]
    assert excluded_windows(0, 3, horizon=6, step=2) == [0, 1, 2]


@pytest.mark.parametrize("gate", ["wql", "mase"])
def test_when_one_member_is_clearly_best_then_the_nested_ensemble_is_never_more_than_1pct_worse_and_deterministic(gate):
    df = panel(n_series=8, noise=1.0)
    models = {"best": Shifted(0.0, spread=1.4), "up": Shifted(2.0), "down": Shifted(-3.0, spread=2.0), "seasonal_naive": SeasonalNaive(4)}
    members = ["best", "up", "down"]
    bt = backtest(models, df, n_windows=4)
    res = add_ensemble(bt, df, candidates=members, gate_metric=gate, fit_windows=[0])
    board = res.leaderboard
    assert board.loc[members, gate].idxmin() == "best"
    for metric in ("wql", "mase", "wql_pooled"):
        assert board.loc["ensemble", metric] <= 1.01 * board.loc[members, metric].min(), metric
    again = add_ensemble(bt, df, candidates=members, gate_metric=gate, fit_windows=[0])
    assert again.settings["ensemble"] == res.settings["ensemble"]
    fit = res.settings["ensemble"]
    assert fit["best_single"] == "best" and fit["shrinkage"] == 0.5
    expected = {m: 0.5 * fit["greedy_weights"][m] + (0.5 if m == "best" else 0.0) for m in members}
    assert fit["weights"] == pytest.approx(expected)
    full = add_ensemble(bt, df, candidates=members, gate_metric=gate, fit_windows=[0], shrinkage=1.0)
    assert full.leaderboard.loc["ensemble", gate] == pytest.approx(board.loc["best", gate])


class GoodQuantilesBiasedMean(Shifted):
    """Quantiles centred on the truth (the best WQL) but a point forecast ``bias`` off (a poor MASE)."""

    def predict(self, context, horizon, freq, quantiles=Q):
        f = Shifted(0.0, spread=self.spread).predict(context, horizon, freq, quantiles)
        f["mean"] = f["mean"] + self.bias
        return f


def test_when_the_ensemble_optimises_wql_and_mase_then_a_member_with_a_poor_point_forecast_does_not_take_all_the_weight():
    df = panel(n_series=6, noise=0.5)
    models = {"quantiles": GoodQuantilesBiasedMean(3.0, spread=0.6), "point": Shifted(0.0, spread=3.0),
              "seasonal_naive": SeasonalNaive(4)}
    members = ["quantiles", "point"]
    bt = backtest(models, df, n_windows=4)
    wql_only = add_ensemble(bt, df, candidates=members, gate_metric="wql", fit_windows=[0], shrinkage=0.0)
    both = add_ensemble(bt, df, candidates=members, gate_metric="wql", fit_windows=[0], shrinkage=0.0, metrics=["wql", "mase"])
    assert wql_only.settings["ensemble"]["weights"]["quantiles"] > 0.95
    assert wql_only.settings["ensemble"]["metrics"] == ["wql"]
    fit = both.settings["ensemble"]
    assert fit["metrics"] == ["wql", "mase"] and fit["weights"]["point"] > 0.2 and fit["weights"]["quantiles"] > 0
    board, single = both.leaderboard, wql_only.leaderboard
    assert board.loc["ensemble", "mase"] < single.loc["ensemble", "mase"]
    # each member's objective: its WQL / the best member's WQL + its MASE / the best member's MASE
    scores = bt.metrics[bt.metrics["window"].isin([0, 1, 2, 3])].groupby("model")[["wql", "mase"]].mean()
    ref = scores.loc[members].min()
    for m in members:
        expected = scores.loc[m, "wql"] / ref["wql"] + scores.loc[m, "mase"] / ref["mase"]
        assert fit["member_fit_scores"][m] == pytest.approx(expected, rel=1e-9)
    assert fit["fit_score"] < min(fit["member_fit_scores"].values())


def test_when_no_member_has_a_mase_because_every_series_is_flat_then_the_ensemble_weighs_wql_alone():
    ds = pd.date_range("2000-01-01", periods=48, freq="QS")
    df = pd.concat([pd.DataFrame({ID: f"s{i}", TIME: ds, TARGET: 10.0 + i}) for i in range(4)], ignore_index=True)
    models = {"up": Shifted(2.0), "down": Shifted(-1.0), "seasonal_naive": SeasonalNaive(4)}
    bt = backtest(models, df, n_windows=3)
    both = add_ensemble(bt, df, candidates=["up", "down"], gate_metric="wql", fit_windows=[0], metrics=["wql", "mase"])
    wql = add_ensemble(bt, df, candidates=["up", "down"], gate_metric="wql", fit_windows=[0])
    assert both.settings["ensemble"]["weights"] == wql.settings["ensemble"]["weights"]
    assert np.isfinite(both.leaderboard.loc["ensemble", "wql"])


def test_when_the_ensemble_objective_names_an_unknown_metric_then_the_error_lists_the_choices():
    df = panel()
    bt = backtest({"up": Shifted(2.0), "down": Shifted(-2.0), "seasonal_naive": SeasonalNaive(4)}, df)
    with pytest.raises(Exception, match=r"cannot optimise \['coverage_80'\].*wql"):
        add_ensemble(bt, df, candidates=["up", "down"], gate_metric="wql", fit_windows=[0], metrics=["wql", "coverage_80"])
    assert TrainingParams().evaluation.ensemble_metrics == ("wql", "mase")
    with pytest.raises(Exception, match="ensemble_metrics"):
        build_params(overrides=["evaluation.ensemble_metrics=[wql, coverage]"])


def test_when_the_ensemble_is_on_then_the_backtest_has_one_extra_fitting_window_chronos_never_trains_on():
    ev = TrainingParams().evaluation
    assert ev.ensemble is True and splits.ensemble_fit_windows(ev) == [0] and splits.backtest_windows(ev) == ev.n_windows + 1
    off = build_params(overrides=["evaluation.ensemble=false"]).evaluation
    assert splits.ensemble_fit_windows(off) == [] and splits.backtest_windows(off) == off.n_windows
    assert splits.test_span(ev) == splits.test_span(off) + ev.horizon


# ------------------------------------------------------------------------------ champion and forecasts


def test_when_the_ensemble_scores_best_then_it_is_promoted_with_its_members_and_weights(tmp_path):
    df = panel(noise=0.3)
    models = {"autoets": Shifted(2.0), "theta": Shifted(-2.0), "seasonal_naive": SeasonalNaive(4)}
    res = add_ensemble(backtest(models, df), df, candidates=list(models), gate_metric="wql", fit_windows=[0])
    candidates = {n: res.scores(n) for n in ["autoets", "theta", "seasonal_naive", "ensemble"]}
    store = LocalStore(tmp_path / "store")
    champ, etag = read_champion(store, "dev")
    d = decide_champion(candidates, champ, gate_metric="wql")
    assert d.promoted and d.best == "ensemble"
    fit = res.settings["ensemble"]
    configs = {"autoets": {"season_length": 4, "model": "ZZZ", "damped": None},
               "theta": {"season_length": 4, "decomposition_type": "multiplicative", "model": None},
               "seasonal_naive": {"season_length": 4}}
    config = champion_config(fit, configs)
    entry = {"run_id": "r1", "family": "ensemble", "config": config,
             "weights": {m["family"]: m["weight"] for m in config["members"]}}
    assert promote(store, "dev", entry, d, etag)
    doc, _ = read_champion(store, "dev")
    assert doc["family"] == "ensemble" and doc["model_uri"] is None and doc["score"] == pytest.approx(candidates["ensemble"]["wql"])
    chosen = {m: w for m, w in fit["weights"].items() if w > 0}
    assert {"autoets", "theta"} <= set(chosen) and [m["family"] for m in doc["config"]["members"]] == list(chosen)
    assert doc["weights"] == chosen and all(m["config"] == configs[m["family"]] for m in doc["config"]["members"])
    assert sum(doc["weights"].values()) == pytest.approx(1.0)
    # a later run whose single models are worse keeps it
    d2 = decide_champion({"theta": {"wql": candidates["theta"]["wql"]}}, doc, gate_metric="wql")
    assert not d2.promoted and d2.reason.startswith("kept ensemble from run r1")


def test_when_the_champion_is_an_ensemble_then_batch_forecasts_equal_the_weighted_member_forecasts(tmp_path):
    from tests.conftest import quarterly
    from tests.test_forecast import seed_champion

    df = pd.concat([quarterly(f"q{i}", "2000-01-01", 40 + 2 * i, i) for i in range(5)], ignore_index=True)
    members = [
        {"family": "theta", "weight": 0.55, "config": {"season_length": 4, "decomposition_type": "additive", "model": None}},
        {"family": "seasonal_naive", "weight": 0.3, "config": {"season_length": 4}},
        {"family": "autoets", "weight": 0.15, "config": {"season_length": 4, "model": "ZZZ", "damped": None}},
    ]
    config = {"members": members, "gate_metric": "wql", "iterations": 20, "fit_windows": [0], "fit_score": 0.1}
    store = seed_champion(tmp_path / "store", "ensemble", config, freq="QS", data=df)
    champ, _ = read_champion(store, "dev")
    model = champion_forecaster(store, "dev", champ, tmp_path / "work", n_jobs=1)
    assert isinstance(model, EnsembleForecaster) and [n for n, _ in model.members] == ["theta", "seasonal_naive", "autoets"]
    chunks: list[pd.DataFrame] = []
    run = forecast_panel(model, df, horizon=6, freq="QS", quantiles=(0.1, 0.5, 0.9), family="ensemble",
                         champion_run_id="champ-run", min_history=MIN_HISTORY["ensemble"], chunk_size=2, sink=chunks.append)
    out = pd.concat(chunks, ignore_index=True).sort_values([ID, TIME], ignore_index=True)
    assert run.n_series == 5 and not run.skipped and set(out["family"]) == {"ensemble"}
    cols = ["mean", "0.1", "0.5", "0.9"]
    expected = np.zeros((len(out), 4))
    for m in members:
        own = local_forecaster(m["family"], m["config"]).predict(df, 6, "QS", (0.1, 0.5, 0.9))
        expected += m["weight"] * own.sort_values([ID, TIME])[cols].to_numpy()
    expected[:, 1:] = np.sort(expected[:, 1:], axis=1)
    np.testing.assert_allclose(out[cols].to_numpy(), expected, rtol=1e-12)
    assert (np.diff(out[["0.1", "0.5", "0.9"]].to_numpy(), axis=1) >= 0).all()
    assert json.loads(json.dumps(champ["config"])) == config


def test_when_the_endpoint_serves_an_ensemble_champion_then_it_answers_the_weighted_member_forecasts(tmp_path):
    from chronos_flows import serving
    from tests.test_forecast import seed_champion

    rng = np.random.default_rng(3)
    ys = [list(30 + 5 * np.sin(np.arange(40) * np.pi / 2) + rng.normal(0, 1, 40)) for _ in range(2)]
    members = [{"family": "theta", "weight": 0.7, "config": {"season_length": 4, "decomposition_type": "additive", "model": None}},
               {"family": "seasonal_naive", "weight": 0.3, "config": {"season_length": 4}}]
    config = {"members": members, "gate_metric": "wql", "iterations": 10, "fit_windows": [0], "fit_score": 0.1}
    store = seed_champion(tmp_path / "store", "ensemble", config, freq="QS", data=panel())
    doc, etag = read_champion(store, "dev")
    champ = serving.load_champion(store, "dev", doc, etag, tmp_path / "serve")
    assert champ.family == "ensemble" and champ.min_history == max(MIN_HISTORY["ensemble"], serving.MIN_OBSERVATIONS)
    parsed = serving.parse_request({"inputs": [{"target": y, "item_id": f"s{i}", "start": "2000-01-01"} for i, y in enumerate(ys)],
                                    "parameters": {"prediction_length": 4, "freq": "QS", "quantile_levels": [0.1, 0.5, 0.9]}})
    out = serving.predict(champ, parsed)["predictions"]
    frame = pd.concat([pd.DataFrame({ID: f"s{i}", TIME: pd.date_range("2000-01-01", periods=40, freq="QS"), TARGET: y})
                       for i, y in enumerate(ys)], ignore_index=True)
    expected = sum(m["weight"] * local_forecaster(m["family"], m["config"]).predict(frame, 4, "QS", (0.1, 0.5, 0.9))
                   .sort_values([ID, TIME])[["mean", "0.1", "0.5", "0.9"]].to_numpy() for m in members)
    expected[:, 1:] = np.sort(expected[:, 1:], axis=1)
    got = np.concatenate([np.column_stack([p["mean"], p["0.1"], p["0.5"], p["0.9"]]) for p in out])
    assert [p["item_id"] for p in out] == ["s0", "s1"]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# ------------------------------------------------------------------------------ shrinkage by CV


def _held_out_reference(bt, df, members, gate, v, level):
    """Plain reference of one fold of ``choose_shrinkage`` (one metric): weights fitted by
    ``fit_weights`` on every window but ``v`` at ``level``, combined by ``combine_forecasts`` on
    window ``v``, scored by the metrics module."""
    from chronos_flows.evaluation.ensemble import fit_weights

    others = [w for w in sorted(bt.forecasts["window"].unique()) if w != v]
    fit = fit_weights(bt, df, members, gate_metric=gate, fit_windows=others, shrinkage=level)
    fw = bt.forecasts[bt.forecasts["window"] == v]
    comb = combine_forecasts([fw.loc[fw["model"] == m, [ID, TIME, "mean", *QCOLS]] for m in members],
                             [fit.weights[m] for m in members], QCOLS)
    act = fw.loc[fw["model"] == members[0], [ID, TIME, TARGET]]
    merged = act.merge(comb, on=[ID, TIME])
    return float(M.METRICS[gate](merged, quantiles=Q).mean())


def test_when_shrinkage_is_auto_then_the_level_with_the_best_held_out_score_is_chosen_as_a_plain_reference_computes_it():
    from chronos_flows.evaluation.ensemble import SHRINKAGE_GRID, fit_weights

    df = panel(n_series=6, noise=1.0)
    models = {"best": Shifted(0.3, spread=1.2), "up": Shifted(2.0), "down": Shifted(-2.5, spread=2.0)}
    members = list(models)
    bt = backtest(models, df, n_windows=4)
    fit = fit_weights(bt, df, members, gate_metric="wql", shrinkage="auto")
    assert fit.shrinkage_mode == "auto" and set(fit.shrinkage_scores) == set(SHRINKAGE_GRID)
    for level, score in fit.shrinkage_scores.items():
        ref = np.mean([_held_out_reference(bt, df, members, "wql", v, level) for v in range(4)])
        assert score == pytest.approx(ref, rel=1e-9), level
    best = min(fit.shrinkage_scores.values())
    assert fit.shrinkage == max(lv for lv, s in fit.shrinkage_scores.items() if s == best)
    fixed = fit_weights(bt, df, members, gate_metric="wql", shrinkage=fit.shrinkage)
    assert fit.weights == pytest.approx(fixed.weights)  # the chosen level, then the usual fit


def test_when_members_err_in_opposite_directions_then_auto_shrinkage_keeps_the_greedy_mix_and_beats_fixed_shrinkage():
    """Two members biased up and down by the same amount: their even mix is right, the best single
    member is not; leave-one-window-out sees it and chooses no shrinkage."""
    df = panel(n_series=6, noise=0.3)
    models = {"up": Shifted(2.0, spread=1.0), "down": Shifted(-2.0, spread=1.0), "seasonal_naive": SeasonalNaive(4)}
    members = ["up", "down"]
    bt = backtest(models, df, n_windows=4)
    auto = add_ensemble(bt, df, candidates=members, gate_metric="wql", fit_windows=[0], shrinkage="auto")
    half = add_ensemble(bt, df, candidates=members, gate_metric="wql", fit_windows=[0], shrinkage=0.5)
    fit = auto.settings["ensemble"]
    assert fit["shrinkage"] == 0.0 and fit["shrinkage_mode"] == "auto"
    assert set(fit["nested_shrinkage"]) == {"1", "2", "3"} and set(fit["nested_shrinkage"].values()) == {0.0}
    assert auto.leaderboard.loc["ensemble", "wql"] < 0.8 * half.leaderboard.loc["ensemble", "wql"]
    report = render_report(auto)
    assert "Shrinkage chosen by leave-one-window-out" in report and "window 1 0.00" in report


def test_when_a_judging_window_is_scored_then_its_shrinkage_was_chosen_without_it():
    from chronos_flows.evaluation.ensemble import fit_weights

    df = panel(n_series=6, noise=1.0)
    models = {"best": Shifted(0.3, spread=1.2), "up": Shifted(2.0), "down": Shifted(-2.5, spread=2.0)}
    members = list(models)
    bt = backtest(models, df, n_windows=4)
    fit = fit_weights(bt, df, members, gate_metric="wql", shrinkage="auto", judge_windows=[1, 2, 3])
    for w in (1, 2, 3):
        alone = fit_weights(bt, df, members, gate_metric="wql", shrinkage="auto",
                            fit_windows=[v for v in range(4) if v != w])
        assert fit.nested_shrinkage[w] == alone.shrinkage, w
        assert fit.nested[w] == pytest.approx(alone.weights), w


def test_when_only_one_window_is_there_to_fit_on_then_auto_shrinkage_falls_back_to_the_default():
    from chronos_flows.evaluation.ensemble import fit_weights
    from chronos_flows.models.ensemble import DEFAULT_SHRINKAGE

    df = panel(n_series=6, noise=1.0)
    models = {"best": Shifted(0.3, spread=1.2), "up": Shifted(2.0)}
    bt = backtest(models, df, n_windows=2)
    fit = fit_weights(bt, df, list(models), gate_metric="wql", shrinkage="auto", judge_windows=[1])
    assert fit.nested_shrinkage == {1: DEFAULT_SHRINKAGE}  # the nested fit has window 0 alone
    assert fit.shrinkage in (0.0, 0.25, 0.5, 0.75, 1.0) and len(fit.shrinkage_scores) == 5


def test_when_shrinkage_is_neither_a_level_nor_auto_then_the_config_and_the_fit_refuse_it():
    from pydantic import ValidationError

    from chronos_flows.config.sections import EvaluationConfig
    from chronos_flows.evaluation.ensemble import fit_weights

    assert EvaluationConfig().ensemble_shrinkage == "auto"
    assert EvaluationConfig(ensemble_shrinkage="0.25").ensemble_shrinkage == 0.25
    for bad in ("sometimes", 1.5, -0.1):
        with pytest.raises(ValidationError, match="ensemble_shrinkage"):
            EvaluationConfig(ensemble_shrinkage=bad)
    df = panel(n_series=4)
    models = {"a": Shifted(0.3), "b": Shifted(2.0)}
    bt = backtest(models, df)
    with pytest.raises(BadInputError, match="'auto'"):
        fit_weights(bt, df, list(models), gate_metric="wql", shrinkage="sometimes")
