"""Batch forecasting tasks: thin wrappers over chronos_flows.forecasting.batch and the store.

The series are forecast as ``forecast-chunk`` tasks (one per ``chunk_size`` series) on the runner of
``params.compute`` (:func:`tasks.runners.chunk_runner`): one after another in the flow's process by
default, on a Dask cluster with ``compute.task_runner=dask``; each process loads the champion once."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import replace
from functools import partial
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from blocks.store import read_uri
from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.data.cleaning import CleaningReport, clean
from chronos_flows.config.params import ForecastParams, resolve_data_path
from chronos_flows.core.errors import BadInputError
from chronos_flows.forecasting.batch import (
    ForecastInputs,
    ForecastRun,
    ParquetSink,
    champion_forecaster,
    check_frequency,
    forecast_columns,
    no_champion_message,
    plot_forecast_png,
    resolve_inputs,
)
from chronos_flows.forecasting.chunks import ChunkPlan, add_chunk, fail_chunk, forecast_chunk, plan_chunks
from chronos_flows.data.ingest import fingerprint, load_dataset
from chronos_flows.models.base import Forecaster
from chronos_flows.champion.registry import read_champion
from chronos_flows.core.retry import OutageLog, retry_while, time_budget
from chronos_flows.core.store import ObjectStore, put_file, single_attempt
from tasks.common import ON_TRANSIENT, Progress, image_markdown, logger, markdown_artifact, table_artifact
from tasks.runners import chunk_runner


def load_forecast_data(params: ForecastParams, champion: dict[str, Any]) -> tuple[ForecastInputs, pd.DataFrame, CleaningReport]:
    """Resolve the batch's inputs, read and clean the data as training does, check its frequency.
    Shared by the CLI's preflight and the flow; writes nothing."""
    inputs = resolve_inputs(params, champion)
    if not inputs.data.path:  # the form's empty data file: the shipped example, resolved now
        inputs = replace(inputs, data=inputs.data.model_copy(update={"path": resolve_data_path(None)}))
    raw = load_dataset(inputs.data.path, inputs.data, fetch=read_uri)
    cleaned, report = clean(raw, inputs.cleaning, min_length=inputs.min_history, horizon=0)
    check_frequency(report.freq, champion, inputs.data.path)
    return inputs, cleaned, report


@task(name="read-champion", **ON_TRANSIENT)
def read_champion_for_forecast(store: ObjectStore, env: str) -> dict[str, Any]:
    """One consistent read of champion.json (writes to it are atomic compare-and-swaps)."""
    doc, _ = read_champion(store, env)
    if doc is None:
        raise BadInputError(no_champion_message(env))
    logger().info("champion of %s: %s from run %s (%s %.4g)", env, doc["family"], doc["run_id"], doc.get("gate_metric"), doc.get("score") or float("nan"))
    return doc


@task(name="load-forecast-data", **ON_TRANSIENT)
def prepare_data(params: ForecastParams, champion: dict[str, Any]) -> tuple[ForecastInputs, pd.DataFrame, CleaningReport]:
    inputs, cleaned, report = load_forecast_data(params, champion)
    logger().info(
        "forecast data %s: %d series, %d rows, freq %s, %d series dropped by cleaning",
        inputs.data.path, report.series_out, report.rows_out, report.freq, len(report.dropped),
    )
    return inputs, cleaned, report


# -------------------------------------------------------------------------- chunks of series as tasks

_MODEL_LOCK = threading.Lock()
#: this process's champion forecaster: {"key": ..., "model": ..., "dir": Path} (one at a time)
_MODEL: dict[str, Any] = {}


def _drop_model() -> None:
    if _MODEL.get("dir") is not None:
        shutil.rmtree(_MODEL["dir"], ignore_errors=True)
    _MODEL.clear()


atexit.register(_drop_model)


def champion_model(store: ObjectStore | str, env: str, champion: dict[str, Any], *, device: str, n_jobs: int) -> Forecaster:
    """The champion's forecaster, loaded once per process (the flow's, or each Dask worker's) and
    reused by every chunk: keyed by the champion's ``write_id`` (a new promotion loads the new one
    and frees the old). ``store``: the store, or its URL (opened here, on the worker)."""
    url = store if isinstance(store, str) else getattr(store, "url", repr(store))
    key = (url, env, champion.get("write_id") or champion.get("run_id"), champion.get("family"), device, n_jobs)
    with _MODEL_LOCK:
        if _MODEL.get("key") != key:
            _drop_model()
            workdir = Path(tempfile.mkdtemp(prefix="chronos-forecast-model-"))
            try:
                opened = open_store(store) if isinstance(store, str) else store
                model = champion_forecaster(opened, env, champion, workdir, device=device, n_jobs=n_jobs)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            _MODEL.update(key=key, model=model, dir=workdir)
        return _MODEL["model"]


