"""What the local (per-series) families share: the per-series jobs of a context frame, the output
frame, the argument checks, and the statsforecast-backed forecaster (AutoETS, AutoTheta).

* :func:`series_jobs` sorts and splits a long frame into ``(uid, ds, y)`` jobs (and each series'
  last timestamp); :func:`assemble` turns ``{uid: array[h, 1+Q]}`` back into the long output frame
  (``unique_id, ds, mean, <quantile columns>``), series in sorted order.
* :func:`statsforecast_one` fits one statsforecast model on one series and returns
  ``(uid, array | None, error | None)`` (never raises: it runs inside worker processes). Quantile
  level ``q`` is the bound of statsforecast's ``100·|1-2q|`` % interval (lower below 0.5, upper
  above), ``0.5`` the point forecast; quantile columns are sorted per step so they never cross.
* :class:`StatsForecastForecaster` is the forecaster of such a family: subclasses name the family,
  the statsforecast model (``build``) and the settings that determine the forecasts. A panel is
  fitted by ``statsforecast.StatsForecast(models, freq, n_jobs, fallback_model)``; the fallback
  (:class:`NoForecast`) answers a series whose fit raised with NaNs, so one bad series never fails
  the panel, and each such series is then refitted alone here to record why it failed.
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.local.parallel import Progress
from chronos_flows.models.base import (
    DEFAULT_QUANTILES,
    ID,
    TARGET,
    TIME,
    Forecast,
    Forecaster,
    future_index,
    quantile_column,
    require_long_frame,
    sort_by_series,
)


def series_jobs(context: pd.DataFrame) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], dict[str, pd.Timestamp]]:
    """``[(uid, ds, y), ...]`` in sorted series order, and each series' last timestamp."""
    jobs = [
        (uid, g[TIME].to_numpy(), g[TARGET].to_numpy(dtype=float))
        for uid, g in context.sort_values([ID, TIME], kind="stable").groupby(ID, sort=True)
    ]
    return jobs, {uid: pd.Timestamp(ds[-1]) for uid, ds, _ in jobs}


def assemble(results: Mapping[str, np.ndarray], last: Mapping[str, pd.Timestamp], horizon: int, freq: str,
             qcols: Sequence[str]) -> pd.DataFrame:
    """The long output frame of ``results`` (``{uid: array[h, 1+Q]}``: mean, then the quantiles)."""
    parts = []
    for uid in sorted(results):
        arr = results[uid]
        frame = pd.DataFrame(arr[:, 1:], columns=list(qcols))
        frame.insert(0, "mean", arr[:, 0])
        frame.insert(0, TIME, future_index(last[uid], horizon, freq))
        frame.insert(0, ID, uid)
        parts.append(frame)
    if not parts:
        return pd.DataFrame(columns=[ID, TIME, "mean", *qcols])
    return pd.concat(parts, ignore_index=True)


def check_predict_args(label: str, context: pd.DataFrame, horizon: int, freq: str, quantiles: Sequence[float]) -> None:
    """Refuse what no series could be forecast from, naming the argument and the fix."""
    require_long_frame(context)
    if len(context) == 0:
        raise BadInputError(f"{label} got an empty context frame (no rows): pass at least one series with history")
    if int(horizon) < 1:
        raise BadInputError(f"{label} horizon must be at least 1, got {horizon}")
    try:
        pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        raise BadInputError(f"unknown frequency {freq!r}; pass a pandas alias such as 'W-MON', 'MS', 'QS'") from None
    bad = [q for q in quantiles if not 0.0 < float(q) < 1.0]
    if bad:
        raise BadInputError(f"{label} quantile levels must lie strictly between 0 and 1, got {bad}")


def interval_key(q: float) -> tuple[str, float | int] | None:
    """Which statsforecast interval bound is quantile level ``q``: ``("lo", 80)`` for 0.1,
    ``("hi", 80)`` for 0.9, ``None`` for 0.5 (the point forecast)."""
    q = float(q)
    if q == 0.5:
        return None
    level: float | int = round(100.0 * abs(1.0 - 2.0 * q), 6)
    if float(level).is_integer():
        level = int(level)
    return ("lo" if q < 0.5 else "hi"), level


