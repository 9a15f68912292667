"""Prophet baseline: one Prophet model per series, fitted in parallel processes.

* Seasonality follows the data's frequency (:func:`seasonality_for_freq`): yearly for weekly,
  monthly and quarterly data; yearly + weekly for daily data; weekly + daily for sub-daily data;
  none for yearly data. Explicit ``yearly_seasonality=`` … arguments override it.
* Quantiles: empirical quantiles of Prophet's predictive samples (``Prophet.predictive_samples``,
  ``uncertainty_samples`` draws of trend changes and observation noise); ``mean`` is Prophet's
  point forecast ``yhat``. Each series' sampling is seeded (``seed``) so parallel and serial runs
  give identical forecasts.
* Series are fitted by :func:`chronos_flows.models.local.parallel.map_series`: in a
  ``concurrent.futures.ProcessPoolExecutor`` with the fork start method (≈2× on 2 cores; spawn
  re-imports everything and gains much less); ``n_jobs=1`` runs in process.
  ``progress(done, total)`` is called as series finish.
* A series whose fit fails is left out of the returned frame and recorded in ``last_failures``
  (``{unique_id: message}``); it never fails the call. A crashed worker process fails only the
  series it had not finished.
* cmdstanpy's INFO lines and Prophet's / pandas' warnings are silenced; prophet is imported lazily.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.local.common import assemble, series_jobs
from chronos_flows.models.local.parallel import Progress, map_series
from chronos_flows.models.base import (
    DEFAULT_QUANTILES,
    Forecaster,
    future_index,
    quantile_column,
    require_long_frame,
)


def seasonality_for_freq(freq: str) -> dict[str, bool]:
    """Prophet's ``yearly/weekly/daily_seasonality`` switches for a pandas frequency alias."""
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        raise BadInputError(f"unknown frequency {freq!r}; pass a pandas alias such as 'W-MON', 'MS', 'D', 'h'") from None
    nanos_per_day = 86_400 * 10**9
    try:
        step = pd.Timedelta(offset).value  # fixed frequencies (D, h, min, W)
    except ValueError:
        step = None
    name = offset.name.upper() if hasattr(offset, "name") else str(freq).upper()
    if step is None:
        # calendar offsets: months, quarters, years, business days …
        if name.startswith(("Y", "A", "BY", "BA")):
            return {"yearly_seasonality": False, "weekly_seasonality": False, "daily_seasonality": False}
        if name.startswith(("B", "C")) and "M" not in name and "Q" not in name:
            return {"yearly_seasonality": True, "weekly_seasonality": True, "daily_seasonality": False}
        return {"yearly_seasonality": True, "weekly_seasonality": False, "daily_seasonality": False}
    if step >= 7 * nanos_per_day:
        return {"yearly_seasonality": True, "weekly_seasonality": False, "daily_seasonality": False}
    if step >= nanos_per_day:
        return {"yearly_seasonality": True, "weekly_seasonality": True, "daily_seasonality": False}
    return {"yearly_seasonality": False, "weekly_seasonality": True, "daily_seasonality": True}


def _quiet(after_import: bool = False) -> None:
    """Silence cmdstanpy / prophet logging (called in every process that fits).

    cmdstanpy configures its logger (DEBUG + an INFO stream handler) lazily on first use, so this
    runs again after the import to turn that handler down too.
    """
    if after_import:
        from cmdstanpy.utils import get_logger

        get_logger()
    for name in ("cmdstanpy", "prophet", "prophet.plot", "prophet.forecaster", "prophet.models"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.ERROR)
        lg.propagate = False
        for handler in lg.handlers:
            handler.setLevel(logging.ERROR)
    logging.getLogger("prophet.plot").disabled = True  # "Importing plotly failed" on import


