"""The end of a run: the one way a holder moves its run to ``cleanup`` (:func:`enter_cleanup`), the
one cleanup entry (:func:`run_cleanup`: idempotent steps recorded in ``cleanup_status.json``, then
the lock released — used by the run itself, by ``kill`` of a dead process, by the cleanup of a
taken-over run and by a launcher giving its lock back), the status report and the verification that
nothing is left behind. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Iterable, Sequence

from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.core.clock import iso, parse_iso, utc_now
from chronos_flows.core.errors import LostLockError, PreconditionFailed, RunKilledError
from chronos_flows.runstate.lock import LockHandle
from chronos_flows.runstate.statefile import read_state
from chronos_flows.runstate.runlog import CleanupStatus, CleanupStep
from chronos_flows.core.store import ObjectStore

RELEASE_STEP = "release_lock"
_DONE = ("done", "already_done")


def run_cleanup(
    store: ObjectStore,
    env: str,
    run_id: str,
    steps: Sequence[tuple[str, Callable[[], str]]],
    handle: LockHandle | None,
    wall: Callable[[], datetime] = utc_now,
) -> CleanupStatus:
    """Run the cleanup ``steps`` of ``run_id`` idempotently and release the state file.

    Steps already recorded as done in ``cleanup_status.json`` are not re-run (recorded as
    ``already_done``); a step that raises is recorded ``failed`` and the others still run. The
    record is written atomically after every step. Finally the lock is released: through
    ``handle`` (moved to ``cleanup`` first), or — with no live holder, e.g. after killing a dead run —
    by a conditional delete of the state file if it still belongs to ``run_id`` and is not active."""
    prev = runlog.load_cleanup_status(store, env, run_id)
    status = CleanupStatus(run_id=run_id, env=env, started_at=prev.started_at if prev else iso(wall()))
    status.steps = dict(prev.steps) if prev else {}
    status.complete = False
    status.finished_at = None

    def record(name: str, outcome: str, detail: str) -> None:
        status.steps[name] = CleanupStep(outcome=outcome, detail=detail, at=iso(wall()))
        runlog.save_cleanup_status(store, status)

    if handle is not None:
        _holder_to_cleanup(handle)
    runlog.save_cleanup_status(store, status)

    for name, fn in steps:
        before = prev.steps.get(name) if prev else None
        if before is not None and before.outcome in _DONE:
            record(name, "already_done", before.detail)
            continue
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 — a failed step is recorded and the others still run
            record(name, "failed", f"{type(e).__name__}: {e}")
            continue
        record(name, "done", "" if detail is None else str(detail))

    outcome, detail = _release(store, env, run_id, handle, wall)
    before = prev.steps.get(RELEASE_STEP) if prev else None
    if outcome == "done" and before is not None and before.outcome in _DONE and "no state file" in detail:
        outcome, detail = "already_done", before.detail
    status.steps[RELEASE_STEP] = CleanupStep(outcome=outcome, detail=detail, at=iso(wall()))
    status.complete = all(s.outcome in _DONE for s in status.steps.values())
    status.finished_at = iso(wall())
    runlog.save_cleanup_status(store, status)
    return status


def enter_cleanup(handle: LockHandle, outcome: str = "failed", *, record: bool = True, **details) -> str:
    """THE way a holder ends its run: a run still active moves to ``outcome`` first (``failed`` or
    ``killed``, with ``details``; a run that ``succeeded`` from ``results_sync`` goes straight on),
    then to ``cleanup`` — each move through the handle's one writer: the state file, then (with
    ``record``) training.json. A kill from outside meanwhile wins: the ``killed`` state the handle
    adopted is what is recorded. Idempotent. Returns ``killed`` when the run ended killed, else
    ``outcome``. A lost lock raises :class:`LostLockError` (the new holder owns the state file)."""
    move = handle.record_transition if record else (lambda status, killed_ok=False, **d: _move(handle, status, killed_ok, **d))
    killed = any(h.get("status") == "killed" for h in handle.state.get("history", []))
    for _ in range(3):
        try:
            if handle.released or handle.status == "cleanup":
                break
            active = handle.status not in ("failed", "killed")
            if active and not (outcome == "succeeded" and handle.status == "results_sync"):
                move("killed" if outcome == "killed" else "failed", killed_ok=True, **details)
            killed = killed or handle.status == "killed"
            move("cleanup")
            break
        except RunKilledError:
            continue  # adopted the killed state: killed -> cleanup next time round
    return "killed" if killed else outcome


def _move(handle: LockHandle, status: str, killed_ok: bool, **details) -> None:
    try:
        handle.transition(status, **details)
    except RunKilledError:
        if not killed_ok:
            raise


def _holder_to_cleanup(handle: LockHandle) -> None:
    """The holder's run into ``cleanup`` when the cleanup starts (a run that lost its lock is left to
    the new holder)."""
    try:
        enter_cleanup(handle, "succeeded" if handle.status == "results_sync" else "failed",
                      reason="cleanup started before the run finished")
    except LostLockError:
        return


def _release(store: ObjectStore, env: str, run_id: str, handle: LockHandle | None,
             wall: Callable[[], datetime]) -> tuple[str, str]:
    key = layout.state_key(env)
    if handle is not None:
        try:
            if handle.status != "cleanup":
                _holder_to_cleanup(handle)
            handle.release()
            return "done", f"released {store.uri(key)} (generation {handle.generation})"
        except LostLockError as e:
            return "skipped", str(e)
        except Exception as e:  # noqa: BLE001 — recorded; verify_cleanup reports the leftover file
            return "failed", f"{type(e).__name__}: {e}"
    try:
        snap = read_state(store, env)
        if snap is None:
            return "done", f"no state file at {store.uri(key)}"
        if snap.run_id != run_id:
            # the lock passed to another run (a takeover): nothing of this run's is left to release
            return "done", f"{store.uri(key)} belongs to run {snap.run_id} now; run {run_id} holds no lock"
        lease = float(snap.state.get("lease_seconds") or 0)
        age = snap.heartbeat_age(wall())
        if snap.status not in ("failed", "killed", "cleanup") and age < lease:
            return "skipped", (f"run {run_id} is still active (status {snap.status}, heartbeat {age:.0f}s ago); "
                               f"kill it first (`chronos-flows kill --run-id {run_id}`)")
        store.delete_if_match(key, snap.etag)
        return "done", f"deleted {store.uri(key)} (run {run_id}, status {snap.status}, generation {snap.generation})"
    except PreconditionFailed:
        return "failed", f"{store.uri(key)} changed while releasing; run cleanup again"
    except Exception as e:  # noqa: BLE001
        return "failed", f"{type(e).__name__}: {e}"


def _phases(history: list[dict], now: datetime) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, h in enumerate(history):
        try:
            start = parse_iso(h["at"])
            end = parse_iso(history[i + 1]["at"]) if i + 1 < len(history) else now
        except (KeyError, ValueError):
            continue
        out[h["status"]] = round(out.get(h["status"], 0.0) + (end - start).total_seconds(), 3)
    return out


def status_report(store: ObjectStore, env: str, lease_seconds: float | None = None,
                  wall: Callable[[], datetime] = utc_now) -> dict:
    """What holds the lock of ``env`` now: ``{"state": "idle"}`` or the run's details."""
    snap = read_state(store, env)
    if snap is None:
        return {"state": "idle", "env": env}
    now = wall()
    # the lease the holder promised (recorded in the state file) decides; the caller's is a fallback
    lease = float(snap.state.get("lease_seconds") or (lease_seconds if lease_seconds is not None else 120.0))
    age = snap.heartbeat_age(now)
    s = snap.state
    return {
        "state": "held",
        "env": env,
        "run_id": snap.run_id,
        "status": snap.status,
        "generation": snap.generation,
        "started_at": s.get("started_at"),
        "updated_at": s.get("updated_at"),
        "heartbeat_at": s.get("heartbeat_at"),
        "heartbeat_age_s": round(age, 3),
        "lease_seconds": lease,
        "stale": age >= lease,
        "holder": s.get("holder"),
        "flow_run_id": s.get("flow_run_id"),
        "info": s.get("info", {}),
        "phases": _phases(s.get("history", []), now),
        "history": s.get("history", []),
    }


