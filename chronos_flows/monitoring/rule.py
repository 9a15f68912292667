"""The degradation rule, its record and the champion's live status.

The rule (:func:`evaluate_rule`), on the scored history of the champion that serves, taking the
newest scoring of each of its forecasts with at least ``min_points`` scored points, in order of
origin, and the last ``consecutive`` of them (K):

* **WQL**: live WQL above the champion's backtest WQL × (1 + ``tolerance``) on each of the K; or
* **coverage**: the 80 % interval's coverage pooled over the K outside
  [``coverage_low``, ``coverage_high``].

Defaults (:class:`DegradationRule`): tolerance 1.0 (live WQL more than twice the backtest WQL), K = 2,
coverage band [0.4, 1.0] (the upper end 1.0 never fires: an interval wider than promised is not a
degradation), min_points 4. Fewer than K scored forecasts: no verdict. Why not tighter: one forecast
origin is noisy — on the shipped gasoline data an unchanged champion (Theta, backtest WQL 0.013 on 2
windows) scored 0.032 (2.4x) on one 13-week forecast with 6 of 13 actuals in its 80 % interval,
while a 30 % level shift scores an order of magnitude worse; K = 2 consecutive forecasts and ×2
keep a single unlucky origin from retraining.

When the rule fires, :func:`record_degradation` creates ``{env}/monitoring/degradations/{run_id}.json``
with ``put_if_absent``: one record per champion, so two monitors (or every later monitor run) never
raise the alarm twice for the same champion; the record says whether its event was emitted
(``event_emitted_at``), and a record whose event was not emitted (the monitor died in between) is
emitted by the next monitor run. A new champion starts with a clean slate.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import pandas as pd

from chronos_flows.core import layout
from chronos_flows.core.errors import ConfigError, PreconditionFailed
from chronos_flows.core.store import ObjectStore
from chronos_flows.monitoring.history import durable, latest_per_forecast
from chronos_flows.monitoring.scoring import json_clean

EVENT = "chronos-flows.champion.degraded"


@dataclass(frozen=True)
class DegradationRule:
    """When a champion counts as degraded in live use (see the module docstring)."""

    tolerance: float = 1.0
    consecutive: int = 2
    coverage_low: float = 0.4
    coverage_high: float = 1.0
    min_points: int = 4

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ConfigError(f"degradation tolerance must be >= 0, got {self.tolerance}")
        if self.consecutive < 1:
            raise ConfigError(f"degradation consecutive must be >= 1, got {self.consecutive}")
        if not 0 <= self.coverage_low <= self.coverage_high <= 1:
            raise ConfigError(f"coverage band must satisfy 0 <= low <= high <= 1, got [{self.coverage_low}, {self.coverage_high}]")
        if self.min_points < 1:
            raise ConfigError(f"min_points must be >= 1, got {self.min_points}")

    def describe(self) -> str:
        return (f"live WQL > backtest WQL x {1 + self.tolerance:g} on {self.consecutive} consecutive scored forecasts, "
                f"or their pooled 80% coverage outside [{self.coverage_low:g}, {self.coverage_high:g}] "
                f"(forecasts with >= {self.min_points} scored points)")


def evaluate_rule(history: pd.DataFrame, champion_run_id: str, rule: DegradationRule = DegradationRule()) -> dict[str, Any] | None:
    """The evidence (a JSON-ready dict) when ``champion_run_id`` is degraded by ``rule``, else None."""
    if history.empty:
        return None
    rows = latest_per_forecast(history[history["champion_run_id"] == champion_run_id])
    rows = rows[rows["n_points"] >= rule.min_points]
    if len(rows) < rule.consecutive:
        return None
    last = rows.tail(rule.consecutive)
    promised = float(last["promised_wql"].iloc[-1])
    threshold = promised * (1 + rule.tolerance) if math.isfinite(promised) else float("nan")
    wql_fired = math.isfinite(threshold) and bool((last["wql"] > threshold).all())
    cov_rows = last[last["coverage_80"].notna()]
    coverage = (float((cov_rows["coverage_80"] * cov_rows["n_points"]).sum() / cov_rows["n_points"].sum())
                if len(cov_rows) else float("nan"))
    cov_fired = math.isfinite(coverage) and not (rule.coverage_low <= coverage <= rule.coverage_high)
    if not (wql_fired or cov_fired):
        return None
    fired = [r for r, f in (("wql", wql_fired), ("coverage", cov_fired)) if f]
    reasons = []
    if wql_fired:
        reasons.append(f"live WQL {', '.join(f'{w:.4g}' for w in last['wql'])} on the last {len(last)} forecasts, "
                       f"all above {threshold:.4g} (backtest WQL {promised:.4g} x {1 + rule.tolerance:g})")
    if cov_fired:
        reasons.append(f"80% coverage {coverage:.2f} over the last {len(last)} forecasts, outside "
                       f"[{rule.coverage_low:g}, {rule.coverage_high:g}]")
    return json_clean({
        "champion_run_id": champion_run_id,
        "family": str(last["family"].iloc[-1]),
        "fired": fired,
        "reason": "; ".join(reasons),
        "rule": asdict(rule),
        "promised_wql": promised,
        "threshold_wql": threshold,
        "live_wql": float(last["wql"].mean()),
        "coverage_80": coverage,
        "forecasts": [
            {"forecast_id": r["forecast_id"], "origin": pd.Timestamp(r["origin"]).isoformat(), "wql": r["wql"],
             "coverage_80": r["coverage_80"], "n_points": int(r["n_points"]), "scored_through": pd.Timestamp(r["scored_through"]).isoformat()}
            for _, r in last.iterrows()
        ],
    })


def read_degradation(store: ObjectStore, env: str, champion_run_id: str) -> tuple[dict[str, Any] | None, str | None]:
    got = store.get(layout.degradation_key(env, champion_run_id))
    if got is None:
        return None, None
    return json.loads(got[0]), got[1]


def record_degradation(store: ObjectStore, env: str, evidence: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the champion's degradation record; ``(record, created)``. An existing record is returned
    as it is (``created`` False): the alarm is raised once per champion."""
    key = layout.degradation_key(env, str(evidence["champion_run_id"]))
    doc = {"schema_version": 1, "env": env, "detected_at": datetime.now(timezone.utc).isoformat(),
           "event": EVENT, "event_id": None, "event_emitted_at": None, "write_id": uuid.uuid4().hex, **dict(evidence)}
    try:
        durable(lambda: store.put_if_absent(key, json.dumps(doc, indent=2).encode()), f"degradation record {key}")
    except PreconditionFailed:
        existing, _ = read_degradation(store, env, str(evidence["champion_run_id"]))
        return existing or doc, False
    return doc, True


