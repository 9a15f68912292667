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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import ID, TARGET, TIME, Forecaster, future_index, quantile_column

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
    """Forecast every series of ``history`` with ``model``; each chunk's rows go to ``sink``.

    Series go out in ``unique_id`` order. The panel itself is not copied when each series' rows
    are contiguous and time-sorted (what ingest and cleaning produce): the model reads views of one
    float32 copy of ``y``; only an unsorted panel is sorted (into arrays, not a frame)."""
    quantiles = check_request(horizon, chunk_size, quantiles)
    t_start = time.perf_counter()
    qcols = [quantile_column(q) for q in quantiles]
    series = split_series(history)
    run = ForecastRun()
    eligible = eligible_series(series, run, min_history, family)
    futures: dict[int, np.ndarray] = {}  # future timestamps (int ns) per distinct last observation
    done = 0
    for start in range(0, len(eligible), chunk_size):
        chunk = eligible[start : start + chunk_size]
        if hasattr(model, "predict_arrays"):  # global models: one batched call on views of the split series
            fc, got_n = _predict_arrays_chunk(model, series, chunk, run, horizon, freq, quantiles, qcols, futures,
                                              family=family, champion_run_id=champion_run_id)
        else:
            fc, got_n = _predict_frame_chunk(model, history, series, chunk, run, horizon, freq, quantiles, qcols,
                                             family=family, champion_run_id=champion_run_id)
        if len(fc):
            run.n_series += got_n
            run.n_rows += len(fc)
            sink(fc)
        del fc
        run.chunks += 1
        done += len(chunk)
        if progress is not None:
            progress(done, len(eligible))
    run.total_seconds = time.perf_counter() - t_start
    return run


def check_request(horizon: int, chunk_size: int, quantiles: Sequence[float]) -> tuple[float, ...]:
    """BadInputError for a horizon or chunk size below 1 or a quantile level outside (0, 1);
    returns the levels sorted."""
    if horizon < 1:
        raise BadInputError(f"forecast horizon must be at least 1, got {horizon}")
    if chunk_size < 1:
        raise BadInputError(f"chunk_size must be at least 1, got {chunk_size}")
    quantiles = tuple(sorted(float(q) for q in quantiles))
    if not quantiles or any(not 0 < q < 1 for q in quantiles):
        raise BadInputError(f"quantiles must be levels strictly between 0 and 1, got {list(quantiles)}")
    return quantiles


def eligible_series(series: SeriesSplit, run: ForecastRun, min_history: int, family: str) -> np.ndarray:
    """The indices of the series with at least ``min_history`` observations; the others go to
    ``run.skipped`` with the reason. BadInputError if no series is long enough."""
    counts = series.counts
    for k in np.flatnonzero(counts < min_history):
        run.skipped[str(series.uniques[k])] = f"{counts[k]} observations; a {family} forecast needs at least {min_history}"
    eligible = np.flatnonzero(counts >= min_history)
    if not len(eligible):
        raise BadInputError(
            f"no series can be forecast: every series has fewer than {min_history} observations "
            f"(the minimum for {family}); give the series more history"
        )
    return eligible


def _predict_arrays_chunk(model: Any, series: SeriesSplit, chunk: np.ndarray, run: ForecastRun, horizon: int, freq: str,
                          quantiles: tuple[float, ...], qcols: list[str], futures: dict[int, np.ndarray], *,
                          family: str, champion_run_id: str) -> tuple[pd.DataFrame, int]:
    """Forecast the series ``chunk`` with one ``predict_arrays`` call on views of ``series.y``;
    returns the chunk's forecast rows and the number of series forecast (all of them)."""
    starts, ends = series.starts, series.ends
    t0 = time.perf_counter()
    y = series.y
    mean, q = model.predict_arrays([y[a:b] for a, b in zip(starts[chunk].tolist(), ends[chunk].tolist())],
                                   horizon, quantiles)
    run.predict_seconds += time.perf_counter() - t0
    n = len(chunk)
    q = np.asarray(q).reshape(n * horizon, len(qcols))
    if not (q[:, 1:] >= q[:, :-1]).all():  # sorting costs more than checking
        q = np.sort(q, axis=1)
    fc = pd.DataFrame({
        ID: np.repeat(series.uniques[chunk], horizon),
        TIME: series.future_times(ends[chunk] - 1, horizon, freq, futures),
        "mean": np.asarray(mean, dtype="float64").reshape(-1),
        **dict(zip(qcols, q.astype("float64").T)),
        "family": np.repeat(np.array([family], dtype=object), n * horizon),
        "champion_run_id": np.repeat(np.array([champion_run_id], dtype=object), n * horizon),
    })
    return fc, n


