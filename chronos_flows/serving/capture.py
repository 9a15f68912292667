"""Data capture of the endpoint (opt-in): answered requests that carry ``item_id``, ``start`` and
``freq``, with their forecasts, appended to the store as batched Parquet objects for the monitor.

Format (agreed with the monitor, which groups rows into forecasts by ``(champion_run_id, origin)``
like a batch forecast): one object per batch at ``layout.capture_key(env, "YYYY-MM-DD", batch)``,
``batch`` = the UTC compact timestamp of its first captured request + 8 hex characters, written whole
with ``store.put`` (atomic). One row per (captured series, forecast step): ``unique_id`` (the
item_id), ``ds`` (forecast timestamp, naive UTC), ``step`` (1..H), ``origin`` (the last observed
timestamp: ``ds`` of step 1 minus one ``freq``), ``freq``, ``mean``, one column per requested
quantile level named like the batch forecasts (``"0.1"``...; levels not requested are absent, or
null where another request of the batch asked for them), ``family``, ``champion_run_id``,
``request_id``, ``captured_at`` (naive UTC).

The request path only appends a reference to the request and its answer (no copy, no frame): a
background thread builds and writes a batch every ``max_requests`` requests or ``max_seconds``
seconds, whichever comes first, and :meth:`CaptureWriter.stop` writes what is left (the server
calls it after its last answer, on SIGTERM too). A batch the store refuses (an outage) is kept and
retried every ``retry_seconds``, in order; requests never wait for the store and never fail because
of it. Past ``max_rows_held`` unwritten rows the oldest batch is dropped, and that is logged and
counted (:attr:`CaptureWriter.stats`), as is anything still unwritten when the server stops.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from functools import lru_cache
from itertools import chain
from typing import Any, Optional

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import Tick, Week

from chronos_flows.core import layout
from chronos_flows.models.base import quantile_column

logger = logging.getLogger("chronos_flows.serving.capture")

#: the columns every capture object has, in this order (quantile columns follow ``mean``)
CAPTURE_COLUMNS = ("unique_id", "ds", "step", "origin", "freq", "mean")
CAPTURE_TRAILER = ("family", "champion_run_id", "request_id", "captured_at")


class CaptureWriter:
    """Batches captured requests into Parquet objects of ``{env}/capture/`` (see the module doc)."""

    def __init__(self, store: Any, env: str, *, max_requests: int = 1000, max_seconds: float = 60.0,
                 retry_seconds: float = 5.0, max_rows_held: int = 5_000_000):
        if max_requests < 1 or max_seconds <= 0:
            raise ValueError("capture needs max_requests >= 1 and max_seconds > 0")
        self.store = store
        self.env = env
        self.max_requests = int(max_requests)
        self.max_seconds = float(max_seconds)
        self.retry_seconds = float(retry_seconds)
        self.max_rows_held = int(max_rows_held)
        self._pending: list[tuple] = []
        self._first_at: Optional[float] = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._unwritten: deque[tuple[str, bytes, int]] = deque()
        self._next_retry = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.stats = {"requests": 0, "rows_written": 0, "objects_written": 0, "write_failures": 0,
                      "rows_held": 0, "rows_dropped": 0}

    # ------------------------------------------------------------------ the request path

    def add(self, champ: Any, parsed: Any, response: dict[str, Any], request_id: str) -> None:
        """Keep ``parsed``'s answer for the next batch when it carries item_id, start and freq (cheap:
        references only; rows are built by the writer thread)."""
        params = parsed.request.parameters
        if params.freq is None:  # start is then absent too (the validator wants both or neither)
            return
        inputs = parsed.request.inputs
        if not any(s.item_id is not None for s in inputs):
            return
        now = time.time()
        with self._lock:
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append((now, request_id, str(champ.run_id), str(champ.family), parsed, response))
            n = len(self._pending)
        if n >= self.max_requests:
            self._wake.set()

    # ------------------------------------------------------------------ the writer

    def start(self) -> "CaptureWriter":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
            self._thread.start()
        return self

    def stop(self, final_attempts: int = 3, pause_seconds: float = 1.0) -> None:
        """Write everything captured (the server's last step); a store still refusing after
        ``final_attempts`` is logged with the number of rows lost."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.flush(force=True)
        for attempt in range(final_attempts):
            if not self._unwritten:
                break
            if attempt:
                time.sleep(pause_seconds)
            self._write_unwritten(force=True)
        if self._unwritten:
            lost = sum(rows for _, _, rows in self._unwritten)
            logger.error("data capture: %d captured rows in %d batch(es) could not be written to the store before "
                         "the server stopped; they are lost", lost, len(self._unwritten))

    def _run(self) -> None:
        tick = min(self.max_seconds, max(self.retry_seconds / 2, 0.05), 1.0)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - capture never takes the server down
                logger.exception("data capture: building a batch failed")

    def flush(self, force: bool = False) -> int:
        """Turn pending requests into batches of at most ``max_requests`` when one is due (``force``:
        now) and write what is unwritten; the number of rows put in new batches."""
        rows, made = 0, False
        while True:
            with self._lock:
                due = self._pending and (force or len(self._pending) >= self.max_requests
                                         or time.monotonic() - (self._first_at or 0.0) >= self.max_seconds)
                if not due:
                    break
                taken, self._pending = self._pending[:self.max_requests], self._pending[self.max_requests:]
                if self._pending:
                    self._first_at = time.monotonic()
            frame = capture_frame(taken)
            self.stats["requests"] += len(taken)
            if len(frame):
                self._hold(self._batch_key(taken[0][0]), frame)
                rows += len(frame)
                made = True
        self._write_unwritten(force=force or made)
        return rows

    def _batch_key(self, first_at: float) -> str:
        t = datetime.fromtimestamp(first_at, tz=timezone.utc)
        return layout.capture_key(self.env, t.strftime("%Y-%m-%d"), f"{t:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:8]}")

    def _hold(self, key: str, frame: pd.DataFrame) -> None:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        with self._write_lock:
            self._unwritten.append((key, buf.getvalue(), len(frame)))
            self.stats["rows_held"] += len(frame)
            while self.stats["rows_held"] > self.max_rows_held and len(self._unwritten) > 1:
                old_key, _, old_rows = self._unwritten.popleft()
                self.stats["rows_held"] -= old_rows
                self.stats["rows_dropped"] += old_rows
                logger.error("data capture: the store has refused writes for too long; dropped the oldest batch "
                             "%s (%d rows) to stay under %d held rows", old_key, old_rows, self.max_rows_held)

    def _write_unwritten(self, force: bool = False) -> None:
        with self._write_lock:
            if not self._unwritten or (not force and time.monotonic() < self._next_retry):
                return
            while self._unwritten:
                key, data, rows = self._unwritten[0]
                try:
                    self.store.put(key, data)
                except Exception as exc:  # noqa: BLE001 - an outage: keep the batch, retry later
                    self.stats["write_failures"] += 1
                    self._next_retry = time.monotonic() + self.retry_seconds
                    logger.warning("data capture: writing %s failed (%s: %s); %d batch(es) held, retrying in %.0fs",
                                   key, type(exc).__name__, exc, len(self._unwritten), self.retry_seconds)
                    return
                self._unwritten.popleft()
                self.stats["rows_held"] -= rows
                self.stats["rows_written"] += rows
                self.stats["objects_written"] += 1
                logger.info("data capture: %d rows written to %s", rows, key)


def _fixed_step(offset: Any) -> Optional[int]:
    """Nanoseconds between consecutive timestamps of ``offset`` when that is constant (hours, days,
    weeks...; not months or business days): forecast timestamps are then one vector sum."""
    if isinstance(offset, Tick):
        return int(pd.Timedelta(offset).value)
    if isinstance(offset, Week):
        return int(pd.Timedelta(weeks=offset.n).value)
    return None


@lru_cache(maxsize=65536)
def _first_and_origin(start: pd.Timestamp, n: int, freq: str) -> tuple[int, int]:
    """(first forecast timestamp, last observed timestamp) in naive-UTC nanoseconds of a series of
    ``n`` points from ``start`` (cached: a client's requests tend to share their windows)."""
    if start.tz is not None:
        start = start.tz_convert("UTC").tz_localize(None)
    offset = to_offset(freq)
    first = start + n * offset
    return first.as_unit("ns").value, (first - offset).as_unit("ns").value


def capture_frame(records: list[tuple]) -> pd.DataFrame:
    """The capture rows of ``records`` = ``(captured_at epoch s, request_id, run_id, family, parsed,
    response)``: one per (series with an item_id, forecast step). Built per series, then repeated
    over the steps in vectors (the writer thread shares the interpreter with the request path)."""
    uid, freq_of, family_of, run_of, rid_of, at_of, origin_ns, first_ns, steps_ns, hs = ([] for _ in range(10))
    means: list = []
    quantiles: dict[str, list] = {}
    n_rows = 0
    for captured_at, request_id, run_id, family, parsed, response in records:
        params = parsed.request.parameters
        freq, H = params.freq, params.prediction_length
        offset = to_offset(freq)
        step = _fixed_step(offset)
        for i, (s, entry) in enumerate(zip(parsed.request.inputs, response["predictions"])):
            start = parsed.starts[i]
            if s.item_id is None or start is None:
                continue
            first, origin = _first_and_origin(start, len(parsed.targets[i]), freq)
            origin_ns.append(origin)
            if step is None:
                first_ns.append(pd.date_range(pd.Timestamp(first), periods=H, freq=offset).as_unit("ns").asi8)
                steps_ns.append(None)
            else:
                first_ns.append(first)
                steps_ns.append(step)
            means.append(entry["mean"])
            for q in parsed.quantiles:
                quantiles.setdefault(quantile_column(q), []).append((n_rows, entry[str(q)]))
            uid.append(s.item_id)
            freq_of.append(freq)
            family_of.append(family)
            run_of.append(run_id)
            rid_of.append(request_id)
            at_of.append(captured_at)
            hs.append(H)
            n_rows += H
    if not n_rows:
        return pd.DataFrame(columns=[*CAPTURE_COLUMNS, *CAPTURE_TRAILER])
    reps = np.asarray(hs, dtype=np.int64)
    begins = np.cumsum(reps) - reps
    step_no = np.arange(n_rows, dtype=np.int64) - np.repeat(begins, reps) + 1

    def rep(values: list, dtype: Any = object) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=dtype), reps)

    if all(st is not None for st in steps_ns):
        ds = rep(first_ns, np.int64) + (step_no - 1) * rep(steps_ns, np.int64)
    else:
        ds = np.concatenate([np.asarray(f) if st is None else f + st * np.arange(h, dtype=np.int64)
                             for f, st, h in zip(first_ns, steps_ns, hs)])
    frame = pd.DataFrame({
        "unique_id": rep(uid),
        "ds": ds.astype("datetime64[ns]"),
        "step": step_no,
        "origin": rep(origin_ns, np.int64).astype("datetime64[ns]"),
        "freq": rep(freq_of),
        "mean": np.fromiter(chain.from_iterable(means), dtype=float, count=n_rows),
    })
    for col in sorted(quantiles, key=float):
        values = np.full(n_rows, np.nan)
        for at, got in quantiles[col]:
            values[at:at + len(got)] = got
        frame[col] = values
    frame["family"] = rep(family_of)
    frame["champion_run_id"] = rep(run_of)
    frame["request_id"] = rep(rid_of)
    frame["captured_at"] = (rep(at_of, float) * 1e9).astype(np.int64).astype("datetime64[ns]")
    return frame


