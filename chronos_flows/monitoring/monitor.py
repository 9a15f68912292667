"""One monitor pass: score every published forecast with actuals, append the history, apply the rule.

:func:`monitor` is the domain half of the ``chronos-monitor`` flow (which adds the Prefect event and
artifacts): it validates the new data against the published forecasts first (bad actuals raise
BadInputError before anything is written), then scores and records each forecast that has at
least one actual, then evaluates the degradation rule for the champion that serves and creates its
record. Pure: any :class:`~chronos_flows.core.store.ObjectStore`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd

from chronos_flows.core import layout
from chronos_flows.core.store import ObjectStore
from chronos_flows.monitoring.history import Recorded, promised_scores, read_history, record
from chronos_flows.monitoring.rule import DegradationRule, evaluate_rule, read_degradation, record_degradation
from chronos_flows.monitoring.scoring import Score, score_forecast
from chronos_flows.monitoring.sources import ActualsCheck, Published, batch_forecasts, captured_forecasts, check_actuals


@dataclass
class MonitorResult:
    """What one monitor pass scored, recorded and decided."""

    env: str
    monitor_run: str
    data_source: str
    n_published: int
    scores: list[Score] = field(default_factory=list)
    recorded: list[Recorded] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    champion_run_id: str | None = None
    #: the rule's evidence against the serving champion (None: not degraded)
    evidence: dict[str, Any] | None = None
    #: the champion's degradation record, and whether this pass created it
    degradation: dict[str, Any] | None = None
    degradation_created: bool = False
    history: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def rows_written(self) -> int:
        return sum(r.written for r in self.recorded)

    def summary(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "monitor_run": self.monitor_run,
            "data": self.data_source,
            "published": self.n_published,
            "scored": len(self.scores),
            "rows_written": self.rows_written,
            "rows_already_recorded": len(self.recorded) - self.rows_written,
            "unscored": list(self.unscored),
            "issues": list(self.issues),
            "champion_run_id": self.champion_run_id,
            "degraded": self.evidence is not None or self.degradation is not None,
            "degradation": self.degradation,
            "degradation_created": self.degradation_created,
            "forecasts": [{k: r.row[k] for k in ("forecast_id", "source", "champion_run_id", "n_points", "steps_scored",
                                                  "complete", "wql", "promised_wql", "mase", "coverage_80", "bias")}
                          | {"written": r.written} for r in self.recorded],
        }


def published_forecasts(store: ObjectStore, env: str, *, include_capture: bool = True) -> list[Published]:
    out = batch_forecasts(store, env)
    if include_capture:
        out += captured_forecasts(store, env)
    return out


def _metadata(store: ObjectStore, env: str, run_id: str) -> dict[str, Any] | None:
    got = store.get(layout.metadata_key(env, run_id))
    return json.loads(got[0]) if got is not None else None


def monitor(
    store: ObjectStore,
    env: str,
    *,
    raw: pd.DataFrame,
    cleaned: pd.DataFrame,
    season_length: int,
    data_source: str,
    champion: Mapping[str, Any] | None,
    rule: DegradationRule = DegradationRule(),
    unknown_ids: str = "error",
    include_capture: bool = True,
    monitor_run: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MonitorResult:
    """Score, record, judge (see the module docstring). ``raw``: the ingested data (observed values:
    the actuals); ``cleaned``: the same data cleaned as training cleans it (the MASE history)."""
    published = published_forecasts(store, env, include_capture=include_capture)
    result = MonitorResult(env=env, monitor_run=monitor_run or uuid.uuid4().hex[:12], data_source=data_source,
                           n_published=len(published), champion_run_id=str(champion["run_id"]) if champion else None)
    known: set[str] = set()
    for p in published:
        known |= p.series
    checked: ActualsCheck = check_actuals(raw, known, source=data_source, unknown_ids=unknown_ids)
    result.issues += checked.issues
    history = read_history(store, env)
    metadata_cache: dict[str, dict[str, Any] | None] = {}
    for i, p in enumerate(published):
        score = score_forecast(p, checked.actuals, cleaned, season_length=season_length)
        if not score.scored:
            result.unscored.append(p.forecast_id)
        else:
            if p.champion_run_id not in metadata_cache:
                metadata_cache[p.champion_run_id] = _metadata(store, env, p.champion_run_id)
            promised = promised_scores(champion, metadata_cache[p.champion_run_id], p.champion_run_id, p.family)
            rec = record(store, env, score, history, promised=promised, data_source=data_source, monitor_run=result.monitor_run)
            result.scores.append(score)
            result.recorded.append(rec)
            result.issues += [f"{p.forecast_id}: {m}" for m in score.issues + rec.issues]
        if progress is not None:
            progress(i + 1, len(published))
    result.history = read_history(store, env)
    if champion is not None:
        run_id = str(champion["run_id"])
        result.evidence = evaluate_rule(result.history, run_id, rule)
        if result.evidence is not None:
            result.degradation, result.degradation_created = record_degradation(store, env, result.evidence)
        else:
            result.degradation, _ = read_degradation(store, env, run_id)
    return result
