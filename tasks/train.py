"""Train tasks: Chronos (fine-tune or zero-shot, in-process or on an ephemeral EC2 worker).

Thin wrappers over :mod:`chronos_flows.training`: ``fit_and_store`` is the one training routine;
the ``local`` backend calls it inside the flow's process (with Prefect's run logger and a progress
artifact), the ``ec2`` backend launches an instance whose user data runs
``python -m chronos_flows.bootstrap``, which calls ``fit_and_store`` on the instance, next to the
GPU, without Prefect. Both write checkpoints and the model into the same store layout.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from blocks.store import download_prefix
from chronos_flows import layout
from chronos_flows.training import fit_and_store, follow_instance, instance_info
from tasks.common import Progress, RETRY_DELAYS, image_artifact, logger, markdown_artifact, retry_transient
from tasks.state import RunContext


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
            fetch_dir=lambda uri, dest: download_prefix(uri, dest),
            log=logger(),
        )
    _publish_training(ctx, info)
    return fitted, info


# ----------------------------------------------------------------------------------- EC2 backend


def train_on_ec2(ctx: RunContext, poll_seconds: float = 5.0) -> tuple[Any, dict]:
    """Launch this run's GPU instance, follow it through the store, load the model it saved."""
    from blocks.ec2 import Ec2Compute
    from chronos_flows.models.chronos import ChronosForecaster

    cfg = ctx.params.compute.ec2
    handle = ctx.handle
    generation = handle.generation if handle else None
    ec2 = Ec2Compute(cfg, env=ctx.env, cost_center=ctx.params.cost_center)
    ctx.store.delete(layout.instance_result_key(ctx.env, ctx.run_id))  # a retried step must not read an old result
    user_data = ec2.render_user_data(ctx.run_id, ctx.store.url, ctx.env, generation=generation)
    t_launch = time.monotonic()
    instance_id = ec2.launch(ctx.run_id, user_data, attempt=generation or 0)
    ctx.info["instance_id"] = instance_id
    if handle is not None:
        handle.update_info(instance_id=instance_id)
    logger().info("launched %s (%s) for run %s; waiting for its result", instance_id, cfg.instance_type, ctx.run_id)
    bar = Progress(f"training-progress-{ctx.run_id}", f"Chronos training on {instance_id}")
    try:
        result = follow_instance(
            ctx.store, ctx.env, ctx.run_id, ec2, instance_id, t_launch + cfg.max_runtime_minutes * 60, poll_seconds,
            check=lambda: ctx.handle.check() if ctx.handle is not None else None,
            report=lambda ev: bar.update(ev.get("step", 0), ev.get("max_steps", 0)),
            log=logger(),
        )
    finally:
        # billed time, also for a failed run (the cost estimate in training.json uses it)
        ctx.info["instance_seconds"] = round(time.monotonic() - t_launch, 3)
    info = instance_info(result, instance_id, cfg.instance_type, ctx.info["instance_seconds"])
    local = ctx.workdir / "models" / "chronos"
    ctx.store.download_dir(layout.models_prefix(ctx.env, ctx.run_id, "chronos"), local)
    fitted = ChronosForecaster.load(local, ctx.params.chronos, workdir=ctx.workdir / "chronos")
    return fitted, info
