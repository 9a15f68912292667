"""Benchmark the baselines' backtest as the panel grows: wall time and peak memory per series.

For each panel size (synthetic monthly series, 60 points, trend + season + noise) and each engine:

* ``local-1``: ``compute.task_runner=local``, the family's fits in 1 process;
* ``local-2``: ``compute.task_runner=local``, 2 processes (fork);
* ``dask-2``:  ``compute.task_runner=dask`` against a ``distributed.LocalCluster`` of 2 worker
  processes (1 thread each) on 127.0.0.1, started once beforehand (its start-up time is printed
  separately, not counted),

it runs the flow's baseline step (``tasks.evaluate.backtest_baseline``: one Prefect task per
``compute.chunk_series`` series on that runner, ``compute.cache=false`` so every fit is real)
inside a Prefect flow and prints the wall time, the wall time per series, the peak resident memory
of this process and all its children (process pool or Dask workers, sampled every 0.1 s) and the
peak's increase over the idle level per series. Per-series cost should stay flat as the panel grows.

Then, on the same panel and engine, it runs the ``chronos-forecast`` flow (batch forecasts, horizon
6) with a champion of the same family and configuration (seeded in a temporary store): one
``forecast-chunk`` task per ``--chunk-series`` series on that runner (``local-1``/``local-2``:
``compute.task_runner=local`` with ``n_jobs`` 1/2; ``dask-2``: ``compute.dask_address`` of the same
cluster), and prints its wall time (the whole flow, including reading and cleaning the data and
writing forecasts.parquet), ms per series and peak memory (``--no-forecast`` skips it).

Usage::

    python benchmarks/scale.py [--sizes 200 2000 20000] [--family autoets] [--engines local-1 local-2 dask-2]
                               [--chunk-series 100] [--no-forecast] [--json out.json]

Prefect: uses ``PREFECT_API_URL`` when set, else an ephemeral server; results (persisted for the
cache) go to a temporary ``PREFECT_HOME`` removed at the end unless ``PREFECT_HOME`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_TMP_HOME = None
if "PREFECT_HOME" not in os.environ:
    _TMP_HOME = tempfile.mkdtemp(prefix="chronos-flows-scale-prefect-")
    os.environ["PREFECT_HOME"] = _TMP_HOME
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402

ENGINES = ("local-1", "local-2", "dask-2")


def panel(n: int, length: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(20, 200, n)[:, None]
    trend = rng.normal(0.2, 0.1, n)[:, None]
    amp = rng.uniform(1, 10, n)[:, None]
    y = level + trend * t + amp * np.sin(2 * np.pi * t / 12 + rng.uniform(0, 6.3, n)[:, None]) + rng.normal(0, 1, (n, length))
    ds = pd.date_range("2015-01-01", periods=length, freq="MS")
    return pd.DataFrame({"unique_id": np.repeat([f"s{i:06d}" for i in range(n)], length), "ds": np.tile(ds, n), "y": y.ravel()})


class PeakRss:
    """Peak resident memory (bytes) of this process plus all its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.1) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self.me = psutil.Process()

    def now(self) -> int:
        total = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakRss":
        self.idle = self.now()
        self.peak = self.idle
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def seed_champion(store_dir: Path, family: str, config: dict) -> None:
    """A store whose ``dev`` champion is ``family`` with ``config``, judged on monthly data (horizon 6)."""
    from blocks.store import LocalStore
    from chronos_flows.config.params import QUANTILES
    from chronos_flows.champion.registry import decide_champion, promote

    entry = {"run_id": "scale-champion", "family": family, "config": config,
             "judged_on": {"freq": "MS", "horizon": 6, "quantiles": list(QUANTILES), "season_length": 12}}
    if not promote(LocalStore(store_dir), "dev", entry, decide_champion({family: {"wql": 0.1}}, None), None):
        raise RuntimeError(f"could not seed the benchmark's champion in {store_dir}")