def verify_cleanup(store: ObjectStore, env: str,
                   extra: Iterable[Callable[[], list[str]]] = ()) -> tuple[bool, list[str]]:
    """Check that nothing is left behind: no state file, every finished run fully cleaned up,
    plus whatever the ``extra`` checkers report (e.g. EC2 instances still running)."""
    findings: list[str] = []
    rep = status_report(store, env)
    if rep["state"] != "idle":
        kind = "stale" if rep["stale"] else "active"
        findings.append(
            f"{kind} state file {store.uri(layout.state_key(env))}: run {rep['run_id']} status {rep['status']} "
            f"generation {rep['generation']}, heartbeat {rep['heartbeat_age_s']:.0f}s ago"
        )
    prefix = layout.logs_root(env)
    run_ids = sorted({k[len(prefix):].split("/", 1)[0] for k in store.list(prefix) if k.endswith("/training.json")})
    for rid in run_ids:
        log = runlog.load_training_log(store, env, rid)
        if log is None or log.status not in runlog.FINISHED_STATUSES:
            continue
        cs = runlog.load_cleanup_status(store, env, rid)
        if cs is None:
            findings.append(f"run {rid} ({log.status}) has no cleanup record "
                            f"{store.uri(layout.cleanup_status_key(env, rid))}: run its cleanup")
        elif not cs.complete:
            bad = [f"{n}={s.outcome}" for n, s in cs.steps.items() if s.outcome not in _DONE]
            findings.append(f"run {rid} ({log.status}) cleanup incomplete: {', '.join(bad) or 'not finished'}")
    for check in extra:
        findings.extend(check())
    return (not findings), findings