@task(name="forecast-chunk", task_run_name="forecast-chunk-{index}-{label}", cache_policy=NONE, persist_result=False)
def forecast_chunk_task(
    store: ObjectStore | str, env: str, champion: dict[str, Any], frame: pd.DataFrame, horizon: int, freq: str,
    quantiles: list[float], family: str, min_history: int, device: str, n_jobs: int, index: int = 0, label: str = "",
) -> tuple[pd.DataFrame, ForecastRun]:
    """Forecast one chunk of series (in the flow's process or on a Dask worker) with the champion
    loaded once per process; returns the chunk's rows and counts."""
    model = champion_model(store, env, champion, device=device, n_jobs=n_jobs)
    return forecast_chunk(model, frame, horizon=horizon, freq=freq, quantiles=quantiles, family=family,
                          champion_run_id=champion["run_id"], min_history=min_history)


def _in_flight(runner: Any, params: ForecastParams) -> int:
    """Chunks submitted ahead of the one being written: the setting, else twice the runner's workers."""
    if params.compute.max_chunks_in_flight:
        return params.compute.max_chunks_in_flight
    workers = 1
    if params.compute.task_runner == "dask":
        try:
            workers = sum(runner.client.nthreads().values()) or 1
        except Exception:  # an adaptive cluster without workers yet, an old client: a modest default
            workers = 2
    return 2 * workers


def forecast(
    store: ObjectStore, params: ForecastParams, champion: dict[str, Any], inputs: ForecastInputs,
    cleaned: pd.DataFrame, freq: str, forecast_id: str, workdir: Path,
) -> tuple[Path, ForecastRun, dict[str, pd.DataFrame]]:
    """Forecast every series as ``forecast-chunk`` tasks of ``chunk_size`` series on the configured
    runner (local: one after another in this process; dask: on the cluster), appending each chunk to a
    local Parquet file in chunk order as its future completes, with at most a bounded number of chunks in
    flight; only the first rows and the plotted series stay in memory (returned for the artifacts). A chunk
    that fails is reported as skipped series; BadInputError when no series could be forecast."""
    dask = params.compute.task_runner == "dask"
    if not dask:  # loaded here, before the clock starts (as before the fan-out); the chunk tasks reuse it
        champion_model(store, params.env, champion, device=params.device, n_jobs=params.n_jobs)
    t_start = time.perf_counter()
    plan = plan_chunks(cleaned, horizon=inputs.horizon, quantiles=inputs.quantiles, min_history=inputs.min_history,
                       family=inputs.family, chunk_size=params.chunk_size)
    run = ForecastRun(skipped=dict(plan.skipped))
    path = workdir / "forecasts.parquet"
    sink = ParquetSink(path, forecast_columns(inputs.quantiles), preview_series=params.plot_series)
    common = {"store": params.store_url() if dask else store, "env": params.env, "champion": champion,
              "horizon": inputs.horizon, "freq": freq, "quantiles": list(inputs.quantiles), "family": inputs.family,
              "min_history": inputs.min_history, "device": params.device, "n_jobs": 1 if dask else params.n_jobs}
    try:
        with chunk_runner(params.compute.runner_config()) as runner:
            _stream_chunks(runner, plan, common, run, sink, forecast_id, _in_flight(runner, params), params)
    finally:
        sink.close()
    run.total_seconds = time.perf_counter() - t_start
    if not sink.rows:
        raise BadInputError(
            f"the {inputs.family} champion could not forecast any series of {inputs.data.path}: "
            + "; ".join(f"{k}: {v}" for k, v in list(run.skipped.items())[:5])
        )
    for uid, why in run.skipped.items():
        logger().warning("series %s skipped: %s", uid, why)
    return path, run, {"head": sink.head, "preview": sink.preview}


def _stream_chunks(runner: Any, plan: ChunkPlan, common: dict[str, Any], run: ForecastRun, sink: ParquetSink,
                   forecast_id: str, in_flight: int, params: ForecastParams) -> None:
    """Submit the chunks (at most ``in_flight`` ahead), write each to ``sink`` in chunk order."""
    family = common["family"]
    bar = Progress(f"forecast-progress-{forecast_id}", f"Series forecast by the {family} champion")
    logger().info("forecast: %d series in %d chunks of up to %d on the %s runner (%d in flight)",
                  plan.n_series, len(plan), params.chunk_size, params.compute.task_runner, in_flight)
    pending: deque = deque()
    submitted = done = 0
    while submitted < len(plan) or pending:
        while submitted < len(plan) and len(pending) < in_flight:
            i = submitted
            fut = runner.submit(forecast_chunk_task, {**common, "frame": plan.frame(i), "index": i, "label": plan.label(i)})
            pending.append((i, fut))
            submitted += 1
        i, fut = pending.popleft()
        try:
            fc, part = fut.result()
        except Exception as exc:  # a chunk lost on a worker: its series are skipped, the batch goes on
            reason = fail_chunk(run, plan.ids(i), i, plan.label(i), exc)
            logger().warning("%s (%d series reported skipped)", reason, len(plan.chunks[i]))
        else:
            if len(fc):
                sink(fc)
            add_chunk(run, part)
        del fut
        done += len(plan.chunks[i])
        bar.update(done, plan.n_series)
        logger().info("forecast: %d/%d series", done, plan.n_series)


