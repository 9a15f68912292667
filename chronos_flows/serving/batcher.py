"""Micro-batching: concurrent requests gathered into one model call."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    #: a threading.Event (blocking callers) or an asyncio.Future (callers on the event loop)
    done: Any = None
    result: Any = None


class MicroBatcher:
    """Concurrent requests into one model call: every request waiting when the model is free goes
    into the next call (at most ``max_series`` series); while the previous call was shared (under
    load) a call waits at most ``max_wait_seconds`` for more. Requests on the same champion object
    with the same :func:`batch_key` share a call; a request keeps the champion it was submitted
    with, so a swap never mixes models inside one answer. ``on_batch(n_requests, n_series, seconds)``
    observes each model call (metrics).

    Two doors to the same model: :meth:`submit_async` for coroutines (the server: requests gather on
    the event loop, the model thread gets one hand-off per call and the loop one wake-up per call,
    not per request) and :meth:`submit` for threads.

    On the event-loop door a call that would go alone runs on the loop itself when it is known to be
    short: one request of at most ``inline_max_series`` series, on a champion whose previous lone
    call took at most ``inline_max_seconds``. That saves the two thread hand-offs a lone request
    otherwise pays (a few hundred microseconds on a small VM, more than the rest of the server's own
    work); the loop is then blocked for that short call, which under no load has nothing else to do,
    and requests that arrive meanwhile wait in the socket and are batched into the next call
    (which, shared, goes to the model thread as before). A champion's first call, a slow model and
    every shared call use the thread. ``inline_max_seconds=0`` turns this off."""

    def __init__(self, *, max_wait_seconds: float = 0.003, max_series: int = 1024,
                 on_batch: Optional[Callable[[int, int, float], None]] = None,
                 before_call: Optional[Callable[[], None]] = None,
                 inline_max_seconds: float = 0.025, inline_max_series: int = 16):
        self.before_call = before_call  # run in the model thread before each call (e.g. its torch threads)
        self.max_wait_seconds = max(0.0, float(max_wait_seconds))
        self.max_series = max(1, int(max_series))
        self.on_batch = on_batch
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()
        self._shared = False  # the previous call of the thread door served more than one request
        # the event-loop door: requests waiting, whether a call is running or about to start
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="micro-batcher-loop")
        self._waiting: list[_Job] = []
        self._busy = False
        self._loop_shared = False
        self.inline_max_seconds = max(0.0, float(inline_max_seconds))
        self.inline_max_series = max(0, int(inline_max_series))
        #: the champion of the last lone call (weakly: a swapped-out model is never kept alive here)
        #: and how long that call took (the inline budget's evidence)
        self._alone: tuple[Any, float] = (lambda: None, float("inf"))

    # ------------------------------------------------------------------------- the thread door

    def submit(self, champ: LoadedChampion, parsed: ParsedRequest) -> dict[str, Any]:
        """Block until ``parsed`` is answered; raise what the request gets (RequestError, ModelError, …)."""
        job = _Job(champ, parsed, batch_key(parsed), done=threading.Event())
        self._queue.put(job)
        job.done.wait()
        if isinstance(job.result, BaseException):
            raise job.result
        return job.result

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._model.shutdown(wait=True)

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
            self._shared = len(jobs) > 1
            self._answer(jobs)
            for job in jobs:
                job.done.set()

    def _answer(self, jobs: list[_Job]) -> None:
        """One model call per (champion, batch key) group of ``jobs``; each job's ``result`` set."""
        if self.before_call is not None:
            try:
                self.before_call()
            except Exception:  # noqa: BLE001 - a tuning hook never fails a request
                logger.exception("the batcher's before_call hook failed")
        groups: dict[Any, list[_Job]] = {}
        for job in jobs:
            groups.setdefault((id(job.champ), job.key if job.key is not None else id(job)), []).append(job)
        for group in groups.values():
            t0 = time.perf_counter()
            try:
                results = predict_batch(group[0].champ, [j.parsed for j in group])
            except BaseException as exc:  # noqa: BLE001 - handed to each waiting request (logged there)
                results = [exc] * len(group)
            if len(jobs) == 1:
                self._alone = (weakref.ref(group[0].champ), time.perf_counter() - t0)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(group), sum(j.parsed.n_series for j in group), time.perf_counter() - t0)
                except Exception:  # noqa: BLE001 - metrics never fail a request
                    logger.exception("batch observer failed")
            for job, res in zip(group, results):
                job.result = res

    # --------------------------------------------------------------------- the event-loop door

    async def submit_async(self, champ: LoadedChampion, parsed: ParsedRequest) -> dict[str, Any]:
        """:meth:`submit` for a coroutine on the event loop this batcher's server runs on."""
        loop = asyncio.get_running_loop()
        job = _Job(champ, parsed, batch_key(parsed), done=loop.create_future())
        self._waiting.append(job)
        if not self._busy:
            self._busy = True
            if self._loop_shared and self.max_wait_seconds > 0:
                loop.call_later(self.max_wait_seconds, self._start_call, loop)
            else:
                loop.call_soon(self._start_call, loop)  # after the requests already ready to run join
        return await job.done

    def _start_call(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs, n = [], 0
        while self._waiting and (not jobs or n + self._waiting[0].parsed.n_series <= self.max_series):
            job = self._waiting.pop(0)
            jobs.append(job)
            n += job.parsed.n_series
        self._loop_shared = len(jobs) > 1
        if self._inline(jobs):  # on the loop: short and alone (see the class notes)
            done: "asyncio.Future" = loop.create_future()
            try:
                self._answer(jobs)
                done.set_result(None)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting request, as from the thread
                done.set_exception(exc)
            self._end_call(loop, jobs, done)
            return
        call = loop.run_in_executor(self._model, self._answer, jobs)
        call.add_done_callback(lambda f: self._end_call(loop, jobs, f))

    def _inline(self, jobs: list[_Job]) -> bool:
        """Whether this call runs on the event loop: alone, small, and its champion's last lone call was short."""
        if len(jobs) != 1 or jobs[0].parsed.n_series > self.inline_max_series:
            return False
        champ, seconds = self._alone
        return champ() is jobs[0].champ and seconds <= self.inline_max_seconds

    def _end_call(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], call: "asyncio.Future") -> None:
        failed = call.exception() if not call.cancelled() else asyncio.CancelledError()
        for job in jobs:
            if job.done.done():
                continue
            res = failed if failed is not None else job.result
            if isinstance(res, BaseException):
                job.done.set_exception(res)
            else:
                job.done.set_result(res)
        if self._waiting:
            if self._loop_shared and self.max_wait_seconds > 0 and len(self._waiting) * 2 < len(jobs):
                loop.call_later(self.max_wait_seconds, self._start_call, loop)  # let more join a shared call
            else:
                self._start_call(loop)
        else:
            self._busy = False
