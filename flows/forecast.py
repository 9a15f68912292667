"""The ``chronos-forecast`` flow: wiring only.

read champion → read and clean the data (as training does) → forecast every series (``forecast-chunk``
tasks of ``chunk_size`` series on the ``compute`` task runner: local, or a Dask cluster) → write
``{env}/forecasts/{forecast_id}/forecasts.parquet`` and ``forecast.json``. It does not take the
training lock: forecasts may be made while a training run holds it.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timezone
from typing import Any

from prefect import flow

from chronos_flows.config.params import ForecastParams
from tasks.forecast import forecast, new_workdir, prepare_data, publish, read_champion_for_forecast
from tasks.state import open_run_store


def new_forecast_id() -> str:
    return datetime.now(timezone.utc).strftime("fc-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@flow(name="chronos-forecast", persist_result=False, log_prints=True)
def chronos_forecast(params: ForecastParams = ForecastParams()) -> dict[str, Any]:
    """Forecast every series with the environment's champion; see README "Batch forecasts".

    Args:
        params: Forecast parameters. Every field is optional: empty ones take the champion's own
            data, cleaning, horizon and quantiles.
    """
    started_at = datetime.now(timezone.utc).isoformat()
    forecast_id = params.forecast_id or new_forecast_id()
    store = open_run_store(params.store_url())
    champion = read_champion_for_forecast(store, params.env)
    inputs, cleaned, report = prepare_data(params, champion)
    workdir = new_workdir(forecast_id)
    try:
        path, run, preview = forecast(store, params, champion, inputs, cleaned, report.freq, forecast_id, workdir)
        return publish(store, params, champion, inputs, report, cleaned, path, run, forecast_id, started_at, preview)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    chronos_forecast()