def fit_predict_one(
    uid: str,
    ds: np.ndarray,
    y: np.ndarray,
    horizon: int,
    freq: str,
    quantiles: Sequence[float],
    settings: dict[str, Any],
) -> tuple[str, np.ndarray | None, str | None]:
    """Fit Prophet on one series; return ``(uid, array[h, 1+Q] = mean + quantiles, None)`` or
    ``(uid, None, error message)``. Never raises (runs inside worker processes)."""
    try:
        _quiet()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from prophet import Prophet

            _quiet(after_import=True)

            settings = dict(settings)
            seed = int(settings.pop("seed", 0))
            frame = pd.DataFrame({"ds": pd.to_datetime(ds), "y": np.asarray(y, dtype=float)})
            model = Prophet(**settings)
            model.fit(frame)
            future = pd.DataFrame({"ds": future_index(frame["ds"].iloc[-1], horizon, freq)})
            point = model.predict(future)["yhat"].to_numpy(dtype=float)
            np.random.seed(seed)
            samples = model.predictive_samples(future)["yhat"]  # (horizon, n_samples)
            qs = np.quantile(samples, [float(q) for q in quantiles], axis=1).T  # (horizon, Q)
            if not np.all(np.isfinite(point)) or not np.all(np.isfinite(qs)):
                return uid, None, "Prophet produced non-finite forecasts"
            return uid, np.column_stack([point, np.sort(qs, axis=1)]), None
    except Exception as exc:  # noqa: BLE001 - a failing series is reported, never fatal
        msg = f"{type(exc).__name__}: {exc}".strip()
        return uid, None, msg[:500]


class ProphetForecaster(Forecaster):
    name = "prophet"

    def __init__(
        self,
        *,
        n_jobs: int = 2,
        uncertainty_samples: int = 200,
        progress: Progress | None = None,
        yearly_seasonality: bool | str | None = None,
        weekly_seasonality: bool | str | None = None,
        daily_seasonality: bool | str | None = None,
        seasonality_mode: str = "additive",
        seed: int = 0,
        start_method: str = "fork",
        **prophet_kwargs: Any,
    ):
        if n_jobs < 1:
            raise BadInputError(f"prophet n_jobs must be at least 1, got {n_jobs}")
        if uncertainty_samples < 10:
            raise BadInputError(f"prophet uncertainty_samples must be at least 10, got {uncertainty_samples}")
        self.n_jobs = int(n_jobs)
        self.uncertainty_samples = int(uncertainty_samples)
        self.progress = progress
        self.overrides = {
            k: v
            for k, v in {
                "yearly_seasonality": yearly_seasonality,
                "weekly_seasonality": weekly_seasonality,
                "daily_seasonality": daily_seasonality,
            }.items()
            if v is not None
        }
        self.seasonality_mode = seasonality_mode
        self.seed = int(seed)
        self.start_method = start_method
        self.prophet_kwargs = prophet_kwargs
        self.last_failures: dict[str, str] = {}
        #: Wall-clock seconds of the last predict call (fit + forecast of every series).
        self.last_seconds: float = 0.0

    def __repr__(self) -> str:
        return f"ProphetForecaster(n_jobs={self.n_jobs}, uncertainty_samples={self.uncertainty_samples})"

    def settings(self, freq: str) -> dict[str, Any]:
        """Keyword arguments for ``prophet.Prophet`` (plus ``seed``) at frequency ``freq``."""
        s: dict[str, Any] = seasonality_for_freq(freq)
        s.update(self.overrides)
        s.update(
            seasonality_mode=self.seasonality_mode,
            uncertainty_samples=self.uncertainty_samples,
            **self.prophet_kwargs,
        )
        s["seed"] = self.seed
        return s

    def predict(self, context: pd.DataFrame, horizon: int, freq: str,
                quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.DataFrame:
        import time

        require_long_frame(context)
        t0 = time.perf_counter()
        settings = self.settings(freq)
        qcols = [quantile_column(q) for q in quantiles]
        jobs, last = series_jobs(context)
        results, failures = map_series(
            fit_predict_one,
            [(uid, ds, y, horizon, freq, tuple(quantiles), settings) for uid, ds, y in jobs],
            n_jobs=self.n_jobs,
            progress=self.progress,
            start_method=self.start_method,
        )

        self.last_failures = failures
        out = assemble(results, last, horizon, freq, qcols)
        self.last_seconds = time.perf_counter() - t0
        return out
