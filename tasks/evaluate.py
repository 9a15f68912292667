"""Baselines, backtest evaluation, artifacts, metadata and the champion decision."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from chronos_flows import layout, runlog
from chronos_flows.cleaning import CleaningReport
from chronos_flows.evaluation import BacktestResult, merge_results, run_backtest, write_outputs
from chronos_flows.models.base import Forecaster
from chronos_flows.models.prophet import ProphetForecaster
from chronos_flows.models.seasonal_naive import SeasonalNaive
from chronos_flows.registry import decide_promotion, promote_outcome, read_champion
from tasks.common import Progress, RETRY_DELAYS, link_artifact, logger, markdown_artifact, retry_transient, table_artifact
from tasks.state import RunContext


def _backtest(ctx: RunContext, forecasters: dict[str, Forecaster], history: pd.DataFrame, freq: str, season: int, progress=None) -> BacktestResult:
    ev = ctx.params.evaluation
    return run_backtest(
        forecasters,
        history[["unique_id", "ds", "y"]],
        horizon=ev.horizon,
        n_windows=ev.n_windows,
        step=ev.step,
        freq=freq,
        season_length=season,
        quantiles=ev.quantiles,
        progress=progress,
    )


@task(name="train-prophet-baseline", cache_policy=NONE)
def train_prophet(ctx: RunContext, history: pd.DataFrame, freq: str, season: int) -> tuple[BacktestResult | None, dict]:
    """Fit Prophet per series and window (processes in parallel) on exactly the backtest windows."""
    if not ctx.params.prophet.enabled:
        return None, {"enabled": False}
    bar = Progress(f"prophet-progress-{ctx.run_id}", "Prophet fits (series × windows)")
    n_series = history["unique_id"].nunique()
    total = n_series * ctx.params.evaluation.n_windows
    fits = {"done": 0}

    def progress(done: int, of: int) -> None:
        fits["done"] += 1
        bar.update(fits["done"], total)

    prophet = ProphetForecaster(
        n_jobs=ctx.params.prophet.n_jobs,
        uncertainty_samples=ctx.params.prophet.uncertainty_samples,
        progress=progress,
        seed=ctx.params.chronos.seed,
    )
    t0 = time.monotonic()
    result = _backtest(ctx, {"prophet": prophet}, history, freq, season)
    seconds = time.monotonic() - t0
    failures = result.failures.get("prophet", {})
    for uid, msg in failures.items():
        logger().warning("prophet failed on series %s: %s", uid, msg)
    logger().info("prophet: %d series × %d windows in %.1f s, %d series failed", n_series, ctx.params.evaluation.n_windows, seconds, len(failures))
    return result, {"fit_seconds": round(seconds, 3), "failures": failures, "settings": prophet.settings(freq)}


@task(name="load-champion", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def load_champion(ctx: RunContext) -> tuple[dict | None, Forecaster | None]:
    """The current champion's document and, when its registry copy loads, the model itself, so it is
    scored on exactly this run's windows instead of trusting a score measured on other data."""
    from chronos_flows.errors import ChronosFlowsError
    from chronos_flows.models.chronos import ChronosForecaster

    doc, _ = read_champion(ctx.store, ctx.env)
    if doc is None or doc.get("model") != "chronos":
        return doc, None
    prefix = layout.registry_model_prefix(ctx.env, doc["run_id"], "chronos")
    local = ctx.workdir / "champion" / "chronos"
    try:
        if not ctx.store.download_dir(prefix, local):
            raise ChronosFlowsError(f"no files under {ctx.store.uri(prefix)}")
        model = ChronosForecaster.load(local, ctx.params.chronos, workdir=ctx.workdir / "champion")
    except ChronosFlowsError as exc:
        logger().warning("champion %s cannot be re-scored (%s); gating against its stored score", doc["run_id"], exc)
        return doc, None
    logger().info("champion %s loaded from %s; it is backtested on this run's windows", doc["run_id"], ctx.store.uri(prefix))
    return doc, model


