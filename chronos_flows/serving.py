"""Real-time serving core: the SageMaker JumpStart Chronos request/response contract over the
environment's champion, with hot swap. Framework-free (pydantic, pandas; no HTTP library): the app
layer (:mod:`chronos_flows.server`) mounts it on FastAPI/uvicorn.

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
"""

from __future__ import annotations

import logging
import math
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from chronos_flows.errors import BadInputError
from chronos_flows.models.base import ID, TARGET, TIME, quantile_column

logger = logging.getLogger("chronos_flows.serving")

MAX_SERIES = 1000
MIN_OBSERVATIONS = 5
MAX_PREDICTION_LENGTH = 1024
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
#: the index given to series sent without start/freq (the model needs timestamps; the client never sees them)
SYNTHETIC_FREQ = "D"
SYNTHETIC_END = pd.Timestamp("2000-01-01")

Number = Union[StrictInt, StrictFloat]
Covariate = Union[list[Number], list[StrictStr]]


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a message naming the series and field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
        self.message = message


class ModelError(Exception):
    """The model failed on a valid request (500); ``message`` names the series when known."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ------------------------------------------------------------------------------------------ schema


class SeriesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: list[Number]
    item_id: Optional[StrictStr] = None
    start: Optional[StrictStr] = None
    past_covariates: Optional[dict[str, Covariate]] = None
    future_covariates: Optional[dict[str, Covariate]] = None


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_length: StrictInt = Field(1, ge=1, le=MAX_PREDICTION_LENGTH)
    quantile_levels: list[Number] = Field(default_factory=lambda: list(DEFAULT_QUANTILES), min_length=1)
    freq: Optional[StrictStr] = None
    batch_size: StrictInt = Field(256, ge=1)
    predict_batches_jointly: StrictBool = False


class InvocationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[SeriesInput] = Field(min_length=1)
    parameters: Parameters = Field(default_factory=Parameters)


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request: ``targets[i]`` float64 arrays, ``starts[i]`` timestamps (or None)."""

    request: InvocationRequest
    targets: list[np.ndarray]
    starts: list[Optional[pd.Timestamp]]
    quantiles: tuple[float, ...]
    has_covariates: bool

    @property
    def n_series(self) -> int:
        return len(self.targets)


def series_label(i: int, item_id: Optional[str]) -> str:
    return f"inputs[{i}]" + (f" (item_id {item_id!r})" if item_id is not None else "")


def _loc_text(loc: tuple, raw: Any) -> str:
    """``("inputs", 3, "target", 2)`` → ``inputs[3] (item_id 'A').target[2]``."""
    out = ""
    for j, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if j == 1 and loc[0] == "inputs":
                try:
                    item = raw["inputs"][part].get("item_id")
                except (KeyError, IndexError, TypeError, AttributeError):
                    item = None
                if isinstance(item, str):
                    out += f" (item_id {item!r})"
        elif part in ("list[union[int,float]]", "list[str]", "int", "float") or "[" in str(part):
            continue  # union branch names pydantic inserts: not a field
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _validation_message(exc: ValidationError, raw: Any) -> str:
    messages: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        where = _loc_text(tuple(err["loc"]), raw)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind in ("int_type", "float_type", "int_from_float", "bool_type"):
            msg = "must be a number"
        elif kind == "string_type":
            msg = "must be a string"
        else:
            msg = err["msg"]
        if "_covariates." in where and where.endswith("]"):
            where, msg = where[: where.rindex("[")], "values must be all numbers or all strings"
        got = messages.setdefault(where, [])
        if msg not in got:
            got.append(msg)  # a union reports each branch: one line per place
    parts = [f"{where}: {' or '.join(msgs)}" for where, msgs in list(messages.items())[:5]]
    more = f" (and {len(messages) - len(parts)} more)" if len(messages) > len(parts) else ""
    return "; ".join(parts) + more


