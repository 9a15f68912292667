"""A small threaded HTTP proxy on 127.0.0.1 that injects faults in front of the S3 API server.

``FaultProxy(upstream).start()`` listens on ``.endpoint_url``. ``.faults`` is a list consumed one
per request (``None`` = forward normally); a fault can also be limited to matching requests with
``.match`` (a predicate on (method, path)). Fault kinds:

* ``"503"`` — answer 503 SlowDown (S3 XML) without forwarding.
* ``"forward500"`` — forward (the write lands), then answer 500 InternalError.
* ``"drop"`` — close the connection without forwarding or answering.
* ``"forward_drop"`` — forward, then close the connection without answering.
* ``("delay", seconds)`` — wait, then forward.

``.log`` records every request: (method, path, fault, upstream status or None if not forwarded);
``.timed`` the same with the ``time.monotonic()`` at which the request was answered, first.

``.outage(kind, seconds)`` starts a timed outage: every matching request in the next ``seconds``
gets ``kind`` (``"503"`` or ``"drop"``); ``.outage_window`` is its (start, end) on ``time.monotonic``.
``.outage_on(predicate, kind, seconds)`` starts it at the first request with ``predicate(method, path)``
(that request is the first to fail).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
_INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
             b"<Message>We encountered an internal error. Please try again.</Message></Error>")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        u = urlparse(upstream)
        self.up_host, self.up_port = u.hostname, u.port
        self.faults: list = []
        self.match = lambda method, path: True
        self.log: list[tuple[str, str, object, int | None]] = []
        self.timed: list[tuple[float, str, str, object, int | None]] = []
        self.outage_window: tuple[float, float] | None = None
        self._outage_kind: str | None = None
        self._trigger: tuple | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._next_fault(self.command, self.path)
                if fault == "503":
                    proxy._record(self.command, self.path, fault, None)
                    return self._reply(503, {"Content-Type": "application/xml"}, _SLOWDOWN)
                if fault == "drop":
                    proxy._record(self.command, self.path, fault, None)
                    return self._drop()
                if isinstance(fault, tuple) and fault[0] == "delay":
                    time.sleep(fault[1])
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                proxy._record(self.command, self.path, fault, status)
                if fault == "forward500":
                    return self._reply(500, {"Content-Type": "application/xml"}, _INTERNAL)
                if fault == "forward_drop":
                    return self._drop()
                self._reply(status, headers, data)

            def _reply(self, status: int, headers: dict, data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def outage(self, kind: str, seconds: float) -> tuple[float, float]:
        """From now on, for ``seconds``: every matching request gets ``kind`` (``"503"``, ``"drop"``)."""
        with self._lock:
            now = time.monotonic()
            self._outage_kind = kind
            self.outage_window = (now, now + seconds)
            return self.outage_window

    def outage_on(self, predicate, kind: str, seconds: float) -> None:
        """Start ``outage(kind, seconds)`` at the first request matching ``predicate(method, path)``."""
        with self._lock:
            self._trigger = (predicate, kind, seconds)

    def _next_fault(self, method: str, path: str):
        with self._lock:
            if self._trigger is not None and self.outage_window is None and self._trigger[0](method, path):
                now = time.monotonic()
                self._outage_kind = self._trigger[1]
                self.outage_window = (now, now + self._trigger[2])
            w = self.outage_window
            if w is not None and w[0] <= time.monotonic() < w[1] and self.match(method, path):
                return self._outage_kind
            if self.faults and self.match(method, path):
                return self.faults.pop(0)
            return None

    def _record(self, method: str, path: str, fault, status: int | None) -> None:
        with self._lock:
            self.log.append((method, path, fault, status))
            self.timed.append((time.monotonic(), method, path, fault, status))

    def _forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.up_host, self.up_port, timeout=30)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in _HOP and k.lower() != "content-length"}
            fwd["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=fwd)
            r = conn.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), data
        finally:
            conn.close()

    def requests(self, method: str | None = None, path_contains: str = "", forwarded: bool | None = None):
        with self._lock:
            return [
                e for e in self.log
                if (method is None or e[0] == method) and path_contains in e[1]
                and (forwarded is None or (e[3] is not None) == forwarded)
            ]
