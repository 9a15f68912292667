"""Score one published forecast against the actuals that have arrived.

Per (forecast, series) the rows whose ``ds`` has an actual are scored with the project's metrics
(:mod:`chronos_flows.evaluation.metrics`, same definitions as the backtest): MASE (scaled by the
seasonal-naive error of the series' history up to the forecast's origin), WQL, 80 % coverage. Pooled
per forecast: WQL over every scored point (:func:`~chronos_flows.evaluation.metrics.wql_pooled`, the
Chronos papers' per-dataset WQL), MASE the mean of the series' MASE, coverage the share of all scored
actuals inside [q0.1, q0.9], bias ``sum(mean - y) / sum |y|`` (positive: over-forecast). Per horizon
step: WQL and coverage pooled over the series.

A forecast is scored on what has arrived and says so: ``steps_scored`` (the furthest step with an
actual), ``complete`` (every series, every step). What is never merged silently, but reported in
``issues``: series of the forecast absent from the new data, late data (a step whose date the data
has already passed for the series, i.e. the series has newer observations, but no value at that
step), and — by the history, see :mod:`chronos_flows.monitoring.history` — actuals that changed
since the last scoring (revisions).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from chronos_flows.evaluation.metrics import coverage_80, mase, seasonal_scale, wql, wql_pooled
from chronos_flows.models.base import ID, TARGET, TIME, quantile_column
from chronos_flows.monitoring.sources import EXAMPLES, Published, actuals_sha, known_levels


@dataclass
class Score:
    """The scores of one published forecast on the actuals of one scoring."""

    forecast_id: str
    source: str
    champion_run_id: str
    family: str
    origin: pd.Timestamp
    horizon: int
    n_series: int
    n_series_scored: int
    n_points: int
    steps_scored: int
    complete: bool
    scored_through: pd.Timestamp | None
    wql: float
    mase: float
    coverage_80: float
    bias: float
    by_step: list[dict[str, Any]]
    actuals_sha: str
    #: actuals of the scored points (unique_id, ds, y): to check revisions of a later scoring
    scored_actuals: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    issues: list[str] = field(default_factory=list)

    @property
    def scored(self) -> bool:
        return self.n_points > 0


def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def score_forecast(published: Published, actuals: pd.DataFrame, history: pd.DataFrame, *, season_length: int) -> Score:
    """Score ``published`` on ``actuals`` (long ``unique_id, ds, y``: observed values, no imputed
    ones). ``history``: the cleaned data (as training cleans it), whose values up to each series'
    origin give the MASE scale."""
    fc = published.frame
    ids = sorted(fc[ID].unique())
    act = actuals[actuals[ID].isin(ids)]
    merged = fc.merge(act[[ID, TIME, TARGET]], on=[ID, TIME], how="left")
    have = merged[TARGET].notna()
    scored = merged[have]
    issues = list(published.notes)

    present = set(act[ID].unique())
    absent = [u for u in ids if u not in present]
    if absent:
        issues.append(f"{len(absent)} series absent from the new data: {', '.join(absent[:EXAMPLES])}")
    last_seen = act.groupby(ID)[TIME].max()
    late_rows = merged[~have & (merged[TIME] < merged[ID].map(last_seen))]
    if len(late_rows):
        late = sorted(late_rows[ID].unique())
        issues.append(f"late data: {len(late_rows)} step(s) of {len(late)} series missing although newer values arrived "
                      f"({', '.join(f'{u} {late_rows[late_rows[ID] == u][TIME].min():%Y-%m-%d}' for u in late[:EXAMPLES])})")

    levels = known_levels(fc, published.quantiles)
    n_points = int(len(scored))
    nan = float("nan")
    if not n_points:
        return Score(published.forecast_id, published.source, published.champion_run_id, published.family,
                     published.origin, published.horizon, len(ids), 0, 0, 0, False, None, nan, nan, nan, nan, [],
                     actuals_sha(scored), scored[[ID, TIME, TARGET]], issues)
    steps = int(scored["step"].max())
    complete = bool(have.all()) and int(fc["step"].max()) >= published.horizon
    if not complete:
        issues.append(f"partial: {n_points} of {len(merged)} points have arrived (up to step {steps} of {published.horizon})")

    y = scored[TARGET].to_numpy(dtype=float)
    denom = float(np.abs(y).sum())
    bias = float((scored["mean"].to_numpy(dtype=float) - y).sum() / denom) if denom > 0 else nan
    pooled_wql = wql_pooled(scored, quantiles=levels) if levels else nan
    has_band = quantile_column(0.1) in fc.columns and quantile_column(0.9) in fc.columns
    cover = float(((y >= scored[quantile_column(0.1)]) & (y <= scored[quantile_column(0.9)])).mean()) if has_band else nan

    # MASE per series: the seasonal-naive scale of the history up to that series' origin
    origin_of = fc.groupby(ID)["origin"].first()
    hist = history[history[ID].isin(scored[ID].unique())]
    hist = hist[hist[TIME] <= hist[ID].map(origin_of)]
    mase_series = mase(scored, season_length=season_length, insample=hist) if len(hist) else pd.Series(dtype=float)
    if len(hist):
        zero = seasonal_scale(hist, season_length)
        flat = sorted(zero[~(zero > 0)].index)
        if flat:
            issues.append(f"MASE undefined for {len(flat)} series with a flat history: {', '.join(map(str, flat[:EXAMPLES]))}")
    pooled_mase = float(mase_series.mean()) if mase_series.notna().any() else nan

    by_step = []
    for step, g in scored.groupby("step", sort=True):
        gy = g[TARGET].to_numpy(dtype=float)
        row = {"step": int(step), "n": int(len(g)), "wql": wql_pooled(g, quantiles=levels) if levels else nan}
        row["coverage_80"] = float(((gy >= g[quantile_column(0.1)]) & (gy <= g[quantile_column(0.9)])).mean()) if has_band else nan
        by_step.append(row)
    return Score(
        published.forecast_id, published.source, published.champion_run_id, published.family, published.origin,
        published.horizon, len(ids), int(scored[ID].nunique()), n_points, steps, complete,
        pd.Timestamp(scored[TIME].max()), pooled_wql, pooled_mase, cover, bias, by_step,
        actuals_sha(scored), scored[[ID, TIME, TARGET]].reset_index(drop=True), issues,
    )


def per_series(published: Published, actuals: pd.DataFrame, history: pd.DataFrame, *, season_length: int) -> pd.DataFrame:
    """WQL, MASE and coverage per series of one forecast (for the report's worst series)."""
    merged = published.frame.merge(actuals[[ID, TIME, TARGET]], on=[ID, TIME], how="inner")
    if merged.empty:
        return pd.DataFrame(columns=["wql", "mase", "coverage_80"])
    levels = known_levels(merged, published.quantiles)
    origin_of = published.frame.groupby(ID)["origin"].first()
    hist = history[history[ID].isin(merged[ID].unique())]
    hist = hist[hist[TIME] <= hist[ID].map(origin_of)]
    out = {"wql": wql(merged, quantiles=levels) if levels else None,
           "mase": mase(merged, season_length=season_length, insample=hist)}
    if quantile_column(0.1) in merged.columns and quantile_column(0.9) in merged.columns:
        out["coverage_80"] = coverage_80(merged)
    return pd.DataFrame({k: v for k, v in out.items() if v is not None})


def json_clean(v: Any) -> Any:
    """NaN → None, numpy scalars → Python, recursively (for JSON columns and event payloads)."""
    if isinstance(v, dict):
        return {str(k): json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(float(v)) else float(v)
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v


def dumps(v: Any) -> str:
    return json.dumps(json_clean(v), sort_keys=True, default=str)
