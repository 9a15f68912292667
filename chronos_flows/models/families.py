"""The model families a champion can be, and how to re-create each from its recorded config.

``chronos`` is a global model: its weights live in the store and are loaded (see
:mod:`chronos_flows.models.chronos.forecasters`). The local families — ``autoets``, ``prophet``,
``seasonal_naive``, ``theta`` — keep no weights: each is fitted per series on whatever history it is given,
so ``config`` (what :func:`forecaster_config` returns) is all that is needed to re-create it
(:func:`local_forecaster`). ``lightgbm`` is the global gradient-boosted family
(:mod:`chronos_flows.models.global_boost`): it keeps no weights either — it is trained across the
panel it is given — so it too is re-created from its config (``CONFIG_FAMILIES``), but serving it
needs the panel's history (:data:`NEEDS_HISTORY`). Two forecasters of a local family with equal configs give equal
forecasts on equal history, which is how a run recognises that its own candidate *is* the champion.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import Forecaster

CHRONOS = "chronos"
LOCAL_FAMILIES: tuple[str, ...] = ("autoets", "prophet", "seasonal_naive", "theta")
#: the global gradient-boosted family, trained across all series of the panel it is given
GLOBAL_BOOST = "lightgbm"
#: families re-created from their recorded config alone (no stored weights)
CONFIG_FAMILIES: tuple[str, ...] = (*LOCAL_FAMILIES, GLOBAL_BOOST)
#: families whose forecasts need the panel's history (they are trained on it when loaded)
NEEDS_HISTORY: tuple[str, ...] = (GLOBAL_BOOST,)
#: a weighted combination of other families (chronos_flows.models.ensemble): champion.json lists its members
ENSEMBLE = "ensemble"
FAMILIES: tuple[str, ...] = (CHRONOS, *CONFIG_FAMILIES, ENSEMBLE)

#: Fewest observations a series needs for each family to forecast it. Chronos: the JumpStart
#: endpoint contract's minimum (5); statsforecast's AutoETS refuses n <= 6 ("tiny datasets"); Prophet
#: refuses fewer than 2 rows; Seasonal Naive repeats the
#: last value of a series shorter than a season; statsforecast's AutoTheta refuses n <= 3.
#: LightGBM: lag 1 + one difference + two training rows (the lags and conformal windows of a fit
#: may need more: such a series is reported per forecast, never a crash).
MIN_HISTORY: dict[str, int] = {CHRONOS: 5, "autoets": 7, "prophet": 2, "seasonal_naive": 1, "theta": 4, GLOBAL_BOOST: 4}
#: an ensemble forecasts a series only with enough history for every family it may hold
MIN_HISTORY[ENSEMBLE] = max(MIN_HISTORY.values())

Progress = Callable[[int, int], None]


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise BadInputError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return family


def baseline_config(params: Any, family: str, season_length: int) -> dict[str, Any]:
    """The configuration of local ``family`` for a run with ``params`` (a ``TrainingParams``) on
    data of season ``season_length``: what the run backtests and what champion.json records."""
    check_family(family)
    if family == "seasonal_naive":
        return {"season_length": int(season_length)}
    if family == "autoets":
        return {"season_length": int(season_length), "model": params.autoets.model, "damped": params.autoets.damped}
    if family == "theta":
        return {"season_length": int(season_length), "decomposition_type": params.theta.decomposition_type,
                "model": params.theta.model}
    if family == GLOBAL_BOOST:
        cfg = params.lightgbm.model_dump(mode="json")
        cfg.pop("n_jobs")
        return {"season_length": int(season_length), **cfg}
    if family == "prophet":
        return {
            "uncertainty_samples": params.prophet.uncertainty_samples,
            "seasonality_mode": "additive",
            "seed": params.chronos.seed,
        }
    raise BadInputError(f"{family} is not a local family")


def baseline_jobs(params: Any, family: str) -> int:
    """Parallel processes configured for local ``family``."""
    return {"autoets": params.autoets.n_jobs, "prophet": params.prophet.n_jobs, "theta": params.theta.n_jobs,
            GLOBAL_BOOST: params.lightgbm.n_jobs}.get(family, 1)


def local_forecaster(
    family: str, config: Mapping[str, Any], *, n_jobs: int = 1, progress: Progress | None = None
) -> Forecaster:
    """A fresh forecaster of local ``family`` (or the global ``lightgbm``, unfitted: it trains on the
    context it is given) from its recorded ``config``."""
    check_family(family)
    cfg = dict(config)
    try:
        if family == "seasonal_naive":
            from chronos_flows.models.local.seasonal_naive import SeasonalNaive

            return SeasonalNaive(int(cfg["season_length"]))
        if family == "autoets":
            from chronos_flows.models.local.ets import AutoETSForecaster

            return AutoETSForecaster.from_settings(cfg, n_jobs=n_jobs, progress=progress)
        if family == "theta":
            from chronos_flows.models.local.theta import AutoThetaForecaster

            return AutoThetaForecaster.from_settings(cfg, n_jobs=n_jobs, progress=progress)
        if family == "prophet":
            from chronos_flows.models.local.prophet import ProphetForecaster

            return ProphetForecaster(n_jobs=n_jobs, progress=progress, **cfg)
        if family == GLOBAL_BOOST:
            from chronos_flows.models.global_boost import GlobalBoostForecaster

            return GlobalBoostForecaster.from_settings(cfg, n_jobs=n_jobs, progress=progress)
    except (KeyError, TypeError) as exc:
        raise BadInputError(f"the recorded {family} configuration {cfg} cannot re-create the model ({exc})") from None
    raise BadInputError(f"{family} is not a local family: load its stored model instead")
