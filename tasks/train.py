"""Train tasks: Chronos (fine-tune or zero-shot, local or on an EC2 worker) and the Prophet baseline."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from blocks.store import download_prefix
from chronos_flows import layout
from tasks.common import Progress, RETRY_DELAYS, link_artifact, logger, markdown_artifact, retry_transient
from tasks.state import RunContext


class CheckpointSync:
    """Mirror new local checkpoints into the store's ``checkpoints/`` (fenced by the lock)."""

    def __init__(self, ctx: RunContext, local_dir: Path) -> None:
        self.ctx = ctx
        self.local_dir = local_dir
        self.prefix = layout.checkpoints_prefix(ctx.env, ctx.run_id)
        self.synced: set[str] = set()

    def restore(self) -> int:
        """Download the run's stored checkpoints (a resumed run continues from the newest)."""
        keys = self.ctx.store.list(self.prefix + "/")
        if keys:
            self.ctx.store.download_dir(self.prefix, self.local_dir)
            self.synced = {p.name for p in self.local_dir.iterdir() if p.is_dir()}
        return len(self.synced)

    def __call__(self) -> None:
        if not self.local_dir.exists():
            return
        for ckpt in sorted(p for p in self.local_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if ckpt.name in self.synced:
                continue
            if self.ctx.handle is not None:
                self.ctx.handle.check()  # a holder that lost the lock must not write
            self.ctx.store.upload_dir(ckpt, f"{self.prefix}/{ckpt.name}")
            self.synced.add(ckpt.name)
            logger().info("checkpoint %s synced to %s", ckpt.name, self.ctx.store.uri(f"{self.prefix}/{ckpt.name}"))


class TrainProgress:
    """Progress callback: Prefect progress artifact, log lines with step/loss/throughput/ETA, kill check."""

    def __init__(self, ctx: RunContext, sync: CheckpointSync, every_s: float = 5.0) -> None:
        self.ctx = ctx
        self.sync = sync
        self.every_s = every_s
        self.last = 0.0
        self.artifact = Progress(f"training-progress-{ctx.run_id}", "Chronos training steps")

    def __call__(self, ev: dict[str, Any]) -> None:
        now = time.monotonic()
        step, total = ev.get("step", 0), ev.get("max_steps", 0)
        final = bool(total) and step >= total
        due = now - self.last >= self.every_s or final
        if self.ctx.handle is not None:
            # raises RunKilledError / LostLockError so training stops; re-reads the file only when due
            self.ctx.handle.check(refresh=due)
        if not due:
            return
        self.last = now
        self.artifact.update(step, total)
        self.sync()
        loss = ev.get("loss")
        val = ev.get("val_loss")
        logger().info(
            "step %s/%s loss %s%s, %.1f windows/s, ETA %.0f s",
            step,
            total,
            f"{loss:.4f}" if isinstance(loss, (int, float)) else loss,
            f", val {val:.4f}" if isinstance(val, (int, float)) else "",
            ev.get("windows_per_s") or 0.0,
            ev.get("eta_s") or 0.0,
        )


@task(name="train-chronos", retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def train_chronos(ctx: RunContext, train: pd.DataFrame, freq: str) -> tuple[Any, dict]:
    """Fine-tune (or load zero-shot) Chronos on the training part; save it under ``models/chronos/``."""
    from chronos_flows.models.chronos import ChronosForecaster, plot_loss_curve

    cfg = ctx.params.chronos
    horizon = ctx.params.evaluation.horizon
    ckpt_dir = ctx.workdir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    sync = CheckpointSync(ctx, ckpt_dir)
    restored = sync.restore()
    if restored:
        logger().info("resuming from %d stored checkpoint(s) of run %s", restored, ctx.run_id)
    forecaster = ChronosForecaster(
        cfg,
        workdir=ctx.workdir / "chronos",
        checkpoint_dir=ckpt_dir,
        progress=TrainProgress(ctx, sync),
        fetch_dir=lambda uri, dest: download_prefix(uri, dest),
    )
    t0 = time.monotonic()
    fitted = forecaster.fit(train, freq, horizon)
    fit_s = time.monotonic() - t0
    sync()

    model_dir = ctx.workdir / "models" / "chronos"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    info = fitted.save(model_dir)
    info["fit_seconds"] = round(fit_s, 3)
    curve = None
    history = getattr(fitted, "training_history", None) or []
    if history:
        curve = ctx.workdir / "evaluation" / "loss_curve.png"
        curve.parent.mkdir(parents=True, exist_ok=True)
        plot_loss_curve(history, curve)
    ctx.handle and ctx.handle.check()
    prefix = layout.models_prefix(ctx.env, ctx.run_id, "chronos")
    ctx.store.upload_dir(model_dir, prefix)
    info["uri"] = ctx.store.uri(prefix)
    if curve is not None:
        key = f"{layout.evaluation_prefix(ctx.env, ctx.run_id)}/loss_curve.png"
        ctx.store.put(key, curve.read_bytes())
        info["loss_curve_uri"] = ctx.store.uri(key)
        link_artifact(f"loss-curve-{ctx.run_id}", info["loss_curve_uri"], "Chronos loss curve (PNG)")
    markdown_artifact(
        f"chronos-training-{ctx.run_id}",
        "\n".join(
            ["## Chronos training", "", "| field | value |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in info.items() if not isinstance(v, (dict, list))]
        ),
        "Chronos training summary",
    )
    logger().info("chronos model saved to %s in %.1f s of fitting", info["uri"], fit_s)
    return fitted, info
