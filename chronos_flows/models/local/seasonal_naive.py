"""Seasonal Naive: the reference every relative score is measured against.

Point forecast: the value one season earlier, ``ŷ[T+h] = y[T+h-m·k]`` with ``k = ceil(h/m)`` (the
last observed season repeated). Quantiles: empirical quantiles of the in-sample one-season-ahead
errors ``e[t] = y[t] - y[t-m]``, widened by ``sqrt(k)`` for a forecast ``k`` seasons ahead —
the seasonal naive forecast-variance formula of Hyndman & Athanasopoulos (FPP3 §5.5,
``σ_h = σ·sqrt(k)``), with the empirical error distribution in place of the normal one (a
bootstrap-free version of FPP3 §5.5's bootstrapped intervals). ``ŷ + sqrt(k)·Q_e(q)``; quantile
columns are sorted per step so they never cross. Fewer than 2 seasonal errors (context shorter than
``m + 2``): the errors of the one-step naive forecast are used instead. A context shorter than one
season falls back to the naive forecast (period 1), the same fallback MASE's scale uses; an empty
context raises :class:`BadInputError`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import (
    require_long_frame,
    DEFAULT_QUANTILES,
    ID,
    TARGET,
    TIME,
    Forecaster,
    future_index,
    quantile_column,
)


def seasonal_naive_forecast(
    y: np.ndarray, horizon: int, season_length: int, quantiles: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean[h], quantiles[h, Q])`` for one series' context ``y`` (NaN-tolerant)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if n == 0:
        raise ValueError("no context points to forecast from")
    m = max(int(season_length), 1)
    if n < m:
        m = 1  # shorter than one season: the naive (last value) forecast
    h = np.arange(1, horizon + 1)
    k = np.ceil(h / m).astype(int)
    mean = y[n - m + (h - 1) % m]
    errors = y[m:] - y[:-m] if n > m else np.array([])
    errors = errors[np.isfinite(errors)]
    if len(errors) < 2:
        errors = np.diff(y)
        errors = errors[np.isfinite(errors)]
    q = np.asarray([float(x) for x in quantiles])
    if len(errors) == 0:
        offsets = np.zeros(len(q))
    else:
        offsets = np.quantile(errors, q)
    qs = mean[:, None] + np.sqrt(k)[:, None] * offsets[None, :]
    return mean, np.sort(qs, axis=1)


class SeasonalNaive(Forecaster):
    name = "seasonal_naive"

    def __init__(self, season_length: int):
        if int(season_length) < 1:
            raise BadInputError(f"season_length must be at least 1, got {season_length}")
        self.season_length = int(season_length)
        self.last_failures: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"SeasonalNaive(season_length={self.season_length})"

    def predict(self, context: pd.DataFrame, horizon: int, freq: str,
                quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.DataFrame:
        require_long_frame(context)
        qcols = [quantile_column(q) for q in quantiles]
        parts = []
        for uid, g in context.sort_values([ID, TIME], kind="stable").groupby(ID, sort=True):
            try:
                mean, qs = seasonal_naive_forecast(g[TARGET].to_numpy(), horizon, self.season_length, quantiles)
            except ValueError as exc:
                raise BadInputError(
                    f"series {uid!r}: {exc}; give it a longer context or drop it"
                ) from None
            frame = pd.DataFrame(qs, columns=qcols)
            frame.insert(0, "mean", mean)
            frame.insert(0, TIME, future_index(pd.Timestamp(g[TIME].iloc[-1]), horizon, freq))
            frame.insert(0, ID, uid)
            parts.append(frame)
        if not parts:
            return pd.DataFrame(columns=[ID, TIME, "mean", *qcols])
        return pd.concat(parts, ignore_index=True)
