"""AutoETS baseline: one automatically selected exponential-smoothing model per series.

Method (statsforecast's ``AutoETS``, a port of R forecast's ``ets``; Hyndman et al. 2008):

* Model selection: every admissible combination of error (additive / multiplicative), trend
  (none / additive, optionally damped) and season (none / additive / multiplicative) allowed by
  ``model`` (``"ZZZ"`` = choose each; ``"AAN"``, ``"MNM"`` … fix them, ``Z`` per letter chooses
  that component) and ``damped`` (``None`` = try both) is fitted by maximum likelihood, and the one
  with the smallest AICc is kept. As in R's default, multiplicative trends are not tried,
  additive error with multiplicative season is never used, and multiplicative error or season
  are skipped for a series with a value <= 0. A constant series gets ETS(A,N,N).
* Seasonality (statsforecast 2.1.1, checked in its source and by running it): dropped when the
  series is not longer than ``season_length`` or ``season_length == 1``. Unlike R's ``ets``, which
  refuses or ignores seasonal periods above 24, statsforecast *does* fit seasonal models with
  ``season_length > 24``: on weekly data with period 52 it fits ETS(A,A,A) with 51 seasonal
  states, taking ~1 s per series and selecting seasonality only when AICc favours it.
* Too short: a series with ``n <= 2 + 4`` points for ``model="ZZZ"`` (more when ``model`` fixes a
  trend or season: 2 parameters per fixed component, 1 for ``damped=True``) raises in statsforecast
  ("tiny datasets"); a series containing NaN raises ("does not handle missing values"). Both are
  per-series failures here.
* Quantiles: the prediction intervals of the selected model — normal intervals around the point
  forecast from the analytic forecast variance (classes 1–3 of Hyndman et al. 2008; every model
  ``ZZZ`` may choose), or, for models without one (a multiplicative trend, only when asked for
  explicitly), empirical quantiles of 5,000 simulated paths with a fixed seed. Quantile level
  ``q < 0.5`` is the lower bound of the ``100·(1-2q)`` % interval, ``q > 0.5`` the upper bound of
  the ``100·(2q-1)`` % interval, ``q = 0.5`` the point forecast (``mean``). Quantile columns are
  sorted per step so they never cross. The fit is deterministic, so parallel and serial runs and a
  forecaster re-created from :meth:`AutoETSForecaster.settings` give identical forecasts.

Series are fitted in parallel processes (:func:`chronos_flows.models._parallel.map_series`, fork,
``n_jobs``), ``progress(done, total)`` is called as series finish. A series whose fit fails (an
exception, too short, NaN in its context, non-finite forecasts) is left out of the returned frame
and recorded in ``last_failures`` (``{unique_id: message}``); it never fails the call. An empty
context raises :class:`BadInputError`. statsforecast is imported lazily.
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

#: Keys of :meth:`AutoETSForecaster.settings` (what :meth:`AutoETSForecaster.from_settings` accepts).
SETTING_KEYS = ("season_length", "model", "damped")


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


def fit_predict_one(
    uid: str,
    ds: np.ndarray,
    y: np.ndarray,
    horizon: int,
    quantiles: Sequence[float],
    settings: Mapping[str, Any],
) -> tuple[str, np.ndarray | None, str | None]:
    """Fit AutoETS on one series; return ``(uid, array[h, 1+Q] = mean + quantiles, None)`` or
    ``(uid, None, error message)``. Never raises (runs inside worker processes); ``ds`` is unused
    (ETS needs only the order of the values)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statsforecast's divide-by-zero RuntimeWarnings on tiny fits
            from statsforecast.models import AutoETS

            keys = [interval_key(q) for q in quantiles]
            levels = sorted({k[1] for k in keys if k is not None})
            model = AutoETS(
                season_length=int(settings["season_length"]),
                model=str(settings["model"]),
                damped=settings["damped"],
            )
            out = model.forecast(y=np.asarray(y, dtype=float), h=int(horizon), level=levels or None)
        mean = np.asarray(out["mean"], dtype=float)
        qs = np.column_stack(
            [mean if k is None else np.asarray(out[f"{k[0]}-{k[1]}"], dtype=float) for k in keys]
        ) if keys else np.empty((len(mean), 0))
        if mean.shape != (horizon,) or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(qs)):
            return uid, None, "AutoETS produced non-finite forecasts"
        order = np.argsort(np.asarray([float(q) for q in quantiles]), kind="stable")
        ordered = np.empty_like(qs)
        ordered[:, order] = np.sort(qs, axis=1)  # never crossing, whatever order quantiles come in
        return uid, np.column_stack([mean, ordered]), None
    except Exception as exc:  # noqa: BLE001 - a failing series is reported, never fatal
        msg = f"{type(exc).__name__}: {exc}".strip()
        return uid, None, msg[:500]


