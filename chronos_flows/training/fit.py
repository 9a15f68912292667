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
from chronos_flows.core.errors import LeaseExpiredError, LostLockError, TrainingError, TransientStoreError
from chronos_flows.core.retry import OutageLog
from chronos_flows.core.store import ObjectStore, put_file, single_attempt
from chronos_flows.training.specs import Guard
from chronos_flows.training.uploads import UploadQueue

Report = Callable[[dict], None]
FetchDir = Callable[[str, Path], Any]
Log = Union[logging.Logger, logging.LoggerAdapter]

_LOG = logging.getLogger("chronos_flows.training.fit")


def upload_dir_fenced(store: ObjectStore, local_dir: Path, prefix: str, guard: Guard, done: set[str] | None = None) -> list[str]:
    """Every file under ``local_dir`` to ``prefix/<relative path>``, checking ``guard(False)``
    before each (a run fenced off mid-directory sends nothing more). Files in ``done`` (keys of an
    earlier, interrupted try) are skipped; each landed key is added to it."""
    done = set() if done is None else done
    keys = []
    for src in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        key = f"{prefix}/{src.relative_to(local_dir).as_posix()}"
        keys.append(key)
        if key in done:
            continue
        guard(False)
        put_file(store, key, src)
        done.add(key)
    return keys


def upload_dir_durably(store: ObjectStore, local_dir: Path, prefix: str, guard: Guard, budget_seconds: float,
                       outages: OutageLog | None = None) -> list[str]:
    """:func:`upload_dir_fenced` retried through a store outage (backoff and jitter) while ``guard``
    passes, for at most ``budget_seconds`` (the lease); a file that landed is not sent again."""
    from chronos_flows.core.retry import retry_while, time_budget

    done: set[str] = set()
    alive = time_budget(budget_seconds, lambda: guard(False))  # fenced / killed / lost: stop waiting
    return retry_while(lambda: upload_dir_fenced(store, local_dir, prefix, guard, done), what=f"upload to {prefix}",
                       alive=alive, outages=outages)


def unsynced_checkpoints(local_dir: Path, synced: Any) -> list[Path]:
    """The local checkpoint directories not in ``synced`` yet, oldest first. A checkpoint becomes
    visible complete (renamed into place); hidden directories (Trainer's staging) are skipped."""
    if not local_dir.exists():
        return []
    return [p for p in sorted(local_dir.iterdir()) if p.is_dir() and not p.name.startswith(".") and p.name not in synced]


