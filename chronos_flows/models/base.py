"""The one small forecaster interface every model family implements.

Frames are long format:

* history / context: columns ``unique_id`` (str), ``ds`` (datetime64), ``y`` (float), sorted by
  ``unique_id, ds``, one regular frequency (``freq``, a pandas offset alias) for the whole frame.
* forecasts: columns ``unique_id``, ``ds`` (the ``horizon`` timestamps after each series' last
  context timestamp), ``mean`` and one column per quantile level named by
  :func:`quantile_column` (``"0.1"`` … ``"0.9"``).

Callers use :meth:`Forecaster.forecast`, which returns a :class:`Forecast`: the frame and the
series the model could not forecast, with the reason (``{unique_id: message}``). A family reports
those by setting ``last_failures`` in ``predict``; nothing outside the family reads that attribute.

``fit`` is the global training step (Chronos fine-tuning); it never mutates ``self`` or its inputs
and returns a new fitted forecaster. Local models (Prophet, Seasonal Naive) fit per series inside
``predict`` from the context they are given, so one backtest loop serves every family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
from chronos_flows.core.columns import ID, TARGET, TIME  # noqa: E402 - the one definition


def quantile_column(q: float) -> str:
    """Column name of quantile level ``q`` in a forecast frame (``0.1`` → ``"0.1"``)."""
    return f"{float(q):g}"


def require_long_frame(df: pd.DataFrame, what: str = "context") -> None:
    """Raise BadInputError unless ``df`` has the long-format columns unique_id, ds, y."""
    from chronos_flows.core.errors import BadInputError

    missing = [c for c in (ID, TIME, TARGET) if c not in df.columns]
    if missing:
        raise BadInputError(f"{what} frame is missing column(s) {missing} (has {list(df.columns)}); pass unique_id, ds, y")


def future_index(last: pd.Timestamp, horizon: int, freq: str) -> pd.DatetimeIndex:
    """The ``horizon`` timestamps after ``last`` at frequency ``freq``."""
    return pd.date_range(start=last, periods=horizon + 1, freq=freq)[1:]


@dataclass(frozen=True)
class Forecast:
    """What a forecaster returns: the forecast frame and the series it could not forecast."""

    frame: pd.DataFrame
    #: {unique_id: why it could not be forecast}; such a series has no rows in ``frame``
    failures: Mapping[str, str] = field(default_factory=dict)


class Forecaster(ABC):
    #: Short model name used in leaderboards and store paths (``chronos``, ``prophet``, ``seasonal_naive``).
    name: str = "forecaster"
    #: Set by ``predict``: the series the last call could not forecast (read only through :meth:`forecast`).
    last_failures: Mapping[str, str] = {}

    def forecast(
        self,
        context: pd.DataFrame,
        horizon: int,
        freq: str,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> Forecast:
        """:meth:`predict` with the series it could not forecast (the interface callers use)."""
        frame = self.predict(context, horizon, freq, quantiles)
        return Forecast(frame, dict(self.last_failures))

    def forecast_windows(self, history: pd.DataFrame, cutoffs: pd.DataFrame, horizon: int, step: int, freq: str,
                         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> "dict[int, Forecast] | None":
        """Every backtest window at once (``cutoffs``: rows of ``evaluation.windows.backtest_cutoffs``),
        ``{window: Forecast}``, for a model that does it faster than one :meth:`forecast` per window with
        the same forecasts; ``None`` (the default): the backtest calls :meth:`forecast` window by window."""
        return None

    def fit(self, train: pd.DataFrame, freq: str, horizon: int) -> "Forecaster":
        """Return a forecaster trained on ``train``; local models return ``self`` unchanged."""
        return self

    @abstractmethod
    def predict(
        self,
        context: pd.DataFrame,
        horizon: int,
        freq: str,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> pd.DataFrame:
        """Forecast ``horizon`` steps after the end of every series in ``context``."""


def sort_by_series(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` sorted by ``unique_id`` then ``ds`` (stable), with a fresh index; the sort is skipped
    when the rows are in that order already (a cleaned frame is)."""
    ids, ds = df[ID].to_numpy(), df[TIME].to_numpy()
    if len(df) > 1:
        try:
            same = ids[1:] == ids[:-1]
            ordered = bool(np.all(same | (ids[1:] > ids[:-1])) and np.all(~same | (ds[1:] >= ds[:-1])))
        except TypeError:  # ids that do not compare: let sort_values say so
            ordered = False
        if not ordered:
            return df.sort_values([ID, TIME], kind="stable").reset_index(drop=True)
    return df.reset_index(drop=True)
