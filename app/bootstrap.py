"""The entry point run ON the training instance (``python -m app.bootstrap``).

It checks the environment (a GPU unless ``--allow-cpu``), refuses to work unless the store's
``{env}/system-state.json`` names this run in status ``training`` (and, if given, this lock
generation), runs the training callable and writes the outcome to
``{env}/{run_id}/instance/result.json`` (atomic put) for the parent flow to read. The user data
shuts the instance down after it returns, whatever the exit code.

With ``--trial PREFIX`` (``CHRONOS_FLOWS_TRIAL``; the tuning flow's user data sets it) the
instance runs one tuning trial instead: :func:`chronos_flows.tuning.remote.run_trial_instance`
reads the trial's spec under PREFIX, resumes from its stored checkpoints and writes the trial's
own ``result.json`` there (a tuning run's trials run side by side, each on its instance).

Exit codes: 0 ok, 1 training error, 2 bad environment/arguments/store, 3 refused (not this run's turn).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable

from chronos_flows.core import layout
from chronos_flows.runstate.statefile import training_turn_refusal
from chronos_flows.core.errors import BadInputError, ChronosFlowsError, StoreError

EXIT_OK, EXIT_ERROR, EXIT_ENV, EXIT_REFUSED = 0, 1, 2, 3
#: ``module:function`` called as ``fn(run_id=..., store_url=..., env=...) -> dict`` when --train is not given.
DEFAULT_TRAIN_ENTRYPOINT = "app.bootstrap:instance_train"


def result_key(env: str, run_id: str) -> str:
    return layout.instance_result_key(env, run_id)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def check_gpu(allow_cpu: bool = False) -> dict[str, Any]:
    """``nvidia-smi -L`` must list a GPU unless ``allow_cpu``. Returns what was found; BadInputError otherwise."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        if allow_cpu:
            return {"gpu": None, "note": "nvidia-smi not found; running on CPU (--allow-cpu)"}
        raise BadInputError(
            "no GPU: nvidia-smi is not on PATH; launch from a Deep Learning AMI with NVIDIA drivers, "
            "or pass --allow-cpu to train on CPU"
        )
    proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=60, check=False)
    gpus = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("GPU")]
    if proc.returncode != 0 or not gpus:
        if allow_cpu:
            return {"gpu": None, "note": f"nvidia-smi found no GPU (exit {proc.returncode}); CPU (--allow-cpu)"}
        raise BadInputError(
            f"nvidia-smi found no GPU (exit {proc.returncode}: {proc.stderr.strip()[:200]}); check the "
            "instance type (g4dn/g5) and the AMI's driver, or pass --allow-cpu"
        )
    return {"gpu": gpus}


#: how long the instance keeps retrying its result.json through a store outage (the parent waits for it)
RESULT_WRITE_BUDGET_S = 900.0


def _write_result(store: Any, env: str, run_id: str, result: dict[str, Any],
                  budget_s: float | None = None) -> None:
    """Write ``result.json``; through a store outage retried with backoff and jitter for up to
    ``budget_s`` (the trained model is in the store already: only its record must land)."""
    from chronos_flows.core.retry import retry_while

    deadline = time.monotonic() + (RESULT_WRITE_BUDGET_S if budget_s is None else budget_s)
    data = json.dumps(result, indent=2, sort_keys=True, default=str).encode()
    retry_while(lambda: store.put(result_key(env, run_id), data), what="result.json",
                alive=lambda: deadline - time.monotonic())


def run_instance_step(
    run_id: str,
    store_url: str,
    env: str,
    train: Callable[[], dict],
    *,
    store: Any | None = None,
    generation: int | None = None,
    environment: dict[str, Any] | None = None,
) -> int:
    """Run ``train`` for ``run_id`` if the state file says it is this run's training turn.

    Writes ``result.json`` with ``outcome`` ``ok``/``error``/``refused``, timings, the training
    result or the error. Returns the exit code (see module doc).
    """
    if store is None:
        from blocks.store import open_url

        try:
            store = open_url(store_url)
        except StoreError as exc:
            print(f"chronos-flows bootstrap: {exc}", file=sys.stderr)
            return EXIT_ENV
    from chronos_flows.runstate.statefile import read_state

    started = time.monotonic()
    base: dict[str, Any] = {
        "run_id": run_id,
        "env": env,
        "store": store_url,
        "host": socket.gethostname(),
        "instance_id": os.environ.get("CHRONOS_FLOWS_INSTANCE_ID"),
        "started_at": _now(),
        "environment": environment or {},
    }
    snap = read_state(store, env)
    reason = training_turn_refusal(snap, env, run_id, generation)
    if reason:
        _write_result(store, env, run_id, {**base, "outcome": "refused", "reason": reason, "finished_at": _now(),
                                           "duration_seconds": round(time.monotonic() - started, 3)})
        print(f"chronos-flows bootstrap: refusing to train: {reason}", file=sys.stderr)
        return EXIT_REFUSED
    if generation is None and snap is not None:
        base["generation"] = snap.generation
    _write_result(store, env, run_id, {**base, "outcome": "running"})
    return _train_and_record(store, env, run_id, train, base, started)