def parse_request(raw: Any) -> ParsedRequest:
    """Validate a decoded JSON body against the contract; :class:`RequestError` names the problem."""
    if not isinstance(raw, dict):
        raise RequestError(f"the body must be a JSON object with 'inputs' (and optional 'parameters'), not {type(raw).__name__}")
    inputs = raw.get("inputs")
    if isinstance(inputs, list) and len(inputs) > MAX_SERIES:
        raise RequestError(f"inputs: {len(inputs)} series; at most {MAX_SERIES} per request (split the request)")
    try:
        req = InvocationRequest.model_validate(raw)
    except ValidationError as exc:
        raise RequestError(_validation_message(exc, raw)) from None
    params = req.parameters
    levels = [float(q) for q in params.quantile_levels]
    for j, q in enumerate(levels):
        if not (0.0 < q < 1.0) or not math.isfinite(q):
            raise RequestError(f"parameters.quantile_levels[{j}]: {q} is not strictly between 0 and 1")
    if len(set(levels)) != len(levels):
        raise RequestError(f"parameters.quantile_levels: {levels} repeats a level")
    offset = None
    if params.freq is not None:
        try:
            offset = pd.tseries.frequencies.to_offset(params.freq)
        except (ValueError, TypeError):
            raise RequestError(f"parameters.freq: {params.freq!r} is not a pandas frequency (e.g. 'h', 'D', 'W-MON', 'MS')") from None
    seen_ids: dict[str, int] = {}
    targets: list[np.ndarray] = []
    starts: list[Optional[pd.Timestamp]] = []
    has_cov = False
    H = params.prediction_length
    for i, s in enumerate(req.inputs):
        label = series_label(i, s.item_id)
        if s.item_id is not None:
            if s.item_id in seen_ids:
                raise RequestError(f"{label}.item_id: duplicate of inputs[{seen_ids[s.item_id]}]; item_ids must be unique")
            seen_ids[s.item_id] = i
        y = np.asarray(s.target, dtype=float)
        if len(y) < MIN_OBSERVATIONS:
            raise RequestError(f"{label}.target: {len(y)} observations; at least {MIN_OBSERVATIONS} are needed (30+ recommended)")
        bad = np.flatnonzero(~np.isfinite(y))
        if len(bad):
            raise RequestError(f"{label}.target[{bad[0]}]: {y[bad[0]]} is not a finite number")
        if s.start is not None and params.freq is None:
            raise RequestError(f"{label}.start: given without parameters.freq; send both or neither")
        if s.start is None and params.freq is not None:
            raise RequestError(f"{label}.start: missing, but parameters.freq is given; send both or neither")
        start = None
        if s.start is not None:
            try:
                start = pd.Timestamp(s.start)
            except (ValueError, TypeError):
                raise RequestError(f"{label}.start: {s.start!r} is not a timestamp (e.g. 2024-01-01T00:00:00)") from None
            if start is pd.NaT or pd.isna(start):
                raise RequestError(f"{label}.start: {s.start!r} is not a timestamp")
            if not offset.is_on_offset(start):
                raise RequestError(f"{label}.start: {s.start} is not on frequency {params.freq} (e.g. a W-MON start must be a Monday)")
        for kind, covs, want in (("past_covariates", s.past_covariates, len(y)), ("future_covariates", s.future_covariates, H)):
            for name, values in (covs or {}).items():
                has_cov = True
                if len(values) != want:
                    what = "the target" if kind == "past_covariates" else "parameters.prediction_length"
                    raise RequestError(f"{label}.{kind}.{name}: {len(values)} values; must be as long as {what} ({want})")
                if values and not isinstance(values[0], str):
                    arr = np.asarray(values, dtype=float)
                    if not np.isfinite(arr).all():
                        raise RequestError(f"{label}.{kind}.{name}: non-finite value")
        if s.future_covariates:
            missing = sorted(set(s.future_covariates) - set(s.past_covariates or {}))
            if missing:
                raise RequestError(f"{label}.future_covariates: {missing} also need past values in past_covariates")
        targets.append(y)
        starts.append(start)
    return ParsedRequest(req, targets, starts, tuple(levels), has_cov)


# ------------------------------------------------------------------------------------------ champion


@dataclass
class LoadedChampion:
    """One loaded champion; never mutated after load (a swap replaces the whole object)."""

    run_id: str
    family: str
    doc: dict[str, Any]
    etag: Optional[str]
    model: Any
    min_history: int
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    workdir: Optional[Path] = None
    #: torch models run one call at a time (each call already uses every core)
    lock: Optional[threading.Lock] = None

    def headers(self) -> dict[str, str]:
        return {"X-Champion-Run-Id": str(self.run_id), "X-Champion-Family": str(self.family)}