def forecast_once(store_dir: Path, path: Path, n: int, engine: str, chunk_series: int, cluster) -> dict:
    """Run the chronos-forecast flow on the panel at ``path`` with ``engine``; its timings and memory."""
    from chronos_flows.config.params import ForecastParams
    from flows.forecast import chronos_forecast

    compute = {"task_runner": "dask", "dask_address": cluster.scheduler_address} if engine == "dask-2" else {}
    params = ForecastParams(store=str(store_dir), forecast_id=f"scale-{n}-{engine}", horizon=6, chunk_size=chunk_series,
                            n_jobs=2 if engine == "local-2" else 1, plot_series=0, compute=compute,
                            data={"path": str(path), "format": "parquet"})
    with PeakRss() as mem:
        t0 = time.perf_counter()
        doc = chronos_forecast(params=params)
        seconds = time.perf_counter() - t0
    return {"forecast_wall_s": round(seconds, 3), "forecast_ms_per_series": round(1000 * seconds / n, 2),
            "forecast_seconds": doc["timings"]["forecast_seconds"], "forecast_peak_mb": round(mem.peak / 2**20, 1),
            "forecast_skipped": doc["counts"]["series_skipped"], "forecast_chunks": doc["counts"]["chunks"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 20000])
    ap.add_argument("--family", default="autoets", choices=["autoets", "theta", "prophet"])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--chunk-series", type=int, default=100)
    ap.add_argument("--no-forecast", action="store_true", help="skip the batch forecast (chronos-forecast flow) measurements")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    from prefect import flow

    from chronos_flows.config.params import build_params
    from tasks.evaluate import backtest_baseline
    from tasks.runners import chunk_runner as baseline_runner
    from chronos_flows.training.specs import RunSpec

    # the panel is handed over as a file, outside the flow's parameters (the API caps their size) and
    # outside this closure (prefect-dask ships the flow with every task: a panel in the closure would
    # travel with each chunk)
    job: dict = {}

    @flow(name="scale-benchmark", persist_result=False)
    def run(n: int):
        params, df = job["params"], pd.read_parquet(job["path"])
        spec = RunSpec(params=params, store=None, run_id=f"scale-{n}", workdir=None)
        with baseline_runner(params.compute) as runner:
            t0 = time.perf_counter()
            record = backtest_baseline(spec, args.family, df, "MS", 12, runner)
            return time.perf_counter() - t0, record.info()

    cluster = None
    if "dask-2" in args.engines:
        from distributed import LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
        print(f"Dask LocalCluster (2 workers) started in {time.perf_counter() - t0:.1f} s (not counted below)")

    base = ["evaluation.horizon=6", "evaluation.n_windows=2", "evaluation.ensemble=false", "compute.cache=false",
            f"compute.chunk_series={args.chunk_series}"]
    rows = []
    print(f"{args.family}, 60-point monthly series, horizon 6, 2 windows, {args.chunk_series} series per chunk")
    forecast = not args.no_forecast
    fc_head = f" {'fc wall s':>9} {'fc ms/ser':>9} {'fc MB':>6}" if forecast else ""
    print(f"{'series':>7} {'engine':>8} {'wall s':>8} {'ms/series':>10} {'peak MB':>8} {'KB/series':>10} {'failed':>6}{fc_head}")
    store_dir = Path(tempfile.mkdtemp(prefix="chronos-flows-scale-store-"))
    if forecast:
        from chronos_flows.models.families import baseline_config

        seed_champion(store_dir, args.family, baseline_config(build_params(overrides=base), args.family, 12))
    try:
        for n in args.sizes:
            path = Path(_TMP_HOME or tempfile.gettempdir()) / f"scale-panel-{n}.parquet"
            panel(n).to_parquet(path, index=False)
            for engine in args.engines:
                over = [f"{args.family}.n_jobs={2 if engine == 'local-2' else 1}"]
                if engine == "dask-2":
                    over += ["compute.task_runner=dask", f"compute.dask_address={cluster.scheduler_address}"]
                job.update(params=build_params(overrides=base + over), path=str(path))
                with PeakRss() as mem:
                    seconds, info = run(n)
                row = {"series": n, "engine": engine, "wall_s": round(seconds, 3), "ms_per_series": round(1000 * seconds / n, 2),
                       "peak_mb": round(mem.peak / 2**20, 1), "kb_per_series": round((mem.peak - mem.idle) / 1024 / n, 1),
                       "failed": len(info["failures"]), "chunks": info["chunks"]}
                fc_cols = ""
                if forecast:
                    row.update(forecast_once(store_dir, path, n, engine, args.chunk_series, cluster))
                    fc_cols = f" {row['forecast_wall_s']:>9.1f} {row['forecast_ms_per_series']:>9.1f} {row['forecast_peak_mb']:>6.0f}"
                rows.append(row)
                print(f"{n:>7} {engine:>8} {seconds:>8.1f} {row['ms_per_series']:>10.1f} {row['peak_mb']:>8.0f} "
                      f"{row['kb_per_series']:>10.1f} {row['failed']:>6}{fc_cols}", flush=True)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
        if cluster is not None:
            cluster.close()
        if _TMP_HOME:
            shutil.rmtree(_TMP_HOME, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
