"""Training: fit-and-store, checkpoint sync, progress, the instance's training step, and following
an EC2 instance through the store — no Prefect and no boto3 here, so the GPU instance runs it
(``python -m app.bootstrap``) without either.

The callers plug in what is specific to them: ``guard(refresh)`` (raises when this process may no
longer write the run's files), ``report(event)`` (a Prefect progress artifact in the flow,
``progress.json`` on the instance), ``fetch_dir(uri, dest)`` (downloads a model prefix) and ``log``
(a :mod:`logging` logger; the tasks pass Prefect's run logger).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Union

import pandas as pd

from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.config.params import TrainingParams
from chronos_flows.core.errors import LostLockError, TrainingError
from chronos_flows.core.store import ObjectStore

#: guard(refresh) raises when this process may no longer write the run's files (killed, lock lost)
Guard = Callable[[bool], None]
Report = Callable[[dict], None]
FetchDir = Callable[[str, Path], Any]
Log = Union[logging.Logger, logging.LoggerAdapter]

_LOG = logging.getLogger("chronos_flows.training.fit")


def unsynced_checkpoints(local_dir: Path, synced: Any) -> list[Path]:
    """The local checkpoint directories not in ``synced`` yet, oldest first. A checkpoint becomes
    visible complete (renamed into place); hidden directories (Trainer's staging) are skipped."""
    if not local_dir.exists():
        return []
    return [p for p in sorted(local_dir.iterdir()) if p.is_dir() and not p.name.startswith(".") and p.name not in synced]


class CheckpointSync:
    """Mirror new local checkpoints into the store's ``checkpoints/`` (fenced by ``guard``)."""

    def __init__(self, store: ObjectStore, env: str, run_id: str, local_dir: Path, guard: Guard,
                 resume_from: str | None = None, log: Log | None = None) -> None:
        self.store = store
        self.local_dir = local_dir
        self.guard = guard
        self.log = log or _LOG
        self.prefix = layout.checkpoints_prefix(env, run_id)
        #: where earlier checkpoints come from: this run's own, or the run it resumes
        self.source = layout.checkpoints_prefix(env, resume_from) if resume_from else self.prefix
        self.synced: set[str] = set()

    def restore(self) -> int:
        """Download the stored checkpoints (of this run, or of the run it resumes); training
        continues from the newest. Restored checkpoints are also copied under this run's own prefix,
        so this attempt's record is complete on its own."""
        if self.store.list(self.source + "/"):
            self.store.download_dir(self.source, self.local_dir)
            restored = {p.name for p in self.local_dir.iterdir() if p.is_dir()}
            if self.source != self.prefix:
                self.synced = set()
                self()  # copy them to this run's prefix (fenced like every other write)
            self.synced = restored
        return len(self.synced)

    def __call__(self) -> None:
        for ckpt in unsynced_checkpoints(self.local_dir, self.synced):
            self.guard(True)  # a holder that lost the lock must not write
            self.store.upload_dir(ckpt, f"{self.prefix}/{ckpt.name}")
            self.synced.add(ckpt.name)
            self.log.info("checkpoint %s synced to %s", ckpt.name, self.store.uri(f"{self.prefix}/{ckpt.name}"))


    def prune(self, policy: str, best_step: int | None) -> list[str]:
        """After training succeeded: delete this run's stored checkpoints that ``policy``
        (``chronos.keep_checkpoints``) does not keep; returns the checkpoint names deleted."""
        from chronos_flows.models.chronos.checkpoints import checkpoints_to_keep

        keys = self.store.list(self.prefix + "/")
        names = sorted({k[len(self.prefix) + 1:].split("/", 1)[0] for k in keys})
        keep = checkpoints_to_keep(names, best_step, policy)
        dropped = [n for n in names if n not in keep]
        if dropped:
            self.guard(True)  # a holder that lost the lock must not delete either
        for key in keys:
            if key[len(self.prefix) + 1:].split("/", 1)[0] in dropped:
                self.store.delete(key)
        if dropped:
            self.log.info("checkpoints kept (%s): %s; removed %d older", policy, ", ".join(sorted(keep)), len(dropped))
        return dropped


class TrainProgress:
    """Progress callback: kill/lock check every step, and every ``every_s`` a log line with
    step/loss/throughput/ETA, a checkpoint sync and ``report(event)`` (Prefect artifact, progress.json)."""

    def __init__(self, guard: Guard, sync: CheckpointSync, report: Report, every_s: float = 5.0,
                 log: Log | None = None) -> None:
        self.guard = guard
        self.sync = sync
        self.report = report
        self.every_s = every_s
        self.log = log or _LOG
        self.last = 0.0

    def __call__(self, ev: dict[str, Any]) -> None:
        now = time.monotonic()
        step, total = ev.get("step", 0), ev.get("max_steps", 0)
        due = now - self.last >= self.every_s or (bool(total) and step >= total)
        self.guard(due)  # raises RunKilledError / LostLockError: training stops
        if not due:
            return
        self.last = now
        self.sync()
        self.report(ev)
        loss, val = ev.get("loss"), ev.get("val_loss")
        self.log.info(
            "step %s/%s loss %s%s, %.1f windows/s, ETA %.0f s",
            step,
            total,
            f"{loss:.4f}" if isinstance(loss, (int, float)) else loss,
            f", val {val:.4f}" if isinstance(val, (int, float)) else "",
            ev.get("windows_per_s") or 0.0,
            ev.get("eta_s") or 0.0,
        )


def fit_and_store(
    params: TrainingParams,
    store: ObjectStore,
    run_id: str,
    workdir: Path,
    train: pd.DataFrame,
    freq: str,
    *,
    guard: Guard,
    report: Report,
    fetch_dir: FetchDir,
    log: Log | None = None,
) -> tuple[Any, dict]:
    """Fine-tune (or load zero-shot) Chronos; checkpoints and the model go to the run's store paths."""
    from chronos_flows.models.chronos.forecasters import ChronosForecaster

    log = log or _LOG
    ckpt_dir = workdir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    sync = CheckpointSync(store, params.env, run_id, ckpt_dir, guard, resume_from=params.resume_from, log=log)
    restored = sync.restore()
    if restored:
        log.info("resuming from %d stored checkpoint(s) of run %s", restored, params.resume_from or run_id)
    forecaster = ChronosForecaster(
        params.chronos,
        workdir=workdir / "chronos",
        checkpoint_dir=ckpt_dir,
        progress=TrainProgress(guard, sync, report, log=log),
        fetch_dir=fetch_dir,
    )
    t0 = time.monotonic()
    fitted = forecaster.fit(train, freq, params.evaluation.horizon)
    fit_s = time.monotonic() - t0
    sync()
    sync.prune(params.chronos.keep_checkpoints, fitted.info.get("best_step"))
    info = _store_model(params.env, store, run_id, workdir, fitted, guard,
                        {"fit_seconds": round(fit_s, 3), "resumed_checkpoints": restored})
    log.info("chronos model saved to %s after %.1f s of fitting", info["uri"], fit_s)
    return fitted, info


def _store_model(env: str, store: ObjectStore, run_id: str, workdir: Path, fitted: Any, guard: Guard,
                 extra: dict[str, Any]) -> dict:
    """Save the fitted model (and its loss curve, if it trained) under the run's store paths;
    returns its info with ``extra``, the store URIs last."""
    from chronos_flows.models.chronos.forecasters import plot_loss_curve

    model_dir = workdir / "models" / "chronos"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    info = fitted.save(model_dir)
    info.update(extra)
    history = getattr(fitted, "training_history", None) or []
    guard(True)
    prefix = layout.models_prefix(env, run_id, "chronos")
    store.upload_dir(model_dir, prefix)
    info["uri"] = store.uri(prefix)
    if history:
        curve = workdir / "loss_curve.png"
        plot_loss_curve(history, curve)
        key = f"{layout.evaluation_prefix(env, run_id)}/loss_curve.png"
        store.put(key, curve.read_bytes())
        info["loss_curve_uri"] = store.uri(key)
    return info


# ----------------------------------------------------------------------------------- EC2 backend


def read_instance_result(store: ObjectStore, env: str, run_id: str) -> dict | None:
    """The instance's finished ``result.json`` (None while it is missing or still ``running``)."""
    got = store.get(layout.instance_result_key(env, run_id))
    if got is None:
        return None
    doc = json.loads(got[0])
    return doc if doc.get("outcome") != "running" else None


def follow_instance(
    store: ObjectStore,
    env: str,
    run_id: str,
    ec2: Any,
    instance_id: str,
    deadline: float,
    poll_seconds: float,
    *,
    check: Callable[[], None],
    report: Report,
    log: Log | None = None,
) -> dict:
    """Poll the instance's result.json / progress.json and its EC2 state (``ec2.describe``) until
    it finishes; ``check()`` raises when this run may no longer wait (killed, lock lost)."""
    log = log or _LOG
    last_step = None
    while True:
        check()
        doc = read_instance_result(store, env, run_id)
        if doc is not None:
            return doc
        prog = store.get(layout.instance_progress_key(env, run_id))
        if prog is not None:
            ev = json.loads(prog[0])
            report(ev)
            if ev.get("step") != last_step:
                last_step = ev.get("step")
                log.info("instance %s: step %s/%s, loss %s", instance_id, ev.get("step"), ev.get("max_steps"), ev.get("loss"))
        state = ec2.describe(instance_id)
        if state in ("shutting-down", "terminated", "stopped", None):
            doc = read_instance_result(store, env, run_id)
            if doc is not None:
                return doc
            raise TrainingError(f"instance {instance_id} is {state or 'gone'} without a training result; see its console output")
        if time.monotonic() > deadline:
            raise TrainingError(f"instance {instance_id} exceeded compute.ec2.max_runtime_minutes; it shuts itself down")
        time.sleep(poll_seconds)


def instance_info(result: dict, instance_id: str, instance_type: str, instance_seconds: float) -> dict:
    """The training info of a finished instance's ``result.json``; TrainingError unless it is ``ok``."""
    if result["outcome"] != "ok":
        err = result.get("error") or {}
        raise TrainingError(
            f"training on {instance_id} {result['outcome']}: "
            f"{err.get('type', '')} {err.get('message', result.get('reason', ''))}".strip()
        )
    info = dict(result.get("result") or {})
    info.update(instance_id=instance_id, instance_type=instance_type, instance_seconds=instance_seconds)
    return info


def train_on_instance(store: ObjectStore, env: str, run_id: str, *, fetch_dir: FetchDir, log: Log | None = None) -> dict:
    """What the instance runs: train this run, store the model; returns the training info.

    It reads the run's parameters from ``training.json`` and its cleaned data from the store, and
    stops writing the moment the state file no longer names this run and generation in ``training``.
    """
    from chronos_flows.data.cleaning import CleaningReport
    from chronos_flows.data.ingest import from_parquet_bytes
    from chronos_flows.runstate.statefile import read_state
    from chronos_flows.evaluation.splits import split_for_training

    record = runlog.load_training_log(store, env, run_id)
    if record is None:
        raise TrainingError(f"no training.json for run {run_id} in {store.url} env {env}; the parent flow writes it first")
    params = TrainingParams.model_validate(record.params)
    data_prefix = layout.run_data_prefix(env, run_id)
    cleaned_raw = store.get(f"{data_prefix}/cleaned.parquet")
    report_raw = store.get(f"{data_prefix}/cleaning_report.json")
    if cleaned_raw is None or report_raw is None:
        raise TrainingError(f"run {run_id} has no cleaned data under {store.uri(data_prefix)}; data_sync did not finish")
    cleaned = from_parquet_bytes(cleaned_raw[0])
    freq = CleaningReport.model_validate(json.loads(report_raw[0])).freq
    train, _ = split_for_training(cleaned, freq, params.evaluation)
    generation = record.generation

    def guard(refresh: bool) -> None:
        if not refresh:
            return
        snap = read_state(store, env)
        if snap is None or snap.run_id != run_id or (generation is not None and snap.generation != generation) or snap.status != "training":
            raise LostLockError(f"run {run_id} (generation {generation}) no longer owns the training step; stopping")

    def report(ev: dict) -> None:
        store.put(layout.instance_progress_key(env, run_id), json.dumps(ev, default=str).encode())

    workdir = Path(tempfile.mkdtemp(prefix=f"chronos-flows-instance-{run_id}-"))
    try:
        _, info = fit_and_store(params, store, run_id, workdir, train, freq, guard=guard, report=report,
                                fetch_dir=fetch_dir, log=log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return info
