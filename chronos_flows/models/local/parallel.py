"""Run one picklable function per series, serially or in a process pool; shared by local models.

:func:`map_series` is the per-series loop of the local model families (Prophet, AutoETS). Each job
is a tuple ``(uid, ds, y, *args)`` and ``fn(*job)`` must return ``(uid, array, None)`` on success or
``(uid, None, error message)`` on failure without raising (it runs inside worker processes).

* ``n_jobs == 1``, a single job, or a call from a daemonic process (e.g. inside another pool,
  which may not start children) runs the jobs one after another in this process, in job order.
* Otherwise the jobs run in a ``concurrent.futures.ProcessPoolExecutor`` with
  ``min(n_jobs, len(jobs), os.cpu_count())`` workers, started with ``start_method`` (``"fork"`` by
  default; ``"spawn"`` where the requested method is not available). ``fn`` and its arguments must
  be picklable, ``fn`` defined at module level.
* ``progress(done, total)`` is called after every finished job (in completion order in the pool).
* A worker process that dies (``BrokenProcessPool``) fails only the jobs that had not finished:
  each gets the message ``"worker process died: …"``; it never raises.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Hashable, Sequence, TypeVar

Progress = Callable[[int, int], None]
R = TypeVar("R")
Job = Sequence[Any]  # (uid, ds, y, *args)


def mp_context(start_method: str = "fork"):
    """The multiprocessing context for ``start_method``, or ``spawn`` where it is unavailable."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context(start_method if start_method in methods else "spawn")


def map_series(
    fn: Callable[..., tuple[Hashable, R | None, str | None]],
    jobs: Sequence[Job],
    *,
    n_jobs: int,
    progress: Progress | None = None,
    start_method: str = "fork",
) -> tuple[dict[Hashable, R], dict[Hashable, str]]:
    """Run ``fn(*job)`` for every job; return ``(results, failures)``.

    ``results`` maps a series' ``uid`` (as returned by ``fn``) to its result, ``failures`` maps it to
    the error message (``"unknown error"`` when ``fn`` returned neither a result nor a message).
    Every job ends up in exactly one of the two dicts.
    """
    total = len(jobs)
    results: dict[Hashable, R] = {}
    failures: dict[Hashable, str] = {}
    done = 0

    def record(uid: Hashable, out: R | None, err: str | None) -> None:
        nonlocal done
        if out is None:
            failures[uid] = err or "unknown error"
        else:
            results[uid] = out
        done += 1
        if progress is not None:
            progress(done, total)

    workers = min(int(n_jobs), total, os.cpu_count() or 1)
    if multiprocessing.current_process().daemon:
        workers = 1  # a daemonic process (e.g. inside another pool) may not start children
    if workers <= 1:
        for job in jobs:
            record(*fn(*job))
        return results, failures

    pending = {job[0] for job in jobs}
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp_context(start_method)) as pool:
            futures = {pool.submit(fn, *job): job[0] for job in jobs}
            for fut in as_completed(futures):
                uid = futures[fut]
                try:
                    out = fut.result()
                except BrokenProcessPool as exc:
                    out = (uid, None, f"worker process died: {exc}")
                pending.discard(uid)
                record(*out)
    except BrokenProcessPool as exc:  # pool broke while submitting
        for uid in sorted(pending):
            record(uid, None, f"worker process died: {exc}")
    return results, failures