def _train_and_record(store: Any, env: str, run_id: str, train: Callable[[], dict], base: dict[str, Any],
                      started: float) -> int:
    """Run ``train`` and write its outcome (``ok`` with the result, or ``error`` with the traceback)
    to ``result.json``; return the exit code."""
    try:
        result = train()
    except Exception as exc:  # noqa: BLE001 - every failure is recorded for the parent, then the instance stops
        code = exc.exit_code if isinstance(exc, ChronosFlowsError) else EXIT_ERROR
        _write_result(
            store,
            env,
            run_id,
            {
                **base,
                "outcome": "error",
                "error": {"type": type(exc).__name__, "message": str(exc),
                          "traceback": traceback.format_exc(limit=20)[-4000:]},
                "exit_code": code,
                "finished_at": _now(),
                "duration_seconds": round(time.monotonic() - started, 3),
            },
        )
        print(f"chronos-flows bootstrap: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return code
    _write_result(
        store,
        env,
        run_id,
        {**base, "outcome": "ok", "result": result, "exit_code": EXIT_OK, "finished_at": _now(),
         "duration_seconds": round(time.monotonic() - started, 3)},
    )
    return EXIT_OK


def instance_train(run_id: str, store_url: str, env: str) -> dict:
    """The default training entry point: open the store, train this run there
    (:func:`chronos_flows.training.fit.train_on_instance`), return the training info. No Prefect."""
    from blocks.store import download_prefix, open_url
    from chronos_flows.training.fit import train_on_instance

    return train_on_instance(open_url(store_url), env, run_id, fetch_dir=lambda uri, dest: download_prefix(uri, dest))


def load_entrypoint(spec: str) -> Callable[..., dict]:
    """``package.module:function`` → the callable; BadInputError naming the spec otherwise."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BadInputError(f"--train {spec!r}: expected module:function, e.g. {DEFAULT_TRAIN_ENTRYPOINT}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"--train {spec!r}: cannot import {module_name}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BadInputError(f"--train {spec!r}: {module_name} has no callable {attr}")
    return fn


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app.bootstrap", description=__doc__.splitlines()[0])
    p.add_argument("--run-id", default=os.environ.get("CHRONOS_FLOWS_RUN_ID"), help="the run this instance serves")
    p.add_argument("--store", default=os.environ.get("CHRONOS_FLOWS_STORE"), help="store URL (s3://bucket/prefix)")
    p.add_argument("--env", default=os.environ.get("CHRONOS_FLOWS_ENV", "dev"), help="environment prefix")
    p.add_argument("--generation", type=int, default=None, help="lock generation the instance was launched for")
    p.add_argument("--allow-cpu", action="store_true", help="do not require a GPU")
    p.add_argument(
        "--train",
        default=os.environ.get("CHRONOS_FLOWS_TRAIN_ENTRYPOINT", DEFAULT_TRAIN_ENTRYPOINT),
        help="module:function called with run_id=, store_url=, env= (returns a JSON-able dict)",
    )
    p.add_argument("--trial", default=os.environ.get("CHRONOS_FLOWS_TRIAL"),
                   help="store prefix of a tuning trial to run instead of the run's training (see chronos_flows.tuning.remote)")
    p.add_argument("--attempt", type=int, default=int(os.environ.get("CHRONOS_FLOWS_TRIAL_ATTEMPT") or 0),
                   help="the trial's launch attempt (a relaunch after a lost instance counts up)")
    return p.parse_args(argv)


def run_trial_mode(args: argparse.Namespace) -> int:
    """``--trial``: one tuning trial on this instance; a missing GPU is recorded in the trial's result."""
    from blocks.store import download_prefix, open_url
    from chronos_flows.core.layout import TrialKeys
    from chronos_flows.tuning.remote import put_json, run_trial_instance

    try:
        store = open_url(args.store)
    except StoreError as exc:
        print(f"chronos-flows bootstrap: {exc}", file=sys.stderr)
        return EXIT_ENV
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    instance_id = os.environ.get("CHRONOS_FLOWS_INSTANCE_ID")
    logging.getLogger("app.bootstrap").info("tuning trial %s of run %s (attempt %d) on %s", args.trial,
                                                      args.run_id, args.attempt, instance_id or socket.gethostname())
    try:
        environment = check_gpu(args.allow_cpu)
    except BadInputError as exc:
        print(f"chronos-flows bootstrap: {exc}", file=sys.stderr)
        put_json(store, TrialKeys(args.trial).result, {"state": "FAIL", "error": str(exc), "attempt": args.attempt,
                                                       "instance_id": instance_id, "finished_at": _now()})
        return EXIT_ENV
    return run_trial_instance(store, args.env, args.run_id, args.trial, generation=args.generation, attempt=args.attempt,
                              instance_id=instance_id, environment=environment,
                              fetch_dir=lambda uri, dest: download_prefix(uri, dest))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments; keep that code
        return int(exc.code or 0)
    if not args.run_id or not args.store:
        print("chronos-flows bootstrap: --run-id and --store are required (or CHRONOS_FLOWS_RUN_ID/"
              "CHRONOS_FLOWS_STORE)", file=sys.stderr)
        return EXIT_ENV
    if args.trial:
        return run_trial_mode(args)
    environment: dict[str, Any] = {}
    try:
        environment = check_gpu(args.allow_cpu)
        fn = load_entrypoint(args.train)
    except BadInputError as exc:
        print(f"chronos-flows bootstrap: {exc}", file=sys.stderr)
        failure = exc

        def train() -> dict:  # record the environment error in result.json for the parent
            raise failure

    else:

        def train() -> dict:
            return fn(run_id=args.run_id, store_url=args.store, env=args.env)

    return run_instance_step(args.run_id, args.store, args.env, train, generation=args.generation,
                             environment=environment)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
