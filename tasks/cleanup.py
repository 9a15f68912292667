"""The cleanup step: final training.json, idempotent cleanup steps, cleanup_status.json, lock release."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NONE

from chronos_flows import runlog
from chronos_flows.config import TrainingParams
from chronos_flows.errors import ChronosFlowsError, LostLockError
from chronos_flows.ops import run_cleanup
from tasks.common import RETRY_DELAYS, logger, retry_transient
from tasks.state import RunContext


def _to_terminal_then_cleanup(ctx: RunContext, outcome: dict[str, Any]) -> None:
    """failed/killed always lead to cleanup; a successful run is already in cleanup."""
    handle = ctx.handle
    status = handle.state.get("status")
    if status == "cleanup":
        return
    if status not in ("failed", "killed"):
        target = "killed" if outcome["status"] == "killed" else "failed"
        # killed from outside meanwhile: the handle now holds the killed state, and that is recorded
        handle.record_transition(target, killed_ok=True, error=outcome.get("error"))
    if handle.state.get("status") == "killed":
        outcome["status"] = "killed"
    handle.record_transition("cleanup")


def cleanup_steps(ctx: RunContext) -> list[tuple[str, Callable[[], str]]]:
    steps: list[tuple[str, Callable[[], str]]] = []
    instance_id = ctx.info.get("instance_id")
    if instance_id:
        from blocks.ec2 import Ec2Compute

        ec2 = Ec2Compute(ctx.params.compute.ec2, env=ctx.env, cost_center=ctx.params.cost_center)
        steps.append((f"terminate-instance-{instance_id}", lambda: ec2.terminate(instance_id)))

    def remove_workdir() -> str:
        if not ctx.workdir.exists():
            return f"{ctx.workdir} already removed"
        shutil.rmtree(ctx.workdir)
        return f"removed {ctx.workdir}"

    # named per attempt: a resumed run's new workdir is not "already done" by the earlier attempt
    generation = ctx.handle.generation if ctx.handle is not None else 0
    steps.append((f"remove-local-workdir-g{generation}", remove_workdir))
    return steps


@task(name="cleanup", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def cleanup_run(ctx: RunContext, outcome: dict[str, Any], results: dict[str, Any], phases: dict[str, float]) -> dict[str, Any]:
    """Always runs (success or failure). Idempotent: a retry skips what is already done."""
    lost = False
    try:
        _to_terminal_then_cleanup(ctx, outcome)
    except LostLockError as exc:
        lost = True
        logger().error("%s; skipping the state-file updates (the new holder owns them)", exc)

    if results.get("cost") is None and ctx.info.get("instance_seconds") is not None:
        from chronos_flows.cost import estimate_run_cost

        results["cost"] = estimate_run_cost(ctx.params.compute.ec2, ctx.info["instance_seconds"] / 3600.0, "ec2")
    summary = build_summary(ctx, outcome, results, phases)
    if not lost:
        log = runlog.load_training_log(ctx.store, ctx.env, ctx.run_id)
        if log is not None:
            log = log.model_copy(
                update={
                    "status": outcome["status"],
                    "ended_at": datetime.now(timezone.utc).isoformat(),
                    "phases": phases,
                    "error": outcome.get("error"),
                    "models": {k: v for k, v in results.items() if isinstance(v, dict) and k in ("chronos", "autoets", "prophet")},
                    "summary": summary,
                    "cost_estimate": results.get("cost"),
                }
            )
            runlog.save_training_log(ctx.store, log)
    status = run_cleanup(ctx.store, ctx.env, ctx.run_id, cleanup_steps(ctx), None if lost else ctx.handle)
    summary["cleanup_complete"] = status.complete
    logger().info("cleanup of run %s: %s", ctx.run_id, "complete" if status.complete else "INCOMPLETE")
    return summary


def build_summary(ctx: RunContext, outcome: dict[str, Any], results: dict[str, Any], phases: dict[str, float]) -> dict[str, Any]:
    from chronos_flows import layout

    tuning = {k: v for k, v in (results.get("tuning") or {}).items() if k != "best_config"}
    return {
        **({"tuning": tuning} if tuning else {}),
        "run_id": ctx.run_id,
        "env": ctx.env,
        "status": outcome["status"],
        "error": outcome.get("error"),
        "store": ctx.store.url,
        "leaderboard": results.get("leaderboard", []),
        "promotion": results.get("promotion"),
        "cost_estimate": results.get("cost"),
        "phases": phases,
        "artifacts": _existing_artifacts(ctx),
    }


def _existing_artifacts(ctx: RunContext) -> dict[str, str]:
    """Where the run's records are — only those that were written (a killed or failed run has no
    metadata or evaluation; cleanup_status.json is written right after the summary)."""
    from chronos_flows import layout

    out = {
        "run": ctx.store.uri(layout.run_prefix(ctx.env, ctx.run_id)),
        "training_log": ctx.store.uri(layout.training_log_key(ctx.env, ctx.run_id)),
        "cleanup_status": ctx.store.uri(layout.cleanup_status_key(ctx.env, ctx.run_id)),
    }
    try:
        if ctx.store.exists(layout.metadata_key(ctx.env, ctx.run_id)):
            out["model_metadata"] = ctx.store.uri(layout.metadata_key(ctx.env, ctx.run_id))
        if ctx.store.list(layout.evaluation_prefix(ctx.env, ctx.run_id) + "/"):
            out["evaluation"] = ctx.store.uri(layout.evaluation_prefix(ctx.env, ctx.run_id))
    except ChronosFlowsError:  # the store is unreachable: list only the paths that are always written
        pass
    return out


def instance_cleanup_steps(params: TrainingParams) -> Callable[[str], list[tuple[str, Callable[[], str]]]]:
    """For a run whose process is gone: terminate every instance still tagged with its RunId."""

    def steps(run_id: str) -> list[tuple[str, Callable[[], str]]]:
        if params.compute.backend != "ec2":
            return []
        from blocks.ec2 import Ec2Compute

        ec2 = Ec2Compute(params.compute.ec2, env=params.env, cost_center=params.cost_center)
        return [
            (f"terminate-instance-{inst['instance_id']}", (lambda i=inst["instance_id"]: ec2.terminate(i)))
            for inst in ec2.list_active(run_id=run_id)
        ]

    return steps


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
    from blocks.store import open_store
    from chronos_flows.lock import read_state
    from chronos_flows.runs import kill_run

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
