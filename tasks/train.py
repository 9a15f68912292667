"""Train tasks: Chronos (fine-tune or zero-shot, in-process or on an ephemeral EC2 worker).

Thin wrappers over :mod:`chronos_flows.training.fit`: ``fit_and_store`` is the one training routine;
the ``local`` backend calls it inside the flow's process (with Prefect's run logger and a progress
artifact), the ``ec2`` backend launches an instance whose user data runs
``python -m app.bootstrap``, which calls ``fit_and_store`` on the instance, next to the
GPU, without Prefect. Both write checkpoints and the model into the same store layout.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pandas as pd
from prefect import task

from blocks.store import download_prefix
from chronos_flows.core import layout
from chronos_flows.training.specs import Guard, RunSpec, TrainedChronos, no_guard
from chronos_flows.training.fit import fetch_model, fit_and_store, follow_instance, instance_info
from tasks.common import ON_TRANSIENT, Progress, image_artifact, logger, markdown_artifact
def _publish_training(spec: RunSpec, info: dict) -> None:
    if info.get("loss_curve_uri"):
        # read back from the store: on the EC2 backend the instance drew it
        got = spec.store.get(f"{layout.evaluation_prefix(spec.env, spec.run_id)}/loss_curve.png")
        if got is not None:
            image_artifact(f"loss-curve-{spec.run_id}", "Chronos loss curve", got[0], "Chronos training and validation loss",
                           note=f"Stored at `{info['loss_curve_uri']}`")
    markdown_artifact(
        f"chronos-training-{spec.run_id}",
        "\n".join(
            ["## Chronos training", "", "| field | value |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in info.items() if not isinstance(v, (dict, list))]
        ),
        "Chronos training summary",
    )


def _not_recorded(**info: Any) -> None:
    """``on_instance`` outside a run (tests): the instance is not recorded anywhere."""


@task(name="train-chronos", **{**ON_TRANSIENT, "retries": 2})
def train_chronos(spec: RunSpec, train: pd.DataFrame, freq: str, guard: Guard = no_guard, *, generation: int | None = None,
                  on_instance: Callable[..., None] = _not_recorded, outages: Any = None) -> TrainedChronos:
    """Train Chronos on the training part with the configured compute backend. ``guard`` stops it
    when the run is killed or its lock lost; on EC2, ``on_instance(instance_id=...)`` names the
    instance as soon as it is launched and ``on_instance(instance_seconds=...)`` its billed time,
    also when training fails (the flow's cleanup terminates it and prices it). Store outages during
    training are recorded in ``outages`` (the lock handle's ``OutageLog``; training.json keeps it). Never cached."""
    if spec.params.compute.backend == "ec2":
        fitted, info = train_on_ec2(spec, guard, generation=generation, on_instance=on_instance)
    else:
        bar = Progress(f"training-progress-{spec.run_id}", "Chronos training steps")
        fitted, info = fit_and_store(
            spec.params,
            spec.store,
            spec.run_id,
            spec.workdir,
            train,
            freq,
            guard=guard,
            report=lambda ev: bar.update(ev.get("step", 0), ev.get("max_steps", 0)),
            fetch_dir=lambda uri, dest: download_prefix(uri, dest),
            log=logger(),
            outages=outages,
        )
    _publish_training(spec, info)
    return TrainedChronos(model=fitted, info=info)


# ----------------------------------------------------------------------------------- EC2 backend


def train_on_ec2(spec: RunSpec, guard: Guard = no_guard, *, generation: int | None = None,
                 on_instance: Callable[..., None] = _not_recorded, poll_seconds: float = 5.0) -> tuple[Any, dict]:
    """Launch this run's GPU instance (attempt ``generation``), follow it through the store, load the model it saved."""
    from blocks.ec2 import Ec2Compute
    from chronos_flows.models.chronos.forecasters import ChronosForecaster

    cfg = spec.params.compute.ec2
    ec2 = Ec2Compute(cfg, env=spec.env, cost_center=spec.params.cost_center)
    spec.store.delete(layout.instance_result_key(spec.env, spec.run_id))  # a retried step must not read an old result
    user_data = ec2.render_user_data(spec.run_id, spec.store.url, spec.env, generation=generation)
    t_launch = time.monotonic()
    instance_id = ec2.launch(spec.run_id, user_data, attempt=generation or 0)
    on_instance(instance_id=instance_id)
    logger().info("launched %s (%s) for run %s; waiting for its result", instance_id, cfg.instance_type, spec.run_id)
    bar = Progress(f"training-progress-{spec.run_id}", f"Chronos training on {instance_id}")
    try:
        result = follow_instance(
            spec.store, spec.env, spec.run_id, ec2, instance_id, t_launch + cfg.max_runtime_minutes * 60, poll_seconds,
            check=guard,
            report=lambda ev: bar.update(ev.get("step", 0), ev.get("max_steps", 0)),
            log=logger(),
        )
    finally:
        # billed time, also for a failed run (the cost estimate in training.json uses it)
        instance_seconds = round(time.monotonic() - t_launch, 3)
        on_instance(instance_seconds=instance_seconds)
    info = instance_info(result, instance_id, cfg.instance_type, instance_seconds)
    local = fetch_model(spec.store, spec.env, spec.run_id, spec.workdir / "models" / "chronos", guard,
                        spec.params.lock.lease_seconds)
    fitted = ChronosForecaster.load(local, spec.params.chronos, workdir=spec.workdir / "chronos")
    return fitted, info