def _predict_frame_chunk(model: Forecaster, history: pd.DataFrame, series: SeriesSplit, chunk: np.ndarray,
                         run: ForecastRun, horizon: int, freq: str, quantiles: tuple[float, ...], qcols: list[str],
                         *, family: str, champion_run_id: str) -> tuple[pd.DataFrame, int]:
    """Forecast the series ``chunk`` with ``predict_series`` (the split series) or ``predict`` (their
    rows of ``history``); series without a forecast go to ``run.skipped``. Returns the chunk's rows
    (quantiles sorted per step) and the number of series forecast."""
    chunk_ids = series.uniques[chunk]
    starts, ends = series.starts, series.ends
    t0 = time.perf_counter()
    if hasattr(model, "predict_series"):  # global models take the already split series
        fc = model.predict_series(list(chunk_ids), [series.y[starts[k] : ends[k]] for k in chunk],
                                  list(series.stamps(ends[chunk] - 1)), horizon, freq, quantiles)
        failures: Mapping[str, str] = {}  # a global model forecasts every series it is given
    else:
        got_fc = model.forecast(series.frame(history, chunk), horizon, freq, quantiles)
        fc, failures = got_fc.frame, got_fc.failures
    run.predict_seconds += time.perf_counter() - t0
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
        fc = fc.reset_index(drop=True)
    return fc, len(got)


@dataclass
class SeriesSplit:
    """The panel split into series: series ``k`` (``uniques`` sorted) is rows ``starts[k]:ends[k]``
    of the time-sorted arrays ``y`` (float32) and ``t`` (int64 ns; UTC for tz-aware data);
    ``perm`` maps those rows to the rows of the input frame (``None``: the same rows)."""

    uniques: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    counts: np.ndarray
    y: np.ndarray
    t: np.ndarray
    perm: np.ndarray | None
    tz: Any
    times: pd.DatetimeIndex

    def stamps(self, rows: np.ndarray) -> pd.DatetimeIndex:
        return self._index(self.t[rows])

    def _index(self, ns: np.ndarray) -> pd.DatetimeIndex:
        idx = pd.DatetimeIndex(np.asarray(ns, dtype="int64").view("datetime64[ns]"))
        return idx.tz_localize("UTC").tz_convert(self.tz) if self.tz is not None else idx

    def future_times(self, rows: np.ndarray, horizon: int, freq: str, cache: dict[int, np.ndarray]) -> Any:
        """The ``horizon`` timestamps after each of rows ``rows``, flattened series by series;
        ``future_index`` runs once per distinct last observation (usually once per panel)."""
        lasts = self.t[rows]
        distinct, inverse = np.unique(lasts, return_inverse=True)
        for v in distinct:
            v = int(v)
            if v not in cache:
                cache[v] = future_index(self._index(np.array([v]))[0], horizon, freq).as_unit("ns").asi8
        ns = np.stack([cache[int(v)] for v in distinct])[inverse.reshape(-1)].reshape(-1)
        return self._index(ns) if self.tz is not None else ns.view("datetime64[ns]")

    def frame(self, history: pd.DataFrame, chunk: np.ndarray) -> pd.DataFrame:
        """The long frame of the series ``chunk`` (for models that take a frame)."""
        lens = self.ends[chunk] - self.starts[chunk]
        rows = np.arange(lens.sum()) + np.repeat(self.starts[chunk] - (np.cumsum(lens) - lens), lens)
        src = rows if self.perm is None else self.perm[rows]
        return pd.DataFrame({ID: np.repeat(self.uniques[chunk], lens), TIME: self.times[src],
                             TARGET: history[TARGET].to_numpy()[src]})


