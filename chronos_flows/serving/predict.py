"""Answering validated requests from a loaded champion: one model call for a batch of compatible
requests, the response in the contract's shape, errors attributed to the request that caused them."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

import numpy as np
import pandas as pd
from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import ID, TARGET, TIME, quantile_column
from chronos_flows.serving.champion import LoadedChampion
from chronos_flows.serving.schema import (
    SYNTHETIC_END,
    SYNTHETIC_FREQ,
    ModelError,
    ParsedRequest,
    RequestError,
    request_offset,
    series_label,
)


def _predict_chronos2_covariates(champ: LoadedChampion, parsed: ParsedRequest, levels: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Chronos-2 with past/future covariates: upstream ``predict_quantiles`` on dict inputs."""
    import torch

    model = champ.model
    C = int(model.cfg.context_length)
    H = parsed.request.parameters.prediction_length
    inputs = []
    for s, y in zip(parsed.request.inputs, parsed.targets):
        item: dict[str, Any] = {"target": np.asarray(y[-C:], dtype=np.float32)}
        past = {}
        for name, values in (s.past_covariates or {}).items():
            arr = np.asarray(values)
            past[name] = arr[-C:] if arr.dtype.kind in "US" else arr.astype(np.float32)[-C:]
        if past:
            item["past_covariates"] = past
        fut = {}
        for name, values in (s.future_covariates or {}).items():
            arr = np.asarray(values)
            fut[name] = arr if arr.dtype.kind in "US" else arr.astype(np.float32)
        if fut:
            item["future_covariates"] = fut
        inputs.append(item)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model.cfg.seed)
        q_list, m_list = model.pipeline.predict_quantiles(
            inputs, prediction_length=H, quantile_levels=levels, batch_size=max(1, model.cfg.batch_size * 8))
    return torch.stack([x[0] for x in q_list]).numpy(), torch.stack([x[0] for x in m_list]).numpy()


def covariates_supported(champ: LoadedChampion) -> bool:
    if champ.family != "chronos":
        return False
    try:
        from chronos_flows.models.chronos.forecasters import family_of_pipeline

        return family_of_pipeline(champ.model.pipeline) == "chronos-2"
    except Exception:  # noqa: BLE001
        return False


def _check(champ: LoadedChampion, parsed: ParsedRequest) -> None:
    """Refuse what ``champ`` cannot answer (covariates for a family without them, too-short history)."""
    if parsed.has_covariates and not covariates_supported(champ):
        i = next(i for i, s in enumerate(parsed.request.inputs) if s.past_covariates or s.future_covariates)
        s = parsed.request.inputs[i]
        which = "past_covariates" if s.past_covariates else "future_covariates"
        raise RequestError(
            f"{series_label(i, s.item_id)}.{which}: the serving champion ({champ.family}, run {champ.run_id}) "
            f"cannot use covariates; only a Chronos-2 champion can — send the target alone"
        )
    for i, y in enumerate(parsed.targets):
        if len(y) < champ.min_history:
            s = parsed.request.inputs[i]
            raise RequestError(f"{series_label(i, s.item_id)}.target: {len(y)} observations; the {champ.family} "
                               f"champion needs at least {champ.min_history}")


def batch_key(parsed: ParsedRequest) -> Optional[tuple]:
    """Requests with equal keys can share one model call; None: the request goes alone (covariates)."""
    if parsed.has_covariates:
        return None
    params = parsed.request.parameters
    return (params.prediction_length, tuple(sorted(parsed.quantiles)), params.freq or SYNTHETIC_FREQ)


def _uid(r: int, i: int) -> str:
    return f"r{r:04d}s{i:04d}"  # fixed width: sorts in request, then input order


def _forecast_many(champ: LoadedChampion, batch: list[ParsedRequest]) -> list[Any]:
    """One model call for every series of ``batch`` (requests of one :func:`batch_key`); per request
    ``(means, quantiles)`` or the exception that request gets. A call that fails for the merged batch
    is retried request by request, so one bad request never fails the others."""
    first = batch[0]
    params = first.request.parameters
    H = params.prediction_length
    levels = sorted(first.quantiles)
    if _takes_arrays(champ):
        return _forecast_arrays(champ, batch, H, levels)
    model_freq = params.freq or SYNTHETIC_FREQ
    parts = []
    for r, parsed in enumerate(batch):
        for i, (y, start) in enumerate(zip(parsed.targets, parsed.starts)):
            if start is not None:
                ds = pd.date_range(start=start, periods=len(y), freq=model_freq)
            else:
                ds = pd.date_range(end=SYNTHETIC_END, periods=len(y), freq=model_freq)
            parts.append(pd.DataFrame({ID: _uid(r, i), TIME: ds, TARGET: y}))
    frame = pd.concat(parts, ignore_index=True)
    try:
        got = champ.model.forecast(frame, H, model_freq, levels)
    except Exception as exc:  # noqa: BLE001 - attribute the failure to the request that caused it
        if len(batch) > 1:
            return [_forecast_alone(champ, p) for p in batch]
        if isinstance(exc, BadInputError):
            return [RequestError(_relabel(str(exc), first, 0))]
        raise
    out, failures = got.frame, got.failures
    qcols = [quantile_column(q) for q in levels]
    groups = {str(u): g for u, g in out.groupby(ID, sort=False)}
    results: list[Any] = []
    for r, parsed in enumerate(batch):
        means, quants = [], []
        for i in range(parsed.n_series):
            g = groups.get(_uid(r, i))
            if g is None or len(g) != H:
                s = parsed.request.inputs[i]
                why = failures.get(_uid(r, i), "the model returned no forecast")
                means = ModelError(f"{series_label(i, s.item_id)}: the {champ.family} champion could not forecast it: "
                                   f"{_relabel(str(why), parsed, r)}")
                break
            g = g.sort_values(TIME, kind="stable")
            means.append(g["mean"].to_numpy(dtype=float))
            quants.append(np.sort(g[qcols].to_numpy(dtype=float), axis=1))
        results.append(means if isinstance(means, Exception) else (means, quants))
    return results


