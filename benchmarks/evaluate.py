"""Benchmark the evaluation step on shipped data (offline).

Measures:

1. Prophet fit + forecast time per series, serial (``n_jobs=1``) vs parallel (``n_jobs=2``, fork
   processes on both cores), and the speed-up ratio; checks the forecasts are identical.
2. The evaluation overhead per series and window, excluding model fitting: ``run_backtest``'s wall
   time minus the time spent inside the forecasters' ``predict`` (window splitting, merging,
   scoring every metric, leaderboard), with Seasonal Naive and a precomputed-forecast model.
3. ``write_outputs`` time (Parquet, CSV, report, three PNG plots).

Usage::

    python benchmarks/evaluate.py [--series 42] [--horizon 12] [--windows 3] [--json out.json]

Data: ``data/aus_livestock.csv`` (42 monthly series × 120 points) and ``data/us_gasoline.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chronos_flows.evaluation.backtest import run_backtest, write_outputs  # noqa: E402
from chronos_flows.models.base import DEFAULT_QUANTILES, Forecaster  # noqa: E402
from chronos_flows.models.local.prophet import ProphetForecaster  # noqa: E402
from chronos_flows.models.local.seasonal_naive import SeasonalNaive  # noqa: E402


class Replay(Forecaster):
    """Returns forecasts computed beforehand (zero model time): isolates the evaluation overhead."""

    name = "replay"

    def __init__(self, table: pd.DataFrame):
        self.table = table

    def predict(self, context, horizon, freq, quantiles=DEFAULT_QUANTILES):
        last = context.groupby("unique_id")["ds"].max().rename("cutoff").reset_index()
        fc = self.table.merge(last, on=["unique_id", "cutoff"])
        return fc.drop(columns=["cutoff"])


def bench_prophet(panel: pd.DataFrame, horizon: int, freq: str) -> dict:
    n = panel["unique_id"].nunique()
    out = {"series": n, "horizon": horizon, "cores": os.cpu_count()}
    # warm-up: import prophet/cmdstanpy once so neither timing pays it (forked workers inherit it)
    first = panel["unique_id"].iloc[0]
    ProphetForecaster(n_jobs=1).predict(panel[panel["unique_id"] == first], horizon, freq)
    forecasts = {}
    for jobs in ((1, 2) if n > 1 else (1,)):
        model = ProphetForecaster(n_jobs=jobs)
        t0 = time.perf_counter()
        forecasts[jobs] = model.predict(panel, horizon, freq)
        dt = time.perf_counter() - t0
        out[f"n_jobs_{jobs}_seconds"] = round(dt, 3)
        out[f"n_jobs_{jobs}_seconds_per_series"] = round(dt / n, 4)
        out[f"n_jobs_{jobs}_failures"] = len(model.last_failures)
    if 2 in forecasts:
        out["speedup"] = round(out["n_jobs_1_seconds"] / out["n_jobs_2_seconds"], 2)
        out["parallel_equals_serial"] = bool(forecasts[1].equals(forecasts[2]))
    return out


def bench_overhead(panel: pd.DataFrame, horizon: int, windows: int, freq: str, season: int) -> dict:
    step = horizon
    # precompute the forecasts (Seasonal Naive) so the replay model costs ~nothing
    first = run_backtest({"seasonal_naive": SeasonalNaive(season)}, panel, horizon=horizon, n_windows=windows,
                         step=step, freq=freq, season_length=season)
    table = first.forecasts.drop(columns=["window", "model", "y"])
    runs = []
    for _ in range(3):
        res = run_backtest({"seasonal_naive": SeasonalNaive(season), "replay": Replay(table)}, panel,
                           horizon=horizon, n_windows=windows, step=step, freq=freq, season_length=season)
        runs.append(res)
    best = min(runs, key=lambda r: r.timings["evaluation"])
    n = panel["unique_id"].nunique()
    units = n * windows * 2  # series × windows × models scored
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_outputs(best, Path(tmp) / "evaluation", history=panel, plot_series=3)
        write_s = time.perf_counter() - t0
    return {
        "series": n,
        "windows": windows,
        "models": 2,
        "evaluation_seconds": best.timings["evaluation"],
        "predict_seconds": {k: v for k, v in best.timings.items() if k.startswith("predict_")},
        "overhead_ms_per_series_window_model": round(1000 * best.timings["evaluation"] / units, 3),
        "overhead_ms_per_series_window": round(1000 * best.timings["evaluation"] / (n * windows), 3),
        "write_outputs_seconds": round(write_s, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=42, help="livestock series used (max 42)")
    ap.add_argument("--horizon", type=int, default=12)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    livestock = pd.read_csv(ROOT / "data" / "aus_livestock.csv", parse_dates=["ds"])
    ids = livestock["unique_id"].unique()[: args.series]
    panel = livestock[livestock["unique_id"].isin(ids)].reset_index(drop=True)
    gasoline = pd.read_csv(ROOT / "data" / "us_gasoline.csv", parse_dates=["ds"])

    results = {
        "prophet_monthly_panel": bench_prophet(panel, args.horizon, "MS"),
        "prophet_gasoline_weekly": bench_prophet(gasoline, 26, "W-MON"),
        "evaluation_overhead": bench_overhead(panel, args.horizon, args.windows, "MS", 12),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
