"""Batch forecasts from the champion: every series ``horizon`` steps past its own last observation.

:func:`forecast_panel` takes a cleaned long frame (``unique_id, ds, y``), leaves out series too short
for the champion's family (with the reason), forecasts the rest in chunks of ``chunk_size`` series
(one ``predict`` call per chunk: Chronos forecasts each chunk batched on its device, the local
families fit each chunk's series in parallel processes) and hands every chunk to ``sink`` as soon as
it is ready, so peak memory is bounded by one chunk's forecasts plus the model, not by the panel.

Each forecast row: ``unique_id, ds, mean``, one column per quantile level (``"0.1"`` …), ``family``
and ``champion_run_id``. Quantile columns are sorted per step (monotone rearrangement), so they never
cross; for forecasts that are already ordered this changes nothing. Series the model could not
forecast (``last_failures``) are listed in ``skipped`` with its message; they never fail the batch.
Pure: no Prefect, no boto3.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from chronos_flows.errors import BadInputError
from chronos_flows.models.base import ID, TARGET, TIME, Forecaster, quantile_column

Sink = Callable[[pd.DataFrame], None]
Progress = Callable[[int, int], None]


@dataclass
class ForecastRun:
    #: series forecast, rows written
    n_series: int = 0
    n_rows: int = 0
    #: {unique_id: reason} for series left out
    skipped: dict[str, str] = field(default_factory=dict)
    #: seconds spent in the model's predict, and in total
    predict_seconds: float = 0.0
    total_seconds: float = 0.0
    chunks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_series": self.n_series,
            "n_rows": self.n_rows,
            "n_skipped": len(self.skipped),
            "skipped": dict(self.skipped),
            "chunks": self.chunks,
            "predict_seconds": round(self.predict_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
        }


def forecast_columns(quantiles: Sequence[float]) -> list[str]:
    return [ID, TIME, "mean", *[quantile_column(q) for q in quantiles], "family", "champion_run_id"]


def forecast_panel(
    model: Forecaster,
    history: pd.DataFrame,
    *,
    horizon: int,
    freq: str,
    quantiles: Sequence[float],
    family: str,
    champion_run_id: str,
    min_history: int = 1,
    chunk_size: int = 1000,
    sink: Sink,
    progress: Progress | None = None,
) -> ForecastRun:
    """Forecast every series of ``history`` with ``model``; each chunk's rows go to ``sink``."""
    if horizon < 1:
        raise BadInputError(f"forecast horizon must be at least 1, got {horizon}")
    if chunk_size < 1:
        raise BadInputError(f"chunk_size must be at least 1, got {chunk_size}")
    quantiles = tuple(sorted(float(q) for q in quantiles))
    if not quantiles or any(not 0 < q < 1 for q in quantiles):
        raise BadInputError(f"quantiles must be levels strictly between 0 and 1, got {list(quantiles)}")
    t_start = time.perf_counter()
    qcols = [quantile_column(q) for q in quantiles]
    # one sort for the whole panel; chunks are then selected by integer series codes
    codes, uniques = pd.factorize(history[ID].astype(str), sort=True)
    order = np.lexsort((pd.to_datetime(history[TIME]).to_numpy(), codes))
    frame = history[[ID, TIME, TARGET]].iloc[order].reset_index(drop=True)
    frame[TIME] = pd.to_datetime(frame[TIME])
    codes = codes[order]
    y = frame[TARGET].to_numpy(dtype="float32", na_value=np.nan)
    times = frame[TIME].to_numpy()
    starts = np.searchsorted(codes, np.arange(len(uniques)), side="left")
    ends = np.searchsorted(codes, np.arange(len(uniques)), side="right")
    counts = np.bincount(codes, weights=np.isfinite(y), minlength=len(uniques)).astype(int)
    run = ForecastRun()
    for code in np.flatnonzero(counts < min_history):
        run.skipped[str(uniques[code])] = f"{counts[code]} observations; a {family} forecast needs at least {min_history}"
    eligible = np.flatnonzero(counts >= min_history)
    if not len(eligible):
        raise BadInputError(
            f"no series can be forecast: every series has fewer than {min_history} observations "
            f"(the minimum for {family}); give the series more history"
        )
    done = 0
    for start in range(0, len(eligible), chunk_size):
        chunk_codes = eligible[start : start + chunk_size]
        chunk_ids = [str(uniques[c]) for c in chunk_codes]
        t0 = time.perf_counter()
        if hasattr(model, "predict_series"):  # global models take the already split series
            fc = model.predict_series(chunk_ids, [y[starts[c] : ends[c]] for c in chunk_codes],
                                      [times[ends[c] - 1] for c in chunk_codes], horizon, freq, quantiles)
        else:
            fc = model.predict(frame[np.isin(codes, chunk_codes)], horizon, freq, quantiles)
        run.predict_seconds += time.perf_counter() - t0
        failures = dict(getattr(model, "last_failures", None) or {})
        got = set(fc[ID].astype(str).unique())
        for uid in chunk_ids:
            if uid not in got:
                run.skipped[uid] = failures.get(uid, "the model returned no forecast")
        if len(fc):
            fc = fc[[ID, TIME, "mean", *qcols]].copy()
            fc[ID] = fc[ID].astype(str)
            fc[qcols] = np.sort(fc[qcols].to_numpy(dtype="float64"), axis=1)
            fc["family"] = family
            fc["champion_run_id"] = champion_run_id
            run.n_series += len(got)
            run.n_rows += len(fc)
            sink(fc.reset_index(drop=True))
        run.chunks += 1
        done += len(chunk_ids)
        if progress is not None:
            progress(done, len(eligible))
    run.total_seconds = time.perf_counter() - t_start
    return run


