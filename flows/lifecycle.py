"""What every lock-holding flow shares (training, tuning): phase timings, the lock refusal, and the
run's life under the lock — acquire, heartbeat, outcome, cleanup — so each flow wires only its steps.

    phases = Phases()
    with phases("preflight"):
        ...                                  # store, check_lock (refusal: return refused(msg)), data
    run = LockedRun(params, store, phases, kind="training")
    if (msg := run.acquire()) is not None:
        return refused(msg)
    with run.holding():                      # killed: recorded, not raised; failed: recorded, raised
        run.transition("data_sync")          # the lock handle's one writer, retried on transient errors
        run.data = sync_data(run.spec, ...)  # tasks take the frozen RunSpec and values, return values;
        ...                                  # long ones get guard=run.guard (a kill or a lost lock stops them)
    return run.finish()                      # the summary, or Cancelled "Killed" with it

Only :class:`LockedRun` holds the lock handle and the run's mutable record (what the steps
returned); the cleanup gets them as values (:class:`~chronos_flows.training.specs.RunResults`).
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

from chronos_flows.runstate import workdirs
from chronos_flows.config.params import TrainingParams
from chronos_flows.core.errors import RunKilledError
from chronos_flows.runstate.lock import LockHandle
from chronos_flows.champion.promotion import Promotion
from chronos_flows.training.specs import BaselineRecord, DataSync, RunResults, RunSpec, TrainedChronos
from chronos_flows.runstate.runs import new_run_id
from chronos_flows.core.store import ObjectStore
from tasks.cleanup import cleanup_run
from tasks.common import logger
from tasks.state import acquire_lock, set_status


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
    :meth:`finish`.

    The only holder of the lock handle and of the run's mutable record: the flow stores what its
    steps return here (``data``, ``chronos``, ``baselines``, ``promotion``, ``tuning``); the steps
    themselves take :attr:`spec` and values. ``params``, ``store``, ``env``, ``run_id``, ``workdir``
    and ``handle`` are what flow-level code driving the run reads (``tasks.tuning.run_study``)."""

    def __init__(self, params: TrainingParams, store: ObjectStore, phases: Phases, *, run_id: str | None = None,
                 **info: Any) -> None:
        run_id = run_id or params.run_id or new_run_id()
        self.phases = phases
        self.spec = RunSpec(
            params=params if params.run_id == run_id else params.model_copy(update={"run_id": run_id}),
            store=store, run_id=run_id, workdir=workdirs.new(run_id),
        )
        self.flow_run_id = str(flow_run.get_id()) if flow_run.get_id() else None
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "compute": params.compute.backend, **info}
        self.handle: LockHandle | None = None
        self.outcome: dict[str, Any] = {"status": "failed", "error": None}
        self.summary: dict[str, Any] | None = None
        # the run's record: what the steps returned (the cleanup records it, whatever the outcome)
        self.data: DataSync | None = None
        self.chronos: TrainedChronos | None = None
        self.baselines: dict[str, BaselineRecord] = {}
        self.promotion: Promotion | None = None
        self.tuning: dict[str, Any] | None = None
        self._instance_ids: list[str] = []
        self._instance_seconds: float | None = None

    params = property(lambda self: self.spec.params)
    store = property(lambda self: self.spec.store)
    env = property(lambda self: self.spec.env)
    run_id = property(lambda self: self.spec.run_id)
    workdir = property(lambda self: self.spec.workdir)

    @property
    def generation(self) -> int | None:
        return self.handle.generation if self.handle is not None else None

    @property
    def outages(self) -> Any:
        """The store outages this run rode out (or that stopped it): the lock handle's record."""
        return self._held().outages

    def acquire(self) -> str | None:
        """Take the lock; the refusal message when another run holds it (nothing is left behind)."""
        try:
            got = acquire_lock(self.spec, self.flow_run_id, self.info)
        except BaseException:
            shutil.rmtree(self.spec.workdir, ignore_errors=True)
            raise
        if isinstance(got, str):
            shutil.rmtree(self.spec.workdir, ignore_errors=True)
            return got
        self.handle = got
        return None

    def _held(self) -> LockHandle:
        if self.handle is None:
            raise RuntimeError(f"run {self.run_id}: the lock is not held; call LockedRun.acquire() first")
        return self.handle

    def transition(self, status: str, **details: Any) -> None:
        """Move the run to ``status``: state file, then training.json (``LockHandle.record_transition``,
        the one writer), as the ``set-status`` task, retried on transient store errors."""
        set_status(self._held(), status, **details)

    def guard(self, refresh: bool = True) -> None:
        """What long steps call to stop when the run is killed or its lock lost (``LockHandle.check``)."""
        self._held().check(refresh=refresh)

    def record_instance(self, *, instance_id: str | None = None, instance_seconds: float | None = None) -> None:
        """The training step's ``on_instance``: a launched instance is named in the state file's
        ``info`` at once (``chronos-flows status``) and terminated by the cleanup; its billed time
        prices a run whose training failed."""
        if instance_id is not None:
            self._instance_ids.append(instance_id)
            self._held().update_info(instance_id=instance_id)
        if instance_seconds is not None:
            self._instance_seconds = instance_seconds

    def results(self) -> RunResults:
        """What the run produced so far, as values for the cleanup (whatever the outcome)."""
        models: dict[str, dict[str, Any]] = {}
        if self.chronos is not None:
            models["chronos"] = self.chronos.info
        models.update({family: rec.info() for family, rec in self.baselines.items()})
        ids = list(self._instance_ids)
        if self.chronos is not None and self.chronos.instance_id and self.chronos.instance_id not in ids:
            ids.append(self.chronos.instance_id)
        seconds = self.chronos.instance_seconds if self.chronos is not None and self.chronos.instance_seconds is not None \
            else self._instance_seconds
        done = self.promotion.to_dict() if self.promotion is not None else {}
        return RunResults(models=models, leaderboard=done.get("leaderboard", []), promotion=done.get("promotion"),
                          cost=done.get("cost"), tuning=self.tuning, instance_ids=tuple(ids), instance_seconds=seconds)

    @contextmanager
    def holding(self) -> Iterator["LockedRun"]:
        handle = self._held()
        try:
            with handle.heartbeat_thread(self.params.lock.heartbeat_seconds):
                yield self
            self.outcome = {"status": "succeeded", "error": None}
        except RunKilledError as exc:
            self.outcome = {"status": "killed", "error": str(exc)}
        except TerminationSignal:  # `prefect flow-run cancel` (or SIGTERM): a kill, not a failure
            self.outcome = {"status": "killed", "error": f"cancelled from Prefect (flow run {self.flow_run_id})"}
            raise
        except BaseException as exc:
            self.outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            get_run_logger().error("run %s failed: %s (traceback below)", self.run_id, self.outcome["error"])
            raise
        finally:
            self.phases.seconds["total"] = round(time.monotonic() - self.phases.t_start, 3)
            logger().info(self.phases.summary())
            self.summary = cleanup_run(self.spec, handle, self.outcome, self.results(), self.phases.seconds)

    def finish(self) -> dict[str, Any] | State:
        """The run's summary; a killed run ends the flow run Cancelled "Killed" with it as its result."""
        summary = self.summary or {}
        if summary.get("status") == "killed":
            return Cancelled(name="Killed", message=summary.get("error") or f"run {self.run_id} was killed", data=summary)
        return summary