def statsforecast_one(uid: str, y: np.ndarray, horizon: int, quantiles: Sequence[float], label: str,
                      make_model: Callable[[], Any]) -> tuple[str, np.ndarray | None, str | None]:
    """Fit ``make_model()`` on one series: ``(uid, array[h, 1+Q] = mean + quantiles, None)`` or
    ``(uid, None, error message)``. Never raises (runs inside worker processes)."""
    try:
        keys = [interval_key(q) for q in quantiles]
        levels = sorted({k[1] for k in keys if k is not None})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statsforecast's divide-by-zero RuntimeWarnings on tiny fits
            out = make_model().forecast(y=np.asarray(y, dtype=float), h=int(horizon), level=levels or None)
        mean = np.asarray(out["mean"], dtype=float)
        qs = np.column_stack(
            [mean if k is None else np.asarray(out[f"{k[0]}-{k[1]}"], dtype=float) for k in keys]
        ) if keys else np.empty((len(mean), 0))
        if mean.shape != (horizon,) or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(qs)):
            return uid, None, f"{label} produced non-finite forecasts"
        order = np.argsort(np.asarray([float(q) for q in quantiles]), kind="stable")
        ordered = np.empty_like(qs)
        ordered[:, order] = np.sort(qs, axis=1)  # never crossing, whatever order quantiles come in
        return uid, np.column_stack([mean, ordered]), None
    except Exception as exc:  # noqa: BLE001 - a failing series is reported, never fatal
        msg = f"{type(exc).__name__}: {exc}".strip()
        return uid, None, msg[:500]


def _statsforecast_frame(fc: pd.DataFrame, alias: str, quantiles: Sequence[float]) -> tuple[pd.DataFrame, list[str]]:
    """StatsForecast's output (``forecast`` or ``cross_validation``) as our long frame (``cutoff`` kept
    when present), quantile columns sorted per step so they never cross; and the series with a
    non-finite value (in that cutoff), which are left out of the frame."""
    fc = fc.reset_index() if ID not in fc.columns else fc
    keys = [interval_key(q) for q in quantiles]
    cols = [alias if k is None else f"{alias}-{k[0]}-{k[1]}" for k in keys]
    mean = fc[alias].to_numpy(dtype=float)
    qs = fc[cols].to_numpy(dtype=float).reshape(-1, len(cols))
    order = np.argsort(np.asarray(quantiles), kind="stable")
    ordered = np.empty_like(qs)
    ordered[:, order] = np.sort(qs, axis=1)
    group = [fc[ID].to_numpy()] + ([fc["cutoff"].to_numpy()] if "cutoff" in fc.columns else [])
    ok_row = np.isfinite(mean) & np.isfinite(qs).all(axis=1)
    ok = ok_row if ok_row.all() else pd.Series(ok_row).groupby(group).transform("all").to_numpy()
    out = pd.DataFrame({ID: fc[ID].astype(str).to_numpy(), TIME: fc[TIME].to_numpy(), "mean": mean})
    if "cutoff" in fc.columns:
        out["cutoff"] = fc["cutoff"].to_numpy()
    out[[quantile_column(q) for q in quantiles]] = ordered
    return out[ok], [str(u) for u in pd.unique(fc.loc[~ok, ID])]


class NoForecast:
    """statsforecast's ``fallback_model`` for a series whose fit raised: NaN forecasts (mean and every
    requested interval), which :meth:`StatsForecastForecaster.predict` recognises as a failure."""

    alias = "NoForecast"

    def __repr__(self) -> str:
        return self.alias

    def new(self) -> "NoForecast":
        return NoForecast()

    def forecast(self, h: int, y: Any = None, X: Any = None, X_future: Any = None, level: Any = (), fitted: bool = False):
        nan = np.full(int(h), np.nan)
        out = {"mean": nan}
        for lv in level or ():
            out[f"lo-{lv}"] = nan
            out[f"hi-{lv}"] = nan
        return out


def check_season_and_jobs(label: str, season_length: Any, n_jobs: Any) -> int:
    """The validated season length (an integer >= 1); ``n_jobs`` must be at least 1."""
    try:
        season_length = int(season_length)
    except (TypeError, ValueError):
        raise BadInputError(f"{label} season_length must be an integer, got {season_length!r}") from None
    if season_length < 1:
        raise BadInputError(f"{label} season_length must be at least 1, got {season_length}")
    if int(n_jobs) < 1:
        raise BadInputError(f"{label} n_jobs must be at least 1, got {n_jobs}")
    return season_length


