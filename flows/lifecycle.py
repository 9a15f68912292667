"""What every lock-holding flow shares (training, tuning): phase timings, the lock refusal, and the
run's life under the lock — acquire, heartbeat, outcome, cleanup — so each flow wires only its steps.

    phases = Phases()
    with phases("preflight"):
        ...                                  # store, check_lock (refusal: return refused(msg)), data
    run = LockedRun(params, store, phases, kind="training")
    if (msg := run.acquire()) is not None:
        return refused(msg)
    with run.holding() as ctx:               # killed: recorded, not raised; failed: recorded, raised
        ...                                  # set_status / tasks, filling run.results
    return run.finish()                      # the summary, or Cancelled "Killed" with it
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import get_run_logger
from prefect.client.schemas.objects import State
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled

from chronos_flows import workdirs
from chronos_flows.config import TrainingParams
from chronos_flows.errors import RunKilledError
from chronos_flows.runs import new_run_id
from chronos_flows.store import ObjectStore
from tasks.cleanup import cleanup_run
from tasks.common import logger
from tasks.state import RunContext, acquire_lock


class Phases:
    """Wall time of each phase, for training.json and the benchmark; a log line as each one ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t_start = time.monotonic()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - t0
            self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 3)
            logger().info("phase %s: %.1f s", name, took)

    def summary(self) -> str:
        """One line: every phase with its seconds, in the order they ran."""
        return "phases: " + ", ".join(f"{name} {secs:.1f} s" for name, secs in self.seconds.items())


def refused(message: str) -> State:
    """Another run holds the lock: end the flow run Cancelled, named and explained, no traceback."""
    get_run_logger().warning("refused: %s", message)
    return Cancelled(name="Locked", message=message, data={"status": "refused", "error": message})


class LockedRun:
    """One run's life under the lock: :meth:`acquire`, then :meth:`holding` around the steps (the
    heartbeat runs; a kill is recorded as ``killed``, a failure as ``failed`` and re-raised, a
    Prefect cancellation as ``killed`` "cancelled from Prefect" and re-raised), cleanup always, then
    :meth:`finish`. ``results`` collects what the steps produced for the summary."""

    def __init__(self, params: TrainingParams, store: ObjectStore, phases: Phases, *, run_id: str | None = None,
                 **info: Any) -> None:
        run_id = run_id or params.run_id or new_run_id()
        self.phases = phases
        self.ctx = RunContext(
            params=params if params.run_id == run_id else params.model_copy(update={"run_id": run_id}),
            store=store, run_id=run_id, workdir=workdirs.new(run_id),
            flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None,
            info={"host": socket.gethostname(), "pid": os.getpid(), "compute": params.compute.backend, **info},
        )
        self.outcome: dict[str, Any] = {"status": "failed", "error": None}
        self.results: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None

    def acquire(self) -> str | None:
        """Take the lock; the refusal message when another run holds it (nothing is left behind)."""
        try:
            got = acquire_lock(self.ctx)
        except BaseException:
            shutil.rmtree(self.ctx.workdir, ignore_errors=True)
            raise
        if isinstance(got, str):
            shutil.rmtree(self.ctx.workdir, ignore_errors=True)
            return got
        self.ctx.handle = got
        return None

    @contextmanager
    def holding(self) -> Iterator[RunContext]:
        ctx = self.ctx
        try:
            with ctx.handle.heartbeat_thread(ctx.params.lock.heartbeat_seconds):
                yield ctx
            self.outcome = {"status": "succeeded", "error": None}
        except RunKilledError as exc:
            self.outcome = {"status": "killed", "error": str(exc)}
        except TerminationSignal:  # `prefect flow-run cancel` (or SIGTERM): a kill, not a failure
            self.outcome = {"status": "killed", "error": f"cancelled from Prefect (flow run {ctx.flow_run_id})"}
            raise
        except BaseException as exc:
            self.outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            get_run_logger().error("run %s failed: %s (traceback below)", ctx.run_id, self.outcome["error"])
            raise
        finally:
            self.phases.seconds["total"] = round(time.monotonic() - self.phases.t_start, 3)
            logger().info(self.phases.summary())
            self.summary = cleanup_run(ctx, self.outcome, self.results, self.phases.seconds)

    def finish(self) -> dict[str, Any] | State:
        """The run's summary; a killed run ends the flow run Cancelled "Killed" with it as its result."""
        summary = self.summary or {}
        if summary.get("status") == "killed":
            return Cancelled(name="Killed", message=summary.get("error") or f"run {self.ctx.run_id} was killed", data=summary)
        return summary
