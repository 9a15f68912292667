"""The JumpStart Chronos request contract: the schema, its validation and the errors a request gets."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

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


@lru_cache(maxsize=1024)
def request_offset(freq: str) -> Any:
    """``to_offset(freq)``, cached: parsing a frequency costs more than the rest of a request's
    validation, and clients send few distinct ones (offsets are immutable, so sharing one is safe).
    Raises what ``to_offset`` raises (not cached)."""
    return pd.tseries.frequencies.to_offset(freq)


@lru_cache(maxsize=65536)
def _start_of(text: str, freq: str) -> tuple[Any, bool]:
    """``(pd.Timestamp(text), whether it is on freq)``, cached (a client's requests share their
    starts); raises what ``pd.Timestamp`` raises (not cached)."""
    start = pd.Timestamp(text)
    if start is pd.NaT or pd.isna(start):
        return None, False
    return start, bool(request_offset(freq).is_on_offset(start))


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


_INPUT_KEYS = frozenset(("target", "item_id", "start"))
_PARAMETER_KEYS = frozenset(Parameters.model_fields)
_BODY_KEYS = frozenset(("inputs", "parameters"))
_NUMBER_TYPES = frozenset((int, float))
_PARAMETER_TYPES: dict[str, Any] = {"prediction_length": int, "freq": (str, type(None)), "batch_size": int,
                                    "predict_batches_jointly": bool}


def _well_formed(raw: dict) -> Optional[InvocationRequest]:
    """The request of a body in the common shape (no covariates; every value of the type the schema
    asks for), built without pydantic's per-value validation; None for any other body, which
    :meth:`InvocationRequest.model_validate` then checks (and names what is wrong). Range checks
    (``prediction_length``, ``batch_size``) are left to the caller when the types are right."""
    if not _BODY_KEYS.issuperset(raw):
        return None
    inputs = raw.get("inputs")
    if type(inputs) is not list or not inputs:
        return None
    given = raw.get("parameters", {})
    if type(given) is not dict or not _PARAMETER_KEYS.issuperset(given):
        return None
    for name, value in given.items():
        if name == "quantile_levels":
            if type(value) is not list or not value or not _NUMBER_TYPES.issuperset(map(type, value)):
                return None
        elif not isinstance(value, _PARAMETER_TYPES[name]) or (name != "predict_batches_jointly" and type(value) is bool):
            return None
    length, size = given.get("prediction_length", 1), given.get("batch_size", 256)
    if not (1 <= length <= MAX_PREDICTION_LENGTH and size >= 1):
        return None
    series = []
    for s in inputs:
        if type(s) is not dict or not _INPUT_KEYS.issuperset(s):
            return None
        target, item_id, start = s.get("target"), s.get("item_id"), s.get("start")
        if type(target) is not list or not _NUMBER_TYPES.issuperset(map(type, target)):
            return None
        if (item_id is not None and type(item_id) is not str) or (start is not None and type(start) is not str):
            return None
        series.append(SeriesInput.model_construct(target=target, item_id=item_id, start=start))
    return InvocationRequest.model_construct(inputs=series, parameters=Parameters.model_construct(**given))


def parse_request(raw: Any) -> ParsedRequest:
    """Validate a decoded JSON body against the contract; :class:`RequestError` names the problem."""
    if not isinstance(raw, dict):
        raise RequestError(f"the body must be a JSON object with 'inputs' (and optional 'parameters'), not {type(raw).__name__}")
    inputs = raw.get("inputs")
    if isinstance(inputs, list) and len(inputs) > MAX_SERIES:
        raise RequestError(f"inputs: {len(inputs)} series; at most {MAX_SERIES} per request (split the request)")
    req = _well_formed(raw)
    if req is None:  # something unusual: pydantic says what (its messages name the field)
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
            offset = request_offset(params.freq)
        except (ValueError, TypeError):
            raise RequestError(f"parameters.freq: {params.freq!r} is not a pandas frequency (e.g. 'h', 'D', 'W-MON', 'MS')") from None
    seen_ids: dict[str, int] = {}
    targets: list[np.ndarray] = []
    starts: list[Optional[pd.Timestamp]] = []
    has_cov = False
    for i, s in enumerate(req.inputs):
        if s.item_id is not None:
            if s.item_id in seen_ids:
                raise RequestError(f"{series_label(i, s.item_id)}.item_id: duplicate of inputs[{seen_ids[s.item_id]}]; "
                                   "item_ids must be unique")
            seen_ids[s.item_id] = i
        y, start = _check_series(i, s, params, offset)
        has_cov = has_cov or bool(s.past_covariates or s.future_covariates)
        targets.append(y)
        starts.append(start)
    return ParsedRequest(req, targets, starts, tuple(levels), has_cov)


def _check_series(i: int, s: SeriesInput, params: Parameters, offset: Any) -> tuple[np.ndarray, Optional[pd.Timestamp]]:
    """One input's target (float array) and start, or the RequestError naming the series and field."""
    label = series_label(i, s.item_id)
    try:
        y = np.asarray(s.target, dtype=float)
    except OverflowError:
        j = next(j for j, v in enumerate(s.target) if isinstance(v, int) and abs(v) > 2**1023)
        raise RequestError(f"{label}.target[{j}]: an integer too large for a float") from None
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
            start, on_offset = _start_of(s.start, params.freq)
        except (ValueError, TypeError):
            raise RequestError(f"{label}.start: {s.start!r} is not a timestamp (e.g. 2024-01-01T00:00:00)") from None
        if start is None:
            raise RequestError(f"{label}.start: {s.start!r} is not a timestamp")
        if not on_offset:
            raise RequestError(f"{label}.start: {s.start} is not on frequency {params.freq} (e.g. a W-MON start must be a Monday)")
    H = params.prediction_length
    for kind, covs, want in (("past_covariates", s.past_covariates, len(y)), ("future_covariates", s.future_covariates, H)):
        for name, values in (covs or {}).items():
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
    return y, start
