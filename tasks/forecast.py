"""Batch forecasting tasks: thin wrappers over chronos_flows.forecasting and the store."""

from __future__ import annotations

import json
from dataclasses import replace
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from blocks.store import read_uri
from chronos_flows import layout
from chronos_flows.cleaning import CleaningReport, clean
from chronos_flows.config import ForecastParams, resolve_data_path
from chronos_flows.errors import BadInputError
from chronos_flows.forecasting import (
    ForecastInputs,
    ForecastRun,
    ParquetSink,
    champion_forecaster,
    check_frequency,
    forecast_columns,
    forecast_panel,
    no_champion_message,
    plot_forecast_png,
    resolve_inputs,
)
from chronos_flows.ingest import fingerprint, load_dataset
from chronos_flows.registry import read_champion
from chronos_flows.store import ObjectStore
from tasks.common import RETRY_DELAYS, Progress, image_markdown, logger, markdown_artifact, retry_transient, table_artifact


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


@task(name="read-champion", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def read_champion_for_forecast(store: ObjectStore, env: str) -> dict[str, Any]:
    """One consistent read of champion.json (writes to it are atomic compare-and-swaps)."""
    doc, _ = read_champion(store, env)
    if doc is None:
        raise BadInputError(no_champion_message(env))
    logger().info("champion of %s: %s from run %s (%s %.4g)", env, doc["family"], doc["run_id"], doc.get("gate_metric"), doc.get("score") or float("nan"))
    return doc


@task(name="load-forecast-data", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def prepare_data(params: ForecastParams, champion: dict[str, Any]) -> tuple[ForecastInputs, pd.DataFrame, CleaningReport]:
    inputs, cleaned, report = load_forecast_data(params, champion)
    logger().info(
        "forecast data %s: %d series, %d rows, freq %s, %d series dropped by cleaning",
        inputs.data.path, report.series_out, report.rows_out, report.freq, len(report.dropped),
    )
    return inputs, cleaned, report


@task(name="forecast", cache_policy=NONE)
def forecast(
    store: ObjectStore, params: ForecastParams, champion: dict[str, Any], inputs: ForecastInputs,
    cleaned: pd.DataFrame, freq: str, forecast_id: str, workdir: Path,
) -> tuple[Path, ForecastRun, dict[str, pd.DataFrame]]:
    """Forecast every series in chunks, appending each chunk to a local Parquet file; only the
    first rows and the plotted series stay in memory (returned for the artifacts)."""
    bar = Progress(f"forecast-progress-{forecast_id}", f"Series forecast by the {inputs.family} champion")
    model = champion_forecaster(store, params.env, champion, workdir, device=params.device, n_jobs=params.n_jobs)
    path = workdir / "forecasts.parquet"
    sink = ParquetSink(path, forecast_columns(inputs.quantiles), preview_series=params.plot_series)

    def progress(done: int, total: int) -> None:
        bar.update(done, total)
        logger().info("forecast: %d/%d series", done, total)

    try:
        run = forecast_panel(
            model, cleaned, horizon=inputs.horizon, freq=freq, quantiles=inputs.quantiles, family=inputs.family,
            champion_run_id=champion["run_id"], min_history=inputs.min_history, chunk_size=params.chunk_size,
            sink=sink, progress=progress,
        )
    finally:
        sink.close()
    if not sink.rows:
        raise BadInputError(
            f"the {inputs.family} champion could not forecast any series of {inputs.data.path}: "
            + "; ".join(f"{k}: {v}" for k, v in list(run.skipped.items())[:5])
        )
    for uid, why in run.skipped.items():
        logger().warning("series %s skipped: %s", uid, why)
    return path, run, {"head": sink.head, "preview": sink.preview}


@task(name="publish-forecasts", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def publish(
    store: ObjectStore, params: ForecastParams, champion: dict[str, Any], inputs: ForecastInputs, report: CleaningReport,
    cleaned: pd.DataFrame, path: Path, run: ForecastRun, forecast_id: str, started_at: str,
    preview: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Write forecasts.parquet (streamed from the local file), then forecast.json (its presence
    marks a complete batch); publish the summary, the head of the table and plots as Prefect
    artifacts, from ``preview`` (the first rows and plotted series), never a read-back of the file."""
    prefix = layout.forecasts_prefix(params.env, forecast_id)
    put_file = getattr(store, "put_file", None)
    if put_file is not None:
        put_file(f"{prefix}/forecasts.parquet", path)
    else:  # a store without streaming uploads
        store.put(f"{prefix}/forecasts.parquet", path.read_bytes())
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
    store.put(f"{prefix}/forecast.json", json.dumps(doc, indent=2, default=str).encode())
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
