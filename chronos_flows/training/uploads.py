"""The background upload queue of a training run: checkpoint uploads and progress writes go to the
store from one worker thread, so the training loop never waits on the store (except at the very
end, :meth:`UploadQueue.drain`, where the final model and records must land).

Each job is retried through transient store errors with exponential backoff and jitter
(:class:`~chronos_flows.core.retry.Backoff`) for as long as the run may write: ``guard(False)``
passes (the lock handle fences the run once its lease runs out with the store away) and the store
has not been failing for longer than ``budget_seconds`` (the lease; for a process without a lock
handle of its own, e.g. the EC2 instance). Jobs run in submission order; a job submitted under a
name already waiting replaces it (progress: only the newest matters). Pure: no Prefect, no boto3.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from chronos_flows.core.errors import TransientStoreError
from chronos_flows.core.retry import Backoff, OutageLog

_LOG = logging.getLogger("chronos_flows.training.uploads")


class UploadQueue:
    def __init__(
        self,
        guard: Callable[..., None],
        *,
        outages: OutageLog | None = None,
        budget_seconds: float = 120.0,
        backoff: Backoff | None = None,
        log: Any = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guard = guard
        self.outages = outages if outages is not None else OutageLog()
        self.budget_seconds = float(budget_seconds)
        self.backoff = backoff or Backoff(base=min(1.0, self.budget_seconds / 20.0), cap=max(self.budget_seconds / 4.0, 0.05))
        self.log = log or _LOG
        self.monotonic = monotonic
        self.confirmed: list[str] = []
        self.error: BaseException | None = None
        self._jobs: "OrderedDict[str, tuple[Callable[[], Any], Callable[[], None] | None]]" = OrderedDict()
        self._cv = threading.Condition()
        self._busy = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chronos-uploads", daemon=True)
        self._thread.start()

    # -- the training side -----------------------------------------------------------------------
    def submit(self, name: str, fn: Callable[[], Any], on_done: Callable[[], None] | None = None) -> None:
        """Queue ``fn`` (returns at once). A job of the same ``name`` still waiting is replaced."""
        with self._cv:
            self._jobs.pop(name, None)
            self._jobs[name] = (fn, on_done)
            self._cv.notify_all()

    def raise_if_failed(self) -> None:
        """Surface a job's permanent failure (or the fence that stopped it) in the training loop."""
        if self.error is not None:
            raise self.error

    @property
    def pending(self) -> list[str]:
        with self._cv:
            return list(self._jobs) + (["(in flight)"] if self._busy else [])

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued job has landed (the end of training); raise what stopped one."""
        deadline = None if timeout is None else self.monotonic() + timeout
        with self._cv:
            while (self._jobs or self._busy) and self.error is None:
                left = None if deadline is None else deadline - self.monotonic()
                if left is not None and left <= 0:
                    raise TransientStoreError(f"uploads still pending after {timeout}s: {', '.join(self._jobs) or 'one in flight'}")
                self._cv.wait(timeout=0.2 if left is None else min(0.2, left))
        self.raise_if_failed()

    def close(self) -> None:
        """Stop the worker (jobs still queued are dropped: call :meth:`drain` first to keep them)."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout=10)

    # -- the worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._jobs and not self._stop.is_set():
                    self._cv.wait(timeout=0.5)
                if self._stop.is_set():
                    return
                name, (fn, on_done) = self._jobs.popitem(last=False)
                self._busy = True
            try:
                self._attempt(name, fn)
                if on_done is not None:
                    on_done()
                self.confirmed.append(name)
            except BaseException as e:  # noqa: BLE001 - handed to the training loop (raise_if_failed/drain)
                self.error = e
                if self._stop.is_set():  # closed (training ended otherwise): the local copy stays
                    self.log.info("upload %s not done (the queue was closed); its local copy is kept", name)
                else:
                    self.log.error("upload %s stopped: %s", name, e)
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                return
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _attempt(self, name: str, fn: Callable[[], Any]) -> None:
        failing_since: float | None = None
        while True:
            self.guard(False)  # fenced / killed / lost: stop, write nothing more
            try:
                fn()
            except TransientStoreError as e:
                now = self.monotonic()
                failing_since = now if failing_since is None else failing_since
                self.outages.failed(f"upload {name}", e)
                if now - failing_since >= self.budget_seconds:
                    raise TransientStoreError(
                        f"upload {name} kept failing for {now - failing_since:.0f}s (budget {self.budget_seconds:g}s): {e}"
                    ) from e
                if self._stop.wait(self.backoff.next()):
                    raise
                continue
            self.backoff.reset()
            self.outages.recovered()
            return
