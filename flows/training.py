"""The ``chronos-training`` flow: wiring only.

ingest → clean → [lock] data_sync → training (Chronos; AutoETS and Prophet baselines) → evaluate →
results_sync (metadata, champion of any family) → cleanup. Errors move the state file to ``failed`` (or it was
``killed`` from outside) and always end in ``cleanup``, which releases the lock.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled

from chronos_flows import workdirs
from chronos_flows.config import TrainingParams
from chronos_flows.errors import RunKilledError
from tasks.cleanup import cleanup_run, release_after_abort
from tasks.common import cache_mode, logger, quiet_routine_task_logs
from tasks.data import clean_data, ingest, sync_data
from tasks.evaluate import backtest_baseline, baseline_runner, evaluate, finalize_results, load_champion
from tasks.state import RunContext, acquire_lock, check_lock, open_run_store, set_status
from tasks.train import train_chronos
from chronos_flows.splits import split_for_training
from chronos_flows.runs import new_run_id


class Phases:
    """Wall time of each phase, for training.json and the benchmark; a log line as each one ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - t0
            self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 3)
            logger().info("phase %s: %.1f s", name, took)

    def summary(self) -> str:
        """One line: every phase with its seconds, in the order they ran."""
        return "phases: " + ", ".join(f"{name} {secs:.1f} s" for name, secs in self.seconds.items())


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
    t_start = time.monotonic()
    with phases("preflight"):
        store = open_run_store(params.store_url())
        refused = check_lock(store, params.env, params.lock.lease_seconds, params.run_id)
        if refused:
            return _refused(refused)
        raw = cache_mode(ingest, params.compute.cache)(params)  # cached on the data's fingerprint
        cleaned, report = cache_mode(clean_data, params.compute.cache)(raw, params)

    run_id = params.run_id or new_run_id()
    workdir = workdirs.new(run_id)
    ctx = RunContext(
        params=params,
        store=store,
        run_id=run_id,
        workdir=workdir,
        flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None,
        info={"host": socket.gethostname(), "pid": os.getpid(), "compute": params.compute.backend},
    )
    try:
        got = acquire_lock(ctx)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if isinstance(got, str):  # another run holds the lock
        shutil.rmtree(workdir, ignore_errors=True)
        return _refused(got)
    ctx.handle = got

    outcome: dict[str, Any] = {"status": "failed", "error": None}
    results: dict[str, Any] = {}
    try:
        with ctx.handle.heartbeat_thread(params.lock.heartbeat_seconds):
            with phases("data_sync"):
                set_status(ctx, "data_sync")
                results["data"] = sync_data(ctx, raw, cleaned, report)
            with phases("training"):
                set_status(ctx, "training")
                train_df, freq = split_for_training(cleaned, report.freq, params.evaluation)
                chronos, results["chronos"] = train_chronos(ctx, train_df, freq)
            baselines = {}
            families = [f for f in ("autoets", "theta", "prophet") if f in params.evaluation.baselines]
            if families:
                with baseline_runner(params.compute) as runner:  # chunks of series as tasks: local or Dask
                    for family in families:
                        with phases(family):
                            baselines[family], results[family] = backtest_baseline(ctx, family, cleaned, freq, report.season_length, runner)
            with phases("evaluate"):
                champion = load_champion(ctx, report.season_length)
                results["champion_run_id"] = champion.doc.get("run_id") if champion.doc else None
                backtest = evaluate(ctx, cleaned, chronos, baselines, freq, report.season_length, champion)
            with phases("results_sync"):
                set_status(ctx, "results_sync")
                results.update(finalize_results(ctx, backtest, results, report, champion))
                set_status(ctx, "cleanup")
            outcome = {"status": "succeeded", "error": None}
    except RunKilledError as exc:
        outcome = {"status": "killed", "error": str(exc)}
    except TerminationSignal:  # `prefect flow-run cancel` (or SIGTERM): a kill, not a failure
        outcome = {"status": "killed", "error": f"cancelled from Prefect (flow run {ctx.flow_run_id})"}
        raise
    except BaseException as exc:
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        get_run_logger().error("run %s failed: %s (traceback below)", run_id, outcome["error"])
        raise
    finally:
        phases.seconds["total"] = round(time.monotonic() - t_start, 3)
        logger().info(phases.summary())
        summary = cleanup_run(ctx, outcome, results, phases.seconds)
    if summary["status"] == "killed":
        # a kill ends the flow run Cancelled (not Failed), with the summary as its result
        return Cancelled(name="Killed", message=summary.get("error") or f"run {run_id} was killed", data=summary)
    return summary


def _refused(message: str) -> State:
    """Another run holds the lock: end the flow run Cancelled, named and explained, no traceback."""
    get_run_logger().warning("refused: %s", message)
    return Cancelled(name="Locked", message=message, data={"status": "refused", "error": message})


if __name__ == "__main__":
    chronos_training()
