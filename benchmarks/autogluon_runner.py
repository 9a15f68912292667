"""AutoGluon-TimeSeries on our backtest windows (runs in AutoGluon's own virtualenv; see benchmarks/autogluon.py).

    AG_PYTHON benchmarks/autogluon_runner.py PANEL.parquet SPEC.json OUT.parquet

``PANEL.parquet``: the long panel (``unique_id, ds, y``). ``SPEC.json``: ``{"horizon", "freq", "quantiles",
"hyperparameters", "seed", "cutoffs": [{"unique_id", "window", "cutoff"}...]}``. For every window, one
``TimeSeriesPredictor`` is fitted on each series up to its cutoff (AutoGluon's own validation split inside
that history) and every trained model, its WeightedEnsemble included, forecasts the ``horizon`` steps after
the cutoff. ``OUT.parquet``: ``model, window, unique_id, ds, mean, <quantile columns>``, plus one row per
window and model with its fit seconds in ``OUT.parquet.json``. Imports only pandas and AutoGluon, so the
project's own pins do not meet AutoGluon's.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def main(panel_path: str, spec_path: str, out_path: str) -> int:
    from autogluon.timeseries import TimeSeriesDataFrame, TimeSeriesPredictor

    spec = json.loads(Path(spec_path).read_text())
    df = pd.read_parquet(panel_path)
    df["ds"] = pd.to_datetime(df["ds"])
    cut = pd.DataFrame(spec["cutoffs"])
    cut["cutoff"] = pd.to_datetime(cut["cutoff"])
    quantiles = [float(q) for q in spec["quantiles"]]
    parts, timings = [], []
    for w, wc in cut.groupby("window", sort=True):
        train = df.merge(wc[["unique_id", "cutoff"]], on="unique_id")
        train = train[train["ds"] <= train["cutoff"]].drop(columns="cutoff")
        data = TimeSeriesDataFrame.from_data_frame(train, id_column="unique_id", timestamp_column="ds")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            predictor = TimeSeriesPredictor(prediction_length=int(spec["horizon"]), freq=spec["freq"], target="y",
                                            quantile_levels=quantiles, eval_metric="WQL", path=tmp, verbosity=0)
            predictor.fit(data, hyperparameters=spec["hyperparameters"], random_seed=int(spec.get("seed", 0)))
            fit_seconds = time.perf_counter() - t0
            for model in predictor.model_names():
                t1 = time.perf_counter()
                pred = predictor.predict(data, model=model).reset_index()
                pred = pred.rename(columns={"item_id": "unique_id", "timestamp": "ds"})
                pred.insert(0, "window", int(w))
                pred.insert(0, "model", model)
                parts.append(pred[["model", "window", "unique_id", "ds", "mean", *[str(q) for q in quantiles]]])
                timings.append({"model": model, "window": int(w), "fit_seconds": fit_seconds,
                                "predict_seconds": time.perf_counter() - t1})
        print(f"window {w}: {len(predictor.model_names())} models in {fit_seconds:.1f} s", file=sys.stderr, flush=True)
    pd.concat(parts, ignore_index=True).to_parquet(out_path, index=False)
    Path(out_path + ".json").write_text(json.dumps(timings, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    raise SystemExit(main(*sys.argv[1:]))
