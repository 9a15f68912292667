"""The HTTP server of ``chronos-flows serve`` (app layer): the SageMaker hosting contract on
FastAPI/uvicorn over the framework-free core in :mod:`chronos_flows.serving`.

* ``GET /ping``: 200 when a champion is loaded, 503 while none is (never needs an API key).
* ``POST /invocations``: the JumpStart Chronos request/response format.
* API keys (API Gateway's ``x-api-key`` header): when configured, every route but /ping answers
  401 without a key and 403 with a wrong one; keys are compared in constant time and never logged.
* Every response carries ``X-Champion-Run-Id`` / ``X-Champion-Family`` of the champion that
  answered (for /invocations: the one the request started on) and ``X-Request-Id``.
* One JSON access-log line per request on the ``chronos_flows.access`` logger.
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
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from chronos_flows.errors import BadInputError
from chronos_flows.serving import ChampionHolder, ModelError, RequestError, parse_request, predict

logger = logging.getLogger("chronos_flows.server")
access_log = logging.getLogger("chronos_flows.access")

#: request bodies above this are refused with 413 (SageMaker real-time endpoints cap payloads at 6 MB;
#: a direct deployment may send up to 1,000 long series)
MAX_BODY_BYTES = 20 * 1024 * 1024
API_KEYS_ENV = "CHRONOS_FLOWS_API_KEYS"


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


def create_app(holder: ChampionHolder, *, api_keys: Iterable[str] = (), max_body_bytes: int = MAX_BODY_BYTES):
    """The FastAPI app serving ``holder``'s champion."""
    keys = [k.encode("utf-8", "surrogateescape") for k in api_keys]
    app = FastAPI(title="chronos-flows serve", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.middleware("http")
    async def envelope(request: Request, call_next):
        t0 = time.perf_counter()
        rid = request.headers.get("x-amzn-requestid") or uuid.uuid4().hex
        request.state.request_id = rid
        request.state.n_series = None
        if keys and request.url.path != "/ping":
            given = request.headers.get("x-api-key")
            if given is None:
                response = error(401, "missing x-api-key header")
            elif not _key_ok(given, keys):
                response = error(403, "invalid API key")
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        champ = getattr(request.state, "champion", None) or holder.current
        if champ is not None:
            for k, v in champ.headers().items():
                response.headers.setdefault(k, v)
        response.headers["X-Request-Id"] = rid
        access_log.info(json.dumps({
            "request_id": rid, "method": request.method, "path": request.url.path, "status": response.status_code,
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2), "series": request.state.n_series,
            "champion_run_id": champ.run_id if champ else None, "champion_family": champ.family if champ else None,
        }))
        return response

    @app.get("/ping")
    async def ping():
        champ = holder.current
        if champ is None:
            detail = "no champion loaded yet" + (f" (last error: {holder.last_error})" if holder.last_error else "")
            return error(503, detail)
        return JSONResponse({"status": "ok", "champion_run_id": champ.run_id, "family": champ.family})

    @app.post("/invocations")
    async def invocations(request: Request):
        rid = request.state.request_id
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", "*/*", ""):
            return error(415, f"content type {ctype!r} is not supported; send application/json")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return error(413, f"body of {int(length)} bytes is over the {max_body_bytes}-byte limit; split the request")
        body = await request.body()
        if len(body) > max_body_bytes:
            return error(413, f"body of {len(body)} bytes is over the {max_body_bytes}-byte limit; split the request")
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"body is not valid JSON: {exc}")
        champ = holder.current  # this request's champion, whatever swaps happen meanwhile
        if champ is None:
            return error(503, "no champion loaded yet; retry when GET /ping answers 200")
        request.state.champion = champ
        try:
            parsed = parse_request(raw)
            request.state.n_series = parsed.n_series
            out = await run_in_threadpool(predict, champ, parsed)
        except RequestError as exc:
            return error(exc.status, exc.message)
        except ModelError as exc:
            logger.error("request %s: %s", rid, exc.message)
            return error(500, exc.message, request_id=rid)
        except Exception:  # noqa: BLE001 - the traceback goes to the log, never to the client
            logger.exception("request %s: the model failed", rid)
            return error(500, f"the model failed on this request; request id {rid}", request_id=rid)
        return JSONResponse(out)

    return app


def serve(*, store: Any, env: str, host: str = "0.0.0.0", port: int = 8080, poll_seconds: float = 10.0,
          api_keys: Iterable[str] = (), device: str = "auto") -> int:
    """Run the server until SIGTERM/SIGINT: uvicorn stops accepting, finishes in-flight requests, exits 0."""
    import uvicorn

    keys = list(api_keys)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    holder = ChampionHolder(store, env, poll_seconds=poll_seconds, device=device).start()
    logger.info("serving env %s of %s on %s:%d; %s", env, getattr(store, "url", store), host, port,
                f"{len(keys)} API key(s) required" if keys else "no API key required")
    config = uvicorn.Config(create_app(holder, api_keys=keys), host=host, port=port, log_level="info",
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
