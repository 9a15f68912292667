"""Theta baseline: statsforecast's Theta models per series (Dynamic Optimised Theta by default).

Method (statsforecast's ``AutoTheta``; Assimakopoulos & Nikolopoulos 2000, the optimised and
dynamic variants of Fiorucci et al. 2016):

* Seasonality: when ``season_length >= 4`` and the series has at least ``2 * season_length``
  points, an ACF test at lag ``season_length`` (``|r_m|`` above 1.645 standard errors) decides whether the series is
  seasonally adjusted first (classical decomposition, ``decomposition_type``; multiplicative falls
  back to additive for a series with a value <= 0 or a seasonal index below 0.01). The seasonal
  indices of the last season are re-applied to the forecast.
* Model: ``"DOTM"`` (the default, statsforecast's ``DynamicOptimizedTheta``) fixes the Dynamic
  Optimised Theta model; ``"STM"``, ``"OTM"``, ``"DSTM"`` fix the Standard, Optimised or Dynamic
  Standard one; ``model=None`` fits all four and keeps, per series, the one with the smallest
  in-sample MSE (AutoTheta's selection). Out of sample the fixed DOTM wins: over 4 rolling windows
  of tourism (200 quarterly series), aus_livestock (42) and aus_retail (150 monthly), its
  geometric-mean MASE is 1.7 % and mean WQL 1.5 % below the per-series selection, and multiplicative
  decomposition beats additive by 11 % (``benchmarks/theta.py``; NOTES in the repository).
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

Series are fitted by ``statsforecast.StatsForecast`` in ``n_jobs`` processes
(:class:`~chronos_flows.models.local.common.StatsForecastForecaster`); ``progress(done, total)`` is
called when the panel is done. A series whose fit fails is left
out of the returned frame and recorded in ``last_failures`` (``{unique_id: message}``); it never
fails the call. An empty context raises :class:`BadInputError`. statsforecast is imported lazily.
"""

from __future__ import annotations

from typing import Any, Mapping

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.local.common import StatsForecastForecaster
from chronos_flows.models.local.parallel import Progress

THETA_MODELS = ("STM", "OTM", "DSTM", "DOTM")
DECOMPOSITIONS = ("multiplicative", "additive")
#: The variant that held up best out of sample on the shipped panels (benchmarks/theta.py).
DEFAULT_MODEL = "DOTM"


def build_model(settings: Mapping[str, Any]) -> Any:
    """The statsforecast ``AutoTheta`` of ``settings`` (imported lazily)."""
    from statsforecast.models import AutoTheta

    return AutoTheta(season_length=int(settings["season_length"]),
                     decomposition_type=str(settings["decomposition_type"]), model=settings["model"])


class AutoThetaForecaster(StatsForecastForecaster):
    name = "theta"
    label = "Theta"
    build = staticmethod(build_model)
    defaults = {"decomposition_type": "multiplicative", "model": DEFAULT_MODEL}

    def __init__(
        self,
        season_length: int,
        *,
        n_jobs: int = 2,
        progress: Progress | None = None,
        decomposition_type: str = "multiplicative",
        model: str | None = DEFAULT_MODEL,
    ):
        super().__init__(season_length, n_jobs, progress)
        if decomposition_type not in DECOMPOSITIONS:
            raise BadInputError(f"Theta decomposition_type must be one of {list(DECOMPOSITIONS)}, got {decomposition_type!r}")
        if model is not None and str(model).upper() not in THETA_MODELS:
            raise BadInputError(f"Theta model must be one of {list(THETA_MODELS)} or null (choose), got {model!r}")
        self.decomposition_type = str(decomposition_type)
        self.model = None if model is None else str(model).upper()


#: Keys of :meth:`AutoThetaForecaster.settings` (what :meth:`AutoThetaForecaster.from_settings` accepts).
SETTING_KEYS = AutoThetaForecaster.setting_keys()
