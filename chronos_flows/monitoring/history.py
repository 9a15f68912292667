"""The scored history: one row per (forecast, scoring), appended, never lost, never duplicated.

Each row is its own Parquet object at :func:`~chronos_flows.core.layout.monitoring_history_key`,
written with ``put_if_absent``: the key is made of the forecast id, the last scored timestamp and
the content hash of the scored actuals, so

* re-scoring the same forecast on the same actuals finds its row already there (idempotent: the
  conditional write loses and nothing changes);
* two monitors running at once on the same data race for the same key: one row lands, the other
  monitor counts it as already recorded (no duplicate); on different data they write different keys
  (no row lost: no object is ever read-modified-written);
* actuals that changed for timestamps already scored (a revision of history) give a new key: the
  row is written with ``revision_of`` naming the scoring it revises, and reported.

Each row carries the champion run id and family that made the forecast and that champion's
backtest WQL/MASE at promotion (``promised_wql``, ``promised_mase``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import pandas as pd

from chronos_flows.core import layout
from chronos_flows.core.errors import PreconditionFailed
from chronos_flows.core.retry import OutageLog, retry_while, time_budget
from chronos_flows.core.store import ObjectStore
from chronos_flows.models.base import TIME
from chronos_flows.monitoring.scoring import Score, dumps
from chronos_flows.monitoring.sources import actuals_sha

COLUMNS = [
    "forecast_id", "source", "champion_run_id", "family", "origin", "horizon", "scored_through", "scored_at",
    "n_series", "n_series_scored", "n_points", "steps_scored", "complete", "wql", "mase", "coverage_80", "bias",
    "promised_wql", "promised_mase", "by_step", "actuals_sha", "revision_of", "issues", "data_source", "monitor_run",
]


def _compact(ts: pd.Timestamp) -> str:
    return pd.Timestamp(ts).strftime("%Y%m%dT%H%M%S")


def read_history(store: ObjectStore, env: str) -> pd.DataFrame:
    """Every recorded row, oldest scoring first (an empty frame with :data:`COLUMNS` when none)."""
    frames = []
    for key in store.list(layout.monitoring_history_prefix(env) + "/"):
        if not key.endswith(".parquet"):
            continue
        got = store.get(key)
        if got is not None:
            frames.append(pd.read_parquet(io.BytesIO(got[0])))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["scored_at", "forecast_id"], kind="stable").reset_index(drop=True)


def latest_per_forecast(history: pd.DataFrame) -> pd.DataFrame:
    """The newest scoring of each forecast (most actuals, then newest), ordered by origin."""
    if history.empty:
        return history
    h = history.sort_values(["forecast_id", "scored_through", "scored_at"], kind="stable")
    return h.groupby("forecast_id", sort=False).tail(1).sort_values(["origin", "forecast_id"]).reset_index(drop=True)


def promised_scores(champion: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None, run_id: str,
                    family: str) -> dict[str, float]:
    """The backtest WQL and MASE a champion was promoted on: from champion.json when it is that run's
    champion, else from the run's model_metadata.json leaderboard row of ``family``."""
    nan = float("nan")
    if champion is not None and str(champion.get("run_id")) == run_id:
        s = champion.get("scores") or {}
        return {"wql": float(s.get("wql", nan) or nan), "mase": float(s.get("mase", nan) or nan)}
    for row in (metadata or {}).get("leaderboard") or []:
        if row.get("model") == family:
            return {"wql": float(row.get("wql") or nan), "mase": float(row.get("mase") or nan)}
    return {"wql": nan, "mase": nan}


@dataclass
class Recorded:
    """What :func:`record` did with one score."""

    row: dict[str, Any]
    key: str
    written: bool  # False: the same scoring was already recorded
    revision_of: str | None = None
    issues: list[str] = field(default_factory=list)


