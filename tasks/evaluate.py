"""Baselines, backtest evaluation, artifacts, metadata and the champion decision (any family)."""

from __future__ import annotations

import time
from typing import Any, Mapping

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE
from prefect.task_runners import TaskRunner

from chronos_flows.core import layout
from chronos_flows.data.cleaning import CleaningReport
from chronos_flows.config.params import TrainingParams
from chronos_flows.evaluation.backtest import BacktestResult, merge_results, run_backtest, write_outputs
from chronos_flows.evaluation.fanout import backtest_chunk, chunk_key, join_chunks, series_chunks
from chronos_flows.models.base import Forecaster
from chronos_flows.models.families import CONFIG_FAMILIES, GLOBAL_BOOST, baseline_config, baseline_jobs, local_forecaster
from chronos_flows.models.local.seasonal_naive import SeasonalNaive
from chronos_flows.champion.promotion import (
    Promotion,
    competitors,
    leaderboard_records,
    mark_not_representative,
    not_representative,
    promote_run,
)
from chronos_flows.training.fit import upload_dir_durably
from chronos_flows.training.specs import (
    BaselineRecord,
    ChampionInRun,
    DataSync,
    Guard,
    RunSpec,
    TrainedChronos,
    no_guard,
)
from chronos_flows.champion.registry import read_champion
from chronos_flows.evaluation.splits import backtest_windows, ensemble_fit_windows
from tasks.common import (
    CACHE_EXPIRATION, ON_TRANSIENT, Progress, cache_mode, embed_images, image_artifact, logger, markdown_artifact,
    table_artifact,
)


def _backtest(params: TrainingParams, forecasters: dict[str, Forecaster], history: pd.DataFrame, freq: str, season: int,
              progress=None) -> BacktestResult:
    ev = params.evaluation
    return run_backtest(
        forecasters,
        history[["unique_id", "ds", "y"]],
        horizon=ev.horizon,
        n_windows=backtest_windows(ev),
        step=ev.step,
        freq=freq,
        season_length=season,
        quantiles=ev.quantiles,
        progress=progress,
    )