class CheckpointSync:
    """Mirror new local checkpoints into the store's ``checkpoints/`` (fenced by ``guard``).

    With a ``queue`` (:class:`~chronos_flows.training.uploads.UploadQueue`) the uploads run in the
    background, retried through store outages, and a local checkpoint is pruned only once its
    upload is confirmed (``.uploaded/<name>``); without one they run inline."""

    def __init__(self, store: ObjectStore, env: str, run_id: str, local_dir: Path, guard: Guard,
                 resume_from: str | None = None, log: Log | None = None, queue: UploadQueue | None = None) -> None:
        self.store = store
        self.local_dir = local_dir
        self.guard = guard
        self.log = log or _LOG
        self.queue = queue
        self.prefix = layout.checkpoints_prefix(env, run_id)
        #: where earlier checkpoints come from: this run's own, or the run it resumes
        self.source = layout.checkpoints_prefix(env, resume_from) if resume_from else self.prefix
        self.synced: set[str] = set()
        self.queued: set[str] = set()
        #: queued uploads go through this: one attempt per request, the queue retries (no SDK retry
        #: of a write is sent after the run was fenced off)
        self.writer = single_attempt(store) if queue is not None else store
        self._landed: set[str] = set()
        if queue is not None:
            from chronos_flows.models.chronos.checkpoints import UPLOADED_DIR

            (local_dir / UPLOADED_DIR).mkdir(parents=True, exist_ok=True)

    def restore(self) -> int:
        """Download the stored checkpoints (of this run, or of the run it resumes); training
        continues from the newest. Restored checkpoints are also copied under this run's own prefix,
        so this attempt's record is complete on its own."""
        keys = self.store.list(self.source + "/")
        if not keys:
            return 0
        self.store.download_dir(self.source, self.local_dir)
        # what the store holds (a local checkpoint of an earlier attempt whose upload was never
        # confirmed is not among them: the next sync uploads it)
        restored = {k[len(self.source) + 1:].split("/", 1)[0] for k in keys}
        if self.source != self.prefix:
            self()  # copy them to this run's prefix (fenced like every other write)
            if self.queue is not None:
                self.queue.drain()
        self.synced |= restored
        if self.queue is not None:
            from chronos_flows.models.chronos.checkpoints import mark_uploaded

            for name in restored:
                mark_uploaded(self.local_dir, name)
        return len(restored)

    def __call__(self) -> None:
        """Upload the checkpoints not in the store yet: queued (returns at once) or inline."""
        if self.queue is not None:
            self.queue.raise_if_failed()
        for ckpt in unsynced_checkpoints(self.local_dir, self.synced | self.queued):
            if self.queue is None:
                self.guard(True)  # a holder that lost the lock must not write
                self._upload(ckpt)
            else:
                self.queued.add(ckpt.name)
                self.queue.submit(f"checkpoint {ckpt.name}", lambda c=ckpt: self._upload(c, fenced=True))

    def _upload(self, ckpt: Path, fenced: bool = False) -> None:
        if fenced:
            self.guard(True)  # checked again right before each attempt (the queue retries)
            upload_dir_fenced(self.writer, ckpt, f"{self.prefix}/{ckpt.name}", self.guard, self._landed)
        else:
            self.store.upload_dir(ckpt, f"{self.prefix}/{ckpt.name}")
        self.synced.add(ckpt.name)
        if self.queue is not None:
            from chronos_flows.models.chronos.checkpoints import mark_uploaded

            mark_uploaded(self.local_dir, ckpt.name)
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
        self.guard(due)  # raises RunKilledError / LostLockError (or LeaseExpiredError): training stops
        if self.sync.queue is not None:
            self.sync.queue.raise_if_failed()
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
    outages: OutageLog | None = None,
    progress_every_s: float = 5.0,
) -> tuple[Any, dict]:
    """Fine-tune (or load zero-shot) Chronos; checkpoints and the model go to the run's store paths.

    Store writes during training go through a background :class:`UploadQueue` (retried through
    outages for as long as ``guard`` lets the run write, at most ``lock.lease_seconds`` of failing);
    the loop waits on them only at the end, before the model is stored. Outages are recorded in
    ``outages`` (the lock handle's, so ``training.json`` has them) and in the returned info."""
    from chronos_flows.models.chronos.forecasters import ChronosForecaster

    log = log or _LOG
    outages = outages if outages is not None else OutageLog()
    ckpt_dir = workdir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    queue = UploadQueue(guard, outages=outages, budget_seconds=params.lock.lease_seconds, log=log)
    try:
        sync = CheckpointSync(store, params.env, run_id, ckpt_dir, guard, resume_from=params.resume_from, log=log,
                              queue=queue)
        restored = sync.restore()
        if restored:
            log.info("resuming from %d stored checkpoint(s) of run %s", restored, params.resume_from or run_id)
        forecaster = ChronosForecaster(
            params.chronos,
            workdir=workdir / "chronos",
            checkpoint_dir=ckpt_dir,
            progress=TrainProgress(guard, sync, report, every_s=progress_every_s, log=log),
            fetch_dir=fetch_dir,
        )
        t0 = time.monotonic()
        fitted = forecaster.fit(train, freq, params.evaluation.horizon)
        fit_s = time.monotonic() - t0
        sync()
        if queue.pending:
            log.info("training done; waiting for %d upload(s) to land: %s", len(queue.pending), ", ".join(queue.pending))
        queue.drain()
        best_step = fitted.info.get("best_step")
        queue.submit("prune checkpoints", lambda: sync.prune(params.chronos.keep_checkpoints, best_step))
        queue.drain()
        info = _store_model(params.env, store, run_id, workdir, fitted, guard,
                            {"fit_seconds": round(fit_s, 3), "resumed_checkpoints": restored}, queue=queue)
    finally:
        queue.close()
    if outages.records():
        info["store_outages"] = outages.records()
    log.info("chronos model saved to %s after %.1f s of fitting", info["uri"], fit_s)
    return fitted, info