def revision_of(score: Score, history: pd.DataFrame) -> tuple[str | None, str | None]:
    """``(sha, message)`` of the earlier scoring of the same forecast whose actuals changed, if any.

    An earlier scoring through T with n points is revised when the current actuals up to T are n
    points too but hash differently (same timestamps, other values): new points arriving late are
    not a revision."""
    prev = history[history["forecast_id"] == score.forecast_id] if len(history) else history
    for _, row in prev.sort_values("scored_at", ascending=False).iterrows():
        if row["actuals_sha"] == score.actuals_sha:
            return None, None
        upto = score.scored_actuals[score.scored_actuals[TIME] <= pd.Timestamp(row["scored_through"])]
        if len(upto) == int(row["n_points"]) and actuals_sha(upto) != row["actuals_sha"]:
            return str(row["actuals_sha"]), (
                f"revision: actuals of forecast {score.forecast_id} up to {pd.Timestamp(row['scored_through']):%Y-%m-%d} "
                f"changed since the scoring of {row['scored_at']}; both scorings are kept in the history")
    return None, None


def make_row(score: Score, *, promised: Mapping[str, float], data_source: str, monitor_run: str,
             revision: str | None, scored_at: datetime | None = None) -> dict[str, Any]:
    at = scored_at or datetime.now(timezone.utc)
    return {
        "forecast_id": score.forecast_id, "source": score.source, "champion_run_id": score.champion_run_id,
        "family": score.family, "origin": pd.Timestamp(score.origin), "horizon": int(score.horizon),
        "scored_through": pd.Timestamp(score.scored_through),
        "scored_at": pd.Timestamp(at).tz_convert("UTC").tz_localize(None) if pd.Timestamp(at).tzinfo else pd.Timestamp(at),
        "n_series": int(score.n_series), "n_series_scored": int(score.n_series_scored), "n_points": int(score.n_points),
        "steps_scored": int(score.steps_scored), "complete": bool(score.complete),
        "wql": float(score.wql), "mase": float(score.mase), "coverage_80": float(score.coverage_80), "bias": float(score.bias),
        "promised_wql": float(promised.get("wql", float("nan"))), "promised_mase": float(promised.get("mase", float("nan"))),
        "by_step": dumps(score.by_step), "actuals_sha": score.actuals_sha, "revision_of": revision or "",
        "issues": dumps(score.issues), "data_source": data_source, "monitor_run": monitor_run,
    }


#: How long a history write waits through a store outage (throttling, dropped connections) before the
#: step fails: the monitor holds no lock, so the budget is time, not a lease.
OUTAGE_BUDGET_SECONDS = 600.0


def durable(fn: Any, what: str, outages: OutageLog | None = None, budget: float | None = None) -> Any:
    """``fn()`` retried with backoff and jitter through transient store errors for up to ``budget``
    seconds (default :data:`OUTAGE_BUDGET_SECONDS`); then the last error is raised."""
    alive = time_budget(OUTAGE_BUDGET_SECONDS if budget is None else budget)
    return retry_while(fn, what=what, alive=alive, outages=outages)


def record(store: ObjectStore, env: str, score: Score, history: pd.DataFrame, *, promised: Mapping[str, float],
           data_source: str, monitor_run: str, outages: OutageLog | None = None) -> Recorded:
    """Append the row of ``score`` (``put_if_absent``); an identical scoring already there is left as it is."""
    key = layout.monitoring_history_key(env, score.forecast_id, _compact(score.scored_through), score.actuals_sha)
    rev, msg = revision_of(score, history)
    row = make_row(score, promised=promised, data_source=data_source, monitor_run=monitor_run, revision=rev)
    issues = [msg] if msg else []
    if durable(lambda: store.exists(key), f"history {key}", outages):
        return Recorded(row, key, False, rev, issues)
    buf = io.BytesIO()
    pd.DataFrame([row], columns=COLUMNS).to_parquet(buf, index=False)
    try:
        durable(lambda: store.put_if_absent(key, buf.getvalue()), f"history {key}", outages)
    except PreconditionFailed:  # another monitor (or our own write before a dropped answer) recorded it
        return Recorded(row, key, False, rev, issues)
    return Recorded(row, key, True, rev, issues)


def by_step_table(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    return json.loads(row.get("by_step") or "[]")
