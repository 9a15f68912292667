"""Run history and the kill procedure (pure: any ObjectStore; no Prefect, no boto3)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from chronos_flows.core import layout
from chronos_flows.runstate import runlog, workdirs
from chronos_flows.core.errors import BadInputError
from chronos_flows.runstate.lock import RunLock
from chronos_flows.runstate.statefile import mark_killed, write_transition
from chronos_flows.runstate.cleanup import run_cleanup

CleanupSteps = Callable[[str], list[tuple[str, Callable[[], str]]]]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _duration(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def list_runs(store, env: str) -> list[dict[str, Any]]:
    """Every run with a training.json under ``{env}/logs/``, newest first."""
    runs: list[dict[str, Any]] = []
    for key in store.list(layout.logs_root(env)):
        if not key.endswith("/training.json"):
            continue
        run_id = key.split("/")[-2]
        log = runlog.load_training_log(store, env, run_id)
        if log is None:
            continue
        md = runlog.load_model_metadata(store, env, run_id)
        promotion = (md.promotion if md else None) or (log.summary or {}).get("promotion")
        gate = (promotion or {}).get("gate_metric") or (log.params.get("evaluation") or {}).get("gate_metric", "wql")
        board = (md.leaderboard if md else None) or (log.summary or {}).get("leaderboard") or []
        runs.append(
            {
                "run_id": run_id,
                "status": log.status,
                "started_at": log.started_at,
                "ended_at": log.ended_at,
                "duration_s": _duration(log.started_at, log.ended_at),
                "gate_metric": gate,
                "gate_scores": {row["model"]: row.get(gate) for row in board if "model" in row},
                "promoted": bool((promotion or {}).get("promoted")),
                "error": log.error,
                "summary": log.summary or None,
            }
        )
    runs.sort(key=lambda r: r.get("started_at") or "", reverse=True)
    return runs


def kill_run(
    store,
    env: str,
    run_id: str | None = None,
    *,
    wait_seconds: float = 60.0,
    poll_seconds: float = 1.0,
    cancel_flow_run: Callable[[str], str] | None = None,
    extra_cleanup: CleanupSteps | None = None,
    reason: str = "killed by user",
) -> dict[str, Any]:
    """Mark the active run ``killed``, cancel its flow run, and make sure cleanup runs. Idempotent.

    The run's own process notices ``killed`` at its next lock check and cleans up. If its heartbeat
    does not move for the whole wait (the process is gone), the cleanup is done here instead.
    """
    lock = RunLock(store, env)
    snap = lock.read()
    if snap is None:
        if run_id and runlog.load_training_log(store, env, run_id) is None:
            raise BadInputError(f"no run {run_id} in {store.url} env {env}; `chronos-flows runs` lists the runs")
        return {"killed": False, "message": f"no active run in env {env}: nothing to kill"}
    state = snap.state
    if run_id and state["run_id"] != run_id:
        raise BadInputError(f"the active run is {state['run_id']}, not {run_id}; check `chronos-flows status`")
    run_id = state["run_id"]
    mark_killed(store, env, run_id, reason=reason)  # the state file and training.json, when it moves the run
    notes = [f"run {run_id} marked killed"]
    if cancel_flow_run and state.get("flow_run_id"):
        try:
            notes.append(cancel_flow_run(state["flow_run_id"]))
        except Exception as exc:  # noqa: BLE001 - cancellation is best effort; the lock decides
            notes.append(f"could not cancel flow run {state['flow_run_id']}: {exc}")

    outcome = _watch_heartbeat(lock, run_id, wait_seconds, poll_seconds)
    if outcome == "released":
        notes.append("the run cleaned up and released the lock")
        return {"killed": True, "run_id": run_id, "message": "; ".join(notes)}
    if outcome == "alive":
        notes.append("its process is alive and will clean up at its next check (wait more, then `chronos-flows status`)")
        return {"killed": True, "run_id": run_id, "message": "; ".join(notes)}
    complete = _clean_up_for_dead_process(store, env, run_id, reason, wait_seconds, extra_cleanup)
    notes.append(f"its process did not respond; cleanup done here ({'complete' if complete else 'INCOMPLETE'})")
    return {"killed": True, "run_id": run_id, "cleanup_complete": complete, "message": "; ".join(notes)}


def _watch_heartbeat(lock: RunLock, run_id: str, wait_seconds: float, poll_seconds: float) -> str:
    """Poll the state file for ``wait_seconds``: ``"released"`` as soon as ``run_id`` no longer holds
    the lock; otherwise ``"alive"`` if its heartbeat moved meanwhile, ``"silent"`` if it did not."""
    deadline = time.monotonic() + wait_seconds
    last_beat = None
    beat_moved = False
    while time.monotonic() < deadline:
        cur = lock.read()
        if cur is None or cur.state.get("run_id") != run_id:
            return "released"
        beat = cur.state.get("heartbeat_at")
        if last_beat is not None and beat != last_beat:
            beat_moved = True
        last_beat = beat
        time.sleep(poll_seconds)
    return "alive" if beat_moved else "silent"


def _clean_up_for_dead_process(store, env: str, run_id: str, reason: str, wait_seconds: float,
                               extra_cleanup: CleanupSteps | None) -> bool:
    """The cleanup of a killed run whose process did not respond: ``killed`` with the reason (an
    earlier cause kept) in training.json, then its cleanup steps — the local work directory and
    ``extra_cleanup`` — run and recorded. Returns whether the cleanup completed."""
    steps = _dead_run_steps(run_id, extra_cleanup)
    reason = f"{reason}; its process did not respond, cleaned up by `chronos-flows kill`" if wait_seconds > 0 else reason

    try:  # killed -> cleanup: the state file, then training.json (the one writer for an outside process)
        write_transition(store, env, run_id, "cleanup", {"by": "chronos-flows kill"}, skip_if=("cleanup",))
    except BadInputError:
        pass  # the lock passed to another run meanwhile: run_cleanup below leaves it alone
    runlog.finish_training_log(store, env, run_id, "killed", reason)
    status = run_cleanup(store, env, run_id, steps, None)
    return status.complete


def _dead_run_steps(run_id: str, extra_cleanup: CleanupSteps | None) -> list[tuple[str, Callable[[], str]]]:
    """The cleanup steps of a run whose process is gone: its local work directories on this machine,
    then ``extra_cleanup`` (e.g. instances still tagged with it)."""
    steps = [(f"remove-local-workdir-{run_id}", lambda: workdirs.remove_for(run_id))]
    return steps + list(extra_cleanup(run_id) if extra_cleanup else [])


def cleanup_dead_run(
    store,
    env: str,
    run_id: str,
    *,
    reason: str,
    extra_cleanup: CleanupSteps | None = None,
) -> dict[str, Any]:
    """Finish the record of a run whose process is gone and which no longer holds the lock (taken
    over, or its lock already removed): final status and cause in training.json (an earlier final
    status and cause are kept), its cleanup steps — local work directories, ``extra_cleanup`` (e.g.
    instances still tagged with it) — run and recorded in cleanup_status.json. Idempotent."""
    snap = RunLock(store, env).read()
    if snap is not None and snap.run_id == run_id and snap.status not in ("killed", "failed", "cleanup"):
        raise BadInputError(
            f"run {run_id} still holds the lock of env {env} (status {snap.status}); "
            f"stop it with `chronos-flows kill --run-id {run_id}` instead"
        )
    log = runlog.load_training_log(store, env, run_id)
    if log is None:
        raise BadInputError(f"no run {run_id} in {store.url} env {env}; `chronos-flows runs` lists the runs")
    if log.status not in runlog.FINISHED_STATUSES:
        runlog.mark_failed(store, env, run_id, reason)
    status = run_cleanup(store, env, run_id, _dead_run_steps(run_id, extra_cleanup), None)
    final = runlog.load_training_log(store, env, run_id)
    return {"run_id": run_id, "status": final.status if final else None, "error": final.error if final else None,
            "cleanup_complete": status.complete,
            "steps": {k: v.outcome for k, v in status.steps.items()}}
