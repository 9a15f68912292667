"""The cleanup step: final training.json, idempotent cleanup steps, cleanup_status.json, lock release."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from prefect import task

from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.config.params import TrainingParams
from chronos_flows.training.cost import estimate_run_cost
from chronos_flows.core.errors import ChronosFlowsError, LeaseExpiredError, LostLockError
from chronos_flows.runstate.lock import LockHandle
from chronos_flows.runstate.cleanup import run_cleanup
from chronos_flows.runstate.cleanup import enter_cleanup
from chronos_flows.training.specs import RunResults, RunSpec
from blocks.ec2 import instance_cleanup_steps  # noqa: F401 - the cleanup of a dead run (used by tasks.state)
from tasks.common import ON_TRANSIENT, logger
def cleanup_steps(spec: RunSpec, generation: int, instance_ids: Iterable[str] = ()) -> list[tuple[str, Callable[[], str]]]:
    """Terminate every instance launched for the run, remove this attempt's local work directory."""
    steps: list[tuple[str, Callable[[], str]]] = []
    if instance_ids:
        from blocks.ec2 import Ec2Compute

        ec2 = Ec2Compute(spec.params.compute.ec2, env=spec.env, cost_center=spec.params.cost_center)
        for instance_id in dict.fromkeys(instance_ids):
            steps.append((f"terminate-instance-{instance_id}", lambda i=instance_id: ec2.terminate(i)))

    def remove_workdir() -> str:
        if not spec.workdir.exists():
            return f"{spec.workdir} already removed"
        shutil.rmtree(spec.workdir)
        return f"removed {spec.workdir}"

    # named per attempt: a resumed run's new workdir is not "already done" by the earlier attempt
    steps.append((f"remove-local-workdir-g{generation}", remove_workdir))
    return steps


@task(name="cleanup", **ON_TRANSIENT)
def cleanup_run(spec: RunSpec, handle: LockHandle, outcome: Mapping[str, Any], results: RunResults,
                phases: Mapping[str, float]) -> dict[str, Any]:
    """Always runs (success or failure): the final transitions through ``handle`` (passed by the
    flow, its only holder), the final training.json, the cleanup steps, the lock release.
    Idempotent: a retry skips what is already done."""
    status, error, lost, fenced = outcome["status"], outcome.get("error"), False, False
    try:
        status = enter_cleanup(handle, status, error=error)
    except LeaseExpiredError as exc:
        # the store was away past the lease: the run stopped itself. Its own records are written now
        # (the store is back, or this task is retried until it is); the state file is released as a
        # dead holder's, once the lease is surely over — unless another run took the lock meanwhile.
        lost, fenced = True, True
        status = "failed"
        logger().error("%s; recording the failure and releasing the stale lock once the lease is over", exc)
    except LostLockError as exc:
        lost = True
        logger().error("%s; skipping the state-file updates (the new holder owns them)", exc)

    cost = results.cost
    if cost is None and results.instance_seconds is not None:
        cost = estimate_run_cost(spec.params.compute.ec2, results.instance_seconds / 3600.0, "ec2")
    summary = build_summary(spec, status, error, results, cost, dict(phases))
    outages = handle.outages.records()
    if fenced:
        handle.wait_out_lease()
        reason = error or "the lease expired during a store outage"

        def record_fenced(log: runlog.TrainingLog) -> None:  # idempotent: this task may be retried
            if not (log.transitions and log.transitions[-1].status == "failed"
                    and log.transitions[-1].details.get("reason") == reason):
                log.transitions.append(runlog.Transition(status="failed", at=datetime.now(timezone.utc).isoformat(),
                                                         details={"reason": reason}))
            log.status, log.error, log.outages = "failed", reason, outages
            log.ended_at = log.ended_at or datetime.now(timezone.utc).isoformat()
            log.phases, log.summary = dict(phases), summary

        runlog.update_training_log(spec.store, spec.env, spec.run_id, record_fenced)
    if not lost:
        log = runlog.load_training_log(spec.store, spec.env, spec.run_id)
        if log is not None:
            log = log.model_copy(
                update={
                    "status": status,
                    "ended_at": datetime.now(timezone.utc).isoformat(),
                    "phases": dict(phases),
                    "error": error,
                    "models": {k: v for k, v in results.models.items() if k in ("chronos", "autoets", "prophet")},
                    "summary": summary,
                    "cost_estimate": cost,
                    "outages": outages,
                }
            )
            runlog.save_training_log(spec.store, log)
    steps = cleanup_steps(spec, handle.generation, results.instance_ids)
    done = run_cleanup(spec.store, spec.env, spec.run_id, steps, None if lost else handle)
    summary["cleanup_complete"] = done.complete
    logger().info("cleanup of run %s: %s", spec.run_id, "complete" if done.complete else "INCOMPLETE")
    return summary