def _store_model(env: str, store: ObjectStore, run_id: str, workdir: Path, fitted: Any, guard: Guard,
                 extra: dict[str, Any], queue: UploadQueue | None = None) -> dict:
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
    writer = single_attempt(store) if queue is not None else store
    landed: set[str] = set()
    writes: list[tuple[str, Callable[[], Any]]] = [("model", lambda: upload_dir_fenced(writer, model_dir, prefix, guard, landed))]
    info["uri"] = store.uri(prefix)
    if history:
        curve = workdir / "loss_curve.png"
        plot_loss_curve(history, curve)
        key = f"{layout.evaluation_prefix(env, run_id)}/loss_curve.png"
        writes.append(("loss curve", lambda: writer.put(key, curve.read_bytes())))
        info["loss_curve_uri"] = store.uri(key)
    for name, write in writes:  # the final model must land: retried through an outage while the lease lasts
        if queue is None:
            write()
        else:
            queue.submit(name, write)
    if queue is not None:
        queue.drain()
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
    it finishes; ``check()`` raises when this run may no longer wait (killed, lock lost, or — through
    a store outage — its lease ran out). A poll that fails transiently is skipped: the instance keeps
    training meanwhile, and relaunching it (a retried step) would start over."""
    log = log or _LOG
    last_step = None
    while True:
        check()
        try:
            doc = read_instance_result(store, env, run_id)
            prog = store.get(layout.instance_progress_key(env, run_id)) if doc is None else None
        except TransientStoreError as e:
            log.warning("instance %s: store unreachable (%s); still waiting while the lease lasts", instance_id, e)
            time.sleep(poll_seconds)
            continue
        if doc is not None:
            return doc
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


def fetch_model(store: ObjectStore, env: str, run_id: str, dest: Path, guard: Guard, budget_seconds: float,
                outages: OutageLog | None = None) -> Path:
    """Download the model the instance stored for ``run_id`` into ``dest``, retrying through a store
    outage (backoff and jitter) while ``guard`` passes, for at most ``budget_seconds`` (the lease):
    a failed download must not fail the step, whose retry would launch a new instance."""
    from chronos_flows.core.retry import retry_while, time_budget

    alive = time_budget(budget_seconds, lambda: guard(False))  # fenced / killed / lost: stop waiting
    retry_while(lambda: store.download_dir(layout.models_prefix(env, run_id, "chronos"), dest),
                what="model download", alive=alive, outages=outages)
    return dest


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
    lease = float(params.lock.lease_seconds)
    last_ok = [time.monotonic()]

    def guard(refresh: bool) -> None:
        if not refresh:
            if time.monotonic() - last_ok[0] >= lease:
                raise LeaseExpiredError(f"run {run_id}: the state file was unreadable for a whole lease "
                                        f"({lease:g}s); this instance cannot tell it still owns the training step; stopping")
            return
        try:
            snap = read_state(store, env)
        except TransientStoreError as e:
            # the store is away: keep training on what was last seen, for as long as a lease
            if time.monotonic() - last_ok[0] >= lease:
                raise LeaseExpiredError(f"run {run_id}: the state file was unreadable for a whole lease "
                                        f"({lease:g}s): {e}; stopping") from e
            return
        last_ok[0] = time.monotonic()
        if snap is None or snap.run_id != run_id or (generation is not None and snap.generation != generation) or snap.status != "training":
            raise LostLockError(f"run {run_id} (generation {generation}) no longer owns the training step; stopping")

    def report(ev: dict) -> None:
        try:
            store.put(layout.instance_progress_key(env, run_id), json.dumps(ev, default=str).encode())
        except TransientStoreError as e:  # progress is best effort: the next report replaces it
            (log or _LOG).warning("progress not written (store unreachable: %s); training goes on", e)

    workdir = Path(tempfile.mkdtemp(prefix=f"chronos-flows-instance-{run_id}-"))
    try:
        _, info = fit_and_store(params, store, run_id, workdir, train, freq, guard=guard, report=report,
                                fetch_dir=fetch_dir, log=log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return info
