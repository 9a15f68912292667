"""Benchmark batch forecasting from a champion (offline, CPU).

Prints:

1. Chronos batch-forecast throughput (series/s) of ``forecast_panel`` with a Chronos champion on a
   synthetic panel (default 2,000 weekly series × 300 points, horizon 13, a random-initialised
   Chronos-2 of ``--size``: no weights can be downloaded here), against a bare upstream
   ``Chronos2Pipeline.predict_quantiles`` loop over the same chunks and batch size, and their
   ratio (ours / bare) measured in this one run; best of ``--repeat``. Ours starts from the long
   frame (one pass to find each series' rows — no sort or copy of a grouped, time-sorted panel —
   then one output frame per chunk); the bare loop starts from ready tensors, so with the ``tiny``
   model (~0.1 ms per series) that fixed work shows. Also upstream ``predict_df`` chunk by chunk
   from the same long frame (what the batch path would call if it did not build frames itself;
   tests/test_predict_df.py checks both give the same forecasts). Ratios move by ±0.1 on a busy machine:
   compare on a quiet one.
2. Peak RSS of the process after the Chronos part.
3. AutoETS and Prophet series/s with 1 and 2 processes on a smaller panel (``--local-series``).

Usage::

    python benchmarks/forecast.py [--series 2000] [--length 300] [--horizon 13] [--local-series 40]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chronos_flows.config.params import ChronosConfig  # noqa: E402
from chronos_flows.forecasting.batch import forecast_panel  # noqa: E402
from chronos_flows.models.base import ID, TARGET, TIME  # noqa: E402
from chronos_flows.models.families import local_forecaster  # noqa: E402

Q = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def synthetic_panel(n_series: int, length: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(5, 50, n_series)[:, None]
    amp = rng.uniform(0.5, 5, n_series)[:, None]
    y = level + amp * np.sin(2 * np.pi * t / 52 + rng.uniform(0, 6, n_series)[:, None]) + rng.normal(0, 1, (n_series, length))
    ds = pd.date_range("2015-01-05", periods=length, freq="W-MON")
    return pd.DataFrame({
        ID: np.repeat([f"s{i:05d}" for i in range(n_series)], length),
        TIME: np.tile(ds, n_series),
        TARGET: y.reshape(-1),
    })


def chronos_part(args) -> None:
    import torch

    from chronos_flows.models.chronos.forecasters import ChronosForecaster
    from chronos_flows.models.chronos.configs import build_random_pipeline

    torch.set_num_threads(2)
    df = synthetic_panel(args.series, args.length)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_random_pipeline("chronos-2", args.size, args.context, args.horizon, seed=0).save_pretrained(model_dir)
        cfg = ChronosConfig(family="chronos-2", context_length=args.context, batch_size=args.batch // 8, device="cpu")
        model = ChronosForecaster.load(model_dir, cfg, workdir=Path(tmp))
        pipe = model.pipeline
        batch = cfg.batch_size * 8  # what ChronosForecaster.predict passes upstream

        # the bare loop: contexts already as tensors, chunk by chunk, nothing else
        arrays = [g.to_numpy(dtype=np.float32) for _, g in df.sort_values([ID, TIME]).groupby(ID, sort=True)[TARGET]]
        ctx = [torch.from_numpy(a[-args.context:]) for a in arrays]

        def bare() -> float:
            t0 = time.perf_counter()
            for s in range(0, len(ctx), args.chunk):
                pipe.predict_quantiles(ctx[s:s + args.chunk], prediction_length=args.horizon, quantile_levels=list(Q), batch_size=batch)
            return time.perf_counter() - t0

        def ours() -> float:
            rows = []
            t0 = time.perf_counter()
            forecast_panel(model, df, horizon=args.horizon, freq="W-MON", quantiles=Q, family="chronos",
                           champion_run_id="bench", chunk_size=args.chunk, sink=lambda c: rows.append(len(c)))
            took = time.perf_counter() - t0
            assert sum(rows) == args.series * args.horizon
            return took

        # upstream's own frame builder, from the same long frame, chunk by chunk (what ours replaces)
        long = df.rename(columns={ID: "item_id", TIME: "timestamp", TARGET: "target"})
        ids = long["item_id"].unique()

        def predict_df() -> float:
            t0 = time.perf_counter()
            for s in range(0, len(ids), args.chunk):
                part = long[long["item_id"].isin(ids[s:s + args.chunk])]
                pipe.predict_df(part, prediction_length=args.horizon, quantile_levels=list(Q), batch_size=batch, freq="W-MON")
            return time.perf_counter() - t0

        bare()  # warm-up
        t_bare, t_ours, t_df = [], [], []
        for _ in range(args.repeat):  # interleaved, so all see the same machine state
            t_bare.append(bare())
            t_ours.append(ours())
            t_df.append(predict_df())
    b, o, d = min(t_bare), min(t_ours), min(t_df)
    print(f"chronos-2 {args.size} (random init), {args.series} series × context {args.context} → horizon {args.horizon}, chunk {args.chunk}, batch {batch}")
    print(f"  bare upstream predict_quantiles loop: {args.series / b:8.0f} series/s  ({b:.2f} s, best of {args.repeat})")
    print(f"  chronos-flows forecast_panel:         {args.series / o:8.0f} series/s  ({o:.2f} s, best of {args.repeat})")
    print(f"  upstream predict_df per chunk:        {args.series / d:8.0f} series/s  ({d:.2f} s, best of {args.repeat})")
    print(f"  ratio ours / bare: {b / o:.2f} (median-based {np.median(t_bare) / np.median(t_ours):.2f})")
    print(f"  ratio ours / predict_df: {d / o:.2f} (median-based {np.median(t_df) / np.median(t_ours):.2f})")
    print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def local_part(args) -> None:
    df = synthetic_panel(args.local_series, 156, seed=1)
    for family, config in (("autoets", {"season_length": 52, "model": "ZZZ", "damped": None}),
                           ("prophet", {"uncertainty_samples": 200, "seed": 0})):
        line = []
        for jobs in (1, 2):
            model = local_forecaster(family, config, n_jobs=jobs)
            t0 = time.perf_counter()
            run = forecast_panel(model, df, horizon=args.horizon, freq="W-MON", quantiles=Q, family=family,
                                 champion_run_id="bench", chunk_size=10_000, sink=lambda c: None)
            took = time.perf_counter() - t0
            line.append((jobs, run.n_series / took, took))
        speed = ", ".join(f"{j} process{'es' if j > 1 else ''}: {r:.1f} series/s ({t:.1f} s)" for j, r, t in line)
        print(f"{family}, {args.local_series} series × 156 weeks → {args.horizon}: {speed}; speed-up {line[1][1] / line[0][1]:.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--length", type=int, default=300)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--horizon", type=int, default=13)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", default="tiny", choices=["tiny", "mini", "small"], help="random-initialised Chronos-2 size")
    ap.add_argument("--local-series", type=int, default=40)
    ap.add_argument("--skip-local", action="store_true")
    args = ap.parse_args()
    chronos_part(args)
    if not args.skip_local:
        local_part(args)


if __name__ == "__main__":
    main()
