"""Baseline backtests fanned out over chunks of series: the same numbers whatever the chunking and
wherever the chunks run (one after another here, or on a Dask LocalCluster of 2 worker processes)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from chronos_flows.config.params import QUANTILES, build_params
from chronos_flows.evaluation.backtest import run_backtest
from chronos_flows.evaluation.fanout import backtest_chunk, chunk_key, join_chunks, series_chunks
from chronos_flows.models.families import local_forecaster

WINDOWS = {"horizon": 6, "n_windows": 2, "step": None, "freq": "MS", "season_length": 12, "quantiles": list(QUANTILES)}


def panel(n: int = 7, length: int = 60, broken: str | None = "s03") -> pd.DataFrame:
    """``n`` monthly series (trend + season + noise); ``broken`` has a NaN in every window's context
    (AutoETS cannot fit it: a per-series failure)."""
    rng = np.random.default_rng(7)
    ds = pd.date_range("2015-01-01", periods=length, freq="MS")
    frames = []
    for i in range(n):
        t = np.arange(length)
        y = 50 + i * 5 + 0.3 * t + (3 + i) * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1 + 0.2 * i, length)
        uid = f"s{i:02d}"
        if uid == broken:
            y[5] = np.nan
        frames.append(pd.DataFrame({"unique_id": uid, "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=1)  # row order must not matter


def test_when_a_panel_is_cut_into_chunks_then_the_joined_backtest_equals_the_whole_panel_one():
    df = panel()
    whole = run_backtest({"autoets": local_forecaster("autoets", {"season_length": 12, "model": "ZZZ", "damped": None})}, df, **WINDOWS)
    chunks = series_chunks(df, 3)
    assert [sorted(c["unique_id"].unique()) for c in chunks] == [["s00", "s01", "s02"], ["s03", "s04", "s05"], ["s06"]]
    config = {"season_length": 12, "model": "ZZZ", "damped": None}
    joined = join_chunks([backtest_chunk("autoets", config, c, WINDOWS) for c in chunks])

    pd.testing.assert_frame_equal(joined.leaderboard, whole.leaderboard, check_exact=True)
    pd.testing.assert_frame_equal(joined.metrics, whole.metrics, check_exact=True)
    pd.testing.assert_frame_equal(joined.forecasts, whole.forecasts, check_exact=True)
    pd.testing.assert_frame_equal(joined.cutoffs, whole.cutoffs, check_exact=True)
    assert joined.failures == whole.failures and set(joined.failures["autoets"]) == {"s03"}
    assert joined.settings == whole.settings and joined.settings["n_series"] == 7


def test_when_a_chunk_or_its_inputs_change_then_its_cache_key_changes_and_only_then():
    df = panel(broken=None)
    config = {"season_length": 12, "model": "ZZZ", "damped": None}
    chunk = series_chunks(df, 3)[0]
    key = chunk_key("autoets", config, chunk, WINDOWS)
    assert chunk_key("autoets", config, chunk.sample(frac=1.0, random_state=3), WINDOWS) == key  # row order is not content
    changed = chunk.copy()
    changed.loc[changed.index[0], "y"] += 1e-9
    assert chunk_key("autoets", config, changed, WINDOWS) != key
    assert chunk_key("autoets", {**config, "damped": True}, chunk, WINDOWS) != key
    assert chunk_key("autoets", config, chunk, {**WINDOWS, "n_windows": 3}) != key
    assert chunk_key("theta", {"season_length": 12, "decomposition_type": "multiplicative", "model": None}, chunk, WINDOWS) != key


def _run_baselines(params, df):
    """The flow's baseline step (tasks.evaluate.backtest_baseline on the configured runner) inside a flow."""
    from prefect import flow

    from tasks.evaluate import backtest_baseline
    from tasks.runners import chunk_runner as baseline_runner
    from chronos_flows.training.specs import RunSpec

    @flow(name="fanout-test", persist_result=False)
    def baselines():
        spec = RunSpec(params=params, store=None, run_id=f"fanout-{params.compute.task_runner}", workdir=None)
        out = {}
        with baseline_runner(params.compute) as runner:
            for family in ("autoets", "theta"):
                out[family] = backtest_baseline(spec, family, df, "MS", 12, runner)
        return out

    return baselines()


def test_when_baselines_run_on_a_dask_local_cluster_then_the_numbers_equal_the_local_runner(prefect_api):
    df = panel(n=6)
    # compute.cache=false: both runners really fit (the second would otherwise reuse the first's results)
    base = ["evaluation.horizon=6", "evaluation.n_windows=2", "compute.chunk_series=2", "autoets.n_jobs=2", "theta.n_jobs=2",
            "compute.cache=false"]
    local = _run_baselines(build_params(overrides=base), df)
    dask_params = build_params(overrides=base + [
        "compute.task_runner=dask",
        "compute.dask_cluster_class=distributed.LocalCluster",
        'compute.dask_cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": true, "host": "127.0.0.1", "dashboard_address": null}',
    ])
    t0 = time.monotonic()
    dask = _run_baselines(dask_params, df)
    took = time.monotonic() - t0

    for family in ("autoets", "theta"):
        (lres, linfo), (dres, dinfo) = ((r.result, r.info()) for r in (local[family], dask[family]))
        assert linfo["chunks"] == dinfo["chunks"] == 3 and linfo["cached_chunks"] == dinfo["cached_chunks"] == 0
        pd.testing.assert_frame_equal(dres.leaderboard, lres.leaderboard, check_exact=True)
        pd.testing.assert_frame_equal(dres.metrics, lres.metrics, check_exact=True)
        assert dres.failures == lres.failures
    assert set(local["autoets"].failures) == {"s03"}  # a per-series failure is reported on both runners
    assert set(dask["autoets"].failures) == {"s03"}
    assert took < 60, took
