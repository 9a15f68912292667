"""The ``chronos-flows`` command: run, forecast, monitor, accuracy, eda, serve, status, kill, cleanup, verify-cleanup, runs, infra, endpoint.

Exit codes: 0 success, 1 run failed (including a store that vanished mid-run), 2 bad input or
configuration (refused before the run started), 3 another run holds the lock, 4 the run was killed
(``chronos-flows kill`` or a Prefect cancellation).
"""

from __future__ import annotations

import argparse
import json
import os
import importlib.util
import socket
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from blocks.ec2 import Ec2Compute, instance_cleanup_steps, verify_instances
from blocks.store import read_uri
from blocks.resolve import open_store
from blocks import apigateway, cloudformation, sagemaker
from chronos_flows.core import layout
from chronos_flows.runstate import pending, runlog, workdirs
from chronos_flows.config.params import (
    REPO_ROOT,
    build_forecast_params,
    build_monitor_params,
    build_params,
    build_resume_params,
    params_from_tree,
    resolve_store_url,
)
from chronos_flows.core.errors import BadInputError, ChronosFlowsError, LockedError
from chronos_flows.runstate.lock import RunLock
from chronos_flows.runstate.handoff import abandon, hand_off
from chronos_flows.runstate.statefile import read_state
from chronos_flows.runstate.cleanup import enter_cleanup, status_report, verify_cleanup
from chronos_flows.champion.model_dir import open_model_dir
from chronos_flows.champion.package import endpoint_names, read_record
from chronos_flows.champion.registry import read_champion
from chronos_flows.config.endpoint import build_endpoint_params
from chronos_flows.runstate.runs import cleanup_dead_run, kill_run, list_runs, new_run_id
from chronos_flows.core import atomic
from chronos_flows.training.cost import estimate_endpoint_cost

# Imports: at the top, except three groups that stay inside the commands that need them because
# they measurably slow the commands that do not (2-core machine, python -c "import M"):
#   - Prefect and what imports it (flows.*, tasks.*, prefect.*): ~1.7 s; `status`, `kill`, `runs`,
#     `cleanup` and every refusal (exit 2 bad input, exit 3 locked) run without it;
#   - the pandas-based data modules (cleaning, ingest, splits, forecasting, tuning): ~0.5 s; a launch
#     that loses the lock exits 3 before the data is read (tests/test_cli.py times the losers);
#   - app.server (uvicorn, orjson): only `serve` needs it.
# These light modules (store, lock, config, records) cost ~0.15 s together.

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_KILLED = 0, 1, 2, 3, 4


def _embedded_prefect_defaults() -> None:
    """Settings that make the embedded (no server configured) mode work offline and start reliably."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _params(args: argparse.Namespace):
    fields: dict[str, Any] = {}
    if getattr(args, "store", None):
        fields["store"] = args.store
    if getattr(args, "env", None):
        fields["env"] = args.env
    return build_params(getattr(args, "config", None), getattr(args, "set", None) or [], **fields)


def _resume_params(args: argparse.Namespace):
    """``run --resume ID``: the run's recorded parameters (only where/how it runs may be changed), a
    new attempt id ``ID-resume-N`` whose record says ``resumed_from``; ID's own record is untouched."""
    if getattr(args, "config", None):
        raise BadInputError("--config cannot be combined with --resume: a resumed run keeps its recorded parameters")
    store = open_store(resolve_store_url(args.store))
    _flush_pending(store)
    env = args.env or "dev"
    log = runlog.load_training_log(store, env, args.resume)
    if log is None:
        raise BadInputError(f"no run {args.resume} in {store.url} env {env}; `chronos-flows runs` lists the runs")
    if log.status not in ("failed", "killed"):
        raise BadInputError(
            f"run {args.resume} is {log.status}; only failed or killed runs can be resumed"
            + (" (omit --resume to start a new run)" if log.status == "succeeded" else " (kill it first)")
        )
    earlier = [r for r in (k.split("/")[-2] for k in store.list(layout.logs_root(env)) if k.endswith("/training.json"))
               if r.startswith(f"{args.resume}-resume-")]
    run_id = f"{args.resume}-resume-{len(earlier) + 1}"
    params = build_resume_params(log.params, getattr(args, "set", None) or [], run_id=run_id, resume_from=args.resume)
    if args.store or args.env:

        params = params_from_tree(params.model_dump(mode="json"), "--store/--env", store=args.store, env=args.env)
    return params, store


def _store_for(args: argparse.Namespace):
    params = _params(args)
    store = open_store(params.store_url())  # verifies the bucket / directory is reachable
    _flush_pending(store)
    return params, store


def _flush_pending(store) -> None:
    """Failure records kept locally while this store was unreachable go into their training.json."""
    for record in pending.flush(store):
        print(f"chronos-flows: recorded the failure of run {record['run_id']} (kept locally since {record['at']} "
              f"while the store was unreachable)", file=sys.stderr)


def preflight(params, store) -> None:
    """What can be refused before the lock is taken: a live holder, a run id that already succeeded
    (reads only)."""
    report = status_report(store, params.env, lease_seconds=params.lock.lease_seconds)
    if report.get("state") != "idle" and not report.get("stale"):
        raise LockedError(report["run_id"], report.get("started_at", "?"), report.get("status"))
    if params.run_id:
        log = runlog.load_training_log(store, params.env, params.run_id)
        if log is not None and log.status == "succeeded":
            raise BadInputError(
                f"run {params.run_id} already succeeded; use another run_id (or none) for a new run, "
                "or `--resume RUN_ID` to continue a failed or killed one"
            )


def preflight_data(params) -> None:
    """The data and its cleaning, checked before Prefect starts (writes nothing)."""
    from chronos_flows.data.cleaning import clean
    from chronos_flows.data.ingest import load_dataset
    from chronos_flows.evaluation.splits import min_series_length

    df = load_dataset(params.data.path, params.data, fetch=read_uri)
    clean(df, params.cleaning, min_length=min_series_length(params), horizon=params.evaluation.horizon, detect_outliers=False)


def _finish_taken_over(handle, params, store) -> None:
    """This launch took the lock over from a dead run: finish that run's record and cleanup now
    (its cleanup_status.json, its local work directory, its instances), whatever this run does next."""
    dead = handle.previous.run_id
    try:
        result = cleanup_dead_run(store, params.env, dead, extra_cleanup=instance_cleanup_steps(params),
                                  reason=f"lock taken over by run {params.run_id} after its lease expired")
    except ChronosFlowsError as exc:  # never blocks the new run
        print(f"chronos-flows: could not clean up after dead run {dead}: {exc}; finish it with "
              f"`chronos-flows cleanup --run-id {dead}`", file=sys.stderr)
        return
    print(f"chronos-flows: took over the lock of dead run {dead}: recorded {result['status']}, cleanup "
          + ("complete" if result["cleanup_complete"] else f"INCOMPLETE (see its cleanup_status.json; "
             f"`chronos-flows cleanup --run-id {dead}` retries)"), file=sys.stderr)