class StatsForecastForecaster(Forecaster):
    """A statsforecast model fitted per series by ``StatsForecast`` in ``n_jobs`` processes;
    subclasses set ``label`` (used in messages), ``build`` (a static ``fn(settings)`` returning the
    statsforecast model) and ``defaults`` (their settings besides ``season_length``, with the value
    an absent one takes), and validate those in ``__init__``. A series whose fit fails (or gives
    non-finite forecasts) is left out of the frame and recorded in ``last_failures`` with the
    model's own message; ``last_seconds`` is the wall time of the last call."""

    label = "statsforecast"
    build: Callable[[Mapping[str, Any]], Any]
    #: the model's own settings besides ``season_length`` and their defaults (attributes of the instance)
    defaults: Mapping[str, Any] = {}

    def __init__(self, season_length: Any, n_jobs: int, progress: Progress | None) -> None:
        self.season_length = check_season_and_jobs(self.label, season_length, n_jobs)
        self.n_jobs = int(n_jobs)
        self.progress = progress
        self.last_failures: dict[str, str] = {}
        #: Wall-clock seconds of the last predict call (fit + forecast of every series).
        self.last_seconds: float = 0.0

    @classmethod
    def setting_keys(cls) -> tuple[str, ...]:
        return ("season_length", *cls.defaults)

    def settings(self) -> dict[str, Any]:
        """The configuration that determines the forecasts (JSON-able); runtime options
        (``n_jobs``, ``progress``) are not part of it."""
        return {key: getattr(self, key) for key in self.setting_keys()}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **runtime: Any) -> "StatsForecastForecaster":
        """Re-create a forecaster from :meth:`settings` output (absent keys take ``defaults``);
        ``runtime`` passes ``n_jobs`` / ``progress``."""
        unknown = sorted(set(settings) - set(cls.setting_keys()))
        if unknown:
            raise BadInputError(f"unknown {cls.label} setting(s) {unknown}; expected {list(cls.setting_keys())}")
        if "season_length" not in settings:
            raise BadInputError(f"{cls.label} settings need season_length; got {dict(settings)}")
        return cls(settings["season_length"], **{k: settings.get(k, d) for k, d in cls.defaults.items()}, **runtime)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({fields}, n_jobs={self.n_jobs})"

    def predict(self, context: pd.DataFrame, horizon: int, freq: str,
                quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.DataFrame:
        from statsforecast import StatsForecast

        check_predict_args(self.label, context, horizon, freq, quantiles)
        t0 = time.perf_counter()
        horizon = int(horizon)
        quantiles = tuple(float(q) for q in quantiles)
        keys = [interval_key(q) for q in quantiles]
        levels = sorted({k[1] for k in keys if k is not None})
        frame = context[[ID, TIME, TARGET]].astype({TARGET: "float64"}).sort_values([ID, TIME], kind="stable")  # as fitted alone
        # statsforecast refuses a whole panel with a missing value: such series are fitted alone below
        finite = frame.groupby(ID, sort=False)[TARGET].transform(lambda s: bool(np.isfinite(s.to_numpy(dtype=float)).all()))
        good, bad_ids = frame[finite.astype(bool)], sorted(frame.loc[~finite.astype(bool), ID].unique())
        settings = self.settings()
        n_series = frame[ID].nunique()
        # a daemonic process (a Dask worker, a pool worker) may not start children
        n_jobs = 1 if multiprocessing.current_process().daemon else self.n_jobs
        parts: list[pd.DataFrame] = []
        qcols = [quantile_column(q) for q in quantiles]
        if len(good):
            model = type(self).build(settings)
            sf = StatsForecast(models=[model], freq=freq, n_jobs=min(n_jobs, good[ID].nunique()), fallback_model=NoForecast())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # statsforecast's divide-by-zero RuntimeWarnings on tiny fits
                fc = sf.forecast(df=good, h=horizon, level=levels or None)
            out, failed = _statsforecast_frame(fc, repr(model), quantiles)
            bad_ids.extend(failed)
            parts.append(out)
        failures: dict[str, str] = {}
        for uid in sorted(set(bad_ids)):  # why each failed, in the model's own words
            y = frame.loc[frame[ID] == uid, TARGET].to_numpy(dtype=float)
            _, out, err = statsforecast_one(uid, y, horizon, quantiles, self.label, lambda: type(self).build(settings))
            failures[uid] = err or f"{self.label} produced non-finite forecasts"
        if self.progress is not None:
            self.progress(n_series, n_series)
        self.last_failures = failures
        out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[ID, TIME, "mean", *qcols])
        out = out.sort_values([ID, TIME], kind="stable", ignore_index=True)
        self.last_seconds = time.perf_counter() - t0
        return out

    def forecast_windows(self, history: pd.DataFrame, cutoffs: pd.DataFrame, horizon: int, step: int, freq: str,
                         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[int, Forecast] | None:
        """Every backtest window in one ``StatsForecast.cross_validation`` call (one process pool, the
        panel split once per process) instead of one ``forecast`` per window: the same fits on the same
        histories, so the same forecasts. ``None`` (the caller goes window by window) when a series has a
        missing value or the windows are not the last ``n_windows`` spaced ``step`` apart at every series' end."""
        from statsforecast import StatsForecast

        check_predict_args(self.label, history, horizon, freq, quantiles)
        t0 = time.perf_counter()
        horizon, quantiles = int(horizon), tuple(float(q) for q in quantiles)
        frame = sort_by_series(history[[ID, TIME, TARGET]].astype({TARGET: "float64"}))
        if not np.isfinite(frame[TARGET].to_numpy()).all():
            return None
        n_windows = int(cutoffs["window"].max()) + 1
        ids = frame[ID].to_numpy()
        starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1]
        sizes = pd.Series(np.diff(np.r_[starts, len(ids)]), index=ids[starts])
        want = cutoffs.sort_values([ID, "window"], kind="stable")
        w = np.tile(np.arange(n_windows), len(sizes))
        expect = np.repeat(sizes.to_numpy(), n_windows) - horizon - (n_windows - 1 - w) * step
        if len(want) != len(expect) or not (np.array_equal(want[ID].to_numpy(), np.repeat(sizes.index.to_numpy(), n_windows))
                                           and np.array_equal(want["window"].to_numpy(), w)
                                           and np.array_equal(want["n_context"].to_numpy(), expect)):
            return None  # not the last n_windows windows spaced step apart at every series' end
        keys = [interval_key(q) for q in quantiles]
        levels = sorted({k[1] for k in keys if k is not None})
        n_jobs = 1 if multiprocessing.current_process().daemon else self.n_jobs
        model = type(self).build(self.settings())
        sf = StatsForecast(models=[model], freq=freq, n_jobs=min(n_jobs, len(sizes)), fallback_model=NoForecast())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statsforecast's divide-by-zero RuntimeWarnings on tiny fits
            fc = sf.cross_validation(df=frame, h=horizon, n_windows=n_windows, step_size=step,
                                     level=levels or None, refit=True)
        out, _ = _statsforecast_frame(fc, repr(model), quantiles)
        window_of = cutoffs.set_index([ID, "cutoff"])["window"]
        out["window"] = window_of.reindex(pd.MultiIndex.from_arrays([out[ID], pd.to_datetime(out["cutoff"])])).to_numpy()
        if out["window"].isna().any():
            return None  # statsforecast cut elsewhere than our windows: go window by window
        qcols = [quantile_column(q) for q in quantiles]
        result: dict[int, Forecast] = {}
        for w in range(n_windows):
            cut = cutoffs[cutoffs["window"] == w]
            got = out.loc[out["window"] == w, [ID, TIME, "mean", *qcols]].reset_index(drop=True)
            failures: dict[str, str] = {}
            for uid in sorted(set(cut[ID].astype(str)) - set(got[ID])):  # why each failed, in the model's own words
                c = int(cut.loc[cut[ID].astype(str) == uid, "n_context"].iloc[0])
                y = frame.loc[frame[ID].astype(str) == uid, TARGET].to_numpy(dtype=float)[:c]
                _, _, err = statsforecast_one(uid, y, horizon, quantiles, self.label, lambda: type(self).build(self.settings()))
                failures[uid] = err or f"{self.label} produced non-finite forecasts"
            result[w] = Forecast(sort_by_series(got), failures)
        if self.progress is not None:
            self.progress(len(sizes), len(sizes))
        self.last_seconds = time.perf_counter() - t0
        return result