def mark_emitted(store: ObjectStore, env: str, champion_run_id: str, event_id: str) -> dict[str, Any] | None:
    """Record that the degradation event was emitted (compare-and-swap on the record's ETag)."""
    for _ in range(5):
        doc, etag = read_degradation(store, env, champion_run_id)
        if doc is None or doc.get("event_emitted_at"):
            return doc
        doc = {**doc, "event_id": event_id, "event_emitted_at": datetime.now(timezone.utc).isoformat(), "write_id": uuid.uuid4().hex}
        try:
            store.put_if_match(layout.degradation_key(env, champion_run_id), json.dumps(doc, indent=2).encode(), etag)
            return doc
        except PreconditionFailed:
            continue
    return None


def event_resource(env: str, champion_run_id: str) -> dict[str, str]:
    """The event's resource: the environment's champion (``prefect.resource.id`` plus labels to match on)."""
    return {"prefect.resource.id": f"chronos-flows.champion.{env}.{champion_run_id}",
            "chronos-flows.env": env, "chronos-flows.champion-run-id": champion_run_id}


def live_status(store: ObjectStore, env: str, champion_run_id: str, history: pd.DataFrame | None = None) -> dict[str, Any]:
    """The live evidence about a champion that promotion reports: degraded (a record exists), its
    scored forecasts and mean live WQL vs its backtest WQL."""
    from chronos_flows.monitoring.history import read_history

    record, _ = read_degradation(store, env, champion_run_id)
    h = read_history(store, env) if history is None else history
    rows = latest_per_forecast(h[h["champion_run_id"] == champion_run_id]) if len(h) else h
    n = int(len(rows))
    return json_clean({
        "champion_run_id": champion_run_id,
        "degraded": record is not None,
        "reason": (record or {}).get("reason"),
        "n_forecasts": n,
        "live_wql": float(rows["wql"].mean()) if n else float("nan"),
        "live_coverage_80": float(rows["coverage_80"].mean()) if n else float("nan"),
        "promised_wql": float(rows["promised_wql"].iloc[-1]) if n else float("nan"),
    })
