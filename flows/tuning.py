"""The ``chronos-tuning`` flow: wiring only.

ingest → clean → [lock] data_sync → training (the study: trials in parallel processes, each a
Prefect task) → results_sync (trials table, history and importance plots, best config) → cleanup.
The tuning run holds the run lock like a training run and leaves the same records
(training.json, cleanup_status.json); ``final_run`` then trains with the best settings.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled

from chronos_flows import workdirs
from chronos_flows.errors import RunKilledError
from chronos_flows.runs import new_run_id
from chronos_flows.tuning import TuningParams, validate_space
from flows.training import Phases, _refused
from tasks.cleanup import cleanup_run
from tasks.common import quiet_routine_task_logs
from tasks.data import clean_data, ingest, sync_data
from tasks.state import RunContext, acquire_lock, check_lock, open_run_store, set_status
from tasks.tuning import release_tuning_after_abort, run_study


@flow(
    name="chronos-tuning",
    persist_result=False,
    log_prints=True,
    on_cancellation=[release_tuning_after_abort],
    on_crashed=[release_tuning_after_abort],
)
def chronos_tuning(params: TuningParams = TuningParams()) -> dict[str, Any]:
    """Search Chronos fine-tuning and cleaning settings with an Optuna study; write the best as a config file.

    Args:
        params: The base training settings, the search space and the budgets (README "Tuning").
    """
    quiet_routine_task_logs()
    validate_space(params)
    base = params.training
    phases = Phases()
    t_start = time.monotonic()
    with phases("preflight"):
        store = open_run_store(base.store_url())
        refused = check_lock(store, base.env, base.lock.lease_seconds, base.run_id)
        if refused:
            return _refused(refused)
        raw = ingest(base)
        cleaned, report = clean_data(raw, base)

    run_id = base.run_id or f"tune-{new_run_id()}"
    study_name = params.study or run_id
    workdir = workdirs.new(run_id)
    ctx = RunContext(
        params=base.model_copy(update={"run_id": run_id}), store=store, run_id=run_id, workdir=workdir,
        flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None,
        info={"host": socket.gethostname(), "pid": os.getpid(), "compute": base.compute.backend, "kind": "tuning", "study": study_name},
    )
    got = acquire_lock(ctx)
    if isinstance(got, str):
        shutil.rmtree(workdir, ignore_errors=True)
        return _refused(got)
    ctx.handle = got

    outcome: dict[str, Any] = {"status": "failed", "error": None}
    results: dict[str, Any] = {}
    try:
        with ctx.handle.heartbeat_thread(base.lock.heartbeat_seconds):
            with phases("data_sync"):
                set_status(ctx, "data_sync")
                results["data"] = sync_data(ctx, raw, cleaned, report)
                raw_path = workdir / "raw.parquet"
                pd.DataFrame(raw).to_parquet(raw_path, index=False)
            with phases("training"):
                set_status(ctx, "training", study=study_name)
                results["tuning"] = run_study(ctx, params, study_name, raw_path)
            with phases("results_sync"):
                set_status(ctx, "results_sync")
                set_status(ctx, "cleanup")
            outcome = {"status": "succeeded", "error": None}
    except RunKilledError as exc:
        outcome = {"status": "killed", "error": str(exc)}
    except TerminationSignal:
        outcome = {"status": "killed", "error": f"cancelled from Prefect (flow run {ctx.flow_run_id})"}
        raise
    except BaseException as exc:
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        get_run_logger().error("tuning run %s failed: %s (traceback below)", run_id, outcome["error"])
        raise
    finally:
        phases.seconds["total"] = round(time.monotonic() - t_start, 3)
        summary = cleanup_run(ctx, outcome, results, phases.seconds)
    if summary["status"] == "killed":
        return Cancelled(name="Killed", message=summary.get("error") or f"run {run_id} was killed", data=summary)
    if params.final_run and results.get("tuning", {}).get("best_params"):
        from chronos_flows.tuning import apply_overrides
        from flows.training import chronos_training

        best = apply_overrides(base, results["tuning"]["best_params"]).model_copy(update={"run_id": None})
        get_run_logger().info("final training run with the best settings: %s", results["tuning"]["best_params"])
        summary["final_run"] = chronos_training(params=best)
    return summary
