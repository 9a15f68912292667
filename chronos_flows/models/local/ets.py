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

Series are fitted by ``statsforecast.StatsForecast`` in ``n_jobs`` processes
(:class:`~chronos_flows.models.local.common.StatsForecastForecaster`); ``progress(done, total)`` is
called when the panel is done. A series whose fit fails (an
exception, too short, NaN in its context, non-finite forecasts) is left out of the returned frame
and recorded in ``last_failures`` (``{unique_id: message}``); it never fails the call. An empty
context raises :class:`BadInputError`. statsforecast is imported lazily.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.local.common import StatsForecastForecaster, interval_key
from chronos_flows.models.local.parallel import Progress

__all__ = ["AutoETSForecaster", "SETTING_KEYS", "build_model", "interval_key"]



def build_model(settings: Mapping[str, Any]) -> Any:
    """The statsforecast ``AutoETS`` of ``settings`` (imported lazily)."""
    from statsforecast.models import AutoETS

    return AutoETS(season_length=int(settings["season_length"]), model=str(settings["model"]), damped=settings["damped"])


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


class AutoETSForecaster(StatsForecastForecaster):
    name = "autoets"
    label = "AutoETS"
    build = staticmethod(build_model)
    defaults = {"model": "ZZZ", "damped": None}

    def __init__(
        self,
        season_length: int,
        *,
        n_jobs: int = 2,
        progress: Progress | None = None,
        model: str = "ZZZ",
        damped: bool | None = None,
    ):
        super().__init__(season_length, n_jobs, progress)
        _check_model(model, damped)
        self.model = str(model).upper()
        self.damped = None if damped is None else bool(damped)


#: Keys of :meth:`AutoETSForecaster.settings` (what :meth:`AutoETSForecaster.from_settings` accepts).
SETTING_KEYS = AutoETSForecaster.setting_keys()