def load_champion(store: Any, env: str, doc: dict[str, Any], etag: Optional[str], workdir: Path, *,
                  device: str = "auto") -> LoadedChampion:
    """The champion ``doc`` as a :class:`LoadedChampion` (Chronos: downloaded into its own directory)."""
    from chronos_flows.forecasting import champion_forecaster
    from chronos_flows.models.families import MIN_HISTORY, check_family

    family = check_family(doc.get("family", "chronos"))
    t0 = time.perf_counter()
    own = Path(workdir) / f"{doc.get('run_id')}-{str(doc.get('write_id') or uuid.uuid4().hex)[:12]}"
    model = champion_forecaster(store, env, doc, own, device=device, n_jobs=1)
    return LoadedChampion(
        run_id=str(doc.get("run_id")), family=family, doc=doc, etag=etag, model=model,
        min_history=max(MIN_HISTORY[family], MIN_OBSERVATIONS), load_seconds=time.perf_counter() - t0,
        workdir=own, lock=threading.Lock() if family in ("chronos", "ensemble") else None,  # an ensemble may hold a Chronos member
    )


class ChampionHolder:
    """Holds the loaded champion of ``env`` and swaps in a new one when champion.json changes.

    ``current`` is None until the first champion is loaded. :meth:`check` reads champion.json; an
    unchanged ETag costs one small GET. A champion that fails to load is logged and retried after
    ``retry_seconds``; the previous one keeps serving meanwhile."""

    def __init__(self, store: Any, env: str, *, poll_seconds: float = 10.0, workdir: Optional[Path] = None,
                 device: str = "auto", retry_seconds: float = 30.0,
                 loader: Optional[Callable[..., LoadedChampion]] = None):
        self.store = store
        self.env = env
        self.poll_seconds = max(float(poll_seconds), 0.05)
        self.retry_seconds = retry_seconds
        self.device = device
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="chronos-flows-serve-"))
        self._loader = loader or load_champion
        self._current: Optional[LoadedChampion] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failed: dict[str, float] = {}  # etag -> when its load failed
        self.last_error: Optional[str] = None
        self.swaps = 0

    @property
    def current(self) -> Optional[LoadedChampion]:
        return self._current

    def check(self) -> bool:
        """Load champion.json's model if its ETag changed; True when a new champion was swapped in."""
        from chronos_flows import layout
        from chronos_flows.registry import normalize

        import json

        got = self.store.get(layout.champion_key(self.env))
        if got is None:
            return False  # nothing promoted (or deleted): keep serving what is loaded
        data, etag = got
        cur = self._current
        if cur is not None and cur.etag == etag:
            return False
        failed_at = self._failed.get(etag)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_seconds:
            return False
        try:
            doc = normalize(json.loads(data.decode("utf-8")))
        except (ValueError, BadInputError) as exc:
            self._remember_failure(etag, f"champion.json cannot be read: {exc}")
            return False
        if cur is not None and cur.run_id == str(doc.get("run_id")) and cur.doc.get("write_id") == doc.get("write_id"):
            return False
        logger.info("loading champion %s (%s)", doc.get("run_id"), doc.get("family"))
        try:
            loaded = self._loader(self.store, self.env, doc, etag, self.workdir, device=self.device)
        except Exception as exc:  # noqa: BLE001 - a bad champion must not take the server down
            logger.exception("champion %s could not be loaded; still serving %s", doc.get("run_id"),
                             cur.run_id if cur else "nothing")
            self._remember_failure(etag, f"{type(exc).__name__}: {exc}")
            return False
        self._current = loaded  # the atomic swap: requests hold their own reference
        self.swaps += 1
        self.last_error = None
        logger.info("champion %s (%s) serving; loaded in %.2fs%s", loaded.run_id, loaded.family, loaded.load_seconds,
                    f", replacing {cur.run_id}" if cur else "")
        self._cleanup(keep={loaded.workdir, cur.workdir if cur else None})
        return True

    def _remember_failure(self, etag: str, message: str) -> None:
        self._failed[etag] = time.monotonic()
        self.last_error = message
        logger.error("champion not loaded: %s", message)

    def _cleanup(self, keep: set) -> None:
        """Remove model directories of champions older than the previous one (loaded models live in memory)."""
        if not self.workdir.is_dir():
            return
        for child in self.workdir.iterdir():
            if child not in keep and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - store hiccups: log, keep polling
                logger.exception("checking the champion failed; retrying in %.1fs", self.poll_seconds)
            self._stop.wait(self.poll_seconds)

    def start(self) -> "ChampionHolder":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="champion-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ predict


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
        from chronos_flows.models.chronos import family_of_pipeline

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
        out = champ.model.predict(frame, H, model_freq, levels)
    except Exception as exc:  # noqa: BLE001 - attribute the failure to the request that caused it
        if len(batch) > 1:
            return [_forecast_alone(champ, p) for p in batch]
        if isinstance(exc, BadInputError):
            return [RequestError(_relabel(str(exc), first, 0))]
        raise
    failures = dict(getattr(champ.model, "last_failures", None) or {})
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


