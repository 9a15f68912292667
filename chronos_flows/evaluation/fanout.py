"""Split a panel into chunks of series, backtest a local baseline on one chunk, join the chunks.

A local family (AutoETS, Theta, Prophet) fits each series on its own, and the backtest windows are
cut per series (:func:`chronos_flows.evaluation.windows.backtest_cutoffs`), so a chunk of series gives exactly
the rows the whole panel would for those series. :func:`series_chunks` cuts the panel into
contiguous runs of sorted series ids, :func:`backtest_chunk` backtests one (a picklable call with
plain arguments: it runs in the flow's process or on a Dask worker), and :func:`join_chunks` puts
the rows back in the order :func:`chronos_flows.evaluation.backtest.run_backtest` gives the whole panel
(window, then series) before the leaderboard is rebuilt, so the numbers are identical however the
panel was chunked and wherever the chunks ran.

:func:`chunk_key` is what makes a chunk's result reusable: the chunk's data fingerprint, the
model's configuration, the windows and the code that computes the backtest. Pure: no Prefect.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.evaluation.backtest import BacktestResult, build_leaderboard, run_backtest
from chronos_flows.data.ingest import fingerprint
from chronos_flows.models.base import ID, TARGET, TIME

_PKG = Path(__file__).resolve().parents[1]
#: the modules a baseline backtest's numbers depend on (their bytes are part of the cache key)
_CODE = ("evaluation/backtest.py", "evaluation/metrics.py", "evaluation/windows.py", "evaluation/fanout.py",
         "models/base.py", "models/local/common.py", "models/local/parallel.py", "models/families.py")
_FAMILY_MODULE = {"autoets": "models/local/ets.py", "theta": "models/local/theta.py", "prophet": "models/local/prophet.py",
                  "seasonal_naive": "models/local/seasonal_naive.py", "lightgbm": "models/global_boost.py"}


def series_chunks(history: pd.DataFrame, chunk_series: int) -> list[pd.DataFrame]:
    """``history`` (unique_id, ds, y) cut into frames of at most ``chunk_series`` series each,
    contiguous in sorted series id, in that order."""
    if chunk_series < 1:
        raise BadInputError(f"chunk_series must be at least 1 (got {chunk_series})")
    frame = history[[ID, TIME, TARGET]]
    ids = sorted(frame[ID].unique())
    if len(ids) <= chunk_series:
        return [frame]
    of = pd.Series(range(len(ids)), index=ids) // chunk_series
    groups = frame.groupby(frame[ID].map(of), sort=True)
    return [g for _, g in groups]


def backtest_chunk(family: str, config: Mapping[str, Any], chunk: pd.DataFrame, windows: Mapping[str, Any], n_jobs: int = 1) -> BacktestResult:
    """Backtest local ``family`` (re-created from ``config``) on the series of ``chunk``;
    ``windows``: horizon, n_windows, step, freq, season_length, quantiles."""
    from chronos_flows.models.families import local_forecaster

    model = local_forecaster(family, config, n_jobs=n_jobs)
    return run_backtest({family: model}, chunk, **windows)


def join_chunks(parts: Sequence[BacktestResult]) -> BacktestResult:
    """One result for the whole panel from the results of its chunks (same models and windows,
    disjoint series, in :func:`series_chunks` order)."""
    if not parts:
        raise BadInputError("join_chunks needs at least one chunk result")
    first = parts[0]
    if len(parts) == 1:
        return first
    models = list(first.failures)
    forecasts = pd.concat([p.forecasts for p in parts], ignore_index=True)
    metrics = pd.concat([p.metrics for p in parts], ignore_index=True)
    # run_backtest's order: window by window, series in id order within a window (floating-point
    # sums, hence the leaderboard, depend on it)
    forecasts = forecasts.sort_values("window", kind="stable", ignore_index=True)
    metrics = metrics.sort_values("window", kind="stable", ignore_index=True)
    cutoffs = pd.concat([p.cutoffs for p in parts], ignore_index=True)
    failures = {m: {uid: msg for p in parts for uid, msg in p.failures.get(m, {}).items()} for m in models}
    leaderboard = build_leaderboard(metrics, forecasts, models, failures, first.settings["quantiles"])
    timings: dict[str, float] = {}
    for p in parts:
        for k, v in p.timings.items():
            timings[k] = round(timings.get(k, 0.0) + v, 4)
    settings = {**first.settings, "n_series": int(sum(p.settings["n_series"] for p in parts))}
    return BacktestResult(forecasts, metrics, leaderboard, failures, cutoffs, settings, timings)


def code_fingerprint(family: str) -> str:
    """sha256 of the source files the numbers of ``family``'s backtest depend on."""
    h = hashlib.sha256(b"chronos-flows/backtest-code/v1\n")
    for name in (*_CODE, _FAMILY_MODULE[family]):
        h.update(name.encode() + b"\0" + (_PKG / name).read_bytes())
    return h.hexdigest()


def chunk_key(family: str, config: Mapping[str, Any], chunk: pd.DataFrame, windows: Mapping[str, Any]) -> str:
    """The cache key of a chunk's backtest: equal keys give equal results."""
    doc = {"family": family, "config": dict(config), "windows": dict(windows), "data": fingerprint(chunk), "code": code_fingerprint(family)}
    return "backtest-" + hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