#: how long publishing waits through a store outage (retrying with backoff and jitter) before the
#: step fails; the forecasts are made by then, so waiting is cheaper than redoing them
PUBLISH_OUTAGE_SECONDS = 600.0


@task(name="publish-forecasts", **ON_TRANSIENT)
def publish(
    store: ObjectStore, params: ForecastParams, champion: dict[str, Any], inputs: ForecastInputs, report: CleaningReport,
    cleaned: pd.DataFrame, path: Path, run: ForecastRun, forecast_id: str, started_at: str,
    preview: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Write forecasts.parquet (streamed from the local file), then forecast.json (its presence
    marks a complete batch); publish the summary, the head of the table and plots as Prefect
    artifacts, from ``preview`` (the first rows and plotted series), never a read-back of the file."""
    prefix = layout.forecasts_prefix(params.env, forecast_id)
    # the forecasts are made: through a store outage they wait (backoff and jitter, for up to
    # PUBLISH_OUTAGE_SECONDS) rather than the whole step failing
    outages = OutageLog()
    durable = partial(retry_while, alive=time_budget(PUBLISH_OUTAGE_SECONDS), outages=outages)
    writer = single_attempt(store)  # one attempt per request: the retries here, in time, decide
    durable(lambda: put_file(writer, f"{prefix}/forecasts.parquet", path), what="forecasts.parquet")
    skipped = {**{k: f"dropped by cleaning: {v}" for k, v in report.dropped.items()}, **run.skipped}
    doc = {
        "schema_version": 1,
        "forecast_id": forecast_id,
        "env": params.env,
        "created_at": started_at,
        "completed_at": datetime.now(timezone.utc).isoformat(),
        "champion": {k: champion.get(k) for k in ("run_id", "family", "model_uri", "config", "gate_metric", "score", "promoted_at", "write_id")},
        "data": {"source": inputs.data.path, "fingerprint": fingerprint(cleaned[["unique_id", "ds", "y"]]), "freq": report.freq,
                 "series_in": report.series_in, "rows": report.rows_out},
        "horizon": inputs.horizon,
        "quantiles": list(inputs.quantiles),
        "counts": {"series_forecast": run.n_series, "rows": run.n_rows, "series_skipped": len(skipped), "chunks": run.chunks},
        "timings": {"predict_seconds": round(run.predict_seconds, 3), "forecast_seconds": round(run.total_seconds, 3)},
        "skipped": skipped,
        "forecasts_uri": store.uri(f"{prefix}/forecasts.parquet"),
    }
    if outages.records():
        doc["store_outages"] = outages.records()
    body = json.dumps(doc, indent=2, default=str).encode()
    durable(lambda: writer.put(f"{prefix}/forecast.json", body), what="forecast.json")
    for o in outages.records():
        logger().warning("store unreachable for %.1f s while publishing (%s); waited, then wrote", o["seconds"] or 0, ", ".join(o["waited"]))
    logger().info("wrote %d forecasts (%d series) to %s", run.n_rows, run.n_series, store.uri(prefix))

    preview = preview or {}
    head = preview.get("head", pd.DataFrame(columns=["ds"])).head(20).copy()
    head["ds"] = head["ds"].astype(str)
    summary = [
        {"field": "champion", "value": f"{champion['family']} from run {champion['run_id']}"},
        {"field": "series forecast", "value": run.n_series},
        {"field": "series skipped", "value": len(skipped)},
        {"field": "horizon", "value": inputs.horizon},
        {"field": "rows", "value": run.n_rows},
        {"field": "forecasts", "value": doc["forecasts_uri"]},
    ]
    table_artifact(f"forecast-summary-{forecast_id}", summary, f"Batch forecast {forecast_id}")
    table_artifact(f"forecast-head-{forecast_id}", [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in head.to_dict(orient="records")], "First rows of forecasts.parquet")
    frame = preview.get("preview", pd.DataFrame(columns=["unique_id"]))
    ids = sorted(frame["unique_id"].unique())[: params.plot_series]
    if ids:
        parts = [f"## Forecasts of the {champion['family']} champion (run {champion['run_id']})\n"]
        for uid in ids:
            png = plot_forecast_png(cleaned, frame, uid)
            parts.append(image_markdown(str(uid), png))
        markdown_artifact(f"forecast-plots-{forecast_id}", "\n".join(parts), "History, forecast and 10-90% interval")
    return doc


def new_workdir(forecast_id: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"chronos-forecast-{forecast_id}-"))
