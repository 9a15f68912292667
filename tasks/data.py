"""Ingest and clean: thin task wrappers over chronos_flows.data.ingest / chronos_flows.data.cleaning."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from blocks.store import read_uri
from chronos_flows.data import cleaning as clean_module
from chronos_flows.data import frequency as frequency_module
from chronos_flows.data import ingest as ingest_module
from chronos_flows.core import layout
from chronos_flows.data.cleaning import CleaningReport, clean
from chronos_flows.config.params import TrainingParams, resolve_data_path
from chronos_flows.data.ingest import fingerprint, load_dataset, to_parquet_bytes
from chronos_flows.training.specs import DataSync, RunSpec
from chronos_flows.evaluation.splits import min_series_length
from tasks.common import CACHE_EXPIRATION, ON_TRANSIENT, RETRY_TRANSIENT, logger, markdown_artifact
def _ingest_key(context: Any, parameters: dict[str, Any]) -> str:
    """sha256 of the input file's bytes + how it is read (``data`` config)."""
    params: TrainingParams = parameters["params"]
    h = hashlib.sha256(b"chronos-flows/ingest/v1\n")
    h.update(read_uri(resolve_data_path(params.data.path)))
    h.update(json.dumps(params.data.model_dump(mode="json"), sort_keys=True).encode())
    return "ingest-" + h.hexdigest()


def _clean_key(context: Any, parameters: dict[str, Any]) -> str:
    """Fingerprint of the ingested data + cleaning config + the lengths the backtest needs + the code
of cleaning (chronos_flows.data.cleaning, .frequency and .ingest, whose notes go into the report)."""
    params: TrainingParams = parameters["params"]
    doc = {
        "data": fingerprint(parameters["df"]),
        "cleaning": params.cleaning.model_dump(mode="json"),
        "min_length": min_series_length(params),
        "horizon": params.evaluation.horizon,
        "code": hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (clean_module, frequency_module, ingest_module))).hexdigest(),
    }
    return "clean-" + hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@task(name="ingest", **RETRY_TRANSIENT,
      cache_key_fn=_ingest_key, cache_expiration=CACHE_EXPIRATION, persist_result=True)
def ingest(params: TrainingParams) -> pd.DataFrame:
    source = resolve_data_path(params.data.path)
    df = load_dataset(source, params.data, fetch=read_uri)
    logger().info("ingested %d rows, %d series from %s", len(df), df["unique_id"].nunique(), source)
    return df


@task(name="clean", cache_key_fn=_clean_key, cache_expiration=CACHE_EXPIRATION, persist_result=True)
def clean_data(df: pd.DataFrame, params: TrainingParams) -> tuple[pd.DataFrame, CleaningReport]:
    cleaned, report = clean(
        df, params.cleaning, min_length=min_series_length(params), horizon=params.evaluation.horizon
    )
    logger().info(
        "cleaned: %d → %d rows, %d → %d series, freq %s, %d gaps filled, %d outliers flagged, %d series dropped",
        report.rows_in,
        report.rows_out,
        report.series_in,
        report.series_out,
        report.freq,
        sum(s.get("gaps_filled", 0) for s in report.per_series.values()),
        sum(s.get("outliers", 0) for s in report.per_series.values()),
        len(report.dropped),
    )
    return cleaned, report


@task(name="sync-data", **ON_TRANSIENT)
def sync_data(spec: RunSpec, raw: pd.DataFrame, cleaned: pd.DataFrame, report: CleaningReport) -> DataSync:
    """Write the canonical dataset (content-addressed, once) and the run's cleaned data + report.
    Never cached: it writes this run's records (a retry rewrites the same keys)."""
    store = spec.store
    fp = fingerprint(raw)
    now = datetime.now(timezone.utc)
    existing = [k for k in store.list(layout.DATASETS_PREFIX) if k.endswith(f"/{fp}.parquet")]
    if existing:
        dataset_key = existing[0]
    else:
        dataset_key = layout.dataset_key(fp, now.year, now.month)
        store.put(dataset_key, to_parquet_bytes(raw))
    prefix = layout.run_data_prefix(spec.env, spec.run_id)
    cleaned_fp = fingerprint(cleaned[["unique_id", "ds", "y"]])
    store.put(f"{prefix}/cleaned.parquet", to_parquet_bytes(cleaned))
    store.put(f"{prefix}/cleaning_report.json", json.dumps(report.to_dict(), indent=2, default=str).encode())
    markdown_artifact(f"cleaning-report-{spec.run_id}", report.to_markdown(), "Cleaning report")
    logger().info("dataset %s (%s), cleaned data under %s", dataset_key, "reused" if existing else "written", prefix)
    return DataSync(
        dataset_key=dataset_key,
        dataset_uri=store.uri(dataset_key),
        raw_fingerprint=fp,
        cleaned_fingerprint=cleaned_fp,
        source=resolve_data_path(spec.params.data.path),
    )