def build_summary(spec: RunSpec, status: str, error: str | None, results: RunResults, cost: dict[str, Any] | None,
                  phases: dict[str, float]) -> dict[str, Any]:
    """The run's summary (the flow's result, ``training.json`` ``summary``, ``chronos-flows run``'s output)."""
    tuning = {k: v for k, v in (results.tuning or {}).items() if k != "best_config"}
    return {
        **({"tuning": tuning} if tuning else {}),
        "run_id": spec.run_id,
        "env": spec.env,
        "status": status,
        "error": error,
        "store": spec.store.url,
        "leaderboard": results.leaderboard,
        "promotion": results.promotion,
        "cost_estimate": cost,
        "phases": phases,
        "artifacts": _existing_artifacts(spec),
    }


def _existing_artifacts(spec: RunSpec) -> dict[str, str]:
    """Where the run's records are — only those that were written (a killed or failed run has no
    metadata or evaluation; cleanup_status.json is written right after the summary)."""
    store, env, run_id = spec.store, spec.env, spec.run_id
    out = {
        "run": store.uri(layout.run_prefix(env, run_id)),
        "training_log": store.uri(layout.training_log_key(env, run_id)),
        "cleanup_status": store.uri(layout.cleanup_status_key(env, run_id)),
    }
    try:
        if store.exists(layout.metadata_key(env, run_id)):
            out["model_metadata"] = store.uri(layout.metadata_key(env, run_id))
        if store.list(layout.evaluation_prefix(env, run_id) + "/"):
            out["evaluation"] = store.uri(layout.evaluation_prefix(env, run_id))
        if store.exists(layout.eda_key(env, run_id)):
            out["eda"] = store.uri(layout.eda_key(env, run_id))
    except ChronosFlowsError:  # the store is unreachable: list only the paths that are always written
        pass
    return out


def abort_reason(flow_run_id: Any, state: Any) -> str:
    """The recorded cause of a run whose flow run Prefect ended: a cancellation reads the same as
    the flow's own handling of it ("cancelled from Prefect"), a crash names the state."""
    name = getattr(state, "name", None) or str(state)
    kind = str(getattr(getattr(state, "type", None), "value", "") or "").upper()
    if kind in ("CANCELLED", "CANCELLING") or name in ("Cancelled", "Cancelling"):
        return f"cancelled from Prefect (flow run {flow_run_id})"
    return f"flow run {flow_run_id} ended {name}"


def release_after_abort(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect ``on_cancellation`` / ``on_crashed`` hook: the flow's own cleanup did not run (the
    process was cancelled or died), so mark the run killed, run its cleanup and release the lock —
    only if the state file still belongs to this flow run."""
    from blocks.resolve import open_store
    from chronos_flows.runstate.statefile import read_state
    from chronos_flows.runstate.runs import kill_run

    log = logging.getLogger("chronos_flows")
    raw = (getattr(flow_run, "parameters", None) or {}).get("params") or {}
    params = raw if isinstance(raw, TrainingParams) else TrainingParams.model_validate(raw)
    store = open_store(params.store_url())
    snap = read_state(store, params.env)
    if snap is None or snap.state.get("flow_run_id") != str(flow_run.id):
        log.info("flow run %s holds no lock in %s env %s: nothing to release", flow_run.id, store.url, params.env)
        return
    result = kill_run(
        store,
        params.env,
        snap.run_id,
        wait_seconds=0,
        extra_cleanup=instance_cleanup_steps(params),
        reason=abort_reason(flow_run.id, state),
    )
    log.warning("released the lock of run %s after its flow run ended %s: %s", snap.run_id, getattr(state, "name", state), result["message"])