def _give_back(handle, reason: str) -> None:
    """Release a lock taken by a launch refused before its run started (bad data): the state file
    goes away and no training.json is written; only the lock's generation counter has moved."""
    try:
        enter_cleanup(handle, "failed", record=False, reason=reason)
        handle.release()
    except ChronosFlowsError as exc:
        print(f"chronos-flows: could not release the lock of run {handle.run_id}: {exc}; "
              f"`chronos-flows kill --run-id {handle.run_id}` releases it", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    _embedded_prefect_defaults()
    params, store = _resume_params(args) if args.resume else _store_for(args)
    preflight(params, store)
    if not params.run_id:
        params = params.model_copy(update={"run_id": new_run_id()})
    # Take the lock first, before the data is read and Prefect is imported or started: a launch that
    # loses (even at the same instant) exits 3 at once with one line. The flow of this process
    # adopts the handle.
    handle = RunLock(store, params.env, lease_seconds=params.lock.lease_seconds).acquire(
        params.run_id, info={"host": socket.gethostname(), "pid": os.getpid(), "launcher": "cli"}
    )
    if handle.previous is not None:
        _finish_taken_over(handle, params, store)
    try:
        preflight_data(params)
    except BaseException as exc:
        _give_back(handle, f"refused before the run started: {exc}")
        raise
    from flows.training import chronos_training

    hand_off(handle)
    try:
        with handle.heartbeat_thread(params.lock.heartbeat_seconds):
            state = chronos_training(params=params, return_state=True)
        outcome = state.result(raise_on_failure=False)
        if isinstance(outcome, dict):  # completed, or cancelled with the summary (killed / locked)
            summary = outcome
        else:  # the run failed: its training.json says how (if the store can still be read)
            error = f"{type(outcome).__name__}: {outcome}" if isinstance(outcome, BaseException) else str(state.message)
            summary = _failed_summary(store, params, error)
    except (BadInputError, LockedError):
        raise
    except Exception as exc:  # Prefect itself failed (e.g. its server did not start)
        summary = _failed_summary(store, params, f"{type(exc).__name__}: {exc}")
    finally:
        if not handle.released and handle.status == "initialization":
            # the flow never adopted the lock (e.g. Prefect could not start): give it back
            try:
                abandon(handle, "the flow run did not start; see the error above")
            except ChronosFlowsError as exc:
                print(f"chronos-flows: could not release the lock of run {params.run_id}: {exc}", file=sys.stderr)
    if summary.get("status") == "refused":  # another run took the lock first (a deployment run)
        print(f"chronos-flows: {summary.get('error')}", file=sys.stderr)
        return EXIT_LOCKED
    _print_summary(summary, as_json=args.json)
    return {"succeeded": EXIT_OK, "killed": EXIT_KILLED}.get(summary.get("status"), EXIT_FAILED)


def _failed_summary(store, params, error: str) -> dict:
    """The failed run's summary from its training.json, or — when the store cannot be read (it
    vanished mid-run) — a local one with the cause, so the run never ends with empty output."""
    try:
        summary = _summary_from_store(store, params.env, params.run_id)
    except ChronosFlowsError as exc:
        summary, error = None, f"{error}; the store cannot be read ({exc})"
        kept = pending.keep(store.url, params.env, params.run_id, error)
        error += f"; the failure record is kept in {kept} and written to the store by the next chronos-flows command"
    if summary is None:
        return {"run_id": params.run_id, "env": params.env, "status": "failed", "error": error, "store": store.url}
    summary["error"] = summary.get("error") or error
    return summary


def _forecast_params(args: argparse.Namespace):
    overrides = list(getattr(args, "set", None) or [])
    if args.data:
        overrides.insert(0, f"data.path={args.data}")
    fields: dict[str, Any] = {"store": args.store, "env": args.env, "horizon": args.horizon, "forecast_id": args.forecast_id}
    if args.quantiles:
        try:
            fields["quantiles"] = [float(q) for q in args.quantiles.split(",") if q.strip()]
        except ValueError:
            raise BadInputError(f"--quantiles {args.quantiles!r}: expected comma-separated levels, e.g. 0.1,0.5,0.9") from None
    return build_forecast_params(args.config, overrides, **fields)


def cmd_forecast(args: argparse.Namespace) -> int:
    """Batch forecasts from the champion. Everything checkable is checked before Prefect starts
    (store, champion, data, frequency), so a refusal exits 2 at once and writes nothing."""
    _embedded_prefect_defaults()
    from chronos_flows.forecasting.batch import no_champion_message
    from tasks.forecast import load_forecast_data

    params = _forecast_params(args)
    if params.compute.task_runner == "dask":

        if importlib.util.find_spec("prefect_dask") is None:
            raise BadInputError("compute.task_runner=dask needs prefect-dask: pip install prefect-dask, "
                                "or forecast with compute.task_runner=local")
    store = open_store(params.store_url())
    _flush_pending(store)
    champion, _ = read_champion(store, params.env)
    if champion is None:
        raise BadInputError(no_champion_message(params.env))
    load_forecast_data(params, champion)
    from flows.forecast import chronos_forecast, new_forecast_id

    if not params.forecast_id:
        params = params.model_copy(update={"forecast_id": new_forecast_id()})
    doc = chronos_forecast(params=params)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return EXIT_OK
    c, n = doc["champion"], doc["counts"]
    print(f"forecast {doc['forecast_id']}: {n['series_forecast']} series × {doc['horizon']} steps = {n['rows']} rows "
          f"from the {c['family']} champion (run {c['run_id']})")
    print(f"  quantiles: {', '.join(f'{q:g}' for q in doc['quantiles'])}; data: {doc['data']['source']} ({doc['data']['freq']})")
    if doc["skipped"]:
        print(f"  skipped {len(doc['skipped'])} series:")
        for uid, why in list(doc["skipped"].items())[:20]:
            print(f"    {uid}: {why}")
    print(f"  forecasts: {doc['forecasts_uri']}")
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    """``tune``: an Optuna study over Chronos fine-tuning and cleaning settings (the chronos-tuning flow).
    The settings and the search space are checked before Prefect starts (exit 2 naming the parameter)."""
    _embedded_prefect_defaults()
    from chronos_flows.tuning.study import build_tuning_params, with_updates

    params = build_tuning_params(args.config, args.set, store=args.store, env=args.env)
    updates: dict[str, Any] = {}
    if args.study:
        updates["study"] = args.study
    if args.final_run:
        updates["final_run"] = True
    params = with_updates(params, **updates)  # validated: a --study name becomes a store path
    store = open_store(params.training.store_url())
    _flush_pending(store)
    preflight_data(params.training)
    from flows.tuning import chronos_tuning

    state = chronos_tuning(params=params, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if not isinstance(outcome, dict):
        print(f"chronos-flows: tuning failed: {type(outcome).__name__}: {outcome}" if isinstance(outcome, BaseException)
              else f"chronos-flows: tuning failed: {state.message}", file=sys.stderr)
        return EXIT_FAILED
    if outcome.get("status") == "refused":
        print(f"chronos-flows: {outcome.get('error')}", file=sys.stderr)
        return EXIT_LOCKED
    study = outcome.get("tuning") or {}
    if args.json:
        print(json.dumps(outcome, indent=2, default=str))
    else:
        print(f"tuning run {outcome['run_id']}: {outcome['status']}" + (f" ({outcome['error']})" if outcome.get("error") else ""))
        if study:
            print(f"  study {study['study']}: {study['trials']} trials {study['by_state']}; ended: {study['stop_reason']}")
            if "best_trial" in study:
                print(f"  best: trial {study['best_trial']}, validation WQL {study['best_value']:.5g}: "
                      + ", ".join(f"{k}={v}" for k, v in study["best_params"].items()))
                print(f"  best settings: {study['best_config_uri']}  (chronos-flows run --config FILE)")
            print(f"  study record: {study['study_uri']} (resume with --study {study['study']})")
    if args.output and study.get("best_config_uri"):

        got = store.get(f"{layout.tuning_prefix(params.training.env, study['study'])}/best_config.yaml")
        if got is not None:
            out = Path(args.output)
            atomic.write_bytes(out, got[0])
            if not args.json:
                print(f"  written to {out}")
    if outcome.get("status") == "killed":
        return EXIT_KILLED
    return EXIT_OK if outcome.get("status") == "succeeded" else EXIT_FAILED


def _summary_from_store(store, env: str, run_id: str) -> dict | None:
    for run in list_runs(store, env):
        if run["run_id"] == run_id:
            return {**run, **(run.get("summary") or {})}
    return None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _print_summary(summary: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    print(f"run {summary.get('run_id')}: {summary.get('status')}")
    if summary.get("error"):
        print(f"  error: {summary['error']}")
    board = summary.get("leaderboard") or []
    if board:
        cols = [c for c in ("model", "mae", "rmse", "mape", "smape", "mase", "wql", "coverage_80", "mase_relative", "wql_relative") if c in board[0]]
        print("  " + "  ".join(f"{c:>12}" for c in cols))
        for row in board:
            note = f"  ({row['note']})" if row.get("note") else ""  # e.g. a random-initialised Chronos
            print("  " + "  ".join(f"{_fmt(row.get(c)):>12}" for c in cols) + note)
    promo = summary.get("promotion")
    if promo:
        print(f"  champion: {'PROMOTED' if promo.get('promoted') else 'kept'} — {promo.get('reason')}")
        for warning in promo.get("data_warnings") or []:
            print(f"  data warning: {warning}")
    cost = summary.get("cost_estimate")
    if cost:
        print(f"  cost estimate: ${cost.get('total_usd', 0):.2f}")
    phases = summary.get("phases") or {}
    if phases:
        print("  phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
    for name, uri in (summary.get("artifacts") or {}).items():
        print(f"  {name}: {uri}")


def cmd_status(args: argparse.Namespace) -> int:
    params, store = _store_for(args)
    while True:
        report = status_report(store, params.env, lease_seconds=params.lock.lease_seconds)
        if args.json:
            print(json.dumps(report, default=str), flush=True)
        elif report.get("state") == "idle":
            print(f"idle (no active run in {store.url} env {params.env})", flush=True)
        else:
            age = report.get("heartbeat_age_s")
            print(
                f"run {report['run_id']} {report['status']} (generation {report.get('generation')}), "
                f"started {report.get('started_at')}, heartbeat {age:.0f}s ago"
                + (" — STALE" if report.get("stale") else ""),
                flush=True,
            )
            for name, secs in (report.get("phases") or {}).items():
                print(f"  {name}: {secs:.1f}s", flush=True)
        if not args.watch:
            return EXIT_OK
        time.sleep(args.interval)


def cmd_kill(args: argparse.Namespace) -> int:
    params, store = _store_for(args)
    result = kill_run(
        store,
        params.env,
        run_id=args.run_id,
        wait_seconds=args.wait,
        cancel_flow_run=_cancel_flow_run,
        extra_cleanup=instance_cleanup_steps(params),
    )
    print(result.get("message", json.dumps(result, default=str)))
    return EXIT_OK


def _cancel_flow_run(flow_run_id: str) -> str:
    """Ask the Prefect API to cancel the run's flow run (only when a server is configured)."""
    if not os.environ.get("PREFECT_API_URL"):
        return "no PREFECT_API_URL configured: the flow process stops at its next lock check"
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, State(type=StateType.CANCELLING, name="Cancelling"), force=True)
    return f"cancellation requested for flow run {flow_run_id}"


def cmd_verify_cleanup(args: argparse.Namespace) -> int:
    params, store = _store_for(args)
    extra = []
    if params.compute.backend == "ec2" or args.instances:

        ec2 = Ec2Compute(params.compute.ec2, env=params.env, cost_center=params.cost_center)
        extra.append(lambda: verify_instances(ec2))
    extra.append(lambda: _leftover_workdirs(store, params.env))
    names = endpoint_names(store, params.env)
    if args.endpoints or names:
        extra.append(lambda: _leftover_endpoints(params.env, names or [f"chronos-flows-{params.env}"], args.region))
    ok, findings = verify_cleanup(store, params.env, extra=extra)
    if ok:
        print(f"clean: no active or stale state file, no leftover resources ({store.url}, env {params.env})")
        return EXIT_OK
    print(f"{len(findings)} finding(s):")
    for f in findings:
        print(f"  - {f}")
    return EXIT_FAILED


def _leftover_endpoints(env: str, names: list[str], region: str | None) -> list[str]:
    """SageMaker and API Gateway resources of ``env``'s endpoints (an endpoint that is deployed costs
    money: a real-time one while it exists, any while it serves), and their records in the store."""
    sm = sagemaker.client(region)
    found = []
    for name in names:
        left = sagemaker.leftovers(sm, name)
        found += [f"SageMaker {kind[:-1].replace('_', ' ')} {n} of env {env}" for kind, items in left.items() for n in items]
        found += [f"{what} of endpoint {name}" for what in apigateway.leftovers(name, region)]
        if found:
            found.append(f"remove endpoint {name} with `chronos-flows endpoint delete --env {env} --name {name}`")
    return found


def _leftover_workdirs(store, env: str) -> list[str]:
    """Local work directories of this env's runs that do not hold the lock (their process died)."""
    snap = read_state(store, env)
    runs = [r["run_id"] for r in list_runs(store, env)]
    return [
        f"local work directory {path} of run {run_id} left behind; remove it with `chronos-flows cleanup --run-id {run_id}`"
        for run_id, path in workdirs.leftover(snap.run_id if snap else None, runs)
    ]


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Finish a dead run by hand: its record, its cleanup steps (local work directory, instances)."""
    params, store = _store_for(args)
    result = cleanup_dead_run(
        store, params.env, args.run_id, reason="its process was gone; cleaned up by `chronos-flows cleanup`",
        extra_cleanup=instance_cleanup_steps(params),
    )
    print(f"run {result['run_id']}: {result['status']}" + (f" ({result['error']})" if result.get("error") else ""))
    for name, outcome in result["steps"].items():
        print(f"  {name}: {outcome}")
    print(f"  cleanup {'complete' if result['cleanup_complete'] else 'INCOMPLETE: see its cleanup_status.json'}")
    return EXIT_OK if result["cleanup_complete"] else EXIT_FAILED


def cmd_runs(args: argparse.Namespace) -> int:
    params, store = _store_for(args)
    runs = list_runs(store, params.env)
    if args.action == "show":
        match = [r for r in runs if r["run_id"] == args.run_id]
        if not match:
            raise BadInputError(f"no run {args.run_id} in {store.url} env {params.env}; `chronos-flows runs` lists them")
        run = match[0]
        live = _live_accuracy(store, params.env, args.run_id)
        if args.json:
            print(json.dumps({**run, "live_accuracy": live}, indent=2, default=str))
        else:
            _print_summary(run.get("summary") or run)
            _print_live(live)
        return EXIT_OK
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return EXIT_OK
    if not runs:
        print(f"no runs yet in {store.url} env {params.env}")
        return EXIT_OK
    print(f"{'run id':<28} {'status':<10} {'started':<26} {'duration':>9}  {'gate':<5} scores  promoted")
    for r in runs:
        scores = ", ".join(f"{m}={_fmt(v)}" for m, v in (r.get("gate_scores") or {}).items())
        dur = r.get("duration_s")
        print(
            f"{r['run_id']:<28} {str(r.get('status')):<10} {str(r.get('started_at'))[:25]:<26} "
            f"{(f'{dur:.0f}s' if dur is not None else '-'):>9}  {str(r.get('gate_metric') or '-'):<5} "
            f"{scores or '-'}  {'yes' if r.get('promoted') else 'no'}"
        )
    return EXIT_OK


def _live_accuracy(store, env: str, run_id: str) -> dict[str, Any] | None:
    """Live accuracy of the forecasts made by ``run_id``'s champion (None when none was scored)."""
    from chronos_flows.monitoring.rule import live_status

    status = live_status(store, env, run_id)
    return status if status["n_forecasts"] else None


def _print_live(live: dict[str, Any] | None) -> None:
    if live is None:
        print("live accuracy: no published forecast of this run's champion has been scored yet")
        return
    state = f"DEGRADED ({live['reason']})" if live["degraded"] else "not degraded"
    print(f"live accuracy: {live['n_forecasts']} scored forecast(s), mean live WQL {_fmt(live['live_wql'])} vs backtest "
          f"{_fmt(live['promised_wql'])}, 80% coverage {_fmt(live['live_coverage_80'])}; {state}")


def _monitor_params(args: argparse.Namespace):
    overrides = list(getattr(args, "set", None) or [])
    if args.data:
        overrides.insert(0, f"data.path={args.data}")
    return build_monitor_params(args.config, overrides, store=args.store, env=args.env)


def cmd_monitor(args: argparse.Namespace) -> int:
    """Score every published forecast against the newest data (the chronos-monitor flow). The store and
    the data are read before Prefect starts: bad data exits 2 at once and writes nothing."""
    _embedded_prefect_defaults()
    from chronos_flows.monitoring.monitor import published_forecasts
    from chronos_flows.monitoring.sources import check_actuals
    from tasks.monitor import load_monitor_data

    params = _monitor_params(args)
    store = open_store(params.store_url())
    champion, _ = read_champion(store, params.env)
    source, raw, _, _, _ = load_monitor_data(params, champion)
    known: set[str] = set()
    for p in published_forecasts(store, params.env, include_capture=params.include_capture):
        known |= p.series
    check_actuals(raw, known, source=source, unknown_ids=params.unknown_ids)
    from flows.monitor import chronos_monitor

    summary = chronos_monitor(params=params)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return EXIT_OK
    print(f"monitor {params.env}: {summary['published']} published forecast(s), {summary['scored']} scored, "
          f"{summary['rows_written']} history row(s) written ({summary['rows_already_recorded']} already recorded)")
    from chronos_flows.monitoring.report import table_text

    print(table_text(summary["accuracy"]))
    for issue in summary["issues"][:20]:
        print(f"  reported: {issue}")
    if summary["degraded"]:
        deg = summary["degradation"] or {}
        print(f"DEGRADED: champion {deg.get('champion_run_id')}: {deg.get('reason')}"
              + (" (event emitted)" if summary.get("event_emitted") else ""))
    return EXIT_OK


def cmd_accuracy(args: argparse.Namespace) -> int:
    """The scored history: the newest scoring of each published forecast, live vs promised."""
    from chronos_flows.monitoring.history import read_history
    from chronos_flows.monitoring.report import accuracy_rows, table_text
    from chronos_flows.monitoring.rule import live_status

    params, store = _store_for(args)
    history = read_history(store, params.env)
    rows = accuracy_rows(history)
    champion, _ = read_champion(store, params.env)
    live = live_status(store, params.env, str(champion["run_id"]), history) if champion else None
    if args.json:
        print(json.dumps({"env": params.env, "forecasts": rows, "champion": live}, indent=2, default=str))
        return EXIT_OK
    print(table_text(rows))
    if live is not None:
        print(f"champion {live['champion_run_id']}: " + (f"DEGRADED ({live['reason']})" if live["degraded"] else "not degraded"))
    return EXIT_OK


def cmd_infra(args: argparse.Namespace) -> int:
    if args.action == "validate":
        findings = cloudformation.validate_template(args.template)
        for f in findings:
            print(f)
        print("template valid" if not findings else f"{len(findings)} finding(s)")
        return EXIT_OK if not findings else EXIT_BAD_INPUT
    if args.action == "deploy":
        overrides = dict(kv.split("=", 1) for kv in args.parameter)
        outputs = cloudformation.deploy(args.stack_name, args.template, overrides)
        print(json.dumps(outputs, indent=2, default=str))
        return EXIT_OK
    cloudformation.destroy(args.stack_name)
    print(f"stack {args.stack_name} deleted")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve``: the champion behind the SageMaker hosting contract until SIGTERM."""
    from app.server import api_keys_from_environment, serve

    if args.poll_seconds <= 0:
        raise BadInputError(f"--poll-seconds must be positive, got {args.poll_seconds}")
    if args.max_batch_wait_ms < 0 or args.max_batch_series < 1:
        raise BadInputError("--max-batch-wait-ms must be >= 0 and --max-batch-series >= 1")
    if args.model_threads < 0:
        raise BadInputError(f"--model-threads must be >= 0 (0: every core), got {args.model_threads}")
    if args.capture_max_requests < 1 or args.capture_max_seconds <= 0:
        raise BadInputError("--capture-max-requests must be >= 1 and --capture-max-seconds > 0")
    keys = api_keys_from_environment(args.api_keys_file)
    model_dir = args.model_dir or os.environ.get(sagemaker.MODEL_DIR_ENV)
    if model_dir:  # a packaged champion (SageMaker's /opt/ml/model): no store, nothing to poll for
        store, env, _ = open_model_dir(model_dir)
        return serve(store=store, env=env, host=args.host, port=args.port, poll_seconds=max(args.poll_seconds, 60.0),
                     api_keys=keys, device=args.device, max_batch_wait_seconds=args.max_batch_wait_ms / 1000.0,
                     max_batch_series=args.max_batch_series)
    store = open_store(resolve_store_url(args.store), check=False)
    try:
        _flush_pending(store)
    except ChronosFlowsError as exc:  # serving starts even while the store is away (it polls)
        print(f"chronos-flows: kept failure records not written yet, the store cannot be reached: {exc}", file=sys.stderr)
    return serve(store=store, env=args.env or "dev", host=args.host, port=args.port, poll_seconds=args.poll_seconds,
                 api_keys=keys, device=args.device, max_batch_wait_seconds=args.max_batch_wait_ms / 1000.0,
                 max_batch_series=args.max_batch_series, capture=args.capture,
                 capture_max_requests=args.capture_max_requests, capture_max_seconds=args.capture_max_seconds,
                 model_threads=args.model_threads or None)


def _endpoint_params(args: argparse.Namespace):
    return build_endpoint_params(
        action=args.action if args.action != "status" else "delete", env=args.env, store=args.store, name=args.name,
        image_uri=args.image_uri, role_arn=args.role_arn, mode=args.mode, memory_mb=args.memory_mb,
        max_concurrency=args.max_concurrency, instance_type=args.instance_type, instance_count=args.instance_count,
        capture=args.capture or None, capture_percent=args.capture_percent, api=False if args.no_api else None,
        stage=args.stage, rate_limit=args.rate_limit, burst_limit=args.burst_limit, quota_limit=args.quota_limit,
        quota_period=args.quota_period, manage_account_logging=False if args.no_account_logging else None,
        region=args.region, timeout_seconds=args.timeout_seconds, poll_seconds=args.poll_seconds,
    )


def cmd_endpoint(args: argparse.Namespace) -> int:
    """``endpoint deploy|update|status|delete``: the champion on SageMaker behind API Gateway (the
    chronos-endpoint flow; ``status`` reads without Prefect)."""
    params = _endpoint_params(args)
    if args.action == "status":
        return _endpoint_status(params, args.json)
    _embedded_prefect_defaults()
    if params.action != "delete":
        open_store(params.store_url())  # refuse an unreachable store before Prefect starts
    from flows.endpoint import chronos_endpoint

    out = chronos_endpoint(params=params)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return EXIT_OK
    name = params.endpoint_name
    if params.action == "delete":
        print(f"endpoint {name} deleted: {', '.join(out['removed']) or 'nothing was deployed'}; "
              f"{out['store_objects_removed']} store object(s) removed; nothing left")
        return EXIT_OK
    champ = out["champion"]
    print(f"endpoint {name} {out['action']}: config {out['endpoint_config']} serves champion {champ['run_id']} "
          f"({champ['family']}), {params.mode}")
    if out.get("removed"):
        print(f"  removed after InService: {', '.join(out['removed'])}")
    print(f"  package: {out['package']['uri']}")
    api = out.get("api") or {}
    if api:
        print(f"  invoke: POST {api.get('InvokeUrl')} with header x-api-key"
              + (f" (value: aws apigateway get-api-key --include-value --api-key {api['ApiKeyId']})" if api.get("ApiKeyId") else ""))
    cost = estimate_endpoint_cost(params.mode, memory_mb=params.memory_mb, instance_type=params.instance_type,
                                  instance_count=params.instance_count, api=params.api)
    print(f"  idle cost: ${cost['idle_usd_per_month']:.2f}/month ({cost['assumptions'][0]})")
    return EXIT_OK


def _endpoint_status(params, as_json: bool) -> int:
    name = params.endpoint_name
    store = open_store(params.store_url(), check=False)
    try:
        record = read_record(store, params.env, name)
    except ChronosFlowsError as exc:
        record = {"error": str(exc)}
    live = sagemaker.status(sagemaker.client(params.region), name)
    front = apigateway.leftovers(name, params.region)
    mode = None if not live["exists"] else ("serverless" if live["serverless"] else "realtime")
    variant = (record or {}).get("variant") or {}
    cost = estimate_endpoint_cost(mode, **{k: v for k, v in variant.items() if k in ("memory_mb", "instance_type", "instance_count")},
                                  api=bool(front))
    report = {**live, "record": record, "front_door": front, "cost_estimate": cost}
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return EXIT_OK
    if not live["exists"]:
        print(f"endpoint {name}: not deployed" + (f"; left behind: {', '.join(front)}" if front else "")
              + "; idle cost $0.00/month")
        return EXIT_OK
    print(f"endpoint {name}: {live['status']}" + (f" ({live['failure_reason']})" if live.get("failure_reason") else ""))
    print(f"  config {live['endpoint_config']}, model(s) {', '.join(live['models'])}, champion run(s) "
          f"{', '.join(str(r) for r in live['champion_run_ids'])}, {'serverless' if live['serverless'] else 'real-time'}"
          + (f", capturing into {live['capture_uri']}" if live["data_capture"] else ""))
    for what in front:
        print(f"  front door: {what}")
    api = (record or {}).get("api") or {}
    if api.get("InvokeUrl"):
        print(f"  invoke: POST {api['InvokeUrl']} with header x-api-key")
    print(f"  idle cost: ${cost['idle_usd_per_month']:.2f}/month")
    return EXIT_OK


def cmd_eda(args: argparse.Namespace) -> int:
    """The exploratory report of a data file, cleaned as ``run`` cleans it; no run, no lock, nothing
    written. Bad input fails as ``run``'s preflight does (exit 2)."""
    from chronos_flows.data.cleaning import clean
    from chronos_flows.data.eda import panel_report, summary_text
    from chronos_flows.data.ingest import load_dataset
    from chronos_flows.evaluation.splits import min_series_length

    overrides = list(args.set or [])
    if args.data:
        overrides.insert(0, f"data.path={args.data}")
    params = build_params(args.config, overrides)
    df = load_dataset(params.data.path, params.data, fetch=read_uri)
    cleaned, report = clean(df, params.cleaning, min_length=min_series_length(params), horizon=params.evaluation.horizon)
    doc = panel_report(cleaned, report)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(summary_text(doc))
    return EXIT_OK


def _add_eda(sub) -> None:
    e = sub.add_parser(
        "eda",
        help="exploratory report of a data file (no run, no lock, nothing written)",
        description="Load and clean a data file exactly as `run` does and print its exploratory report: per-series "
        "length, missing and zero shares, intermittency (ADI, CV²), trend and seasonal strength, outliers; the panel's "
        "distributions, unusual series and which model families suit it. Takes no lock and writes nothing. "
        "Exit codes: 0 printed, 2 bad input or configuration.",
    )
    e.add_argument("--data", help="data file: path, file:// or s3:// (CSV, Parquet or Excel); default the shipped gasoline data")
    e.add_argument("--config", help="YAML config file (its data: and cleaning: sections apply)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field (repeatable), e.g. data.layout=wide or cleaning.outlier_method=stl_iqr")
    e.add_argument("--json", action="store_true", help="print the whole report (every series) as JSON")
    e.set_defaults(func=cmd_eda)


def _add_common(sp: argparse.ArgumentParser) -> None:
    """--config, --store, --env and --set, shared by run, status, kill, verify-cleanup and runs."""
    sp.add_argument("--config", help="YAML config file with the training flow's parameters (README 'Configuration'); "
                    "the same file a run used gives its store, env, lock and compute settings")
    sp.add_argument("--store", help="store URL or directory (default $CHRONOS_FLOWS_STORE or ./.chronos-flows)")
    sp.add_argument("--env", help="environment prefix (default dev)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable), e.g. "
                    "evaluation.horizon=8 or store=s3://bucket/prefix")


def _add_run(sub) -> None:
    r = sub.add_parser(
        "run",
        help="run the chronos-training flow (embedded default with no arguments)",
        description="Run the chronos-training flow in this process: ingest and clean the data, train Chronos, "
        "backtest it against the baselines and the champion, maybe promote it. With no arguments it trains on the "
        "shipped EIA gasoline data into ./.chronos-flows (env dev). Takes the environment's training lock. "
        "Exit codes: 0 succeeded, 1 failed, 2 bad input or configuration, 3 another run holds the lock, 4 killed.",
    )
    _add_common(r)
    r.add_argument("--resume", metavar="RUN_ID", help="continue a failed or killed run from its newest checkpoint with its recorded "
                   "parameters (only lock.*, compute.*, chronos.device/num_threads, *.n_jobs may be --set) as a new attempt RUN_ID-resume-N")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=cmd_run)


def _add_forecast(sub) -> None:
    f = sub.add_parser(
        "forecast",
        help="batch forecasts of every series from the environment's champion (the chronos-forecast flow)",
        description="Forecast every series HORIZON steps past its last observation with the champion of --env and "
        "write {env}/forecasts/{id}/forecasts.parquet and forecast.json to the store. Does not take the training lock.",
    )
    f.add_argument("--data", help="data to forecast (path, file:// or s3://); default: the data the champion was judged on")
    f.add_argument("--horizon", type=int, help="steps to forecast (default: the champion's horizon)")
    f.add_argument("--quantiles", help="comma-separated quantile levels, e.g. 0.1,0.5,0.9 (default: the champion's)")
    f.add_argument("--forecast-id", help="id of this batch (generated when empty)")
    f.add_argument("--config", help="YAML file with the forecast parameters (data:, cleaning:, horizon:, …)")
    f.add_argument("--store", help="store URL or directory (default $CHRONOS_FLOWS_STORE or ./.chronos-flows)")
    f.add_argument("--env", help="environment whose champion forecasts (default dev)")
    f.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. data.layout=wide, chunk_size=500, or compute.task_runner=dask with "
                   "compute.dask_address=tcp://HOST:8786 (or compute.dask_cluster_class/compute.dask_cluster_kwargs)")
    f.add_argument("--json", action="store_true", help="print forecast.json instead of the summary")
    f.set_defaults(func=cmd_forecast)


def _add_monitor(sub) -> None:
    m = sub.add_parser(
        "monitor",
        help="score every published forecast against the newest data (the chronos-monitor flow)",
        description="Read the newest data (as training reads it, or --data), score every published batch forecast and "
        "captured request that now has actuals (MASE, WQL, 80%% coverage, bias), append the history under "
        "{env}/monitoring/ and, when the serving champion breaks the degradation rule, record it and emit the "
        "chronos-flows.champion.degraded event. Bad data (non-numeric values, unknown series, overlapping revisions) "
        "exits 2 and writes nothing.",
    )
    m.add_argument("--data", help="the newest data (path, file:// or s3://); default: the training data")
    m.add_argument("--config", help="YAML file with the monitor parameters (data:, degradation:, …)")
    m.add_argument("--store", help="store URL or directory (default $CHRONOS_FLOWS_STORE or ./.chronos-flows)")
    m.add_argument("--env", help="environment prefix (default dev)")
    m.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. degradation.tolerance=0.3, degradation.consecutive=3 or unknown_ids=ignore")
    m.add_argument("--json", action="store_true", help="print the run summary as JSON")
    m.set_defaults(func=cmd_monitor)


def _add_accuracy(sub) -> None:
    a = sub.add_parser(
        "accuracy",
        help="live accuracy of published forecasts (the scored history), live vs promised",
        description="Print the newest scoring of each published forecast (live WQL, the champion's backtest WQL, "
        "MASE, 80%% coverage, bias) and whether the serving champion is degraded.",
    )
    _add_common(a)
    a.add_argument("--json", action="store_true", help="print the history as JSON")
    a.set_defaults(func=cmd_accuracy)


def _add_tune(sub) -> None:
    tu = sub.add_parser(
        "tune",
        help="search Chronos fine-tuning and cleaning settings with an Optuna study (the chronos-tuning flow)",
        description="Run an Optuna study (TPE sampler, median pruner on the validation loss) over the search space "
        "of the config file's tuning: section. Trials train in parallel on the training span (local processes, or one ephemeral EC2 "
        "instance per trial with compute.backend=ec2, spot allowed) and are "
        "scored on its rolling validation windows, never on the backtest windows that judge the champion. "
        "Holds the training lock; the study is kept in the store and resumes with --study NAME; the best settings "
        "are written as a config file for chronos-flows run --config.",
    )
    tu.add_argument("--config", help="YAML file: the training sections (data:, chronos:, …) and a tuning: section")
    tu.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a field, e.g. tuning.budget.max_trials=10 or chronos.max_steps=300")
    tu.add_argument("--store", help="store URL or directory (default $CHRONOS_FLOWS_STORE or ./.chronos-flows)")
    tu.add_argument("--env", help="environment prefix in the store (default dev)")
    tu.add_argument("--study", help="study name: an existing study in the store resumes (default: a new one)")
    tu.add_argument("--output", help="also write the best settings (a config file) to this path")
    tu.add_argument("--final-run", action="store_true", help="after the study, run chronos-training with the best settings")
    tu.add_argument("--json", action="store_true", help="print the run summary as JSON")
    tu.set_defaults(func=cmd_tune)


def _add_status(sub) -> None:
    s = sub.add_parser(
        "status",
        help="the active run's state, phases and heartbeat age, or idle",
        description="Show the run holding the environment's training lock: its status, generation, start time, "
        "phase timings and heartbeat age (STALE when the lease has expired), or 'idle'.",
    )
    _add_common(s)
    s.add_argument("--watch", action="store_true", help="keep polling")
    s.add_argument("--interval", type=float, default=5.0, help="seconds between polls with --watch")
    s.add_argument("--json", action="store_true", help="print the status report as one JSON object per poll")
    s.set_defaults(func=cmd_status)


def _add_kill(sub) -> None:
    k = sub.add_parser(
        "kill",
        help="mark the active run killed, cancel its flow run, make sure cleanup runs",
        description="Stop the run holding the environment's training lock: training.json becomes 'killed', its Prefect "
        "flow run is cancelled (when PREFECT_API_URL is set), the run gets --wait seconds to clean up itself, then "
        "its cleanup runs here and the lock is released. With compute.backend=ec2 (from --config/--set) its "
        "instances are terminated too.",
    )
    _add_common(k)
    k.add_argument("--run-id", help="only kill this run (refuse if another run is active)")
    k.add_argument("--wait", type=float, default=60.0, help="seconds to let the run clean up itself before cleaning up for it")
    k.set_defaults(func=cmd_kill)


def _add_verify_cleanup(sub) -> None:
    v = sub.add_parser(
        "verify-cleanup",
        help="exit 0 only if nothing is left behind",
        description="Check that no run is active or stale in the environment's state file and that no local work "
        "directory of a dead run (and, with --instances or compute.backend=ec2, no tagged EC2 instance) is left. "
        "Exit 0 when clean, 1 with one line per finding.",
    )
    _add_common(v)
    v.add_argument("--instances", action="store_true", help="also check EC2 instances (always on with compute.backend=ec2)")
    v.add_argument("--endpoints", action="store_true", help="also check SageMaker endpoints, configs, models and their "
                   "API Gateway front doors (always on when the store records an endpoint of the env)")
    v.add_argument("--region", help="AWS region of the endpoints (default: the AWS configuration's)")
    v.set_defaults(func=cmd_verify_cleanup)


def _add_cleanup(sub) -> None:
    c = sub.add_parser(
        "cleanup",
        help="finish a dead run: record its end, remove its local work directory, terminate its instances",
        description="Finish the record and cleanup of a run whose process is gone and that no longer holds the lock "
        "(e.g. after a takeover or a SIGKILL): training.json gets its final status, the cleanup steps run and are "
        "recorded in cleanup_status.json. Idempotent. A run that still holds the lock is stopped with `kill`.",
    )
    c.add_argument("--run-id", required=True, help="the dead run to clean up (see `chronos-flows runs`)")
    c.add_argument("--store", help="store URL or directory (default $CHRONOS_FLOWS_STORE or ./.chronos-flows)")
    c.add_argument("--env", help="environment prefix (default dev)")
    c.add_argument("--config", help="YAML config (for compute.ec2 settings when the run used EC2)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. compute.backend=ec2")
    c.set_defaults(func=cmd_cleanup)


def _add_runs(sub) -> None:
    rs = sub.add_parser(
        "runs",
        help="list past runs, newest first; `runs show ID` prints one run",
        description="`runs` (or `runs list`) lists the environment's runs, newest first, with status, duration, gate "
        "scores and whether they were promoted; `runs show RUN_ID` prints one run's summary.",
    )
    _add_common(rs)
    rs.add_argument("action", nargs="?", choices=["list", "show"], default="list", help="list (default) or show one run")
    rs.add_argument("run_id", nargs="?", help="the run to show (with `show`)")
    rs.add_argument("--json", action="store_true", help="print the runs (or the one run) as JSON")
    rs.set_defaults(func=cmd_runs)


def _add_infra(sub) -> None:
    i = sub.add_parser(
        "infra",
        help="validate, deploy or destroy the persistent AWS resources (infra/template.yaml)",
        description="validate: lint the CloudFormation template with cfn-lint (installed by the `test` extra: "
        "pip install -e '.[test]') plus this project's own checks (exit 2 on findings); deploy: create or update the stack and print its "
        "outputs; destroy: delete the stack.",
    )
    i.add_argument("action", choices=["validate", "deploy", "destroy"], help="what to do with the stack")
    i.add_argument("--template", default=None, help="CloudFormation template (default infra/template.yaml)")
    i.add_argument("--stack-name", default="chronos-flows", help="CloudFormation stack name (default chronos-flows)")
    i.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE", help="stack parameter")
    i.set_defaults(func=cmd_infra)


def _add_serve(sub) -> None:
    sv = sub.add_parser(
        "serve",
        help="serve the champion over HTTP (SageMaker hosting contract: GET /ping, POST /invocations)",
        description="Serve the environment's champion (any family) over HTTP with the request/response format of "
        "the Chronos endpoints on SageMaker JumpStart: GET /ping (200 once a champion is loaded, 503 before), "
        "POST /invocations. champion.json is polled by ETag and a newly promoted champion is loaded in the "
        "background and swapped in without failing a request. API keys: $CHRONOS_FLOWS_API_KEYS (comma-separated) "
        "or --api-keys-file; when set, every route but /ping needs the x-api-key header.",
    )
    sv.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080, SageMaker's)")
    sv.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    sv.add_argument("--store", help="store URL or directory (default $CHRONOS_FLOWS_STORE or ./.chronos-flows)")
    sv.add_argument("--env", help="environment prefix whose champion to serve (default dev)")
    sv.add_argument("--poll-seconds", type=float, default=10.0, help="how often to check champion.json's ETag (default 10)")
    sv.add_argument("--api-keys-file", help="file with one API key per line (added to $CHRONOS_FLOWS_API_KEYS)")
    sv.add_argument("--model-dir", help="serve the champion packaged by `chronos-flows endpoint deploy` (an unpacked "
                    "model.tar.gz, SageMaker's /opt/ml/model; default $CHRONOS_FLOWS_MODEL_DIR) instead of the store's")
    sv.add_argument("--device", default="auto", help="device for a Chronos champion: auto (default), cpu, cuda, mps")
    sv.add_argument("--max-batch-wait-ms", type=float, default=3.0,
                    help="under load, how long a model call waits for more requests to join it (default 3 ms)")
    sv.add_argument("--max-batch-series", type=int, default=1024,
                    help="most series one model call gathers from concurrent requests (default 1024)")
    sv.add_argument("--model-threads", type=int, default=1,
                    help="torch threads of a model call on CPU (default 1: the HTTP side and concurrent requests use "
                    "the other cores, and a busy core never stalls a multi-threaded call; 0: every core)")
    sv.add_argument("--capture", action="store_true",
                    help="data capture: answered requests that carry item_id, start and freq, with their forecasts, "
                    "are written to {env}/capture/ in batched Parquet files for the monitor (off by default)")
    sv.add_argument("--capture-max-requests", type=int, default=1000,
                    help="with --capture: one Parquet object per this many captured requests at most (default 1000)")
    sv.add_argument("--capture-max-seconds", type=float, default=60.0,
                    help="with --capture: ... or per this many seconds, whichever comes first (default 60)")
    sv.set_defaults(func=cmd_serve)


def _add_endpoint(sub) -> None:
    e = sub.add_parser(
        "endpoint",
        help="deploy, update, show or delete the champion's SageMaker endpoint and its API Gateway front door",
        description="deploy: package the env's champion (model.tar.gz in the store, read by the serving image from "
        "/opt/ml/model), create the SageMaker model, endpoint config and endpoint (serverless or real-time, optional "
        "data capture) or update it blue/green, and deploy the API Gateway stack NAME-api (infra/endpoint.yaml: API "
        "key, usage plan, logging). update: the same for an existing endpoint (a new champion). status: what serves, "
        "and its idle cost. delete: the stack, the endpoint, every config and model, the packages; nothing is left.",
    )
    e.add_argument("action", choices=["deploy", "update", "status", "delete"], help="what to do")
    e.add_argument("--store", help="store URL (s3://BUCKET/PREFIX; default $CHRONOS_FLOWS_STORE)")
    e.add_argument("--env", help="environment whose champion serves (default dev)")
    e.add_argument("--name", help="endpoint name (default chronos-flows-ENV)")
    e.add_argument("--image-uri", help="ECR URI of the serving image (docker/Dockerfile.serve); deploy/update")
    e.add_argument("--role-arn", help="SageMaker execution role ARN (reads the store's bucket); deploy/update")
    e.add_argument("--mode", choices=["serverless", "realtime"], help="serverless (default, $0 idle) or realtime")
    e.add_argument("--memory-mb", type=int, help="serverless memory: 1024..6144 in steps of 1024 (default 2048)")
    e.add_argument("--max-concurrency", type=int, help="serverless concurrent invocations (default 5)")
    e.add_argument("--instance-type", help="real-time instance type (default ml.m5.large)")
    e.add_argument("--instance-count", type=int, help="real-time instances (default 1)")
    e.add_argument("--capture", action="store_true", help="capture requests and responses into {env}/capture/sagemaker/ (realtime)")
    e.add_argument("--capture-percent", type=int, help="share of requests captured (default 100)")
    e.add_argument("--no-api", action="store_true", help="no API Gateway front door")
    e.add_argument("--stage", help="API stage (default v1)")
    e.add_argument("--rate-limit", type=float, help="usage plan: steady requests/s per API key (default 20)")
    e.add_argument("--burst-limit", type=int, help="usage plan: burst per API key (default 40)")
    e.add_argument("--quota-limit", type=int, help="usage plan: requests per key per period (default 100000)")
    e.add_argument("--quota-period", choices=["DAY", "WEEK", "MONTH"], help="usage plan quota period (default MONTH)")
    e.add_argument("--no-account-logging", action="store_true",
                   help="do not set API Gateway's account CloudWatch role (another stack manages it)")
    e.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    e.add_argument("--poll-seconds", type=float, help="seconds between status polls (default 15)")
    e.add_argument("--timeout-seconds", type=float, help="longest wait for the endpoint to settle (default 1800)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_endpoint)


#: the subcommands in the order ``--help`` lists them
SUBCOMMANDS = (_add_run, _add_forecast, _add_monitor, _add_accuracy, _add_eda, _add_tune, _add_status, _add_kill,
               _add_verify_cleanup, _add_cleanup, _add_runs, _add_infra, _add_serve, _add_endpoint)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chronos-flows", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    if args.command == "runs" and args.action == "show" and not args.run_id:
        parser.error("runs show needs a RUN_ID")
    if args.command == "infra" and args.template is None:

        args.template = str(REPO_ROOT / "infra" / "template.yaml")
    try:
        return args.func(args)
    except LockedError as exc:
        print(f"chronos-flows: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except ChronosFlowsError as exc:
        print(f"chronos-flows: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("chronos-flows: interrupted", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