def _takes_arrays(champ: LoadedChampion) -> bool:
    """A Chronos champion forecasts from the values alone (no timestamps, no frame): its batch
    goes straight to the model as arrays."""
    from chronos_flows.models.chronos.forecasters import ChronosForecaster

    return isinstance(champ.model, ChronosForecaster)


def _forecast_arrays(champ: LoadedChampion, batch: list[ParsedRequest], H: int, levels: list[float]) -> list[Any]:
    """:func:`_forecast_many` for a Chronos champion: one ``predict_arrays`` call on every series
    of the batch, split back per request (quantile levels ascending, so never crossing)."""
    arrays = [y for parsed in batch for y in parsed.targets]
    try:
        mean, q = champ.model.predict_arrays(arrays, H, levels)
    except Exception:  # noqa: BLE001 - attribute the failure to the request that caused it
        if len(batch) > 1:
            return [_forecast_alone(champ, p) for p in batch]
        raise
    q = np.sort(np.asarray(q, dtype=float), axis=-1)
    mean = np.asarray(mean, dtype=float)
    results: list[Any] = []
    start = 0
    for parsed in batch:
        n = parsed.n_series
        results.append(([mean[start + i] for i in range(n)], [q[start + i] for i in range(n)]))
        start += n
    return results


def _forecast_alone(champ: LoadedChampion, parsed: ParsedRequest) -> Any:
    try:
        return _forecast_many(champ, [parsed])[0]
    except Exception as exc:  # noqa: BLE001 - this request's failure, not its neighbours'
        return exc


@lru_cache(maxsize=65536)
def _forecast_start(start: pd.Timestamp, n: int, freq: str) -> str:
    """The first forecast timestamp of ``n`` points from ``start`` (on ``freq``), ISO text; cached
    (offset arithmetic costs tens of microseconds; a client's requests share their windows)."""
    return (start + n * request_offset(freq)).isoformat()


def _response(champ: LoadedChampion, parsed: ParsedRequest, means: list, quants: list) -> dict[str, Any]:
    params = parsed.request.parameters
    order = {q: j for j, q in enumerate(sorted(parsed.quantiles))}
    preds = []
    for i, s in enumerate(parsed.request.inputs):
        mean, qs = np.asarray(means[i], dtype=float), np.asarray(quants[i], dtype=float)
        if not (np.isfinite(mean).all() and np.isfinite(qs).all()):
            raise ModelError(f"{series_label(i, s.item_id)}: the {champ.family} champion produced non-finite forecasts")
        entry: dict[str, Any] = {"mean": mean.tolist()}
        for q in parsed.quantiles:
            entry[str(q)] = qs[:, order[q]].tolist()
        if s.item_id is not None:
            entry["item_id"] = s.item_id
        start = parsed.starts[i]
        if start is not None:
            entry["start"] = _forecast_start(start, len(parsed.targets[i]), params.freq)
        preds.append(entry)
    return {"predictions": preds}


def predict_batch(champ: LoadedChampion, batch: list[ParsedRequest]) -> list[Any]:
    """Response bodies for requests of one :func:`batch_key` (or one request alone) from ``champ``,
    in one model call; each item is a response dict or the exception that request gets."""
    results: list[Any] = [None] * len(batch)
    todo: list[int] = []
    for r, parsed in enumerate(batch):
        try:
            _check(champ, parsed)
            todo.append(r)
        except RequestError as exc:
            results[r] = exc
    if not todo:
        return results
    lock = champ.lock
    if lock is not None:
        lock.acquire()
    try:
        if batch[todo[0]].has_covariates:
            (r,) = todo
            levels = sorted(batch[r].quantiles)
            q, mean = _predict_chronos2_covariates(champ, batch[r], levels)
            forecasts = [([mean[i] for i in range(batch[r].n_series)], [np.sort(q[i], axis=-1) for i in range(batch[r].n_series)])]
        else:
            forecasts = _forecast_many(champ, [batch[r] for r in todo])
    finally:
        if lock is not None:
            lock.release()
    for r, got in zip(todo, forecasts):
        if isinstance(got, Exception):
            results[r] = got
            continue
        try:
            results[r] = _response(champ, batch[r], *got)
        except ModelError as exc:
            results[r] = exc
    return results


def predict(champ: LoadedChampion, parsed: ParsedRequest) -> dict[str, Any]:
    """The response body for ``parsed`` from ``champ`` (the caller's reference: never re-read)."""
    (got,) = predict_batch(champ, [parsed])
    if isinstance(got, Exception):
        raise got
    return got


def _relabel(message: str, parsed: ParsedRequest, r: int) -> str:
    """Model messages name internal ids (``r0000s0003``): give the client's names instead."""
    for i in range(parsed.n_series):
        uid = _uid(r, i)
        if uid in message:
            label = series_label(i, parsed.request.inputs[i].item_id)
            message = message.replace(repr(uid), label).replace(uid, label)
    return message
