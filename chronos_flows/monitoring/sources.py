"""What is scored: published forecasts (batch and captured) and the actuals they are scored against.

A :class:`Published` forecast is one forecast made at one time by one champion: a batch forecast
(``{env}/forecasts/{id}/forecasts.parquet`` with its ``forecast.json``, present only once the batch
is complete) or the captured endpoint requests of one champion at one origin (``{env}/capture/``,
grouped by ``(champion_run_id, origin)`` like a batch). Its frame holds ``unique_id, ds, step,
origin, mean`` and the quantile columns.

:func:`check_actuals` validates the new data before anything is scored: a (series, timestamp) given
twice with different values (overlapping revisions) and series no published forecast knows are
refused with :class:`~chronos_flows.core.errors.BadInputError` naming them; exact duplicates are
reported and kept once.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError
from chronos_flows.core.store import ObjectStore
from chronos_flows.models.base import ID, TARGET, TIME, quantile_column
from chronos_flows.serving.capture import sagemaker_capture_frame

#: how many examples an error or a report names
EXAMPLES = 5


@dataclass
class Published:
    """One published forecast, ready to score."""

    forecast_id: str
    source: str  # "batch" | "capture"
    champion_run_id: str
    family: str
    freq: str
    horizon: int
    quantiles: tuple[float, ...]
    #: unique_id, ds, step, origin, mean, quantile columns
    frame: pd.DataFrame
    created_at: str = ""
    #: series the forecast knows but did not forecast (skipped by it or by cleaning)
    skipped: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def origin(self) -> pd.Timestamp:
        """The forecast's origin: the newest of its series' last observations."""
        return pd.Timestamp(self.frame["origin"].max())

    @property
    def series(self) -> set[str]:
        return set(self.frame[ID].astype(str).unique()) | set(self.skipped)


def _parquet(store: ObjectStore, key: str) -> pd.DataFrame:
    got = store.get(key)
    if got is None:
        raise BadInputError(f"{store.uri(key)} vanished while being read; run the monitor again")
    return pd.read_parquet(io.BytesIO(got[0]))


def _steps(frame: pd.DataFrame, freq: str) -> pd.DataFrame:
    """Add ``step`` (1..H per series, by ``ds``) and ``origin`` (first ``ds`` minus one ``freq``)."""
    frame = frame.sort_values([ID, TIME], kind="stable").reset_index(drop=True)
    frame["step"] = frame.groupby(ID, sort=False).cumcount() + 1
    first = frame.groupby(ID, sort=False)[TIME].transform("min")
    frame["origin"] = first - pd.tseries.frequencies.to_offset(freq)
    return frame


def batch_forecasts(store: ObjectStore, env: str) -> list[Published]:
    """Every complete batch forecast of ``env`` (those whose ``forecast.json`` was written), oldest first."""
    out = []
    prefix = f"{env}/forecasts/"
    for key in store.list(prefix):
        if not key.endswith("/forecast.json"):
            continue
        got = store.get(key)
        if got is None:
            continue
        try:
            doc = json.loads(got[0])
        except json.JSONDecodeError:
            raise BadInputError(f"{store.uri(key)} is not valid JSON; delete that forecast batch or re-publish it") from None
        fid = doc["forecast_id"]
        frame = _parquet(store, f"{layout.forecasts_prefix(env, fid)}/forecasts.parquet")
        freq = (doc.get("data") or {}).get("freq")
        champ = doc.get("champion") or {}
        frame[ID] = frame[ID].astype(str)
        frame[TIME] = pd.to_datetime(frame[TIME])
        out.append(Published(
            forecast_id=fid, source="batch", champion_run_id=str(champ.get("run_id")), family=str(champ.get("family")),
            freq=freq, horizon=int(doc.get("horizon") or frame.groupby(ID).size().max()),
            quantiles=tuple(float(q) for q in doc.get("quantiles") or ()), frame=_steps(frame, freq),
            created_at=str(doc.get("created_at") or ""), skipped=tuple(str(k) for k in (doc.get("skipped") or {})),
        ))
    return sorted(out, key=lambda p: (p.origin, p.created_at, p.forecast_id))


#: columns every captured batch has (the capture format agreed with the endpoint)
CAPTURE_COLUMNS = (ID, TIME, "step", "origin", "freq", "mean", "family", "champion_run_id", "request_id", "captured_at")


def capture_id(champion_run_id: str, origin: pd.Timestamp) -> str:
    return f"capture-{champion_run_id}-{pd.Timestamp(origin):%Y%m%dT%H%M%S}"


def captured_forecasts(store: ObjectStore, env: str) -> list[Published]:
    """The endpoint's captured requests, grouped into forecasts by ``(champion_run_id, origin)``.

    A series requested more than once at the same origin keeps its latest captured forecast (the
    others are counted in the forecast's notes). Quantile levels are those present for every row."""
    listed = store.list(layout.capture_prefix(env) + "/")
    keys = [k for k in listed if k.endswith(".parquet")]
    frames, skipped = [], []
    for key in keys:
        f = _parquet(store, key)
        missing = [c for c in CAPTURE_COLUMNS if c not in f.columns]
        if missing:
            raise BadInputError(f"captured batch {store.uri(key)} lacks column(s) {missing}; it is not in the capture "
                                f"format (README 'Data capture'): move it out of {layout.capture_prefix(env)}/")
        frames.append(f)
    for key in listed:  # a SageMaker endpoint's own capture (JSON Lines), one prefix per champion
        owner = layout.sagemaker_capture_owner(env, key)
        if owner is None or not key.endswith(".jsonl"):
            continue
        got = store.get(key)
        if got is None:  # removed since it was listed
            continue
        f, why = sagemaker_capture_frame(got[0].decode("utf-8", errors="replace"), family=owner[0],
                                         champion_run_id=owner[1])
        skipped.extend(f"{store.uri(key)} {w}" for w in why)
        if len(f):
            frames.append(f)
    if not frames:
        return []
    cap = pd.concat(frames, ignore_index=True)
    cap[ID] = cap[ID].astype(str)
    for col in (TIME, "origin", "captured_at"):
        cap[col] = pd.to_datetime(cap[col])
    out = []
    for (run_id, origin), g in cap.groupby(["champion_run_id", "origin"], sort=True):
        g = g.sort_values("captured_at", kind="stable")
        n_requests = g["request_id"].nunique()
        latest = g.drop_duplicates([ID, "step"], keep="last")
        repeated = len(g) - len(latest)
        qcols = [c for c in g.columns if _is_level(c) and latest[c].notna().all()]
        levels = tuple(sorted(float(c) for c in qcols))
        frame = latest[[ID, TIME, "step", "origin", "mean", *qcols]].sort_values([ID, TIME]).reset_index(drop=True)
        notes = [f"{n_requests} captured request(s)"]
        if skipped:
            notes.append(f"{len(skipped)} SageMaker capture record(s) not scorable: {'; '.join(skipped[:EXAMPLES])}")
        if repeated:
            notes.append(f"{repeated} row(s) of series requested again at the same origin: the latest request is scored")
        out.append(Published(
            forecast_id=capture_id(str(run_id), origin), source="capture", champion_run_id=str(run_id),
            family=str(latest["family"].iloc[-1]), freq=str(latest["freq"].iloc[-1]), horizon=int(latest["step"].max()),
            quantiles=levels, frame=frame, created_at=str(g["captured_at"].min()), notes=notes,
        ))
    return out


def _is_level(col: Any) -> bool:
    try:
        return 0 < float(col) < 1
    except (TypeError, ValueError):
        return False


@dataclass
class ActualsCheck:
    """What :func:`check_actuals` found and kept."""

    actuals: pd.DataFrame
    duplicates: int = 0
    ignored_ids: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)


