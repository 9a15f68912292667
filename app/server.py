"""The HTTP server of ``chronos-flows serve`` (app layer): the SageMaker hosting contract on
FastAPI/uvicorn over the framework-free core in :mod:`chronos_flows.serving`.

* ``GET /ping``: 200 when a champion is loaded, 503 while none is (never needs an API key).
* ``POST /invocations``: the JumpStart Chronos request/response format.
* API keys (API Gateway's ``x-api-key`` header): when configured, every route but /ping answers
  401 without a key and 403 with a wrong one; keys are compared in constant time and never logged.
* Every response carries ``X-Champion-Run-Id`` / ``X-Champion-Family`` of the champion that
  answered (for /invocations: the one the request started on) and ``X-Request-Id``.
* One JSON access-log line per request on the ``chronos_flows.access`` logger.
* ``GET /metrics``: Prometheus text format (requests by route and status, latency histogram, model
  calls and their sizes in requests and series, champion load time and swaps, the serving champion).
* Concurrent requests are micro-batched into one model call (:class:`~chronos_flows.serving.MicroBatcher`).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

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
        self._holder = holder
        self._shown: Optional[tuple[str, str]] = None

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
        return generate_latest(self.registry)


def create_app(holder: ChampionHolder, *, api_keys: Iterable[str] = (), max_body_bytes: int = MAX_BODY_BYTES,
               batch_wait_seconds: float = 0.003, batch_series: int = 1024):
    """The FastAPI app serving ``holder``'s champion; concurrent requests share model calls through a
    :class:`MicroBatcher` (``batch_wait_seconds``, ``batch_series``) stopped with the app."""
    keys = [k.encode("utf-8", "surrogateescape") for k in api_keys]
    metrics = ServerMetrics(holder)
    batcher = MicroBatcher(max_wait_seconds=batch_wait_seconds, max_series=batch_series, on_batch=metrics.on_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.stop()

    app = FastAPI(title="chronos-flows serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.metrics = metrics
    _add_envelope(app, holder, keys, metrics)
    _add_status_routes(app, holder, metrics)
    _add_invocations(app, holder, batcher, max_body_bytes)
    return app


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _refusal(request: Request, keys: list[bytes]) -> Optional[JSONResponse]:
    """401/403 for a request without the right API key (when keys are configured; /ping is open)."""
    if not keys or request.url.path == "/ping":
        return None
    given = request.headers.get("x-api-key")
    if given is None:
        return _error(401, "missing x-api-key header")
    if not _key_ok(given, keys):
        return _error(403, "invalid API key")
    return None


def _add_envelope(app: FastAPI, holder: ChampionHolder, keys: list[bytes], metrics: ServerMetrics) -> None:
    """The middleware around every request: API keys, champion and request-id headers, metrics, access log."""

    @app.middleware("http")
    async def envelope(request: Request, call_next):
        t0 = time.perf_counter()
        rid = request.headers.get("x-amzn-requestid") or uuid.uuid4().hex
        request.state.request_id = rid
        request.state.n_series = None
        response = _refusal(request, keys)
        if response is None:
            response = await call_next(request)
        champ = getattr(request.state, "champion", None) or holder.current
        if champ is not None:
            for k, v in champ.headers().items():
                response.headers.setdefault(k, v)
        response.headers["X-Request-Id"] = rid
        latency = time.perf_counter() - t0
        path = request.url.path if request.url.path in ROUTES else "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(latency)
        access_log.info(json.dumps({
            "request_id": rid, "method": request.method, "path": request.url.path, "status": response.status_code,
            "latency_ms": round(latency * 1000, 2), "series": request.state.n_series,
            "champion_run_id": champ.run_id if champ else None, "champion_family": champ.family if champ else None,
        }))
        return response


def _add_status_routes(app: FastAPI, holder: ChampionHolder, metrics: ServerMetrics) -> None:
    """``GET /ping`` and ``GET /metrics``."""

    @app.get("/ping")
    async def ping():
        champ = holder.current
        if champ is None:
            detail = "no champion loaded yet" + (f" (last error: {holder.last_error})" if holder.last_error else "")
            return _error(503, detail)
        return JSONResponse({"status": "ok", "champion_run_id": champ.run_id, "family": champ.family})

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _read_json(request: Request, max_body_bytes: int) -> tuple[Any, Optional[JSONResponse]]:
    """The request's JSON body, or the 415/413/400 response refusing it."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", "*/*", ""):
        return None, _error(415, f"content type {ctype!r} is not supported; send application/json")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        return None, _error(413, f"body of {int(length)} bytes is over the {max_body_bytes}-byte limit; split the request")
    body = await request.body()
    if len(body) > max_body_bytes:
        return None, _error(413, f"body of {len(body)} bytes is over the {max_body_bytes}-byte limit; split the request")
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, _error(400, f"body is not valid JSON: {exc}")


def _add_invocations(app: FastAPI, holder: ChampionHolder, batcher: MicroBatcher, max_body_bytes: int) -> None:
    """``POST /invocations``: parse, forecast with the champion current when the request arrived (micro-batched)."""

    @app.post("/invocations")
    async def invocations(request: Request):
        rid = request.state.request_id
        raw, refused = await _read_json(request, max_body_bytes)
        if refused is not None:
            return refused
        champ = holder.current  # this request's champion, whatever swaps happen meanwhile
        if champ is None:
            return _error(503, "no champion loaded yet; retry when GET /ping answers 200")
        request.state.champion = champ
        try:
            parsed = parse_request(raw)
            request.state.n_series = parsed.n_series
            out = await run_in_threadpool(batcher.submit, champ, parsed)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        except ModelError as exc:
            logger.error("request %s: %s", rid, exc.message)
            return _error(500, exc.message, request_id=rid)
        except Exception:  # noqa: BLE001 - the traceback goes to the log, never to the client
            logger.exception("request %s: the model failed", rid)
            return _error(500, f"the model failed on this request; request id {rid}", request_id=rid)
        return JSONResponse(out)


def serve(*, store: Any, env: str, host: str = "0.0.0.0", port: int = 8080, poll_seconds: float = 10.0,
          api_keys: Iterable[str] = (), device: str = "auto", max_batch_wait_seconds: float = 0.003,
          max_batch_series: int = 1024) -> int:
    """Run the server until SIGTERM/SIGINT: uvicorn stops accepting, finishes in-flight requests, exits 0."""
    import uvicorn

    keys = list(api_keys)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    holder = ChampionHolder(store, env, poll_seconds=poll_seconds, device=device).start()
    logger.info("serving env %s of %s on %s:%d; %s", env, getattr(store, "url", store), host, port,
                f"{len(keys)} API key(s) required" if keys else "no API key required")
    app = create_app(holder, api_keys=keys, batch_wait_seconds=max_batch_wait_seconds, batch_series=max_batch_series)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            access_log=False, timeout_graceful_shutdown=30)
    try:
        _DrainingServer(config).run()
    finally:
        holder.stop()
    logger.info("stopped")
    return 0


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