# ---------------------------------------------------------------------------- inputs and the champion


@dataclass(frozen=True)
class ForecastInputs:
    """What a forecast batch runs on, resolved from its parameters and the champion."""

    data: Any  # DataConfig
    cleaning: Any  # CleaningConfig
    horizon: int
    quantiles: tuple[float, ...]
    family: str
    min_history: int


def no_champion_message(env: str) -> str:
    return f"no champion in env {env}: run chronos-flows run first"


def resolve_inputs(params: Any, champion: dict[str, Any]) -> ForecastInputs:
    """Data, cleaning, horizon and quantiles of a batch: the parameters', else the champion's."""
    from chronos_flows.config import CleaningConfig, DataConfig
    from chronos_flows.models.families import MIN_HISTORY, check_family

    judged = champion.get("judged_on") or {}
    family = check_family(champion.get("family", "chronos"))
    if params.data is not None:
        data = params.data
    elif judged.get("dataset_uri"):
        # the canonical copy the champion's run stored: long unique_id, ds, y Parquet
        data = DataConfig(path=judged["dataset_uri"], format="parquet", layout="long")
    else:
        raise BadInputError(
            f"champion {champion.get('run_id')} does not record the data it was judged on (a version-1 champion); "
            f"pass the data to forecast with --data PATH"
        )
    if params.cleaning is not None:
        cleaning = params.cleaning
    elif judged.get("cleaning"):
        cleaning = CleaningConfig.model_validate(judged["cleaning"])
    else:
        cleaning = CleaningConfig()
    horizon = params.horizon or judged.get("horizon")
    if not horizon:
        raise BadInputError(f"champion {champion.get('run_id')} records no horizon; pass --horizon H")
    quantiles = params.quantiles or tuple(judged.get("quantiles") or (0.1, 0.5, 0.9))
    return ForecastInputs(data, cleaning, int(horizon), tuple(float(q) for q in quantiles), family, MIN_HISTORY[family])


def check_frequency(freq: str, champion: dict[str, Any], source: str) -> None:
    """Refuse data whose frequency differs from the one the champion was judged on."""
    import pandas as pd

    judged = (champion.get("judged_on") or {}).get("freq")
    if not judged:
        return
    same = freq == judged
    if not same:
        try:
            same = pd.tseries.frequencies.to_offset(freq) == pd.tseries.frequencies.to_offset(judged)
        except ValueError:
            same = False
    if not same:
        raise BadInputError(
            f"{source} has frequency {freq}, but the champion (run {champion.get('run_id')}, {champion.get('family')}) "
            f"was judged on {judged} data; forecast {judged} data, or train a champion on this data with chronos-flows run"
        )


def champion_forecaster(store: Any, env: str, champion: dict[str, Any], workdir: Any, *, device: str = "auto",
                        n_jobs: int = 1, progress: Progress | None = None) -> Forecaster:
    """The champion as a forecaster: a local family re-created from its config, or the Chronos model
    downloaded from its registry copy and loaded on ``device``."""
    from pathlib import Path

    from chronos_flows import layout
    from chronos_flows.config import ChronosConfig
    from chronos_flows.errors import ChronosFlowsError
    from chronos_flows.models.families import LOCAL_FAMILIES, local_forecaster

    family = champion["family"]
    if family in LOCAL_FAMILIES:
        return local_forecaster(family, champion.get("config") or {}, n_jobs=n_jobs, progress=progress)
    if family == "ensemble":  # each member re-created as a champion of its own family, then combined
        from chronos_flows.models.ensemble import ensemble_forecaster

        return ensemble_forecaster(champion, lambda member: champion_forecaster(
            store, env, member, workdir, device=device, n_jobs=n_jobs))
    from chronos_flows.models.chronos import ChronosForecaster

    prefix = layout.registry_model_prefix(env, champion["run_id"], "chronos")
    local = Path(workdir) / "champion" / "chronos"
    if not store.download_dir(prefix, local):
        raise ChronosFlowsError(
            f"the champion's model is missing: nothing under {store.uri(prefix)}; restore it from "
            f"{champion.get('run_model_uri') or 'the run directory'} or run chronos-flows run to promote a new champion"
        )
    fields = {k: v for k, v in (champion.get("config") or {}).items() if k in ChronosConfig.model_fields}
    fields["device"] = device
    cfg = ChronosConfig.model_validate(fields)
    return ChronosForecaster.load(local, cfg, workdir=Path(workdir) / "champion")


def plot_forecast_png(history: pd.DataFrame, forecasts: pd.DataFrame, uid: str, *, tail: int = 104) -> bytes:
    """PNG of one series: the last ``tail`` observations, the mean forecast and its 10-90% band."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = history[history[ID] == uid].tail(tail)
    f = forecasts[forecasts[ID] == uid]
    fig = Figure(figsize=(6, 3), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(h[TIME], h[TARGET], color="black", linewidth=1, label="history")
    ax.plot(f[TIME], f["mean"], color="tab:blue", linewidth=1.5, label="forecast")
    lo, hi = quantile_column(0.1), quantile_column(0.9)
    if lo in f.columns and hi in f.columns:
        ax.fill_between(f[TIME], f[lo], f[hi], color="tab:blue", alpha=0.25, label="10-90%")
    ax.set_title(str(uid), fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
