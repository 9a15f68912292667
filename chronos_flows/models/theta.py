"""AutoTheta baseline: one automatically selected Theta model per series.

Method (statsforecast's ``AutoTheta``; Assimakopoulos & Nikolopoulos 2000, the optimised and
dynamic variants of Fiorucci et al. 2016):

* Seasonality: when ``season_length >= 4`` and the series has at least ``2 * season_length``
  points, an ACF test at lag ``season_length`` (``|r_m|`` above 1.645 standard errors) decides whether the series is
  seasonally adjusted first (classical decomposition, ``decomposition_type``; multiplicative falls
  back to additive for a series with a value <= 0 or a seasonal index below 0.01). The seasonal
  indices of the last season are re-applied to the forecast.
* Model selection: ``model=None`` fits the four Theta models — Standard (STM), Optimised (OTM),
  Dynamic Standard (DSTM) and Dynamic Optimised (DOTM) — and keeps the one with the smallest
  in-sample MSE; ``"STM"`` … ``"DOTM"`` fixes one.
* Too short: a series with fewer than 4 points raises in statsforecast ("tiny datasets"); a series
  containing NaN raises ("no model able to be fitted"). Both are per-series failures here.
* Quantiles: empirical quantiles of 200 simulated sample paths of the selected state-space model
  (normal errors with the residual standard deviation, statsforecast's fixed seed 0), so the fit
  and the quantiles are deterministic. Quantile level ``q < 0.5`` is the lower bound of the
  ``100·(1-2q)`` % interval, ``q > 0.5`` the upper bound of the ``100·(2q-1)`` % interval, ``q = 0.5``
  the point forecast (``mean``). Quantile columns are sorted per step so they never cross (with 200
  paths the simulated bounds of a narrow interval can fall across the mean; sorting then moves
  ``0.5`` slightly off ``mean``). Parallel
  and serial runs and a forecaster re-created from :meth:`AutoThetaForecaster.settings` give
  identical forecasts.

Series are fitted in parallel processes (:func:`chronos_flows.models._parallel.map_series`, fork,
``n_jobs``), ``progress(done, total)`` is called as series finish. A series whose fit fails is left
out of the returned frame and recorded in ``last_failures`` (``{unique_id: message}``); it never
fails the call. An empty context raises :class:`BadInputError`. statsforecast is imported lazily.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.errors import BadInputError
from chronos_flows.models._parallel import Progress, map_series
from chronos_flows.models.base import (
    DEFAULT_QUANTILES,
    ID,
    TARGET,
    TIME,
    Forecaster,
    future_index,
    quantile_column,
    require_long_frame,
)
from chronos_flows.models.ets import interval_key

#: Keys of :meth:`AutoThetaForecaster.settings` (what :meth:`AutoThetaForecaster.from_settings` accepts).
SETTING_KEYS = ("season_length", "decomposition_type", "model")
THETA_MODELS = ("STM", "OTM", "DSTM", "DOTM")
DECOMPOSITIONS = ("multiplicative", "additive")


def fit_predict_one(
    uid: str,
    ds: np.ndarray,
    y: np.ndarray,
    horizon: int,
    quantiles: Sequence[float],
    settings: Mapping[str, Any],
) -> tuple[str, np.ndarray | None, str | None]:
    """Fit AutoTheta on one series; return ``(uid, array[h, 1+Q] = mean + quantiles, None)`` or
    ``(uid, None, error message)``. Never raises (runs inside worker processes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from statsforecast.models import AutoTheta

            keys = [interval_key(q) for q in quantiles]
            levels = sorted({k[1] for k in keys if k is not None})
            model = AutoTheta(
                season_length=int(settings["season_length"]),
                decomposition_type=str(settings["decomposition_type"]),
                model=settings["model"],
            )
            out = model.forecast(y=np.asarray(y, dtype=float), h=int(horizon), level=levels or None)
        mean = np.asarray(out["mean"], dtype=float)
        qs = np.column_stack(
            [mean if k is None else np.asarray(out[f"{k[0]}-{k[1]}"], dtype=float) for k in keys]
        ) if keys else np.empty((len(mean), 0))
        if mean.shape != (horizon,) or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(qs)):
            return uid, None, "AutoTheta produced non-finite forecasts"
        order = np.argsort(np.asarray([float(q) for q in quantiles]), kind="stable")
        ordered = np.empty_like(qs)
        ordered[:, order] = np.sort(qs, axis=1)
        return uid, np.column_stack([mean, ordered]), None
    except Exception as exc:  # noqa: BLE001 - a failing series is reported, never fatal
        msg = f"{type(exc).__name__}: {exc}".strip()
        return uid, None, msg[:500]


