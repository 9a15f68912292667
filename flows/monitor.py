"""The ``chronos-monitor`` flow: wiring only.

read champion → read and clean the newest data (as training does) → score every published forecast
(batch and captured) that has actuals and append the history → apply the degradation rule → emit
``chronos-flows.champion.degraded`` (the training deployment's trigger) → artifacts. It does not take
the training lock: it only appends to ``{env}/monitoring/``.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow

from chronos_flows.config.params import MonitorParams
from tasks.monitor import emit_degradation, prepare_monitor_data, publish_monitor_artifacts, read_serving_champion, score_and_record
from tasks.state import open_run_store


@flow(name="chronos-monitor", persist_result=False, log_prints=True)
def chronos_monitor(params: MonitorParams = MonitorParams()) -> dict[str, Any]:
    """Score every published forecast against what happened; raise the alarm when the champion degrades.

    Args:
        params: Monitor parameters; every field has a default (README "Monitoring").
    """
    monitor_run = uuid.uuid4().hex[:12]
    store = open_run_store(params.store_url())
    champion = read_serving_champion(store, params.env)
    source, raw, cleaned, season = prepare_monitor_data(params, champion)
    result = score_and_record(store, params, champion, source, raw, cleaned, season, monitor_run)
    emitted = emit_degradation(store, params.env, champion) if params.emit_events else None
    summary = publish_monitor_artifacts(result, params)
    if emitted is not None:
        summary["degradation"] = emitted
    summary["event_emitted"] = emitted is not None
    return summary


if __name__ == "__main__":
    chronos_monitor()