def _examples(items: Iterable[Any]) -> str:
    items = list(items)
    more = f" … and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else ""
    return ", ".join(str(i) for i in items[:EXAMPLES]) + more


def check_actuals(raw: pd.DataFrame, known_ids: set[str], *, source: str, unknown_ids: str = "error") -> ActualsCheck:
    """Validate the new data (long ``unique_id, ds, y`` as ingest returns it) against the published
    forecasts' series. ``unknown_ids``: ``"error"`` refuses series no published forecast knows,
    ``"ignore"`` leaves them out and reports them. Raises BadInputError, writes nothing."""
    df = raw[[ID, TIME, TARGET]].copy()
    df[ID] = df[ID].astype(str)
    if not pd.api.types.is_numeric_dtype(df[TARGET]):
        bad = df[pd.to_numeric(df[TARGET], errors="coerce").isna() & df[TARGET].notna()]
        raise BadInputError(f"data {source}: column y holds non-numeric values, e.g. "
                            f"{_examples(f'{r[ID]} {r[TIME]}: {r[TARGET]!r}' for _, r in bad.iterrows())}; "
                            f"fix those rows and run the monitor again (nothing was scored)")
    out = ActualsCheck(actuals=df)
    dup_mask = df.duplicated([ID, TIME], keep=False)
    if dup_mask.any():
        dups = df[dup_mask]
        spread = dups.groupby([ID, TIME])[TARGET].agg(lambda s: s.nunique(dropna=False))
        conflicts = spread[spread > 1]
        if len(conflicts):
            ex = []
            for uid, ds in conflicts.index[:EXAMPLES]:
                vals = dups[(dups[ID] == uid) & (dups[TIME] == ds)][TARGET].tolist()
                ex.append(f"{uid} {pd.Timestamp(ds):%Y-%m-%d %H:%M}: {vals}")
            raise BadInputError(
                f"data {source} gives {len(conflicts)} (series, timestamp) pair(s) more than once with different values "
                f"(overlapping revisions), e.g. {'; '.join(ex)}; keep one value per timestamp (the latest revision) "
                f"and run the monitor again (nothing was scored)")
        df = df.drop_duplicates([ID, TIME], keep="first")
        out.duplicates = int(dup_mask.sum() - len(dups.drop_duplicates([ID, TIME])))
        out.issues.append(f"{out.duplicates} duplicated (series, timestamp) row(s) with equal values, kept once")
    unknown = sorted(set(df[ID].unique()) - known_ids)
    if unknown:
        if unknown_ids == "error":
            raise BadInputError(
                f"data {source} has {len(unknown)} series that no published forecast knows: {_examples(unknown)}; "
                f"check the data is this environment's (or pass unknown_ids=ignore to leave them out); nothing was scored")
        out.ignored_ids = unknown
        out.issues.append(f"{len(unknown)} series without a published forecast left out: {_examples(unknown)}")
        df = df[~df[ID].isin(unknown)]
    df = df.copy()
    df[TARGET] = df[TARGET].astype(float)
    out.actuals = df.sort_values([ID, TIME]).reset_index(drop=True)
    return out


def known_levels(frame: pd.DataFrame, quantiles: Iterable[float]) -> list[float]:
    """The quantile levels of ``quantiles`` that ``frame`` has a column for."""
    return [float(q) for q in quantiles if quantile_column(q) in frame.columns]


def actuals_sha(actuals: pd.DataFrame) -> str:
    """A content hash of ``(unique_id, ds, y)`` rows (sorted): the identity of what was scored."""
    import hashlib

    a = actuals[[ID, TIME, TARGET]].sort_values([ID, TIME])
    h = hashlib.sha256()
    h.update(a[ID].astype(str).str.cat(sep="\x1f").encode())
    h.update(pd.to_datetime(a[TIME]).astype("int64").to_numpy().tobytes())
    h.update(np.round(a[TARGET].to_numpy(dtype=float), 9).tobytes())
    return h.hexdigest()
