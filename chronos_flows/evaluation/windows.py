"""Backtest windows: the final horizon of every series plus rolling origins before it.

This is the sliding-window (rolling-origin) cross-validation of the gasoline SageMaker project:
each window forecasts ``horizon`` steps from a cutoff and is scored on the actuals after it; the
cutoff moves back by ``step`` steps per window. With ``n`` points in a series, window ``w``
(``0 … n_windows-1``, chronological; the last one is the final horizon) has its cutoff — the last
context timestamp — at position ``n - horizon - 1 - (n_windows - 1 - w) * step`` and its test
span at the ``horizon`` positions after it. The context is everything up to and including the
cutoff (an expanding window, as every model in this project conditions on all the history it
gets). Windows are defined per series by position, so series of different lengths and end dates
each get their own final horizon.

utilsforecast's ``backtest_splits`` computes the same windows on the regular series cleaning
produces (``tests/test_windows.py`` checks it against this module); it is not used here because it
needs the frequency and materialises every window's training frame, while the evaluation needs
only the cutoffs (and ``n_context`` for its report).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import ID, TARGET, TIME, sort_by_series

CUTOFF_COLUMNS = [ID, "window", "cutoff", "test_start", "test_end", "n_context"]


def _check_frame(df: pd.DataFrame, what: str = "history") -> None:
    missing = [c for c in (ID, TIME, TARGET) if c not in df.columns]
    if missing:
        raise BadInputError(
            f"{what} frame is missing column(s) {missing} (has {list(df.columns)}); "
            f"pass the long format unique_id, ds, y"
        )


def backtest_cutoffs(
    df: pd.DataFrame,
    horizon: int,
    n_windows: int = 1,
    step: int | None = None,
    *,
    min_context: int = 1,
) -> pd.DataFrame:
    """One row per (series, window): ``unique_id, window, cutoff, test_start, test_end, n_context``.

    ``cutoff`` is the last context timestamp, ``test_start``/``test_end`` the first/last evaluated
    timestamps and ``n_context`` the number of context points. ``step`` defaults to ``horizon``.
    Raises :class:`BadInputError` naming every series with fewer than
    ``min_context + horizon + (n_windows - 1) * step`` points.
    """
    _check_frame(df)
    if horizon < 1 or n_windows < 1:
        raise BadInputError(f"horizon ({horizon}) and n_windows ({n_windows}) must be at least 1")
    step = horizon if step is None else int(step)
    if step < 1:
        raise BadInputError(f"step ({step}) must be at least 1 (default: the horizon)")
    min_context = max(int(min_context), 1)
    need = min_context + horizon + (n_windows - 1) * step

    sizes = df.groupby(ID, sort=True)[TIME].size()
    short = sizes[sizes < need]
    if len(short):
        listed = ", ".join(f"{uid!r} ({n} points)" for uid, n in short.head(10).items())
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        raise BadInputError(
            f"series too short for the backtest: {listed}{more}. Each needs at least {need} points "
            f"({min_context} context + horizon {horizon} + {n_windows - 1} more window(s) × step {step}); "
            f"lower evaluation.n_windows / step / horizon or drop those series"
        )

    ordered = sort_by_series(df[[ID, TIME]])
    ids, ds = ordered[ID].to_numpy(), ordered[TIME].to_numpy()
    starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1] if len(ids) else np.zeros(0, dtype=np.int64)
    n = np.diff(np.r_[starts, len(ids)])
    w = np.arange(n_windows)
    c = (n[:, None] - horizon - 1 - (n_windows - 1 - w) * step).ravel()  # series by series, windows in order
    pos = np.repeat(starts, n_windows) + c
    out = pd.DataFrame({
        ID: np.repeat(ids[starts], n_windows), "window": np.tile(w, len(starts)).astype(np.int64),
        "cutoff": ds[pos], "test_start": ds[pos + 1], "test_end": ds[pos + horizon], "n_context": (c + 1).astype(np.int64),
    }, columns=CUTOFF_COLUMNS)
    for col in ("cutoff", "test_start", "test_end"):
        out[col] = pd.to_datetime(out[col])
    return out


def split_window(
    df: pd.DataFrame, cutoffs_row_or_window: pd.Series | pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into ``(context, actuals)`` for one window.

    ``cutoffs_row_or_window`` is one row of :func:`backtest_cutoffs` (one series) or the rows of
    one window (one per series). Context: each listed series up to and including its cutoff;
    actuals: its rows from ``test_start`` to ``test_end``. Series not listed are left out.
    """
    _check_frame(df)
    cut = cutoffs_row_or_window
    cut = cut.to_frame().T if isinstance(cut, pd.Series) else cut
    missing = [c for c in (ID, "cutoff", "test_start", "test_end") if c not in cut.columns]
    if missing:
        raise BadInputError(f"window spec is missing {missing}; pass rows of backtest_cutoffs()")
    dup = cut[ID][cut[ID].duplicated()]
    if len(dup):
        raise BadInputError(
            f"window spec lists series {sorted(dup.unique())[:5]} more than once; "
            f"select one window first (cutoffs[cutoffs.window == w])"
        )
    spec = cut[[ID, "cutoff", "test_start", "test_end"]].copy()
    for col in ("cutoff", "test_start", "test_end"):
        spec[col] = pd.to_datetime(spec[col])
    merged = df.merge(spec, on=ID, how="inner")
    context = merged.loc[merged[TIME] <= merged["cutoff"], list(df.columns)]
    actuals = merged.loc[(merged[TIME] >= merged["test_start"]) & (merged[TIME] <= merged["test_end"]), list(df.columns)]
    context = context.sort_values([ID, TIME], kind="stable").reset_index(drop=True)
    actuals = actuals.sort_values([ID, TIME], kind="stable").reset_index(drop=True)
    return context, actuals
