"""Train tasks: Chronos (fine-tune or zero-shot, in-process or on an ephemeral EC2 worker).

``fit_and_store`` is the one training routine; the ``local`` backend calls it inside the flow's
process, the ``ec2`` backend launches an instance whose user data runs
``python -m chronos_flows.bootstrap``, which calls :func:`instance_train` → ``fit_and_store`` on
the instance, next to the GPU. Both write checkpoints and the model into the same store layout.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from blocks.store import download_prefix, open_store
from chronos_flows import layout, runlog
from chronos_flows.config import TrainingParams
from chronos_flows.errors import LostLockError, TrainingError
from chronos_flows.store import ObjectStore
from tasks.common import Progress, RETRY_DELAYS, image_artifact, logger, markdown_artifact, retry_transient
from tasks.state import RunContext

#: guard(refresh) raises when this process may no longer write the run's files (killed, lock lost)
Guard = Callable[[bool], None]


class CheckpointSync:
    """Mirror new local checkpoints into the store's ``checkpoints/`` (fenced by ``guard``)."""

    def __init__(self, store: ObjectStore, env: str, run_id: str, local_dir: Path, guard: Guard,
                 resume_from: str | None = None) -> None:
        self.store = store
        self.local_dir = local_dir
        self.guard = guard
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
        if not self.local_dir.exists():
            return
        for ckpt in sorted(p for p in self.local_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if ckpt.name in self.synced:
                continue
            self.guard(True)  # a holder that lost the lock must not write
            self.store.upload_dir(ckpt, f"{self.prefix}/{ckpt.name}")
            self.synced.add(ckpt.name)
            logger().info("checkpoint %s synced to %s", ckpt.name, self.store.uri(f"{self.prefix}/{ckpt.name}"))


    def prune(self, policy: str, best_step: int | None) -> list[str]:
        """After training succeeded: delete this run's stored checkpoints that ``policy``
        (``chronos.keep_checkpoints``) does not keep; returns the checkpoint names deleted."""
        from chronos_flows.models.chronos_train import checkpoints_to_keep

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
            logger().info("checkpoints kept (%s): %s; removed %d older", policy, ", ".join(sorted(keep)), len(dropped))
        return dropped


class TrainProgress:
    """Progress callback: kill/lock check every step, and every ``every_s`` a log line with
    step/loss/throughput/ETA, a checkpoint sync and ``report(event)`` (Prefect artifact, progress.json)."""

    def __init__(self, guard: Guard, sync: CheckpointSync, report: Callable[[dict], None], every_s: float = 5.0) -> None:
        self.guard = guard
        self.sync = sync
        self.report = report
        self.every_s = every_s
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
        logger().info(
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
    report: Callable[[dict], None],
) -> tuple[Any, dict]:
    """Fine-tune (or load zero-shot) Chronos; checkpoints and the model go to the run's store paths."""
    from chronos_flows.models.chronos import ChronosForecaster, plot_loss_curve

    env = params.env
    ckpt_dir = workdir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    sync = CheckpointSync(store, env, run_id, ckpt_dir, guard, resume_from=params.resume_from)
    restored = sync.restore()
    if restored:
        logger().info("resuming from %d stored checkpoint(s) of run %s", restored, params.resume_from or run_id)
    forecaster = ChronosForecaster(
        params.chronos,
        workdir=workdir / "chronos",
        checkpoint_dir=ckpt_dir,
        progress=TrainProgress(guard, sync, report),
        fetch_dir=lambda uri, dest: download_prefix(uri, dest),
    )
    t0 = time.monotonic()
    fitted = forecaster.fit(train, freq, params.evaluation.horizon)
    fit_s = time.monotonic() - t0
    sync()
    sync.prune(params.chronos.keep_checkpoints, fitted.info.get("best_step"))

    model_dir = workdir / "models" / "chronos"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    info = fitted.save(model_dir)
    info["fit_seconds"] = round(fit_s, 3)
    info["resumed_checkpoints"] = restored
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
    logger().info("chronos model saved to %s after %.1f s of fitting", info["uri"], fit_s)
    return fitted, info


def _publish_training(ctx: RunContext, info: dict) -> None:
    if info.get("loss_curve_uri"):
        # read back from the store: on the EC2 backend the instance drew it
        got = ctx.store.get(f"{layout.evaluation_prefix(ctx.env, ctx.run_id)}/loss_curve.png")
        if got is not None:
            image_artifact(f"loss-curve-{ctx.run_id}", "Chronos loss curve", got[0], "Chronos training and validation loss",
                           note=f"Stored at `{info['loss_curve_uri']}`")
    markdown_artifact(
        f"chronos-training-{ctx.run_id}",
        "\n".join(
            ["## Chronos training", "", "| field | value |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in info.items() if not isinstance(v, (dict, list))]
        ),
        "Chronos training summary",
    )


@task(name="train-chronos", retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def train_chronos(ctx: RunContext, train: pd.DataFrame, freq: str) -> tuple[Any, dict]:
    """Train Chronos on the training part with the configured compute backend."""
    if ctx.params.compute.backend == "ec2":
        fitted, info = train_on_ec2(ctx)
    else:
        bar = Progress(f"training-progress-{ctx.run_id}", "Chronos training steps")
        fitted, info = fit_and_store(
            ctx.params,
            ctx.store,
            ctx.run_id,
            ctx.workdir,
            train,
            freq,
            guard=lambda refresh: ctx.handle.check(refresh=refresh) if ctx.handle else None,
            report=lambda ev: bar.update(ev.get("step", 0), ev.get("max_steps", 0)),
        )
    _publish_training(ctx, info)
    return fitted, info


# ----------------------------------------------------------------------------------- EC2 backend


def train_on_ec2(ctx: RunContext, poll_seconds: float = 5.0) -> tuple[Any, dict]:
    """Launch this run's GPU instance, follow it through the store, load the model it saved."""
    from blocks.ec2 import Ec2Compute
    from chronos_flows.bootstrap import result_key
    from chronos_flows.models.chronos import ChronosForecaster

    cfg = ctx.params.compute.ec2
    handle = ctx.handle
    generation = handle.generation if handle else None
    ec2 = Ec2Compute(cfg, env=ctx.env, cost_center=ctx.params.cost_center)
    ctx.store.delete(result_key(ctx.env, ctx.run_id))  # a retried step must not read an old result
    user_data = ec2.render_user_data(ctx.run_id, ctx.store.url, ctx.env, mode="bootstrap", generation=generation)
    t_launch = time.monotonic()
    instance_id = ec2.launch(ctx.run_id, user_data, attempt=generation or 0)
    ctx.info["instance_id"] = instance_id
    if handle is not None:
        handle.update_info(instance_id=instance_id)
    logger().info("launched %s (%s) for run %s; waiting for its result", instance_id, cfg.instance_type, ctx.run_id)
    try:
        result = _follow_instance(ctx, ec2, instance_id, t_launch + cfg.max_runtime_minutes * 60, poll_seconds)
    finally:
        # billed time, also for a failed run (the cost estimate in training.json uses it)
        ctx.info["instance_seconds"] = round(time.monotonic() - t_launch, 3)
    if result["outcome"] != "ok":
        err = result.get("error") or {}
        raise TrainingError(
            f"training on {instance_id} {result['outcome']}: "
            f"{err.get('type', '')} {err.get('message', result.get('reason', ''))}".strip()
        )
    info = dict(result.get("result") or {})
    info.update(instance_id=instance_id, instance_type=cfg.instance_type, instance_seconds=ctx.info["instance_seconds"])
    local = ctx.workdir / "models" / "chronos"
    ctx.store.download_dir(layout.models_prefix(ctx.env, ctx.run_id, "chronos"), local)
    fitted = ChronosForecaster.load(local, ctx.params.chronos, workdir=ctx.workdir / "chronos")
    return fitted, info


def _follow_instance(ctx: RunContext, ec2: Any, instance_id: str, deadline: float, poll_seconds: float) -> dict:
    """Poll the instance's result.json / progress.json and its EC2 state until it finishes."""
    from chronos_flows.bootstrap import result_key

    bar = Progress(f"training-progress-{ctx.run_id}", f"Chronos training on {instance_id}")
    last_step = None

    def finished() -> dict | None:
        got = ctx.store.get(result_key(ctx.env, ctx.run_id))
        if got is None:
            return None
        doc = json.loads(got[0])
        return doc if doc.get("outcome") != "running" else None

    while True:
        if ctx.handle is not None:
            ctx.handle.check()
        doc = finished()
        if doc is not None:
            return doc
        prog = ctx.store.get(layout.instance_progress_key(ctx.env, ctx.run_id))
        if prog is not None:
            ev = json.loads(prog[0])
            bar.update(ev.get("step", 0), ev.get("max_steps", 0))
            if ev.get("step") != last_step:
                last_step = ev.get("step")
                logger().info("instance %s: step %s/%s, loss %s", instance_id, ev.get("step"), ev.get("max_steps"), ev.get("loss"))
        state = ec2.describe(instance_id)
        if state in ("shutting-down", "terminated", "stopped", None):
            doc = finished()
            if doc is not None:
                return doc
            raise TrainingError(f"instance {instance_id} is {state or 'gone'} without a training result; see its console output")
        if time.monotonic() > deadline:
            raise TrainingError(f"instance {instance_id} exceeded compute.ec2.max_runtime_minutes; it shuts itself down")
        time.sleep(poll_seconds)


def instance_train(run_id: str, store_url: str, env: str) -> dict:
    """What the instance runs (``chronos_flows.bootstrap`` calls it): train this run, store the model.

    It reads the run's parameters from ``training.json`` and its cleaned data from the store, and
    stops writing the moment the state file no longer names this run and generation in ``training``.
    """
    from chronos_flows.cleaning import CleaningReport
    from chronos_flows.ingest import from_parquet_bytes
    from chronos_flows.lock import read_state
    from chronos_flows.splits import split_for_training

    store = open_store(store_url)
    log = runlog.load_training_log(store, env, run_id)
    if log is None:
        raise TrainingError(f"no training.json for run {run_id} in {store.url} env {env}; the parent flow writes it first")
    params = TrainingParams.model_validate(log.params)
    data_prefix = layout.run_data_prefix(env, run_id)
    cleaned_raw = store.get(f"{data_prefix}/cleaned.parquet")
    report_raw = store.get(f"{data_prefix}/cleaning_report.json")
    if cleaned_raw is None or report_raw is None:
        raise TrainingError(f"run {run_id} has no cleaned data under {store.uri(data_prefix)}; data_sync did not finish")
    cleaned = from_parquet_bytes(cleaned_raw[0])
    freq = CleaningReport.model_validate(json.loads(report_raw[0])).freq
    train, _ = split_for_training(cleaned, freq, params.evaluation)
    generation = log.generation

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
        _, info = fit_and_store(params, store, run_id, workdir, train, freq, guard=guard, report=report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return info
