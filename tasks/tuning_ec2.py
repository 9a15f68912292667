"""A tuning trial on its own ephemeral EC2 instance (``compute.backend=ec2``): one Prefect task per trial.

The task writes the trial's spec to the store, launches an instance (tagged with the tuning run, the
study and the trial; ``compute.ec2.spot`` honoured) whose user data runs
``python -m app.bootstrap --trial PREFIX``, and follows it through the store
(:mod:`chronos_flows.tuning.remote`): each new validation loss is reported to the study in this
process, and a pruned trial gets its STOP marker and its instance terminated. An instance that
disappears without a result (spot reclaim) is replaced, up to :data:`MAX_ATTEMPTS` launches; the
new one resumes from the trial's stored checkpoints. Whatever ends the trial, its instances are
terminated in the task's ``finally``; the trial's cost (billed seconds × the hourly price) is in its
result and, while it runs, in ``cost.json`` of its local directory for the study's cost budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from prefect import task
from prefect.cache_policies import NONE

from chronos_flows.config.params import TrainingParams
from chronos_flows.core.errors import ChronosFlowsError
from chronos_flows.tuning.study import TuningParams
from chronos_flows.tuning.remote import (
    TrialKeys,
    TrialReporter,
    instances_cost,
    put_json,
    read_json,
    result_of_instance,
    trial_prefix,
)
from tasks.common import logger
from chronos_flows.core import atomic

#: launches per trial: the first, and two replacements of a lost (reclaimed) instance
MAX_ATTEMPTS = 3
POLL_SECONDS = 0.5
GONE = ("shutting-down", "terminated", "stopping", "stopped", None)


@dataclass
class Ec2TrialJob:
    """What the trial task needs from the study (no Prefect objects, no run context)."""

    store: Any
    env: str
    run_id: str
    study: str
    trial_id: int
    spec: dict[str, Any]
    params: TrainingParams
    tuning: TuningParams
    journal: Path
    workdir: Path
    stop_file: Path
    budget_file: Path
    generation: Optional[int] = None


class _Ledger:
    """The trial's instances: launch and end times → billed seconds and cost, mirrored to cost.json."""

    def __init__(self, job: Ec2TrialJob) -> None:
        self.cfg = job.params.compute.ec2
        self.path = job.workdir / "cost.json"
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def seconds(self) -> list[float]:
        now = time.monotonic()
        return [self.ended.get(i, now) - t for i, t in self.started.items()]

    def cost(self) -> float:
        return instances_cost(self.cfg, self.seconds())

    def write(self) -> None:
        atomic.write_json(self.path, {"cost_usd": self.cost(), "instance_ids": list(self.started)})


def _stop_reason(job: Ec2TrialJob, stop_at: float | None) -> str | None:
    if stop_at is not None and time.monotonic() >= stop_at:
        return "the study's wall-clock budget ran out"
    if job.stop_file.exists():
        return "the tuning run was stopped"
    if job.budget_file.exists():
        return job.budget_file.read_text().strip() or "a budget of the study ran out"
    return None


def _finished(job: Ec2TrialJob, keys: TrialKeys, reporter: TrialReporter, doc: dict) -> dict[str, Any]:
    """The trial's outcome from its result.json, after reporting the losses the flow had not read yet."""
    progress = read_json(job.store, keys.progress)
    if progress:
        reporter.report(progress, prune=False)
    return result_of_instance(doc)


def _follow(job: Ec2TrialJob, ec2: Any, iid: str, keys: TrialKeys, reporter: TrialReporter, ledger: _Ledger,
            number: int, stop_at: float | None, deadline: float) -> dict[str, Any] | None:
    """Follow one instance until the trial has an outcome (returned) or the instance is gone
    without one (None: the caller relaunches)."""
    store = job.store
    while True:
        why = _stop_reason(job, stop_at)
        if why:
            put_json(store, keys.stop, {"reason": why})
            return {"state": "FAIL", "error": f"stopped: {why}"}
        doc = read_json(store, keys.result)
        if doc is not None:
            return _finished(job, keys, reporter, doc)
        progress = read_json(store, keys.progress)
        note = reporter.report(progress) if progress else None
        if note:
            put_json(store, keys.stop, {"reason": note})
            return {"state": "PRUNED", "note": note}
        state = ec2.describe(iid)
        if state in GONE:
            doc = read_json(store, keys.result)
            if doc is not None:
                return _finished(job, keys, reporter, doc)
            logger().warning("trial %d: instance %s is %s without a result (%s)", number, iid, state or "gone",
                             ec2.stop_reason(iid) or "no reason given")
            return None
        if time.monotonic() > deadline:
            put_json(store, keys.stop, {"reason": "compute.ec2.max_runtime_minutes exceeded"})
            return {"state": "FAIL", "error": f"instance {iid} exceeded compute.ec2.max_runtime_minutes"}
        ledger.write()
        time.sleep(POLL_SECONDS)


