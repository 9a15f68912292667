"""Tuning tasks: one trial per Prefect task, the study loop, the artifacts.

The study itself is :mod:`chronos_flows.tuning.study` (Optuna, no Prefect). A trial runs in its own
process (:mod:`chronos_flows.tuning.worker`) on the local backend, so trials train in parallel on
separate cores and a trial that is stopped (budget, kill) is one process to terminate; with
``compute.backend=ec2`` each trial runs on its own ephemeral instance (:mod:`tasks.tuning_ec2`).
A budget that runs out while trials run (wall clock, cost) stops them; they are recorded as failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from chronos_flows.core import layout
from chronos_flows.tuning.study import (
    TuningParams,
    apply_overrides,
    best_config_yaml,
    best_trial,
    budget_reason,
    cost_reason,
    fail_stale_trials,
    finished_trials,
    open_study,
    param_importances,
    plot_history_png,
    plot_importance_png,
    spent_usd,
    suggest,
    trials_frame,
)
from chronos_flows.core.layout import tuning_data_key
from tasks.common import Progress, image_markdown, logger, markdown_artifact, table_artifact
from tasks.state import RunContext
from chronos_flows.core import atomic


def _threads_per_trial(params: TuningParams) -> int:
    return max(1, (os.cpu_count() or 1) // params.budget.max_parallel)


@task(name="tuning-trial", cache_policy=NONE, task_run_name="trial-{number}")
def run_trial(spec: dict[str, Any], number: int, stop_at: float | None) -> dict[str, Any]:
    """Run one trial's process to its end, or until ``stop_at`` (monotonic) or the study's stop file
    appears (a kill): then the process is terminated and the trial recorded as failed."""
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec, default=str))
    log_path = workdir / "trial.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "chronos_flows.tuning.worker", str(spec_path)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            while proc.poll() is None:
                timed_out = stop_at is not None and time.monotonic() >= stop_at
                budget = Path(spec["budget_file"])
                if timed_out or Path(spec["stop_file"]).exists() or budget.exists():
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    if timed_out:
                        why = "the study's wall-clock budget ran out"
                    elif Path(spec["stop_file"]).exists():
                        why = "the tuning run was stopped"
                    else:
                        why = budget.read_text().strip() or "a budget of the study ran out"
                    return {"state": "FAIL", "error": f"stopped: {why}"}
                time.sleep(0.2)
        finally:
            if proc.poll() is None:  # the task itself was interrupted: never leave the process behind
                proc.kill()
                proc.wait()
    result_path = Path(spec["result"])
    if not result_path.exists():
        tail = log_path.read_text()[-1500:]
        return {"state": "FAIL", "error": f"trial process exited {proc.returncode} without a result: {tail}"}
    result = json.loads(result_path.read_text())
    logger().info("trial %d: %s%s", number, result["state"],
                  f" validation WQL {result['value']:.5g}" if result.get("value") is not None else
                  f" ({result.get('note') or result.get('error')})")
    return result


def _tell(study: Any, trial: Any, result: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    for attr in ("attempts", "instance_ids", "cost_usd", "resumed_from_step"):
        if result.get(attr) is not None:
            trial.set_user_attr(attr, result[attr])
    state = result.get("state")
    if state == "COMPLETE" and result.get("value") is not None:
        study.tell(trial, result["value"])
        return
    if state == "PRUNED":
        trial.set_user_attr("pruned_at", result.get("note", "pruned"))
        study.tell(trial, state=TrialState.PRUNED)
        return
    trial.set_user_attr("fail_reason", str(result.get("error") or "failed")[:500])
    study.tell(trial, state=TrialState.FAIL)


def run_study(ctx: RunContext, params: TuningParams, study_name: str, raw_path: Path) -> dict[str, Any]:
    """Ask, run in parallel, tell — until a budget ends the study. The journal is mirrored to the
    store after each trial (the study resumes from there); the lock is checked between trials."""
    store, env = ctx.store, ctx.env
    prefix = layout.tuning_prefix(env, study_name)
    journal = ctx.workdir / "journal.log"
    stored = store.get(f"{prefix}/journal.log")
    if stored is not None:
        journal.write_bytes(stored[0])
    study = open_study(journal, study_name, params)
    stale = fail_stale_trials(study)
    if stale:
        logger().warning("study %s: trials %s were left running by an interrupted session; marked failed", study_name, stale)
    already = len(finished_trials(study))
    if already:
        logger().info("study %s resumes: %d trial(s) already finished", study_name, already)
    else:
        for item in params.enqueue:
            study.enqueue_trial(item)

    def mirror() -> None:
        store.put(f"{prefix}/journal.log", journal.read_bytes())

    mirror()
    t0 = time.monotonic()
    stop_at = t0 + params.budget.timeout_seconds if params.budget.timeout_seconds else None
    running: dict[int, tuple[Any, Any]] = {}
    progress = Progress(f"tuning-progress-{ctx.run_id}", f"study {study_name}: trials finished of {params.budget.max_trials}")
    stop_file = ctx.workdir / "STOP"
    if ctx.params.compute.backend == "ec2":  # the trials' instances read the data from the store
        ctx.store.put(tuning_data_key(env, study_name, ctx.run_id), raw_path.read_bytes())
    try:
        stop_reason, cost = _loop(ctx, params, study, study_name, journal, raw_path, stop_at, stop_file, running, mirror, progress, t0)
    except BaseException:
        stop_file.touch()  # the running trials' tasks terminate their processes (or instances)
        for n, (trial, fut) in list(running.items()):
            fut.wait(60)
            try:  # keep what the task recorded (instance ids, cost); the trial failed either way
                got = fut.result(timeout=1)
            except Exception:  # noqa: BLE001 - the task failed or did not stop in time: nothing more to keep
                got = None
            _tell(study, trial, {**(got if isinstance(got, dict) else {}), "state": "FAIL",
                                 "error": "stopped: the tuning run ended (killed or failed)"})
        mirror()
        raise
    out = _finish(ctx, study, study_name, prefix, stop_reason, t0)
    out["cost_usd"] = round(cost, 4)
    return out


def _submit(ctx, params, study, study_name, journal, raw_path, stop_at, stop_file, threads):
    """Ask the study for a trial and start its task (a local process, or an EC2 instance)."""
    from tasks.tuning_ec2 import Ec2TrialJob, run_trial_ec2

    trial = study.ask()
    values = suggest(trial, params.search_space)
    trial_params = apply_overrides(ctx.params, values)
    ec2 = ctx.params.compute.backend == "ec2"
    if trial_params.chronos.num_threads is None and not ec2:
        trial_params = trial_params.model_copy(update={"chronos": trial_params.chronos.model_copy(update={"num_threads": threads})})
    tdir = ctx.workdir / f"trial-{trial.number:04d}"
    spec = {"params": trial_params.model_dump(mode="json"), "base_cleaning": ctx.params.cleaning.model_dump(mode="json"),
            "study": study_name, "trial": trial.number}
    logger().info("trial %d starts%s: %s", trial.number, " on its own EC2 instance" if ec2 else "",
                  ", ".join(f"{k}={v}" for k, v in values.items()))
    budget_file = ctx.workdir / "BUDGET_STOP"
    if ec2:
        job = Ec2TrialJob(store=ctx.store, env=ctx.env, run_id=ctx.run_id, study=study_name, trial_id=trial._trial_id,
                          spec={**spec, "raw_key": tuning_data_key(ctx.env, study_name, ctx.run_id)}, params=ctx.params,
                          tuning=params, journal=journal, workdir=tdir, stop_file=stop_file, budget_file=budget_file,
                          generation=getattr(ctx.handle, "generation", None))
        return trial, run_trial_ec2.submit(job, trial.number, stop_at)
    spec.update(tuning=params.model_dump(mode="json"), raw_path=str(raw_path), journal=str(journal), trial_id=trial._trial_id,
                workdir=str(tdir), result=str(tdir / "result.json"), stop_file=str(stop_file), budget_file=str(budget_file))
    return trial, run_trial.submit(spec, trial.number, stop_at)


def _running_cost(ctx, running) -> float:
    """What the running trials' instances have cost so far (their tasks keep cost.json current)."""
    total = 0.0
    for n in running:
        path = ctx.workdir / f"trial-{n:04d}" / "cost.json"
        try:
            total += float(json.loads(path.read_text()).get("cost_usd") or 0.0)
        except (OSError, ValueError):
            continue
    return total


