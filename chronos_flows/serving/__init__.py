"""Real-time serving core: the SageMaker JumpStart Chronos request/response contract over the
environment's champion, with hot swap. Framework-free (pydantic, pandas; no HTTP library): the app
layer (:mod:`app.server`) mounts it as a plain ASGI app on uvicorn.

Request (FACTS.md "Serving contract of Chronos endpoints")::

    {"inputs": [{"target": [...], "item_id": "A", "start": "2024-01-01T00:00:00",
                 "past_covariates": {...}, "future_covariates": {...}}, ...],
     "parameters": {"prediction_length": 1, "quantile_levels": [0.1, 0.5, 0.9], "freq": "W-MON",
                    "batch_size": 256, "predict_batches_jointly": false}}

Response: ``{"predictions": [{"mean": [...], "0.1": [...], ..., "item_id": "A", "start": "<first
forecast timestamp>"}, ...]}`` in input order; ``item_id`` / ``start`` only when given.

* :func:`parse_request` validates a decoded JSON body and raises :class:`RequestError` (status and
  a message naming the series — ``inputs[3] (item_id 'A')`` — and the field).
* :func:`predict` runs a loaded champion on a validated request and builds the response;
  :func:`predict_batch` answers several compatible requests with one model call, and
  :class:`MicroBatcher` gathers concurrent requests into such calls. Without ``start``/``freq``
  the series get a synthetic daily index for the model only, and the response carries no ``start``.
* :class:`ChampionHolder` loads ``{env}/registry/champion.json``'s model, polls the file's ETag in
  a background thread, loads a new champion in the background and swaps it in with one reference
  assignment. A request takes :attr:`ChampionHolder.current` once and uses that object throughout,
  so requests in flight finish on the model they started with.
* :class:`CaptureWriter` (opt-in data capture): answered requests with item_id/start/freq and
  their forecasts, batched into Parquet objects under ``{env}/capture/`` for the monitor.

May import: core, config, data, models, champion, forecasting."""

from chronos_flows.serving.batcher import MicroBatcher
from chronos_flows.serving.capture import CaptureWriter, capture_frame
from chronos_flows.serving.champion import ChampionHolder, LoadedChampion, load_champion
from chronos_flows.serving.predict import batch_key, covariates_supported, predict, predict_batch
from chronos_flows.serving.schema import (
    DEFAULT_QUANTILES,
    MAX_PREDICTION_LENGTH,
    MAX_SERIES,
    MIN_OBSERVATIONS,
    InvocationRequest,
    ModelError,
    Parameters,
    ParsedRequest,
    RequestError,
    SeriesInput,
    parse_request,
    series_label,
)

__all__ = [
    "DEFAULT_QUANTILES", "MAX_PREDICTION_LENGTH", "MAX_SERIES", "MIN_OBSERVATIONS", "CaptureWriter", "ChampionHolder",
    "InvocationRequest", "LoadedChampion", "MicroBatcher", "ModelError", "Parameters", "ParsedRequest",
    "RequestError", "SeriesInput", "batch_key", "covariates_supported", "load_champion", "parse_request",
    "capture_frame", "predict", "predict_batch", "series_label",
]