def split_series(history: pd.DataFrame) -> SeriesSplit:
    """Split ``history`` into series without copying the frame (see :class:`SeriesSplit`)."""
    times = pd.DatetimeIndex(history[TIME])
    if times.unit != "ns":
        times = times.as_unit("ns")
    t = times.asi8
    y_raw = history[TARGET].to_numpy()
    ids = history[ID].to_numpy()
    n = len(ids)
    # the usual case: each series one contiguous, time-sorted run of rows
    bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1 if n > 1 else np.array([], dtype=np.int64)
    run_starts = np.concatenate(([0], bounds)).astype(np.int64) if n else np.array([], dtype=np.int64)
    run_ids = ids[run_starts].astype(str).astype(object)
    grouped = len(pd.unique(run_ids)) == len(run_ids)
    if grouped and n > 1:
        dt = np.diff(t)
        dt[bounds - 1] = 0
        grouped = bool((dt >= 0).all())
    if grouped:
        run_ends = np.append(run_starts[1:], n) if n else run_starts
        y = y_raw.astype("float32")
        finite = np.isfinite(y)
        if finite.all():
            run_counts = run_ends - run_starts
        else:
            run_counts = np.add.reduceat(finite.astype(np.int64), run_starts) if n else run_starts
        order = np.argsort(run_ids, kind="stable")
        return SeriesSplit(run_ids[order], run_starts[order], run_ends[order], np.asarray(run_counts[order], dtype=int),
                       y, t, None, times.tz, times)
    codes, uniques = pd.factorize(history[ID].astype(str), sort=True)
    perm = np.lexsort((t, codes))
    codes = codes[perm]
    y = np.asarray(y_raw[perm], dtype="float32")
    keys = np.arange(len(uniques))
    starts = np.searchsorted(codes, keys, side="left")
    ends = np.searchsorted(codes, keys, side="right")
    counts = np.bincount(codes, weights=np.isfinite(y), minlength=len(uniques)).astype(int)
    return SeriesSplit(np.asarray(uniques, dtype=object), starts, ends, counts, y, t[perm], perm, times.tz, times)


class ParquetSink:
    """A :data:`Sink` that appends each chunk to one local Parquet file (``pyarrow.parquet.ParquetWriter``,
    one row group per chunk) and keeps only a bounded preview for artifacts: the first ``head_rows``
    rows and every row of the first ``preview_series`` series. Nothing else of the output stays in
    memory. The file is complete once :meth:`close` returns; call it in a ``finally``."""

    def __init__(self, path: Any, columns: Sequence[str], *, head_rows: int = 20, preview_series: int = 3) -> None:
        self.path = path
        self.columns = list(columns)
        self.head_rows = head_rows
        self.preview_series = preview_series
        self.rows = 0
        self.largest_chunk = 0
        self._writer: Any = None
        self._schema: Any = None
        self._head: list[pd.DataFrame] = []
        self._head_n = 0
        self._series: list[pd.DataFrame] = []
        self._series_ids: set[str] = set()

    def __call__(self, chunk: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(chunk[self.columns], schema=self._schema, preserve_index=False)
        if self._writer is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self.path, self._schema)
        self._writer.write_table(table)
        self.rows += len(chunk)
        self.largest_chunk = max(self.largest_chunk, len(chunk))
        if self._head_n < self.head_rows:
            part = chunk.iloc[: self.head_rows - self._head_n][self.columns].copy()
            self._head.append(part)
            self._head_n += len(part)
        need = self.preview_series - len(self._series_ids)
        if need > 0:
            ids = sorted(set(chunk[ID].unique()) - self._series_ids)[:need]
            if ids:
                self._series.append(chunk.loc[chunk[ID].isin(ids), self.columns].copy())
                self._series_ids.update(ids)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    @property
    def head(self) -> pd.DataFrame:
        """The first ``head_rows`` rows of the file."""
        return pd.concat(self._head, ignore_index=True) if self._head else pd.DataFrame(columns=self.columns)

    @property
    def preview(self) -> pd.DataFrame:
        """Every row of the first ``preview_series`` series written (in ``unique_id`` order)."""
        return pd.concat(self._series, ignore_index=True) if self._series else pd.DataFrame(columns=self.columns)


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
    from chronos_flows.config.params import CleaningConfig, DataConfig
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


