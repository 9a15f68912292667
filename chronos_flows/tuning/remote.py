"""One tuning trial on its own EC2 instance: the store protocol between the flow and the instance.

No Prefect and no boto3 here: the instance runs :func:`run_trial_instance` through
``python -m app.bootstrap --trial PREFIX`` (the user data exports ``CHRONOS_FLOWS_TRIAL``).
Everything goes through the store, under the study's prefix ``{env}/tuning/{study}/``::

    data/{run_id}.parquet          the session's raw data (uploaded once by the flow)
    trials/NNNN/spec.json          the trial's settings (written by the flow before the first launch)
    trials/NNNN/progress.json      the instance's progress: attempt, step, every validation loss so far
    trials/NNNN/checkpoints/       checkpoint-*/ directories; manifest.json lists the complete ones
    trials/NNNN/result.json        the outcome (COMPLETE / FAIL / STOPPED), written last
    trials/NNNN/STOP               written by the flow (pruned, budget, kill): the instance stops at its next check

The study journal stays in the flow's process: the flow reads ``progress.json``, reports each
validation loss to the trial and, when the median pruner says so, writes ``STOP`` and terminates
the instance. A relaunched instance (spot reclaim) restores the checkpoints the manifest lists and
training resumes from the newest one.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError, ChronosFlowsError, LostLockError
from chronos_flows.core.store import ObjectStore
from chronos_flows.training.fit import unsynced_checkpoints

_LOG = logging.getLogger("chronos_flows.tuning.remote")
MANIFEST = "manifest.json"


class TrialStopped(ChronosFlowsError):
    """The flow wrote the trial's STOP marker (pruned, a budget ran out, the run was stopped)."""

    exit_code = 0


def trial_prefix(env: str, study: str, number: int) -> str:
    return f"{layout.tuning_prefix(env, study)}/trials/{number:04d}"


def data_key(env: str, study: str, run_id: str) -> str:
    return f"{layout.tuning_prefix(env, study)}/data/{run_id}.parquet"


