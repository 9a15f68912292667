"""Micro-batching: concurrent requests gathered into one model call."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from chronos_flows.serving.champion import LoadedChampion
from chronos_flows.serving.predict import batch_key, predict_batch
from chronos_flows.serving.schema import ParsedRequest

logger = logging.getLogger("chronos_flows.serving")


@dataclass(eq=False)
class _Job:
    champ: LoadedChampion
    parsed: ParsedRequest
    key: Optional[tuple]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    #: called in the worker thread with the result (the event loop's hand-off), instead of ``done``
    on_done: Optional[Callable[[Any], None]] = None


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

    async def submit_async(self, champ: LoadedChampion, parsed: ParsedRequest) -> dict[str, Any]:
        """:meth:`submit` for a coroutine on an event loop: the loop is woken once with the answer
        (no thread of a pool waits for it)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(result: Any) -> None:
            if not fut.done():
                (fut.set_exception if isinstance(result, BaseException) else fut.set_result)(result)

        self._queue.put(_Job(champ, parsed, batch_key(parsed), on_done=lambda res: loop.call_soon_threadsafe(settle, res)))
        return await fut

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
                    if job.on_done is None:
                        job.done.set()
                        continue
                    try:
                        job.on_done(res)
                    except RuntimeError:  # the loop is closed: nobody waits for this answer any more
                        logger.warning("an answer came after the server's event loop closed")
