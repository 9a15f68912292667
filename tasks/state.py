"""Tasks over the run-state lock: peek, acquire, move through the state machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from blocks.store import open_store
from chronos_flows import runlog
from chronos_flows.config import TrainingParams
from chronos_flows.errors import ChronosFlowsError, LockedError
from chronos_flows.lock import LockHandle, RunLock, is_handed_off, take_handed_off
from chronos_flows.ops import status_report
from chronos_flows.store import ObjectStore
from tasks.common import RETRY_DELAYS, logger, retry_transient


@dataclass
class RunContext:
    """What the tasks of one run share (lives in the flow's process; never cached or persisted)."""

    params: TrainingParams
    store: ObjectStore
    run_id: str
    workdir: Path
    handle: LockHandle | None = None
    flow_run_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> str:
        return self.params.env


@task(name="open-store", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def open_run_store(url: str) -> ObjectStore:
    return open_store(url)  # verifies the bucket / directory is reachable


@task(name="check-lock", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
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


@task(name="acquire-lock", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def acquire_lock(ctx: RunContext) -> LockHandle | str:
    """The lock handle, or the refusal message when another run holds the lock."""
    try:
        return _acquire(ctx)
    except LockedError as exc:
        return str(exc)


def _acquire(ctx: RunContext) -> LockHandle:
    handle = take_handed_off(ctx.store.url, ctx.env, ctx.run_id)
    if handle is not None:  # `chronos-flows run` took it before Prefect started (and finished any run it took over): adopt it
        handle.update_info(flow_run_id=ctx.flow_run_id, **ctx.info)
        if ctx.flow_run_id:
            handle._write(lambda s: s.__setitem__("flow_run_id", ctx.flow_run_id))
    else:
        lock = RunLock(ctx.store, ctx.env, lease_seconds=ctx.params.lock.lease_seconds)
        handle = lock.acquire(ctx.run_id, flow_run_id=ctx.flow_run_id, info=dict(ctx.info))
        if handle.previous is not None:  # took over a dead holder: finish its record and cleanup
            _cleanup_taken_over(ctx, handle.previous.run_id)
    log = runlog.load_training_log(ctx.store, ctx.env, ctx.run_id)
    if log is None:
        log = runlog.TrainingLog(
            run_id=ctx.run_id,
            env=ctx.env,
            generation=handle.generation,
            flow_run_id=ctx.flow_run_id,
            status="initialization",
            started_at=handle.state["started_at"],
            params=ctx.params.model_dump(mode="json"),
            resumed_from=ctx.params.resume_from,
        )
    else:  # the same run id again (a deployment re-run): keep its history, this attempt appends
        log = log.model_copy(update={"generation": handle.generation, "flow_run_id": ctx.flow_run_id, "error": None, "ended_at": None})
    runlog.save_training_log(ctx.store, log)
    handle.record_status({"generation": handle.generation})  # the initialization the state file holds
    logger().info("run %s holds the lock (generation %d)", ctx.run_id, handle.generation)
    return handle


@task(name="set-status", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def set_status(ctx: RunContext, status: str, **details: Any) -> None:
    """Move the state file (compare-and-swap) and record the transition in ``training.json``."""
    if ctx.handle is None:
        raise RuntimeError("set_status called before the lock was acquired")
    ctx.handle.record_transition(status, **details)
    logger().info("run %s → %s", ctx.run_id, status)


def _cleanup_taken_over(ctx: RunContext, dead_run_id: str) -> None:
    from chronos_flows.runs import cleanup_dead_run
    from tasks.cleanup import instance_cleanup_steps

    try:
        result = cleanup_dead_run(
            ctx.store, ctx.env, dead_run_id, reason=f"lock taken over by run {ctx.run_id} after its lease expired",
            extra_cleanup=instance_cleanup_steps(ctx.params),
        )
        logger().warning("run %s was dead: recorded %s, cleanup %s", dead_run_id, result["status"],
                         "complete" if result["cleanup_complete"] else "INCOMPLETE (see its cleanup_status.json)")
    except ChronosFlowsError as exc:  # never blocks the new run; `chronos-flows cleanup` can finish it
        logger().warning("could not clean up after dead run %s: %s", dead_run_id, exc)
