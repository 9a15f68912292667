"""Batch forecasts fanned out over chunks of series (the ``forecast-chunk`` tasks of the flow).

:func:`plan_chunks` splits the cleaned panel once (without copying it, as :func:`forecast_panel`
does), sets aside the series too short for the champion's family (with the reason) and cuts the
others into chunks of ``chunk_size`` series in ``unique_id`` order: exactly the chunks
:func:`forecast_panel` makes of the whole panel. :meth:`ChunkPlan.frame` builds one chunk's rows (a
small, picklable long frame that can travel to a Dask worker) only when the chunk is submitted, so
the flow never holds a second copy of the panel. :func:`forecast_chunk` forecasts one such frame as
a single chunk of :func:`forecast_panel` (the Chronos array fast path applies inside it), so the
rows are those of the unchunked call, wherever the chunk ran. :func:`add_chunk` folds a chunk's
counts into the batch's :class:`ForecastRun`; :func:`fail_chunk` reports every series of a chunk
that failed as skipped, with the error, so one lost chunk never loses the batch.
Pure: no Prefect, no boto3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from chronos_flows.forecasting.batch import (
    ForecastRun,
    check_request,
    eligible_series,
    SeriesSplit,
    split_series,
    forecast_columns,
    forecast_panel,
)
from chronos_flows.models.base import Forecaster


@dataclass
class ChunkPlan:
    """The eligible series of a panel cut into chunks; ``skipped``: the series too short to forecast."""

    history: pd.DataFrame
    series: SeriesSplit
    chunks: list[np.ndarray]
    skipped: dict[str, str]
    quantiles: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def n_series(self) -> int:
        """Series to forecast (every chunk's)."""
        return int(sum(len(c) for c in self.chunks))

    def ids(self, i: int) -> list[str]:
        return [str(u) for u in self.series.uniques[self.chunks[i]]]

    def label(self, i: int) -> str:
        """``first..last`` series id of chunk ``i`` (its Prefect task run's name)."""
        ids = self.series.uniques[self.chunks[i]]
        return f"{ids[0]}" if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"

    def frame(self, i: int) -> pd.DataFrame:
        """The rows (``unique_id, ds, y``, time-sorted series in id order) of chunk ``i``."""
        return self.series.frame(self.history, self.chunks[i])


def plan_chunks(history: pd.DataFrame, *, horizon: int, quantiles: Sequence[float], min_history: int, family: str,
                chunk_size: int) -> ChunkPlan:
    """The chunks :func:`forecast_panel` would forecast; BadInputError for a bad request or a panel
    without a series long enough (the same messages as :func:`forecast_panel`)."""
    levels = check_request(horizon, chunk_size, quantiles)
    series = split_series(history)
    short = ForecastRun()
    eligible = eligible_series(series, short, min_history, family)
    chunks = [eligible[s : s + chunk_size] for s in range(0, len(eligible), chunk_size)]
    return ChunkPlan(history, series, chunks, dict(short.skipped), levels)


def forecast_chunk(model: Forecaster, frame: pd.DataFrame, *, horizon: int, freq: str, quantiles: Sequence[float],
                   family: str, champion_run_id: str, min_history: int = 1) -> tuple[pd.DataFrame, ForecastRun]:
    """Forecast every series of ``frame`` (one chunk) in one model call; returns its forecast rows
    (:func:`forecast_columns` order) and its counts, skipped series and predict time."""
    parts: list[pd.DataFrame] = []
    run = forecast_panel(model, frame, horizon=horizon, freq=freq, quantiles=quantiles, family=family,
                         champion_run_id=champion_run_id, min_history=min_history, chunk_size=max(1, len(frame)),
                         sink=parts.append)
    if len(parts) == 1:
        return parts[0], run
    columns = forecast_columns(sorted(float(q) for q in quantiles))
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)), run


def add_chunk(run: ForecastRun, part: ForecastRun) -> None:
    """Fold one chunk's counts into the batch's ``run``."""
    run.n_series += part.n_series
    run.n_rows += part.n_rows
    run.skipped.update(part.skipped)
    run.predict_seconds += part.predict_seconds
    run.chunks += 1


def fail_chunk(run: ForecastRun, ids: Sequence[str], index: int, label: str, error: BaseException | str) -> str:
    """Report every series of failed chunk ``index`` as skipped with ``error``; returns the reason."""
    why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    reason = f"forecast chunk {index} ({label}) failed: {why}"
    for uid in ids:
        run.skipped[str(uid)] = reason
    run.chunks += 1
    return reason