def _check_model(model: str, damped: bool | None) -> None:
    m = str(model).upper()
    if len(m) != 3 or m[0] not in "AMZ" or m[1] not in "NAMZ" or m[2] not in "NAMZ":
        raise BadInputError(
            f"AutoETS model must be 3 letters error/trend/season, error in A M Z and trend/season in "
            f"N A M Z (e.g. 'ZZZ', 'AAN'), got {model!r}"
        )
    if damped is not None and not isinstance(damped, (bool, np.bool_)):
        raise BadInputError(f"AutoETS damped must be true, false or null (choose), got {damped!r}")
    if damped and m[1] == "N":
        raise BadInputError(f"AutoETS damped=True needs a trend, but model {model!r} has none (trend 'N')")


class AutoETSForecaster(Forecaster):
    name = "autoets"

    def __init__(
        self,
        season_length: int,
        *,
        n_jobs: int = 2,
        progress: Progress | None = None,
        model: str = "ZZZ",
        damped: bool | None = None,
    ):
        try:
            season_length = int(season_length)
        except (TypeError, ValueError):
            raise BadInputError(f"AutoETS season_length must be an integer, got {season_length!r}") from None
        if season_length < 1:
            raise BadInputError(f"AutoETS season_length must be at least 1, got {season_length}")
        if int(n_jobs) < 1:
            raise BadInputError(f"AutoETS n_jobs must be at least 1, got {n_jobs}")
        _check_model(model, damped)
        self.season_length = season_length
        self.model = str(model).upper()
        self.damped = None if damped is None else bool(damped)
        self.n_jobs = int(n_jobs)
        self.progress = progress
        self.last_failures: dict[str, str] = {}
        #: Wall-clock seconds of the last predict call (fit + forecast of every series).
        self.last_seconds: float = 0.0

    def __repr__(self) -> str:
        return (
            f"AutoETSForecaster(season_length={self.season_length}, model={self.model!r}, "
            f"damped={self.damped}, n_jobs={self.n_jobs})"
        )

    def settings(self) -> dict[str, Any]:
        """The configuration that determines the forecasts (JSON-able): ``season_length``,
        ``model``, ``damped``. Runtime options (``n_jobs``, ``progress``) are not part of it."""
        return {"season_length": self.season_length, "model": self.model, "damped": self.damped}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **runtime: Any) -> "AutoETSForecaster":
        """Re-create a forecaster from :meth:`settings` output; ``runtime`` passes ``n_jobs`` /
        ``progress``. ``model`` and ``damped`` default to ``"ZZZ"`` / ``None`` when absent."""
        unknown = sorted(set(settings) - set(SETTING_KEYS))
        if unknown:
            raise BadInputError(f"unknown AutoETS setting(s) {unknown}; expected {list(SETTING_KEYS)}")
        if "season_length" not in settings:
            raise BadInputError(f"AutoETS settings need season_length; got {dict(settings)}")
        return cls(
            settings["season_length"],
            model=settings.get("model", "ZZZ"),
            damped=settings.get("damped"),
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
            raise BadInputError("AutoETS got an empty context frame (no rows): pass at least one series with history")
        if int(horizon) < 1:
            raise BadInputError(f"AutoETS horizon must be at least 1, got {horizon}")
        try:
            pd.tseries.frequencies.to_offset(freq)
        except ValueError:
            raise BadInputError(f"unknown frequency {freq!r}; pass a pandas alias such as 'W-MON', 'MS', 'QS'") from None
        bad = [q for q in quantiles if not 0.0 < float(q) < 1.0]
        if bad:
            raise BadInputError(f"AutoETS quantile levels must lie strictly between 0 and 1, got {bad}")
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