def history_forecaster(store: Any, champion: dict[str, Any], *, n_jobs: int = 1, progress: Progress | None = None) -> Forecaster:
    """A champion of a family that needs the panel's history (champion.json ``needs_history``):
    re-created from its config and trained on the cleaned panel it was judged on (the registry
    copy), so every later ``predict`` applies that one model to the context it is given."""
    from chronos_flows.core.errors import ChronosFlowsError
    from chronos_flows.data.ingest import from_parquet_bytes
    from chronos_flows.models.families import local_forecaster

    family = champion["family"]
    record = champion.get("needs_history") or {}
    judged = champion.get("judged_on") or {}
    if not record.get("key") or not judged.get("freq") or not judged.get("horizon"):
        raise ChronosFlowsError(
            f"champion {champion.get('run_id')} ({family}) needs the panel's history but champion.json does not say "
            f"where it is (needs_history.key, judged_on.freq/horizon); run chronos-flows run to promote a new champion"
        )
    got = store.get(record["key"])
    if got is None:
        raise ChronosFlowsError(
            f"the history the {family} champion {champion.get('run_id')} is trained on is missing: nothing at "
            f"{store.uri(record['key'])}; run chronos-flows run to promote a new champion"
        )
    history = from_parquet_bytes(got[0])[["unique_id", "ds", "y"]]
    history = history.assign(ds=pd.to_datetime(history["ds"]))
    model = local_forecaster(family, champion.get("config") or {}, n_jobs=n_jobs, progress=progress)
    return model.fit(history, str(judged["freq"]), int(judged["horizon"]))


def champion_forecaster(store: Any, env: str, champion: dict[str, Any], workdir: Any, *, device: str = "auto",
                        n_jobs: int = 1, progress: Progress | None = None) -> Forecaster:
    """The champion as a forecaster: a local family re-created from its config, a global family
    (``lightgbm``) re-created and trained on its panel's history (:func:`history_forecaster`), or
    the Chronos model downloaded from its registry copy and loaded on ``device``."""
    from pathlib import Path

    from chronos_flows.core import layout
    from chronos_flows.config.params import ChronosConfig
    from chronos_flows.core.errors import ChronosFlowsError
    from chronos_flows.models.families import LOCAL_FAMILIES, NEEDS_HISTORY, local_forecaster

    family = champion["family"]
    if family in LOCAL_FAMILIES:
        return local_forecaster(family, champion.get("config") or {}, n_jobs=n_jobs, progress=progress)
    if family in NEEDS_HISTORY:  # a global model: trained on the panel it was judged on, then applied
        return history_forecaster(store, champion, n_jobs=n_jobs, progress=progress)
    if family == "ensemble":  # each member re-created as a champion of its own family, then combined
        from chronos_flows.models.ensemble import ensemble_forecaster

        return ensemble_forecaster(champion, lambda member: champion_forecaster(
            store, env, {**member, "judged_on": champion.get("judged_on"), "needs_history": champion.get("needs_history")},
            workdir, device=device, n_jobs=n_jobs))
    from chronos_flows.models.chronos.forecasters import ChronosForecaster

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