class AutoThetaForecaster(Forecaster):
    name = "theta"

    def __init__(
        self,
        season_length: int,
        *,
        n_jobs: int = 2,
        progress: Progress | None = None,
        decomposition_type: str = "multiplicative",
        model: str | None = None,
    ):
        try:
            season_length = int(season_length)
        except (TypeError, ValueError):
            raise BadInputError(f"Theta season_length must be an integer, got {season_length!r}") from None
        if season_length < 1:
            raise BadInputError(f"Theta season_length must be at least 1, got {season_length}")
        if int(n_jobs) < 1:
            raise BadInputError(f"Theta n_jobs must be at least 1, got {n_jobs}")
        if decomposition_type not in DECOMPOSITIONS:
            raise BadInputError(f"Theta decomposition_type must be one of {list(DECOMPOSITIONS)}, got {decomposition_type!r}")
        if model is not None and str(model).upper() not in THETA_MODELS:
            raise BadInputError(f"Theta model must be one of {list(THETA_MODELS)} or null (choose), got {model!r}")
        self.season_length = season_length
        self.decomposition_type = str(decomposition_type)
        self.model = None if model is None else str(model).upper()
        self.n_jobs = int(n_jobs)
        self.progress = progress
        self.last_failures: dict[str, str] = {}
        #: Wall-clock seconds of the last predict call (fit + forecast of every series).
        self.last_seconds: float = 0.0

    def __repr__(self) -> str:
        return (
            f"AutoThetaForecaster(season_length={self.season_length}, decomposition_type={self.decomposition_type!r}, "
            f"model={self.model!r}, n_jobs={self.n_jobs})"
        )

    def settings(self) -> dict[str, Any]:
        """The configuration that determines the forecasts (JSON-able); runtime options are not part of it."""
        return {"season_length": self.season_length, "decomposition_type": self.decomposition_type, "model": self.model}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **runtime: Any) -> "AutoThetaForecaster":
        """Re-create a forecaster from :meth:`settings` output; ``runtime`` passes ``n_jobs`` / ``progress``."""
        unknown = sorted(set(settings) - set(SETTING_KEYS))
        if unknown:
            raise BadInputError(f"unknown Theta setting(s) {unknown}; expected {list(SETTING_KEYS)}")
        if "season_length" not in settings:
            raise BadInputError(f"Theta settings need season_length; got {dict(settings)}")
        return cls(
            settings["season_length"],
            decomposition_type=settings.get("decomposition_type", "multiplicative"),
            model=settings.get("model"),
            **runtime,
        )

    def predict(
        self,
        context: pd.DataFrame,
        horizon: int,
        freq: str,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> pd.DataFrame:
        require_long_frame(context)
        if len(context) == 0:
            raise BadInputError("Theta got an empty context frame (no rows): pass at least one series with history")
        if int(horizon) < 1:
            raise BadInputError(f"Theta horizon must be at least 1, got {horizon}")
        try:
            pd.tseries.frequencies.to_offset(freq)
        except ValueError:
            raise BadInputError(f"unknown frequency {freq!r}; pass a pandas alias such as 'W-MON', 'MS', 'QS'") from None
        bad = [q for q in quantiles if not 0.0 < float(q) < 1.0]
        if bad:
            raise BadInputError(f"Theta quantile levels must lie strictly between 0 and 1, got {bad}")
        t0 = time.perf_counter()
        horizon = int(horizon)
        qcols = [quantile_column(q) for q in quantiles]
        settings = self.settings()
        jobs = [
            (uid, g[TIME].to_numpy(), g[TARGET].to_numpy(dtype=float))
            for uid, g in context.sort_values([ID, TIME], kind="stable").groupby(ID, sort=True)
        ]
        last = {uid: pd.Timestamp(ds[-1]) for uid, ds, _ in jobs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import statsforecast.models  # noqa: F401 - once here, so forked workers inherit it

        results, failures = map_series(
            fit_predict_one,
            [(uid, ds, y, horizon, tuple(float(q) for q in quantiles), settings) for uid, ds, y in jobs],
            n_jobs=self.n_jobs,
            progress=self.progress,
        )
        self.last_failures = failures
        parts = []
        for uid in sorted(results):
            arr = results[uid]
            frame = pd.DataFrame(arr[:, 1:], columns=qcols)
            frame.insert(0, "mean", arr[:, 0])
            frame.insert(0, TIME, future_index(last[uid], horizon, freq))
            frame.insert(0, ID, uid)
            parts.append(frame)
        self.last_seconds = time.perf_counter() - t0
        if not parts:
            return pd.DataFrame(columns=[ID, TIME, "mean", *qcols])
        return pd.concat(parts, ignore_index=True)