def _loop(ctx, params, study, study_name, journal, raw_path, stop_at, stop_file, running, mirror, progress, t0):
    threads = _threads_per_trial(params)
    cost, stop_reason = spent_usd(study), None
    budget_file = ctx.workdir / "BUDGET_STOP"
    while True:
        ctx.handle.check()  # a kill ends the study (RunKilledError), running trials are stopped below
        finished = len(finished_trials(study))
        over = cost_reason(params, cost + _running_cost(ctx, running))
        if over and not budget_file.exists():  # the running trials' tasks stop them (recorded as failed)
            atomic.write_text(budget_file, f"the study's cost budget ran out ({over})")
            stop_reason = over if (stop_reason is None or running) else stop_reason
        stop_reason = stop_reason or budget_reason(params, finished=finished + len(running), elapsed_s=time.monotonic() - t0, cost_usd=cost)
        if stop_reason is None and len(running) < params.budget.max_parallel:
            trial, fut = _submit(ctx, params, study, study_name, journal, raw_path, stop_at, stop_file, threads)
            running[trial.number] = (trial, fut)
            continue
        if not running:
            break
        done = [n for n, (_, fut) in running.items() if fut.state.is_final()]
        if not done:
            time.sleep(0.3)
            continue
        for n in done:
            trial, fut = running.pop(n)
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - the task itself failed: that trial failed
                result = {"state": "FAIL", "error": f"{type(exc).__name__}: {exc}"}
            _tell(study, trial, result)
            cost += float(result.get("cost_usd") or 0.0)
            mirror()
            progress.update(len(finished_trials(study)), params.budget.max_trials)
    return stop_reason, cost


