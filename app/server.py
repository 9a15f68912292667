"""The HTTP server of ``chronos-flows serve`` (app layer): the SageMaker hosting contract as a plain
ASGI app on uvicorn over the framework-free core in :mod:`chronos_flows.serving` (no web framework
on the request path: three routes do not need one, and its per-request objects cost more than the
tiny model's share of a batched call).

* ``GET /ping``: 200 when a champion is loaded, 503 while none is (never needs an API key).
* ``POST /invocations``: the JumpStart Chronos request/response format.
* API keys (API Gateway's ``x-api-key`` header): when configured, every route but /ping answers
  401 without a key and 403 with a wrong one; keys are compared in constant time and never logged.
* Every response carries ``X-Champion-Run-Id`` / ``X-Champion-Family`` of the champion that
  answered (for /invocations: the one the request started on) and ``X-Request-Id``.
* One JSON access-log line per request on the ``chronos_flows.access`` logger.
* ``GET /metrics``: Prometheus text format (requests by route and status, latency histogram, model
  calls and their sizes in requests and series, champion load time and swaps, the serving champion).
* Concurrent requests are micro-batched into one model call (:class:`~chronos_flows.serving.MicroBatcher`);
  the event loop hands a request to the batcher's thread and is woken once with its answer (a lone,
  known-short call runs on the loop itself: no hand-off).
* Bodies are read by orjson (Python's json only for what orjson refuses: NaN, huge integers), so
  the validator still names such values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError
from chronos_flows.serving import ChampionHolder, MicroBatcher, ModelError, RequestError, parse_request

logger = logging.getLogger("chronos_flows.server")
access_log = logging.getLogger("chronos_flows.access")

#: request bodies above this are refused with 413 (SageMaker real-time endpoints cap payloads at 6 MB;
#: a direct deployment may send up to 1,000 long series)
MAX_BODY_BYTES = 20 * 1024 * 1024
API_KEYS_ENV = "CHRONOS_FLOWS_API_KEYS"
#: routes with their own metrics label (anything else is counted as "other")
ROUTES = ("/ping", "/invocations", "/metrics")


def load_api_keys(env_value: Optional[str] = None, keys_file: Optional[str] = None) -> list[str]:
    """API keys from ``$CHRONOS_FLOWS_API_KEYS`` (comma-separated) and/or a file (one per line, ``#`` comments)."""
    keys: list[str] = []
    if env_value:
        keys += [k.strip() for k in env_value.split(",") if k.strip()]
    if keys_file:
        try:
            text = Path(keys_file).read_text()
        except OSError as exc:
            raise BadInputError(f"--api-keys-file {keys_file}: cannot be read ({exc.strerror})") from None
        keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not keys:
            raise BadInputError(f"--api-keys-file {keys_file} holds no key; put one key per line")
    return keys


def _key_ok(given: str, keys: Iterable[bytes]) -> bool:
    g = given.encode("utf-8", "surrogateescape")
    ok = False
    for k in keys:  # no early exit: the time taken does not say which key matched
        ok |= hmac.compare_digest(g, k)
    return ok


class ServerMetrics:
    """The server's Prometheus metrics, in their own registry (one per app)."""

    def __init__(self, holder: ChampionHolder):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("chronos_serve_requests", "HTTP requests by route and status", ["path", "status"], registry=r)
        self.latency = Histogram("chronos_serve_request_seconds", "request latency (seconds)", ["path"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.series = Counter("chronos_serve_series", "series forecast (all requests)", registry=r)
        self.batch_requests = Histogram("chronos_serve_batch_requests", "requests answered by one model call", registry=r,
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_series = Histogram("chronos_serve_batch_series", "series in one model call", registry=r,
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_seconds = Histogram("chronos_serve_batch_seconds", "time of one model call (seconds)", registry=r,
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.load_seconds = Gauge("chronos_serve_champion_load_seconds", "time the serving champion took to load", registry=r)
        self.swaps = Gauge("chronos_serve_champion_swaps", "champions loaded since the server started", registry=r)
        self.champion = Gauge("chronos_serve_champion", "the serving champion (value 1)", ["run_id", "family"], registry=r)
        self.capture_stats = Gauge("chronos_serve_capture", "data capture: requests captured, rows and objects written, "
                                   "store write failures, rows held for a retry, rows dropped", ["what"], registry=r)
        self.capture: Any = None
        self._holder = holder
        self._shown: Optional[tuple[str, str]] = None
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, path: str, status: int, seconds: float) -> None:
        """One answered request (label children cached: no label lookup per request)."""
        key = (path, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (self.requests.labels(path, str(status)), self.latency.labels(path))
        child[0].inc()
        child[1].observe(seconds)

    def on_batch(self, n_requests: int, n_series: int, seconds: float) -> None:
        self.batch_requests.observe(n_requests)
        self.batch_series.observe(n_series)
        self.batch_seconds.observe(seconds)
        self.series.inc(n_series)

    def render(self) -> bytes:
        champ = self._holder.current
        if champ is not None:
            shown = (champ.run_id, champ.family)
            if shown != self._shown:
                if self._shown is not None:
                    self.champion.remove(*self._shown)
                self.champion.labels(*shown).set(1)
                self._shown = shown
            self.load_seconds.set(champ.load_seconds)
        self.swaps.set(self._holder.swaps)
        if self.capture is not None:
            for name, value in self.capture.stats.items():
                self.capture_stats.labels(name).set(value)
        return generate_latest(self.registry)


_JSON = b"application/json"
#: request ids need to be unique, not secret: a seeded generator, not os.urandom per request (a system
#: call that costs more than the rest of the envelope on some hosts)
_ids = random.Random()


class _Exchange:
    """What the envelope learns about one request while it is answered."""

    __slots__ = ("champion", "n_series", "request_id")

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.champion = None
        self.n_series: Optional[int] = None


def _error(status: int, message: str, **extra: Any) -> tuple[int, bytes, bytes]:
    return status, orjson.dumps({"error": message, **extra}), _JSON


class ServeApp:
    """The ASGI application of ``chronos-flows serve``: three routes answered directly on the event
    loop (no per-request framework objects, JSON by orjson), every request through one envelope
    (API keys, champion and request-id headers, metrics, access log); ``/invocations`` waits for its
    answer from the :class:`MicroBatcher` without a thread of its own. ``capture`` (optional) gets
    every answered request (data capture); it is flushed when the app shuts down."""

    def __init__(self, holder: ChampionHolder, *, api_keys: Iterable[str] = (), max_body_bytes: int = MAX_BODY_BYTES,
                 batch_wait_seconds: float = 0.003, batch_series: int = 1024, capture: Any = None,
                 model_threads: Optional[int] = None):
        self.holder = holder
        self.keys = [k.encode("utf-8", "surrogateescape") for k in api_keys]
        self.max_body_bytes = max_body_bytes
        self.metrics = ServerMetrics(holder)
        self.batcher = MicroBatcher(max_wait_seconds=batch_wait_seconds, max_series=batch_series,
                                    on_batch=self.metrics.on_batch,
                                    before_call=_torch_threads(model_threads) if model_threads else None)
        self.capture = capture
        self.metrics.capture = capture
        self._closed = False

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def close(self) -> None:
        """Stop the batcher and flush the capture (idempotent; after the last request is answered)."""
        if self._closed:
            return
        self._closed = True
        self.batcher.stop()
        if self.capture is not None:
            self.capture.stop()

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------------------ the envelope

    async def _http(self, scope, receive, send) -> None:
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        given_id = headers.get(b"x-amzn-requestid")
        ex = _Exchange(given_id.decode("latin-1") if given_id else f"{_ids.getrandbits(128):032x}")
        path, method = scope["path"], scope["method"]
        try:
            answer = self._refusal(path, headers) or await self._route(method, path, headers, receive, ex)
        except Exception:  # noqa: BLE001 - the traceback goes to the log, never to the client
            logger.exception("request %s: %s %s failed", ex.request_id, method, path)
            answer = _error(500, f"the server failed on this request; request id {ex.request_id}",
                            request_id=ex.request_id)
        status, body, ctype = answer
        champ = ex.champion or self.holder.current
        out = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        if champ is not None:
            out += [(b"x-champion-run-id", str(champ.run_id).encode()), (b"x-champion-family", str(champ.family).encode())]
        out.append((b"x-request-id", ex.request_id.encode("latin-1", "replace")))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})
        latency = time.perf_counter() - t0
        label = path if path in ROUTES else "other"
        self.metrics.observe(label, status, latency)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(orjson.dumps({
                "request_id": ex.request_id, "method": method, "path": path, "status": status,
                "latency_ms": round(latency * 1000, 2), "series": ex.n_series,
                "champion_run_id": champ.run_id if champ else None, "champion_family": champ.family if champ else None,
            }).decode())

    def _refusal(self, path: str, headers: dict) -> Optional[tuple[int, bytes, bytes]]:
        """401/403 for a request without the right API key (when keys are configured; /ping is open)."""
        if not self.keys or path == "/ping":
            return None
        given = headers.get(b"x-api-key")
        if given is None:
            return _error(401, "missing x-api-key header")
        if not _key_ok(given.decode("latin-1"), self.keys):
            return _error(403, "invalid API key")
        return None

    async def _route(self, method: str, path: str, headers: dict, receive, ex: _Exchange) -> tuple[int, bytes, bytes]:
        want = _METHODS.get(path)
        if want is None:
            return _error(404, f"no route {path}; the routes are GET /ping, POST /invocations and GET /metrics")
        if method != want:
            return _error(405, f"{path} answers {want}, not {method}")
        if path == "/invocations":
            return await self._invocations(headers, receive, ex)
        if path == "/ping":
            return self._ping()
        return 200, self.metrics.render(), CONTENT_TYPE_LATEST.encode()

    def _ping(self) -> tuple[int, bytes, bytes]:
        champ = self.holder.current
        if champ is None:
            last = self.holder.last_error
            return _error(503, "no champion loaded yet" + (f" (last error: {last})" if last else ""))
        return 200, orjson.dumps({"status": "ok", "champion_run_id": champ.run_id, "family": champ.family}), _JSON

    # ---------------------------------------------------------------------------- /invocations

    async def _read_json(self, headers: dict, receive) -> tuple[Any, Optional[tuple[int, bytes, bytes]]]:
        """The request's JSON body, or the 415/413/400 answer refusing it."""
        ctype = headers.get(b"content-type", b"application/json").decode("latin-1").split(";")[0].strip().lower()
        if ctype not in ("application/json", "*/*", ""):
            return None, _error(415, f"content type {ctype!r} is not supported; send application/json")
        limit = self.max_body_bytes
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > limit:
            return None, _error(413, f"body of {int(length)} bytes is over the {limit}-byte limit; split the request")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, _error(400, "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None, _error(413, f"body of over {limit} bytes is over the {limit}-byte limit; split the request")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            return orjson.loads(body), None
        except orjson.JSONDecodeError:
            pass  # NaN/Infinity, integers over 64 bits: JSON as Python reads it, so validation names the value
        try:
            return json.loads(body), None
        except (ValueError, UnicodeDecodeError) as exc:
            return None, _error(400, f"body is not valid JSON: {exc}")

    async def _invocations(self, headers: dict, receive, ex: _Exchange) -> tuple[int, bytes, bytes]:
        """Parse, forecast with the champion current when the request arrived (micro-batched)."""
        raw, refused = await self._read_json(headers, receive)
        if refused is not None:
            return refused
        champ = self.holder.current  # this request's champion, whatever swaps happen meanwhile
        if champ is None:
            return _error(503, "no champion loaded yet; retry when GET /ping answers 200")
        ex.champion = champ
        rid = ex.request_id
        try:
            parsed = parse_request(raw)
            ex.n_series = parsed.n_series
            out = await self.batcher.submit_async(champ, parsed)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        except ModelError as exc:
            logger.error("request %s: %s", rid, exc.message)
            return _error(500, exc.message, request_id=rid)
        except Exception:  # noqa: BLE001 - the traceback goes to the log, never to the client
            logger.exception("request %s: the model failed", rid)
            return _error(500, f"the model failed on this request; request id {rid}", request_id=rid)
        if self.capture is not None:
            self.capture.add(champ, parsed, out, rid)
        return 200, orjson.dumps(out), _JSON


_METHODS = {"/ping": "GET", "/invocations": "POST", "/metrics": "GET"}


def _torch_threads(n: int):
    """A hook for the model thread: torch's intra-op threads set to ``n`` before each call (after a
    champion load, which sets them to every core for training and batch forecasts). Torch is never
    imported for it: a champion without torch has nothing to set."""

    def set_threads() -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)

    return set_threads


def create_app(holder: ChampionHolder, *, api_keys: Iterable[str] = (), max_body_bytes: int = MAX_BODY_BYTES,
               batch_wait_seconds: float = 0.003, batch_series: int = 1024, capture: Any = None,
               model_threads: Optional[int] = None) -> ServeApp:
    """The ASGI app serving ``holder``'s champion (see :class:`ServeApp`); ``model_threads``: torch's
    intra-op threads for the model calls (None: torch's own setting)."""
    return ServeApp(holder, api_keys=api_keys, max_body_bytes=max_body_bytes, batch_wait_seconds=batch_wait_seconds,
                    batch_series=batch_series, capture=capture, model_threads=model_threads)


def serve(*, store: Any, env: str, host: str = "0.0.0.0", port: int = 8080, poll_seconds: float = 10.0,
          api_keys: Iterable[str] = (), device: str = "auto", max_batch_wait_seconds: float = 0.003,
          max_batch_series: int = 1024, capture: bool = False, capture_max_requests: int = 1000,
          capture_max_seconds: float = 60.0, model_threads: Optional[int] = 1) -> int:
    """Run the server until SIGTERM/SIGINT: uvicorn stops accepting, finishes in-flight requests,
    writes what data capture holds, exits 0."""
    from chronos_flows.serving import CaptureWriter

    keys = list(api_keys)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    holder = ChampionHolder(store, env, poll_seconds=poll_seconds, device=device).start()
    logger.info("serving env %s of %s on %s:%d; %s", env, getattr(store, "url", store), host, port,
                f"{len(keys)} API key(s) required" if keys else "no API key required")
    writer = None
    if capture:
        writer = CaptureWriter(store, env, max_requests=capture_max_requests, max_seconds=capture_max_seconds).start()
        logger.info("data capture on: requests with item_id, start and freq go to %s/ every %d requests or %gs",
                    layout.capture_prefix(env), capture_max_requests, capture_max_seconds)
    app = create_app(holder, api_keys=keys, batch_wait_seconds=max_batch_wait_seconds, batch_series=max_batch_series,
                     capture=writer, model_threads=model_threads)
    config = uvicorn_config(app, host, port)
    try:
        _DrainingServer(config).run()
    finally:
        app.close()  # after the lifespan's own close: idempotent
        holder.stop()
    logger.info("stopped")
    return 0


def uvicorn_config(app: Any, host: str, port: int):
    """uvicorn's settings for ``serve``: its own access log off (ours is JSON), 30 s to drain. HTTP
    parsing and the event loop are uvicorn's "auto" choices, which are httptools and uvloop (project
    dependencies): per request they cost less than pure-Python h11 and asyncio."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=30)


class _DrainingServer:
    """uvicorn's Server, except that SIGTERM/SIGINT end with exit 0 after the drain (uvicorn re-raises
    the signal once shut down, which would kill the process before the champion holder is stopped)."""

    def __new__(cls, config):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        return Server(config)


def api_keys_from_environment(keys_file: Optional[str] = None) -> list[str]:
    return load_api_keys(os.environ.get(API_KEYS_ENV), keys_file)
