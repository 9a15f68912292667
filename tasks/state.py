"""Tasks over the run-state lock: peek, acquire, move through the state machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from prefect import task

from blocks.resolve import open_store
from chronos_flows.runstate import runlog
from chronos_flows.config.params import TrainingParams
from chronos_flows.core.errors import ChronosFlowsError, LockedError
from chronos_flows.runstate.lock import LockHandle, RunLock
from chronos_flows.runstate.handoff import is_handed_off, take_handed_off
from chronos_flows.runstate.cleanup import status_report
from chronos_flows.training.specs import RunSpec
from chronos_flows.core.store import ObjectStore
from tasks.common import ON_TRANSIENT, logger
class RunContext(Protocol):
    """What flow-level code driving a run reads of it (``flows.lifecycle.LockedRun`` is one; e.g.
    ``tasks.tuning.run_study``). Tasks never get it: they take a :class:`RunSpec` and values."""

    params: TrainingParams
    store: ObjectStore
    run_id: str
    workdir: Path
    handle: LockHandle | None

    @property
    def env(self) -> str: ...


@task(name="open-store", **ON_TRANSIENT)
def open_run_store(url: str) -> ObjectStore:
    return open_store(url)  # verifies the bucket / directory is reachable


@task(name="check-lock", **ON_TRANSIENT)
def check_lock(store: ObjectStore, env: str, lease_seconds: float, run_id: str | None = None) -> str | None:
    """The refusal message when a live run holds the lock (the flow ends Cancelled "Locked"), else
    None; a stale holder is taken over by ``acquire``. The lock ``chronos-flows run`` took for this
    very run before Prefect started is not a rival."""
    if is_handed_off(store.url, env, run_id):
        return None
    report = status_report(store, env, lease_seconds=lease_seconds)
    if report.get("state") == "idle":
        return None
    if not report.get("stale"):
        return str(LockedError(report["run_id"], report.get("started_at", "?"), report.get("status")))
    logger().warning(
        "state file of run %s looks stale (heartbeat %.0f s old); it will be taken over after a full lease",
        report["run_id"],
        report.get("heartbeat_age_s", -1),
    )
    return None


@task(name="acquire-lock", **ON_TRANSIENT)
def acquire_lock(spec: RunSpec, flow_run_id: str | None = None, info: dict[str, Any] | None = None) -> LockHandle | str:
    """The lock handle for ``spec.run_id`` (``info`` and the Prefect flow run recorded in the state
    file), or the refusal message when another run holds it."""
    try:
        return _acquire(spec, flow_run_id, dict(info or {}))
    except LockedError as exc:
        return str(exc)


def _acquire(spec: RunSpec, flow_run_id: str | None, info: dict[str, Any]) -> LockHandle:
    handle = take_handed_off(spec.store.url, spec.env, spec.run_id)
    if handle is not None:  # `chronos-flows run` took it before Prefect started (and finished any run it took over): adopt it
        handle.update_info(flow_run_id=flow_run_id, **info)
        if flow_run_id:
            handle._write(lambda s: s.__setitem__("flow_run_id", flow_run_id))
    else:
        lock = RunLock(spec.store, spec.env, lease_seconds=spec.params.lock.lease_seconds)
        handle = lock.acquire(spec.run_id, flow_run_id=flow_run_id, info=info)
        if handle.previous is not None:  # took over a dead holder: finish its record and cleanup
            _cleanup_taken_over(spec, handle.previous.run_id)
    log = runlog.load_training_log(spec.store, spec.env, spec.run_id)
    if log is None:
        log = runlog.TrainingLog(
            run_id=spec.run_id,
            env=spec.env,
            generation=handle.generation,
            flow_run_id=flow_run_id,
            status="initialization",
            started_at=handle.state["started_at"],
            params=spec.params.model_dump(mode="json"),
            resumed_from=spec.params.resume_from,
        )
    else:  # the same run id again (a deployment re-run): keep its history, this attempt appends
        log = log.model_copy(update={"generation": handle.generation, "flow_run_id": flow_run_id, "error": None, "ended_at": None})
    runlog.save_training_log(spec.store, log)
    handle.record_status({"generation": handle.generation})  # the initialization the state file holds
    logger().info("run %s holds the lock (generation %d)", spec.run_id, handle.generation)
    return handle


@task(name="set-status", **ON_TRANSIENT)
def set_status(handle: LockHandle, status: str, **details: Any) -> None:
    """Move the state file (compare-and-swap) and record the transition in ``training.json``: the
    lock handle's one writer, retried on transient store errors. Called by the flow's ``LockedRun``,
    the only holder of the handle."""
    handle.record_transition(status, **details)
    logger().info("run %s → %s", handle.run_id, status)


def _cleanup_taken_over(spec: RunSpec, dead_run_id: str) -> None:
    from chronos_flows.runstate.runs import cleanup_dead_run
    from blocks.ec2 import instance_cleanup_steps

    try:
        result = cleanup_dead_run(
            spec.store, spec.env, dead_run_id, reason=f"lock taken over by run {spec.run_id} after its lease expired",
            extra_cleanup=instance_cleanup_steps(spec.params),
        )
        logger().warning("run %s was dead: recorded %s, cleanup %s", dead_run_id, result["status"],
                         "complete" if result["cleanup_complete"] else "INCOMPLETE (see its cleanup_status.json)")
    except ChronosFlowsError as exc:  # never blocks the new run; `chronos-flows cleanup` can finish it
        logger().warning("could not clean up after dead run %s: %s", dead_run_id, exc)