@task(name="evaluate", cache_policy=NONE)
def evaluate(
    ctx: RunContext,
    history: pd.DataFrame,
    chronos: Forecaster,
    prophet_result: BacktestResult | None,
    freq: str,
    season: int,
    champion: Forecaster | None = None,
) -> BacktestResult:
    """Backtest Chronos, the current champion and Seasonal Naive on the same windows, join
    Prophet's, publish the results."""
    models: dict[str, Forecaster] = {"chronos": chronos, "seasonal_naive": SeasonalNaive(season)}
    if champion is not None:
        models["champion"] = champion
    result = _backtest(ctx, models, history, freq, season)
    if prophet_result is not None:
        result = merge_results(result, prophet_result)
    out = ctx.workdir / "evaluation"
    paths = write_outputs(result, out, history=history[["unique_id", "ds", "y"]], plot_series=ctx.params.evaluation.plot_series)
    ctx.handle and ctx.handle.check()
    prefix = layout.evaluation_prefix(ctx.env, ctx.run_id)
    ctx.store.upload_dir(out, prefix)

    board = result.leaderboard.reset_index()
    table_artifact(f"leaderboard-{ctx.run_id}", _records(board), f"Backtest leaderboard of run {ctx.run_id}")
    report = (out / "report.md").read_text()
    plot_links = [
        f"- [{name.removeprefix('plot_')}]({ctx.store.uri(prefix + '/' + str(path.relative_to(out)))})"
        for name, path in paths.items()
        if name.startswith("plot_")
    ]
    markdown_artifact(f"evaluation-report-{ctx.run_id}", report + "\n\n## Plots\n" + "\n".join(plot_links), "Evaluation report")
    for name, path in paths.items():
        if name.startswith("plot_"):
            link_artifact(f"{name.replace('_', '-')}-{ctx.run_id}", ctx.store.uri(prefix + "/" + str(path.relative_to(out))), f"forecast plot ({name.removeprefix('plot_')})")
    logger().info("evaluation: %d series, %d windows, best model %s", result.settings["n_series"], result.settings["n_windows"], result.best_model)
    return result


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in df.to_dict(orient="records"):
        out.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    return out


@task(name="results-sync", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, cache_policy=NONE)
def finalize_results(ctx: RunContext, result: BacktestResult, results: dict[str, Any], report: CleaningReport) -> dict[str, Any]:
    """Champion decision (compare-and-swap), cost estimate and model_metadata.json."""
    ev = ctx.params.evaluation
    board = _records(result.leaderboard.reset_index())
    chronos_scores = result.scores("chronos")
    prophet_scores = result.scores("prophet") if "prophet" in result.leaderboard.index else None
    champion, etag = read_champion(ctx.store, ctx.env)
    if champion is not None and "champion" in result.leaderboard.index and champion.get("run_id") == results.get("champion_run_id"):
        # re-scored on this run's windows: compare like with like
        champion = {**champion, **result.scores("champion"), "rescored": True}
    decision = decide_promotion(chronos_scores, champion, prophet_scores, gate_metric=ev.gate_metric, margin=ev.promotion_margin)
    registry_prefix = layout.registry_model_prefix(ctx.env, ctx.run_id, "chronos")
    entry = {
        "run_id": ctx.run_id,
        "model": "chronos",
        "model_uri": ctx.store.uri(registry_prefix),
        "run_model_uri": results["chronos"]["uri"],
        "family": ctx.params.chronos.family,
        "scores": chronos_scores,
    }
    ctx.handle and ctx.handle.check()
    if decision.promoted:
        # the pointer must never dangle: copy first, then swap champion.json
        ctx.store.upload_dir(ctx.workdir / "models" / "chronos", registry_prefix)
    outcome = promote_outcome(ctx.store, ctx.env, entry, decision, etag)
    if decision.promoted and not outcome.promoted:  # lost a race against a better model
        for key in ctx.store.list(registry_prefix + "/"):
            ctx.store.delete(key)
    promotion = {**outcome.decision.to_dict(), "promoted": outcome.promoted}
    logger().info("champion: %s", outcome.decision.reason)

    from chronos_flows.cost import estimate_run_cost

    hours = results.get("chronos", {}).get("instance_seconds", 0.0) / 3600.0
    cost = estimate_run_cost(ctx.params.compute.ec2, hours, ctx.params.compute.backend)
    md = runlog.ModelMetadata(
        run_id=ctx.run_id,
        env=ctx.env,
        params=ctx.params.model_dump(mode="json"),
        data_fingerprint=results["data"]["cleaned_fingerprint"],
        models={
            "chronos": results["chronos"],
            "prophet": {k: v for k, v in (results.get("prophet") or {}).items() if k != "settings"},
            "seasonal_naive": {"season_length": report.season_length},
        },
        leaderboard=board,
        promotion=promotion,
        extra={
            "dataset": results["data"],
            "cleaning": report.to_dict(),
            "backtest": result.settings,
            "timings": result.timings,
            "failures": result.failures,
            "cost_estimate": cost,
        },
    )
    runlog.save_model_metadata(ctx.store, md)
    markdown_artifact(
        f"champion-decision-{ctx.run_id}",
        f"## Champion decision\n\n**{'PROMOTED' if outcome.promoted else 'kept'}** — {outcome.decision.reason}",
        "Champion decision",
    )
    return {"leaderboard": board, "promotion": promotion, "cost": cost}