class TrialKeys:
    """The store keys of one trial (see the module doc)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.spec = f"{self.prefix}/spec.json"
        self.progress = f"{self.prefix}/progress.json"
        self.result = f"{self.prefix}/result.json"
        self.stop = f"{self.prefix}/STOP"
        self.checkpoints = f"{self.prefix}/checkpoints"


def read_json(store: ObjectStore, key: str) -> Optional[dict]:
    got = store.get(key)
    return json.loads(got[0]) if got is not None else None


def put_json(store: ObjectStore, key: str, doc: dict) -> None:
    store.put(key, json.dumps(doc, default=str, indent=1).encode())


# ------------------------------------------------------------------------------ instance side


class TrialGuard:
    """``guard(refresh)``: on refresh, raise TrialStopped when the flow wrote STOP, LostLockError
    when the state file no longer gives the tuning run (and lock generation) its training turn."""

    def __init__(self, store: ObjectStore, env: str, run_id: str, generation: Optional[int], keys: TrialKeys) -> None:
        self.store, self.env, self.run_id, self.generation, self.keys = store, env, run_id, generation, keys

    def __call__(self, refresh: bool) -> None:
        if not refresh:
            return
        from chronos_flows.runstate.statefile import read_state, training_turn_refusal

        stop = read_json(self.store, self.keys.stop)
        if stop is not None:
            raise TrialStopped(f"stopped by the tuning flow: {stop.get('reason', 'no reason given')}")
        reason = training_turn_refusal(read_state(self.store, self.env), self.env, self.run_id, self.generation)
        if reason:
            raise LostLockError(f"tuning run {self.run_id} no longer owns the training step ({reason}); stopping")


class TrialCheckpoints:
    """Mirror the trial's local checkpoints to ``{prefix}/checkpoints`` like the training step's
    :class:`~chronos_flows.training.fit.CheckpointSync`, plus a manifest written after each upload: an
    instance reclaimed mid-upload leaves a partial directory the manifest does not list, so the next
    attempt restores only complete checkpoints."""

    def __init__(self, store: ObjectStore, prefix: str, local_dir: Path, guard: Callable[[bool], None],
                 log: Any = None) -> None:
        self.store, self.prefix, self.local_dir, self.guard = store, prefix, local_dir, guard
        self.log = log or _LOG
        self.synced: list[str] = []

    def restore(self) -> list[str]:
        """Download the complete stored checkpoints; training resumes from the newest. Returns their names."""
        manifest = read_json(self.store, f"{self.prefix}/{MANIFEST}") or {}
        names = [n for n in manifest.get("complete", []) if isinstance(n, str)]
        for name in names:
            self.store.download_dir(f"{self.prefix}/{name}", self.local_dir / name)
        self.synced = list(names)
        if names:
            self.log.info("restored %d checkpoint(s) from %s: %s", len(names), self.store.uri(self.prefix), ", ".join(names))
        return names

    def __call__(self) -> None:
        for ckpt in unsynced_checkpoints(self.local_dir, self.synced):
            self.guard(True)  # a stopped trial (or a run that lost the lock) writes nothing more
            self.store.upload_dir(ckpt, f"{self.prefix}/{ckpt.name}")
            self.synced.append(ckpt.name)
            put_json(self.store, f"{self.prefix}/{MANIFEST}", {"complete": self.synced})
            self.log.info("checkpoint %s synced to %s", ckpt.name, self.store.uri(f"{self.prefix}/{ckpt.name}"))


class InstanceProgress:
    """The model's progress callback on the instance: sync new checkpoints every call; on every new
    validation loss (and every ``every_s``) check the STOP marker and the lock, and write progress.json."""

    def __init__(self, store: ObjectStore, keys: TrialKeys, ckpts: TrialCheckpoints, guard: Callable[[bool], None],
                 attempt: int, every_s: float = 2.0) -> None:
        self.store, self.keys, self.ckpts, self.guard, self.attempt, self.every_s = store, keys, ckpts, guard, attempt, every_s
        self.losses: list[list[float]] = []
        self.last = 0.0

    def __call__(self, ev: dict[str, Any]) -> None:
        self.ckpts()
        val, step = ev.get("val_loss"), ev.get("step")
        new = val is not None and step is not None and all(s != step for s, _ in self.losses)
        if new:
            self.losses.append([int(step), float(val)])
        now = time.monotonic()
        if not new and now - self.last < self.every_s:
            return
        self.last = now
        self.guard(True)
        put_json(self.store, self.keys.progress, {"attempt": self.attempt, "step": step, "max_steps": ev.get("max_steps"),
                                                  "loss": ev.get("loss"), "val_losses": self.losses})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def run_trial_instance(store: ObjectStore, env: str, run_id: str, prefix: str, *, generation: Optional[int] = None,
                       attempt: int = 0, instance_id: Optional[str] = None, environment: Optional[dict] = None,
                       fetch_dir: Any = None) -> int:
    """What the trial's instance runs: train and score the trial whose spec is under ``prefix``,
    resuming from its stored checkpoints; write result.json. Returns the exit code (0 also when
    the flow stopped the trial: that outcome is the flow's to record)."""
    keys = TrialKeys(prefix)
    t0 = time.monotonic()
    base = {"attempt": attempt, "instance_id": instance_id, "host": socket.gethostname(), "started_at": _now(),
            "environment": environment or {}}
    code = 0
    try:
        spec = read_json(store, keys.spec)
        if spec is None:
            raise BadInputError(f"no trial spec at {store.uri(keys.spec)}; the tuning flow writes it before launching")
        guard = TrialGuard(store, env, run_id, generation, keys)
        guard(True)  # not this run's turn, or already stopped: train nothing
        result = _train_trial(store, spec, keys, guard, attempt, fetch_dir)
    except TrialStopped as exc:
        result = {"state": "STOPPED", "note": str(exc)}
    except Exception as exc:  # noqa: BLE001 - every failure is recorded for the flow, then the instance stops
        code = exc.exit_code if isinstance(exc, ChronosFlowsError) else 1
        result = {"state": "FAIL", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=20)[-4000:]}
        _LOG.error("trial under %s failed: %s: %s", prefix, type(exc).__name__, exc)
    result.update(base, finished_at=_now(), seconds=round(time.monotonic() - t0, 2))
    put_json(store, keys.result, result)
    return code