def _finish(ctx: RunContext, study: Any, study_name: str, prefix: str, stop_reason: str | None, t0: float) -> dict[str, Any]:
    store = ctx.store
    frame = trials_frame(study)
    store.put(f"{prefix}/trials.csv", frame.to_csv(index=False).encode())
    best = best_trial(study)
    out: dict[str, Any] = {"study": study_name, "stop_reason": stop_reason or "no trial left to run",
                           "trials": len(frame), "by_state": frame["state"].value_counts().to_dict() if len(frame) else {},
                           "seconds": round(time.monotonic() - t0, 1), "study_uri": store.uri(prefix),
                           "instances": {t.number: t.user_attrs["instance_ids"] for t in study.get_trials(deepcopy=False)
                                         if t.user_attrs.get("instance_ids")}}
    if best is not None:
        config = best_config_yaml(ctx.params, best.params, study=study_name, trial=best.number, value=best.value)
        store.put(f"{prefix}/best_config.yaml", config.encode())
        out.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                   best_config_uri=store.uri(f"{prefix}/best_config.yaml"), best_config=config)
    store.put(f"{prefix}/study.json", json.dumps({k: v for k, v in out.items() if k != "best_config"}, default=str, indent=2).encode())
    logger().info("study %s ended (%s): %s%s", study_name, out["stop_reason"], out["by_state"],
                  f"; best trial {best.number} validation WQL {best.value:.5g}: {best.params}" if best else "; no trial completed")
    publish(ctx, study, frame, out)
    return out


def publish(ctx: RunContext, study: Any, frame: pd.DataFrame, out: dict[str, Any]) -> None:
    """Trials table, optimization history and parameter importances (PNG embedded), best settings."""
    rows = frame.where(pd.notna(frame), None).to_dict(orient="records")
    table_artifact(f"tuning-trials-{ctx.run_id}", rows, f"study {out['study']}: every trial, its settings and validation WQL")
    parts = [f"# Study {out['study']}", "", f"Ended: {out['stop_reason']}; trials {out['by_state']}.", ""]
    if "best_trial" in out:
        parts += [f"Best: trial {out['best_trial']}, validation WQL {out['best_value']:.5g}: "
                  + ", ".join(f"`{k}={v}`" for k, v in out["best_params"].items()), "",
                  f"Best settings as a config file: `{out['best_config_uri']}` (`chronos-flows run --config FILE`).", ""]
    parts.append(image_markdown("Optimization history", plot_history_png(study)))
    importances = param_importances(study)
    if importances:
        parts.append(image_markdown("Parameter importance", plot_importance_png(study)))
    else:
        parts.append("Parameter importance needs at least two completed trials that vary a parameter.")
    markdown_artifact(f"tuning-report-{ctx.run_id}", "\n".join(parts), f"study {out['study']}: history and importances")


def release_tuning_after_abort(flow: Any, flow_run: Any, state: Any) -> None:
    """The training flow's abort hook, on the tuning flow's parameters (its ``training`` section)."""
    from tasks.cleanup import release_after_abort

    raw = (getattr(flow_run, "parameters", None) or {}).get("params") or {}
    training = raw.training if isinstance(raw, TuningParams) else (raw.get("training") or {})
    release_after_abort(flow, SimpleNamespace(id=flow_run.id, parameters={"params": training}), state)
