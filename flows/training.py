"""The ``chronos-training`` flow: wiring only.

ingest → clean → [lock] data_sync → training (Chronos; AutoETS and Prophet baselines) → evaluate →
results_sync (metadata, champion of any family) → cleanup. Errors move the state file to ``failed`` (or it was
``killed`` from outside) and always end in ``cleanup``, which releases the lock.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from chronos_flows.config.params import TrainingParams
from chronos_flows.evaluation.splits import split_for_training
from flows.lifecycle import LockedRun, Phases, refused
from tasks.cleanup import release_after_abort
from tasks.common import cache_mode, quiet_routine_task_logs
from tasks.data import clean_data, ingest, sync_data
from tasks.eda import explore_data
from tasks.evaluate import backtest_baseline, evaluate, finalize_results, load_champion
from tasks.runners import chunk_runner
from tasks.state import check_lock, open_run_store
from tasks.train import train_chronos


@flow(
    name="chronos-training",
    persist_result=False,
    log_prints=True,
    on_cancellation=[release_after_abort],
    on_crashed=[release_after_abort],
)
def chronos_training(params: TrainingParams = TrainingParams()) -> dict[str, Any]:
    """Train Chronos, backtest it against the champion and the baselines, and keep the best as champion.

    Args:
        params: Training parameters; every field has a default (README "Configuration").
    """
    quiet_routine_task_logs()
    phases = Phases()
    with phases("preflight"):
        store = open_run_store(params.store_url())
        held = check_lock(store, params.env, params.lock.lease_seconds, params.run_id)
        if held:
            return refused(held)
        raw = cache_mode(ingest, params.compute.cache)(params)  # cached on the data's fingerprint
        cleaned, report = cache_mode(clean_data, params.compute.cache)(raw, params)

    run = LockedRun(params, store, phases)
    held = run.acquire()
    if held is not None:  # another run took the lock meanwhile
        return refused(held)
    spec = run.spec  # what every step reads; the lock handle stays with `run`
    with run.holding():
        with phases("data_sync"):
            run.transition("data_sync")
            run.data = sync_data(spec, raw, cleaned, report)
            explore_data(spec, cleaned, report)  # eda.json + the eda-<run_id> artifact
        with phases("training"):
            run.transition("training")
            train_df, freq = split_for_training(cleaned, report.freq, params.evaluation)
            run.chronos = train_chronos(spec, train_df, freq, run.guard, generation=run.generation, on_instance=run.record_instance,
                                        outages=run.outages)
        families = [f for f in ("autoets", "theta", "prophet", "lightgbm") if f in params.evaluation.baselines]
        if families:
            with chunk_runner(params.compute) as runner:  # chunks of series as tasks: local or Dask
                for family in families:
                    with phases(family):
                        run.baselines[family] = backtest_baseline(spec, family, cleaned, freq, report.season_length, runner)
        with phases("evaluate"):
            champion = load_champion(spec, report.season_length)
            backtest = evaluate(spec, cleaned, run.chronos.model, run.baselines, freq, report.season_length, champion, run.guard)
        with phases("results_sync"):
            run.transition("results_sync")
            run.promotion = finalize_results(spec, backtest, report, run.data, run.chronos, run.baselines, champion, run.guard)
            run.transition("cleanup")
    return run.finish()