def _train_trial(store: ObjectStore, spec: dict, keys: TrialKeys, guard: TrialGuard, attempt: int,
                 fetch_dir: Any) -> dict[str, Any]:
    import pandas as pd

    from chronos_flows.tuning.worker import fit_and_score, prepare

    got = store.get(spec["raw_key"])
    if got is None:
        raise BadInputError(f"the trial's data {store.uri(spec['raw_key'])} is missing; the tuning flow uploads it first")
    prep = prepare(spec, pd.read_parquet(io.BytesIO(got[0])))
    workdir = Path(tempfile.mkdtemp(prefix="chronos-flows-trial-"))
    try:
        ckpts = TrialCheckpoints(store, keys.checkpoints, workdir / "checkpoints", guard)
        restored = ckpts.restore()
        progress = InstanceProgress(store, keys, ckpts, guard, attempt)
        result = fit_and_score(prep, workdir, progress, checkpoint_dir=workdir / "checkpoints", fetch_dir=fetch_dir)
        ckpts()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["restored_checkpoints"] = restored
    return result


# ------------------------------------------------------------------------------ flow side


class TrialReporter:
    """The flow's side of pruning: each new validation loss in progress.json is reported to the
    trial (in the flow's study journal); returns the prune note when the pruner stops the trial."""

    def __init__(self, journal: Path, study_name: str, tuning: Any, trial_id: int) -> None:
        import optuna

        from chronos_flows.tuning.study import open_study

        self.trial = optuna.trial.Trial(open_study(journal, study_name, tuning, create=False), int(trial_id))
        self.reported: set[int] = set()

    def report(self, progress: dict, prune: bool = True) -> Optional[str]:
        """Report the new losses; the prune note, or None. A loss at the last step is reported but
        never prunes: training is over and the trial's score is on its way (the flow reads progress
        a little after the instance wrote it). ``prune=False``: catch up before recording a result,
        so the median pruner sees every intermediate loss of the finished trial."""
        last = int(progress.get("max_steps") or 0)
        for step, val in progress.get("val_losses") or []:
            step = int(step)
            if step in self.reported:
                continue
            self.reported.add(step)
            self.trial.report(float(val), step)
            if prune and (not last or step < last) and self.trial.should_prune():
                return f"pruned at step {step} (validation loss {float(val):.4g} above the median)"
        return None


def instances_cost(ec2_cfg: Any, seconds: list[float]) -> float:
    """USD of the trial's instances: each billed per second (one-minute minimum) at ``compute.ec2``'s price."""
    from chronos_flows.training.cost import estimate_run_cost

    return round(sum(estimate_run_cost(ec2_cfg, s / 3600.0, "ec2")["total_usd"] for s in seconds), 4)


def result_of_instance(doc: dict) -> dict[str, Any]:
    """The trial result the flow records from an instance's result.json."""
    out = {k: doc.get(k) for k in ("state", "value", "step", "best_val_loss", "resumed_from_step", "restored_checkpoints",
                                   "note", "error") if doc.get(k) is not None}
    if out.get("state") == "STOPPED":  # the instance saw STOP that the flow did not write: record a failure
        out = {"state": "FAIL", "error": out.get("note") or "stopped"}
    if out.get("state") not in ("COMPLETE", "PRUNED", "FAIL"):
        out = {"state": "FAIL", "error": f"the instance wrote an unknown trial state {doc.get('state')!r}"}
    return out
