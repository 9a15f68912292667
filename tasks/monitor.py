"""Monitoring tasks: thin wrappers over chronos_flows.monitoring, the Prefect event and the artifacts."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task

from blocks.store import read_uri
from chronos_flows.champion.registry import read_champion
from chronos_flows.config.params import CleaningConfig, MonitorParams, resolve_data_path
from chronos_flows.core.store import ObjectStore
from chronos_flows.data.cleaning import CleaningReport, clean
from chronos_flows.data.ingest import load_dataset
from chronos_flows.monitoring import report as monitoring_report
from chronos_flows.monitoring.monitor import MonitorResult, monitor
from chronos_flows.monitoring.rule import EVENT, DegradationRule, event_resource, mark_emitted, read_degradation
from tasks.common import ON_TRANSIENT, Progress, image_markdown, logger, markdown_artifact


def degradation_rule(params: MonitorParams) -> DegradationRule:
    return DegradationRule(**params.degradation.model_dump())


@task(name="read-champion-for-monitor", **ON_TRANSIENT)
def read_serving_champion(store: ObjectStore, env: str) -> dict[str, Any] | None:
    doc, _ = read_champion(store, env)
    if doc is None:
        logger().warning("no champion in %s: forecasts are scored, no degradation rule is applied", env)
    return doc


def load_monitor_data(params: MonitorParams, champion: dict[str, Any] | None) -> tuple[str, pd.DataFrame, pd.DataFrame, CleaningReport, int]:
    """The newest data read as training reads it, and cleaned with the champion's settings:
    ``(source, raw, cleaned, report, season_length)``. Shared by the CLI's preflight and the flow."""
    source = resolve_data_path(params.data.path)
    raw = load_dataset(source, params.data, fetch=read_uri)
    judged = (champion or {}).get("judged_on") or {}
    cleaning = params.cleaning or (CleaningConfig.model_validate(judged["cleaning"]) if judged.get("cleaning") else CleaningConfig())
    cleaned, report = clean(raw, cleaning, min_length=1, horizon=0)
    season = int(judged.get("season_length") or report.season_length or 1)
    return source, raw, cleaned, report, season


@task(name="load-monitor-data", **ON_TRANSIENT)
def prepare_monitor_data(params: MonitorParams, champion: dict[str, Any] | None) -> tuple[str, pd.DataFrame, pd.DataFrame, int]:
    source, raw, cleaned, report, season = load_monitor_data(params, champion)
    logger().info("monitor data %s: %d series, %d rows, freq %s, season length %d", source, raw["unique_id"].nunique(),
                  len(raw), report.freq, season)
    return source, raw, cleaned, season


@task(name="score-published-forecasts", **ON_TRANSIENT)
def score_and_record(store: ObjectStore, params: MonitorParams, champion: dict[str, Any] | None, source: str,
                     raw: pd.DataFrame, cleaned: pd.DataFrame, season: int, monitor_run: str) -> MonitorResult:
    """Score every published forecast with actuals and append the history (idempotent: a retry
    finds its rows recorded); apply the rule and create the champion's degradation record."""
    bar = Progress(f"monitor-progress-{monitor_run}", "Published forecasts scored")
    result = monitor(store, params.env, raw=raw, cleaned=cleaned, season_length=season, data_source=source,
                     champion=champion, rule=degradation_rule(params), unknown_ids=params.unknown_ids,
                     include_capture=params.include_capture, monitor_run=monitor_run,
                     progress=lambda done, total: bar.update(done, total))
    log = logger()
    log.info("monitor: %d published forecasts, %d scored (%d history rows written, %d already recorded), %d without actuals yet",
             result.n_published, len(result.scores), result.rows_written, len(result.recorded) - result.rows_written,
             len(result.unscored))
    for issue in result.issues:
        log.warning("reported: %s", issue)
    return result


@task(name="emit-degradation-event", **ON_TRANSIENT)
def emit_degradation(store: ObjectStore, env: str, champion: dict[str, Any] | None) -> dict[str, Any] | None:
    """Emit ``chronos-flows.champion.degraded`` for the champion's degradation record if its event was
    not emitted yet (this run created it, or an earlier run died before emitting); record the event id."""
    from prefect.events import emit_event

    if champion is None:
        return None
    run_id = str(champion["run_id"])
    doc, _ = read_degradation(store, env, run_id)
    if doc is None or doc.get("event_emitted_at"):
        return None
    payload = {k: doc.get(k) for k in ("reason", "fired", "live_wql", "promised_wql", "threshold_wql", "coverage_80", "forecasts", "rule", "family")}
    event = emit_event(event=EVENT, resource=event_resource(env, run_id), payload={"env": env, "champion_run_id": run_id, **payload})
    event_id = str(event.id) if event is not None else "not-emitted"
    logger().warning("champion %s of %s degraded in live use: %s; emitted %s (event %s)", run_id, env, doc.get("reason"), EVENT, event_id)
    return mark_emitted(store, env, run_id, event_id)


def publish_monitor_artifacts(result: MonitorResult, params: MonitorParams) -> dict[str, Any]:
    """The markdown artifact (table of forecasts scored, live vs promised, the verdict) with the PNG of
    live WQL per origin against the champion's backtest band; returns the run summary."""
    rule = degradation_rule(params)
    summary = result.summary()
    rows = monitoring_report.accuracy_rows(result.history)
    md = monitoring_report.markdown(rows, summary=summary, rule=rule)
    if rows:
        png = monitoring_report.wql_png(result.history, rule, result.champion_run_id)
        md += "\n\n" + image_markdown("Live WQL per forecast origin", png, level=3,
                                      note="Green band: the champion's backtest WQL up to the degradation threshold.")
    markdown_artifact(f"monitor-{params.env}", md, f"Live accuracy of published forecasts in {params.env}")
    summary["accuracy"] = rows
    return summary