def sagemaker_capture_frame(text: str, *, family: str, champion_run_id: str) -> tuple[pd.DataFrame, list[str]]:
    """The capture rows (the format above) of one SageMaker data-capture object (JSON Lines: one
    record per invocation, ``captureData.endpointInput/endpointOutput`` with ``data`` as JSON text or
    base64, ``eventMetadata.eventId/inferenceTime``) of a champion's endpoint; and why records were
    left out (not JSON, a request the contract refuses, an error answer, no item_id/start/freq)."""
    import base64
    import json

    from chronos_flows.serving.schema import RequestError, parse_request

    records: list[tuple] = []
    skipped: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            data = rec["captureData"]
            bodies = []
            for side in ("endpointInput", "endpointOutput"):
                part = data[side]
                raw = part["data"]
                if str(part.get("encoding", "JSON")).upper() == "BASE64":
                    raw = base64.b64decode(raw).decode("utf-8")
                bodies.append(json.loads(raw))
            meta = rec.get("eventMetadata") or {}
            at = pd.Timestamp(meta.get("inferenceTime") or 0, tz="UTC").timestamp()
            parsed = parse_request(bodies[0])
            response = bodies[1]
            if not isinstance(response, dict) or len(response.get("predictions") or []) != len(parsed.targets):
                skipped.append(f"line {n}: the answer is not a forecast of every series (an error answer?)")
                continue
        except RequestError as exc:
            skipped.append(f"line {n}: a request the endpoint refuses: {exc}")
            continue
        except (ValueError, KeyError, TypeError) as exc:
            skipped.append(f"line {n}: not a SageMaker capture record ({type(exc).__name__}: {exc})")
            continue
        if parsed.request.parameters.freq is None or not any(s.item_id is not None for s in parsed.request.inputs):
            skipped.append(f"line {n}: no item_id/start/freq: nothing to score it against")
            continue
        records.append((at, str(meta.get("eventId") or f"line-{n}"), champion_run_id, family, parsed, response))
    return capture_frame(records), skipped