def _forecast_alone(champ: LoadedChampion, parsed: ParsedRequest) -> Any:
    try:
        return _forecast_many(champ, [parsed])[0]
    except Exception as exc:  # noqa: BLE001 - this request's failure, not its neighbours'
        return exc


def _response(champ: LoadedChampion, parsed: ParsedRequest, means: list, quants: list) -> dict[str, Any]:
    params = parsed.request.parameters
    order = {q: j for j, q in enumerate(sorted(parsed.quantiles))}
    preds = []
    for i, s in enumerate(parsed.request.inputs):
        mean, qs = means[i], quants[i]
        if not (np.isfinite(mean).all() and np.isfinite(qs).all()):
            raise ModelError(f"{series_label(i, s.item_id)}: the {champ.family} champion produced non-finite forecasts")
        entry: dict[str, Any] = {"mean": [float(v) for v in mean]}
        for q in parsed.quantiles:
            entry[str(q)] = [float(v) for v in qs[:, order[q]]]
        if s.item_id is not None:
            entry["item_id"] = s.item_id
        start = parsed.starts[i]
        if start is not None:
            first = pd.date_range(start=start, periods=len(parsed.targets[i]) + 1, freq=params.freq)[-1]
            entry["start"] = first.isoformat()
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


# ------------------------------------------------------------------------------------ micro-batching


@dataclass(eq=False)
class _Job:
    champ: LoadedChampion
    parsed: ParsedRequest
    key: Optional[tuple]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None


class MicroBatcher:
    """Concurrent requests into one model call: a worker thread takes every queued request, waits at
    most ``max_wait_seconds`` for more while the previous call was shared (under load), and never
    gathers more than ``max_series`` series. Requests on the same champion object with the same
    :func:`batch_key` share a call; a request keeps the champion it was submitted with, so a swap
    never mixes models inside one answer. ``on_batch(n_requests, n_series, seconds)`` observes each
    model call (metrics)."""

    def __init__(self, *, max_wait_seconds: float = 0.003, max_series: int = 1024,
                 on_batch: Optional[Callable[[int, int, float], None]] = None):
        self.max_wait_seconds = max(0.0, float(max_wait_seconds))
        self.max_series = max(1, int(max_series))
        self.on_batch = on_batch
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()
        self._shared = False  # the previous call served more than one request

    def submit(self, champ: LoadedChampion, parsed: ParsedRequest) -> dict[str, Any]:
        """Block until ``parsed`` is answered; raise what the request gets (RequestError, ModelError, …)."""
        job = _Job(champ, parsed, batch_key(parsed))
        self._queue.put(job)
        job.done.wait()
        if isinstance(job.result, BaseException):
            raise job.result
        return job.result

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, n, stop = [first], first.parsed.n_series, False
        deadline = time.monotonic() + (self.max_wait_seconds if self._shared else 0.0)
        while n < self.max_series:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if nxt is None:
                stop = True
                break
            jobs.append(nxt)
            n += nxt.parsed.n_series
        return jobs, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._gather(first)
            groups: dict[Any, list[_Job]] = {}
            for job in jobs:
                groups.setdefault((id(job.champ), job.key if job.key is not None else id(job)), []).append(job)
            self._shared = len(jobs) > 1
            for group in groups.values():
                t0 = time.perf_counter()
                try:
                    results = predict_batch(group[0].champ, [j.parsed for j in group])
                except BaseException as exc:  # noqa: BLE001 - handed to each waiting request (logged there)
                    results = [exc] * len(group)
                if self.on_batch is not None:
                    try:
                        self.on_batch(len(group), sum(j.parsed.n_series for j in group), time.perf_counter() - t0)
                    except Exception:  # noqa: BLE001 - metrics never fail a request
                        logger.exception("batch observer failed")
                for job, res in zip(group, results):
                    job.result = res
                    job.done.set()