def _chunk_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Data fingerprint of the chunk + model config + windows + backtest code (not n_jobs or the
    index: they change where and how fast the work runs, never its numbers)."""
    return chunk_key(parameters["family"], parameters["config"], parameters["chunk"], parameters["windows"])


@task(
    name="backtest-chunk",
    task_run_name="backtest-{family}-chunk-{index}",
    cache_key_fn=_chunk_cache_key,
    cache_expiration=CACHE_EXPIRATION,
    persist_result=True,
)
def backtest_chunk_task(family: str, config: dict, chunk: pd.DataFrame, windows: dict, n_jobs: int = 1, index: int = 0) -> BacktestResult:
    """Backtest local ``family`` on one chunk of series (in the flow's process or on a Dask worker);
    cached, so a run on unchanged data does not refit it."""
    return backtest_chunk(family, config, chunk, windows, n_jobs=n_jobs)


def backtest_baseline(
    spec: RunSpec, family: str, history: pd.DataFrame, freq: str, season: int, runner: TaskRunner
) -> BaselineRecord:
    """Backtest a local baseline (AutoETS, Theta, Prophet) on exactly the backtest windows, as one
    ``backtest-chunk`` task per ``compute.chunk_series`` series on ``runner`` (entered by the flow);
    series it cannot fit are reported, never fatal. The global ``lightgbm`` is one task on the whole
    panel (it is trained across all series, once per window); its fit time is in the phase log."""
    params = spec.params
    ev = params.evaluation
    windows = {"horizon": ev.horizon, "n_windows": backtest_windows(ev), "step": ev.step, "freq": freq,
               "season_length": season, "quantiles": list(ev.quantiles)}
    config = baseline_config(params, family, season)
    # on Dask the chunks are the parallelism (a worker fits its chunk's series one after another)
    n_jobs = 1 if params.compute.task_runner == "dask" else baseline_jobs(params, family)
    # a global family trains across the whole panel: one chunk (its windows are its work)
    chunks = series_chunks(history, params.compute.chunk_series) if family != GLOBAL_BOOST else series_chunks(history, max(history["unique_id"].nunique(), 1))
    bar = Progress(f"{family.replace('_', '-')}-progress-{spec.run_id}", f"{family} backtest chunks ({params.compute.chunk_series} series each)")
    t0 = time.monotonic()
    futures = [
        runner.submit(cache_mode(backtest_chunk_task, params.compute.cache), {"family": family, "config": config, "chunk": chunk, "windows": windows, "n_jobs": n_jobs, "index": i})
        for i, chunk in enumerate(chunks)
    ]
    parts, cached = [], 0
    for i, fut in enumerate(futures):
        parts.append(fut.result())
        cached += bool(fut.state.is_completed() and fut.state.name == "Cached")
        bar.update(i + 1, len(futures))
    result = join_chunks(parts)
    seconds = time.monotonic() - t0
    failures = result.failures.get(family, {})
    for uid, msg in failures.items():
        logger().warning("%s failed on series %s: %s", family, uid, msg)
    logger().info(
        "%s: %d series × %d windows in %.1f s (%d chunks on the %s runner, %d cached), %d series failed",
        family, result.settings["n_series"], ev.n_windows, seconds, len(chunks), params.compute.task_runner, cached, len(failures),
    )
    return BaselineRecord(family=family, result=result, fit_seconds=round(seconds, 3), config=config, failures=failures,
                          chunks=len(chunks), cached_chunks=cached)


@task(name="load-champion", **ON_TRANSIENT)
def load_champion(spec: RunSpec, season: int) -> ChampionInRun:
    """The current champion's document and, when it can be re-created, the model itself, so it is
    scored on exactly this run's windows instead of trusting a score measured on other data.
    A local-family champion whose configuration equals this run's candidate of that family is that
    candidate: it is not fitted twice."""
    from chronos_flows.core.errors import ChronosFlowsError
    from chronos_flows.models.chronos.forecasters import ChronosForecaster

    doc, _ = read_champion(spec.store, spec.env)
    if doc is None:
        return ChampionInRun()
    family = doc["family"]
    if family == "ensemble":  # re-created from its members (a Chronos member from the registry) and re-scored
        from chronos_flows.forecasting.batch import champion_forecaster

        try:
            model = champion_forecaster(spec.store, spec.env, doc, spec.workdir / "champion", device=spec.params.chronos.device,
                                        n_jobs=spec.params.autoets.n_jobs)
        except ChronosFlowsError as exc:
            logger().warning("champion %s cannot be re-created (%s); gating against its stored score", doc["run_id"], exc)
            return ChampionInRun(doc)
        return ChampionInRun(doc, model=model)
    if family in CONFIG_FAMILIES:
        if family in spec.params.evaluation.baselines and doc["config"] == baseline_config(spec.params, family, season):
            logger().info("champion %s from run %s has this run's %s configuration: scored as that candidate", family, doc["run_id"], family)
            return ChampionInRun(doc, same_as=family)
        try:
            model = local_forecaster(family, doc["config"], n_jobs=baseline_jobs(spec.params, family))
        except ChronosFlowsError as exc:
            logger().warning("champion %s cannot be re-created (%s); gating against its stored score", doc["run_id"], exc)
            return ChampionInRun(doc)
        return ChampionInRun(doc, model=model)
    prefix = layout.registry_model_prefix(spec.env, doc["run_id"], "chronos")
    local = spec.workdir / "champion" / "chronos"
    try:
        if not spec.store.download_dir(prefix, local):
            raise ChronosFlowsError(f"no files under {spec.store.uri(prefix)}")
        model = ChronosForecaster.load(local, spec.params.chronos, workdir=spec.workdir / "champion")
    except ChronosFlowsError as exc:
        logger().warning("champion %s cannot be re-scored (%s); gating against its stored score", doc["run_id"], exc)
        return ChampionInRun(doc)
    logger().info("champion %s loaded from %s; it is backtested on this run's windows", doc["run_id"], spec.store.uri(prefix))
    return ChampionInRun(doc, model=model)


@task(name="evaluate", cache_policy=NONE)
def evaluate(
    spec: RunSpec,
    history: pd.DataFrame,
    chronos: Forecaster,
    baselines: Mapping[str, BaselineRecord],
    freq: str,
    season: int,
    champion: ChampionInRun | None = None,
    guard: Guard = no_guard,
) -> BacktestResult:
    """Backtest Chronos, the current champion and Seasonal Naive on the same windows, join the
    baselines' backtests, publish the results."""
    models: dict[str, Forecaster] = {"chronos": chronos, "seasonal_naive": SeasonalNaive(season)}
    if champion is not None and champion.model is not None:
        models["champion"] = champion.model
    result = _backtest(spec.params, models, history, freq, season)
    for other in baselines.values():
        result = merge_results(result, other.result)
    # a random-initialised Chronos is scored, marked, and kept out of the ensemble and the champion race
    result = mark_not_representative(result, not_representative(getattr(chronos, "info", None)))
    if spec.params.evaluation.ensemble:  # fitted on the extra first window; every model judged on the others
        from chronos_flows.evaluation.ensemble import add_ensemble

        members = competitors(spec.params, result, ["chronos", *spec.params.evaluation.baselines])
        result = add_ensemble(result, history[["unique_id", "ds", "y"]], candidates=members,
                              gate_metric=spec.params.evaluation.gate_metric, fit_windows=ensemble_fit_windows(spec.params.evaluation),
                              shrinkage=spec.params.evaluation.ensemble_shrinkage,
                              metrics=spec.params.evaluation.ensemble_metrics)
    out = spec.workdir / "evaluation"
    paths = write_outputs(result, out, history=history[["unique_id", "ds", "y"]], plot_series=spec.params.evaluation.plot_series)
    guard()
    prefix = layout.evaluation_prefix(spec.env, spec.run_id)
    upload_dir_durably(spec.store, out, prefix, guard, spec.params.lock.lease_seconds)  # waits out a store outage

    table_artifact(f"leaderboard-{spec.run_id}", leaderboard_records(result), f"Backtest leaderboard of run {spec.run_id}")
    # The UI cannot open store paths: the report's plots (relative paths in the stored report.md)
    # and each plot artifact carry the PNG itself as a data URI.
    plots = {name: path for name, path in paths.items() if name.startswith("plot_")}
    pngs = {name: path.read_bytes() for name, path in plots.items()}
    report = embed_images((out / "report.md").read_text(), {path.relative_to(out).as_posix(): pngs[name] for name, path in plots.items()})
    markdown_artifact(f"evaluation-report-{spec.run_id}", report, "Evaluation report (plots embedded)")
    for name, path in plots.items():
        label = name.removeprefix("plot_")
        uri = spec.store.uri(prefix + "/" + path.relative_to(out).as_posix())
        image_artifact(f"{name.replace('_', '-')}-{spec.run_id}", f"Forecast plot: {label} series", pngs[name],
                       f"Backtest forecast plot ({label} series)", note=f"Stored at `{uri}`")
    notes = result.settings.get("not_representative") or {}
    for model, row in result.leaderboard.iterrows():
        logger().info(
            "%s: wql %.4g, mase %.4g, mae %.4g, coverage_80 %.2f%s",
            model, row.get("wql", float("nan")), row.get("mase", float("nan")), row.get("mae", float("nan")), row.get("coverage_80", float("nan")),
            f" ({notes[model]})" if model in notes else "",
        )
    logger().info("evaluation: %d series, %d windows, best model %s", result.settings["n_series"], result.settings["n_windows"], result.best_model)
    return result


@task(name="results-sync", **ON_TRANSIENT)
def finalize_results(
    spec: RunSpec,
    result: BacktestResult,
    report: CleaningReport,
    data: DataSync,
    chronos: TrainedChronos,
    baselines: Mapping[str, BaselineRecord],
    champion: ChampionInRun | None = None,
    guard: Guard = no_guard,
) -> Promotion:
    """Champion decision over every family (compare-and-swap), cost estimate and model_metadata.json
    (:func:`chronos_flows.champion.promotion.promote_run`); the decision as an artifact."""
    done = promote_run(spec, result, report, data, chronos, baselines, champion, guard=guard)
    _publish_decision(spec.run_id, done)
    return done


def _publish_decision(run_id: str, done: Promotion) -> None:
    final = done.decision
    logger().info("champion: %s", done.promotion["reason"])
    rows = "\n".join(f"| {n} | {v:.4g} |" for n, v in final.candidate_scores.items())
    markdown_artifact(
        f"champion-decision-{run_id}",
        f"## Champion decision\n\n**{'PROMOTED' if done.promoted else 'kept'}** — {done.promotion['reason']}\n\n"
        f"| candidate | {final.gate_metric} |\n|---|---|\n{rows}\n",
        "Champion decision",
    )