def _launch(job: Ec2TrialJob, ec2: Any, keys: TrialKeys, number: int, attempt: int) -> str:
    user_data = ec2.render_user_data(job.run_id, job.store.url, job.env, generation=job.generation,
                                     extra_env={"CHRONOS_FLOWS_TRIAL": keys.prefix, "CHRONOS_FLOWS_TRIAL_ATTEMPT": str(attempt)})
    tags = {"TuningStudy": job.study, "TuningTrial": str(number),
            "Name": f"chronos-flows-{job.env}-{job.run_id}-trial-{number}"}
    return ec2.launch(job.run_id, user_data, attempt=f"{job.study}/trial-{number}/{attempt}/g{job.generation or 0}",
                      extra_tags=tags)


def _attempts(job: Ec2TrialJob, ec2: Any, keys: TrialKeys, ledger: _Ledger, number: int, stop_at: float | None) -> dict[str, Any]:
    reporter = TrialReporter(job.journal, job.study, job.tuning, job.trial_id)
    for attempt in range(MAX_ATTEMPTS):
        iid = _launch(job, ec2, keys, number, attempt)
        ledger.started[iid] = time.monotonic()
        ledger.write()
        logger().info("trial %d: launched %s (%s%s), attempt %d of %d", number, iid, job.params.compute.ec2.instance_type,
                      ", spot" if job.params.compute.ec2.spot else "", attempt + 1, MAX_ATTEMPTS)
        deadline = time.monotonic() + job.params.compute.ec2.max_runtime_minutes * 60
        result = _follow(job, ec2, iid, keys, reporter, ledger, number, stop_at, deadline)
        ledger.ended[iid] = time.monotonic()
        if result is not None:
            result["attempts"] = attempt + 1
            return result
        logger().info("trial %d: lost instance %s: %s", number, iid, ec2.terminate(iid).replace("_", " "))
        if attempt + 1 < MAX_ATTEMPTS:
            logger().warning("trial %d: relaunching (attempt %d of %d); it resumes from the checkpoints in %s",
                             number, attempt + 2, MAX_ATTEMPTS, job.store.uri(keys.checkpoints))
    return {"state": "FAIL", "attempts": MAX_ATTEMPTS,
            "error": f"the trial's instance was lost {MAX_ATTEMPTS} times without a result (spot reclaims?); "
                     "set compute.ec2.spot=false or try another instance type"}


def _terminate_all(ec2: Any, ledger: _Ledger, number: int) -> dict[str, str]:
    """Terminate every instance of the trial (idempotent); a failure is logged, never raised."""
    outcomes: dict[str, str] = {}
    for iid in ledger.started:
        try:
            outcomes[iid] = ec2.terminate(iid)
        except ChronosFlowsError as exc:
            outcomes[iid] = f"error: {exc}"
            logger().error("trial %d: cannot terminate %s: %s", number, iid, exc)
            continue
        ledger.ended.setdefault(iid, time.monotonic())
        logger().info("trial %d: instance %s %s", number, iid, outcomes[iid].replace("_", " "))
    return outcomes


def _drop_checkpoints(job: Ec2TrialJob, keys: TrialKeys, number: int) -> None:
    """The trial is over (a finished trial is never resumed): its stored checkpoints go."""
    try:
        for key in job.store.list(keys.checkpoints + "/"):
            job.store.delete(key)
    except ChronosFlowsError as exc:
        logger().warning("trial %d: cannot remove its checkpoints under %s: %s", number, job.store.uri(keys.checkpoints), exc)


@task(name="tuning-trial-ec2", cache_policy=NONE, task_run_name="trial-{number}")
def run_trial_ec2(job: Ec2TrialJob, number: int, stop_at: float | None) -> dict[str, Any]:
    """Run trial ``number`` on its own instance(s) to its end; every instance is terminated when it ends."""
    from blocks.ec2 import Ec2Compute

    keys = TrialKeys(trial_prefix(job.env, job.study, number))
    job.workdir.mkdir(parents=True, exist_ok=True)
    ec2 = Ec2Compute(job.params.compute.ec2, env=job.env, cost_center=job.params.cost_center)
    ledger = _Ledger(job)
    for key in (keys.result, keys.stop):  # a fresh trial number; never read an earlier session's outcome
        job.store.delete(key)
    put_json(job.store, keys.spec, job.spec)
    terminated: dict[str, str] = {}
    try:
        result = _attempts(job, ec2, keys, ledger, number, stop_at)
    except ChronosFlowsError as exc:  # a launch failed (quota, capacity, settings): this trial failed
        result = {"state": "FAIL", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        terminated = _terminate_all(ec2, ledger, number)
        ledger.write()
        _drop_checkpoints(job, keys, number)
    result.update(instance_ids=list(ledger.started), terminated=terminated, cost_usd=ledger.cost(),
                  instance_seconds=round(sum(ledger.seconds()), 1))
    logger().info("trial %d: %s on %d instance(s), $%.4f%s", number, result["state"], len(ledger.started), result["cost_usd"],
                  f", validation WQL {result['value']:.5g}" if result.get("value") is not None else
                  f" ({result.get('note') or result.get('error')})")
    return result
