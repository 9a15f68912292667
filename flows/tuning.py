"""The ``chronos-tuning`` flow: wiring only.

ingest → clean → [lock] data_sync → training (the study: trials in parallel processes, each a
Prefect task) → results_sync (trials table, history and importance plots, best config) → cleanup.
The tuning run holds the run lock like a training run and leaves the same records
(training.json, cleanup_status.json); ``final_run`` then trains with the best settings.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from chronos_flows.runstate.runs import new_run_id
from chronos_flows.tuning.study import TuningParams, apply_overrides, validate_space
from flows.lifecycle import LockedRun, Phases, refused
from tasks.common import quiet_routine_task_logs
from tasks.data import clean_data, ingest, sync_data
from tasks.state import check_lock, open_run_store
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
    with phases("preflight"):
        store = open_run_store(base.store_url())
        held = check_lock(store, base.env, base.lock.lease_seconds, base.run_id)
        if held:
            return refused(held)
        raw = ingest(base)
        cleaned, report = clean_data(raw, base)

    run_id = base.run_id or f"tune-{new_run_id()}"
    study_name = params.study or run_id
    run = LockedRun(base, store, phases, run_id=run_id, kind="tuning", study=study_name)
    held = run.acquire()
    if held is not None:
        return refused(held)
    with run.holding():
        with phases("data_sync"):
            run.transition("data_sync")
            run.data = sync_data(run.spec, raw, cleaned, report)
            raw_path = run.workdir / "raw.parquet"
            pd.DataFrame(raw).to_parquet(raw_path, index=False)
        with phases("training"):
            run.transition("training", study=study_name)
            run.tuning = run_study(run, params, study_name, raw_path)  # flow-level: reads run.handle to stop on a kill
        with phases("results_sync"):
            run.transition("results_sync")
            run.transition("cleanup")
    summary = run.finish()
    best = (run.tuning or {}).get("best_params")
    if params.final_run and best and isinstance(summary, dict):
        from flows.training import chronos_training

        get_run_logger().info("final training run with the best settings: %s", best)
        summary["final_run"] = chronos_training(params=apply_overrides(base, best).model_copy(update={"run_id": None}))
    return summary
