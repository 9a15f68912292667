"""Forecast accuracy metrics, one uniform signature for all of them.

Every metric is ``metric(df, *, season_length=1, insample=None, quantiles=DEFAULT_QUANTILES)
-> pd.Series`` indexed by ``unique_id`` (one value per series; lower is better except
``coverage_80``, whose target is 0.8). ``df`` holds the evaluated rows of one forecast (one model,
one backtest window): columns ``unique_id``, ``ds``, ``y`` (actual), ``mean`` and one column per
quantile level (:func:`chronos_flows.models.base.quantile_column`). ``insample`` is the context the
forecast was made from (long frame ``unique_id, ds, y``); only MASE needs it.

Definitions (per series, over the ``h`` evaluated steps; NaN actuals are ignored):

* ``mae``   mean |y - mean|
* ``rmse``  sqrt(mean (y - mean)^2)
* ``mape``  mean |y - mean| / |y| over steps with y != 0 (a fraction: 0.05 = 5 %); NaN if all y = 0
* ``smape`` mean 2 |y - mean| / (|y| + |mean|), a step with y = mean = 0 counts 0 (range 0..2)
* ``mase``  mae / (in-sample MAE of the seasonal naive forecast with period ``season_length``);
  when the context is not longer than ``season_length`` the period falls back to 1 (as GluonTS
  does); a zero scale gives NaN
* ``wql``   weighted quantile loss, averaged over the quantile levels:
  ``mean_q [ 2 * sum_t pinball_q(y_t, q_t) / sum_t |y_t| ]`` with
  ``pinball_q(y, f) = max(q (y - f), (q - 1)(y - f))`` (the Chronos papers' WQL); NaN if sum |y| = 0
* ``coverage_80`` share of actuals inside [quantile 0.1, quantile 0.9]

MAE, RMSE, MAPE, sMAPE, WQL and coverage are utilsforecast's losses (``mae``, ``rmse``, ``mape``,
``smape``, ``scaled_crps`` — which is exactly this WQL —, ``coverage``): the same per-step terms and
the same pandas grouped mean and sum, computed in one pass for all metrics and series (utilsforecast
runs one narwhals pipeline per metric and per quantile level: ~60 ms for the WQL of one tourism
backtest, more than the whole 5 % budget of the AutoETS/Theta phase against bare statsforecast).
``tests/test_metrics.py`` checks that every number equals utilsforecast's exactly, and every metric
against a plain loop. The conventions kept on top of them: a series with a missing forecast step
scores NaN (utilsforecast's mean would skip the step), WQL is NaN when ``sum |y| = 0``
(utilsforecast adds machine epsilon instead), sMAPE is utilsforecast's times 2 (the M4 convention,
range 0..2, not 0..1) and MASE keeps its own in-sample scale because of the period-1 fallback for
series not longer than a season, which utilsforecast's ``mase`` does not have
(:func:`seasonal_scales` computes it for many contexts, e.g. every window of a backtest, at once).

:func:`relative_geomean` turns per-series scores of several models into the geometric mean of
their ratios to a reference model (Seasonal Naive), the aggregate the Chronos papers report.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import DEFAULT_QUANTILES, ID, TARGET, TIME, quantile_column

REFERENCE_MODEL = "seasonal_naive"
#: Relative scores are clipped to this range before the geometric mean (one degenerate series —
#: a perfect reference forecast, a zero error — must not send the aggregate to 0 or infinity).
RELATIVE_CLIP = (1e-2, 1e2)

Metric = Callable[..., pd.Series]


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadInputError(
            f"{what} is missing column(s) {missing}; it has {list(df.columns)}. "
            f"Pass a frame with unique_id, ds, y (actual), mean and the quantile columns."
        )


_POINT = ("mae", "rmse", "mape", "smape", "mase")
_EPS = np.finfo(np.float64).eps


def _scores(df: pd.DataFrame, names: Sequence[str], *, quantiles: Sequence[float] = DEFAULT_QUANTILES,
            scale: pd.Series | None = None) -> pd.DataFrame:
    """The metrics ``names`` of every group ``unique_id`` of ``df`` (one row per group, sorted), from
    per-row terms and one groupby. Each term and aggregation is utilsforecast's (``mae``, ``rmse``,
    ``mape``, ``smape``, ``scaled_crps``, ``coverage``: the same expressions, pandas' grouped mean and
    sum), done once for all metrics and groups instead of one narwhals pipeline per metric and
    quantile level (tests/test_metrics.py checks the numbers equal utilsforecast's exactly).
    ``scale`` (by group) is the MASE denominator."""
    point = any(n in _POINT for n in names)
    if point:
        _require(df, [ID, TARGET, "mean"], "metric input")
    qcols = [quantile_column(q) for q in quantiles] if "wql" in names else []
    if qcols:
        _require(df, [ID, TARGET, *qcols], "quantile metric input")
    lo, hi = quantile_column(0.1), quantile_column(0.9)
    if "coverage_80" in names:
        _require(df, [ID, TARGET, lo, hi], "coverage_80 input (needs the 0.1 and 0.9 quantiles)")
    y = df[TARGET].to_numpy(dtype=float)
    keep = ~np.isnan(y)
    y = y[keep]
    codes, groups = pd.factorize(df[ID].to_numpy()[keep], sort=True)
    terms: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if point:
            f = df["mean"].to_numpy(dtype=float)[keep]
            d = y - f
            ad = np.abs(d)
            terms["mae"], terms["rmse"] = ad, d ** 2
            terms["mape"] = ad / np.abs(np.where(y == 0, np.nan, y))
            den = np.abs(f) + np.abs(y)
            terms["smape"] = np.where(den == 0, 0.0, np.abs(f - y) / den)
            terms["_bad_point"] = np.isnan(f).astype(float)
        if qcols:
            qs = df[qcols].to_numpy(dtype=float)[keep]
            levels = np.asarray([float(q) for q in quantiles])
            order = np.argsort(levels)  # utilsforecast's mqloss pairs sorted levels with their columns
            for j, i in enumerate(order):
                delta = y - qs[:, i]
                terms[f"_ql{j}"] = np.maximum(levels[i] * delta, (levels[i] - 1) * delta)
            terms["_bad_q"] = np.isnan(qs).any(axis=1).astype(float)
        if "coverage_80" in names:
            lo_v, hi_v = df[lo].to_numpy(dtype=float)[keep], df[hi].to_numpy(dtype=float)[keep]
            terms["coverage_80"] = ((y >= lo_v) & (y <= hi_v)).astype(float)
            terms["_bad_cov"] = (np.isnan(lo_v) | np.isnan(hi_v)).astype(float)
    means = pd.DataFrame(terms).groupby(codes, sort=True).mean()
    index = pd.Index(groups[means.index.to_numpy()], name=ID)
    out: dict[str, np.ndarray] = {}
    if point:
        bad = means["_bad_point"].to_numpy() > 0
        mae_ = np.where(bad, np.nan, means["mae"].to_numpy())
        out["mae"] = mae_
        out["rmse"] = np.where(bad, np.nan, np.sqrt(means["rmse"].to_numpy()))
        out["mape"] = np.where(bad, np.nan, means["mape"].to_numpy())
        out["smape"] = 2.0 * np.where(bad, np.nan, means["smape"].to_numpy())
        if "mase" in names:
            s = (pd.Series(np.nan, index=index) if scale is None else scale.astype(float).reindex(index)).to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                out["mase"] = mae_ / np.where(s > 0, s, np.nan)
    if qcols:
        # mqloss: the mean over quantile levels of each level's mean loss (pandas' grouped mean, levels in order)
        per_level = means[[f"_ql{j}" for j in range(len(qcols))]].to_numpy()
        loss = pd.Series(per_level.T.ravel()).groupby(np.tile(np.arange(len(per_level)), len(qcols))).mean().to_numpy()
        absy = pd.Series(np.abs(y)).groupby(codes, sort=True).sum().to_numpy()
        counts = np.bincount(codes, minlength=len(groups))[means.index.to_numpy()]
        with np.errstate(divide="ignore", invalid="ignore"):
            wql_ = 2 * loss * counts / (absy + _EPS)
        out["wql"] = np.where((means["_bad_q"].to_numpy() > 0) | (absy <= 0), np.nan, wql_)
    if "coverage_80" in names:
        out["coverage_80"] = np.where(means["_bad_cov"].to_numpy() > 0, np.nan, means["coverage_80"].to_numpy())
    return pd.DataFrame({n: out[n] for n in names}, index=index)


def _one(df: pd.DataFrame, name: str, **kw) -> pd.Series:
    return _scores(df, [name], **kw)[name]


def mae(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
        quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Mean absolute error of the ``mean`` forecast, per series."""
    return _one(df, "mae")


def rmse(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Root mean squared error of the ``mean`` forecast, per series."""
    return _one(df, "rmse")


def mape(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Mean absolute percentage error as a fraction; steps with a zero actual are skipped."""
    return _one(df, "mape")


def smape(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
          quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Symmetric MAPE, ``2|y-f| / (|y|+|f|)`` averaged (0..2); 0/0 counts as 0."""
    return _one(df, "smape")


def seasonal_scales(y: np.ndarray, starts: np.ndarray, lengths: np.ndarray, season_length: int) -> np.ndarray:
    """The MASE denominators of many contexts at once: context ``k`` is ``y[starts[k]:starts[k] +
    lengths[k]]`` and its scale the mean of ``|y_t - y_{t-p}|`` (NaNs skipped) with ``p =
    season_length``, or 1 for a context not longer than that; NaN without a finite difference.
    Contexts with the same number of differences are summed as rows of one array, which numpy adds
    exactly as it adds each context alone (``np.nanmean``)."""
    y = np.asarray(y, dtype=float)
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    m = max(int(season_length), 1)
    p = np.where(lengths > m, m, 1)
    n_diffs = lengths - p
    out = np.full(len(starts), np.nan)
    for n in np.unique(n_diffs[n_diffs > 0]):  # one pass per distinct context length (a backtest: one per window)
        k = np.flatnonzero(n_diffs == n)
        idx = (starts[k] + p[k])[:, None] + np.arange(n)
        diffs = np.abs(y[idx] - y[idx - p[k][:, None]])
        nan = np.isnan(diffs)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(nan, 0.0, diffs).sum(axis=1) / (~nan).sum(axis=1)
        out[k] = np.where(np.isfinite(diffs).any(axis=1), mean, np.nan)
    return out


def series_bounds(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of the runs of equal ids in ``ids`` (a frame sorted by series)."""
    n = len(ids)
    starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1] if n else np.zeros(0, dtype=np.int64)
    return starts, np.diff(np.r_[starts, n])


def seasonal_scale(insample: pd.DataFrame, season_length: int) -> pd.Series:
    """In-sample MAE of the seasonal naive forecast per series (the MASE denominator).

    A series not longer than ``season_length`` uses period 1 instead; NaNs are skipped.
    """
    _require(insample, [ID, TARGET], "MASE in-sample frame")
    ordered = insample.sort_values([ID, TIME] if TIME in insample.columns else [ID], kind="stable")
    ids = ordered[ID].to_numpy()
    starts, lengths = series_bounds(ids)
    values = seasonal_scales(ordered[TARGET].to_numpy(dtype=float), starts, lengths, season_length)
    return pd.Series(values, index=pd.Index(ids[starts], name=ID), name="scale", dtype=float)


def scaled_mae(df: pd.DataFrame, scale: pd.Series) -> pd.Series:
    """MAE per series divided by that series' ``scale`` (indexed by ``unique_id``); a zero or
    missing scale gives NaN. :func:`mase` with the denominators given (the ensemble's optimiser
    reuses the scales of its fixed (series, window) pairs)."""
    return _scores(df, ["mase"], scale=scale)["mase"]


def mase(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Mean absolute scaled error: MAE / in-sample seasonal naive MAE (needs ``insample``)."""
    if insample is None:
        raise BadInputError("MASE needs the in-sample context (insample=...) to compute its seasonal naive scale")
    ids = df[ID].unique()
    return scaled_mae(df, seasonal_scale(insample[insample[ID].isin(ids)], season_length))


def wql(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
        quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Weighted quantile loss averaged over ``quantiles`` (Chronos papers' WQL), per series:
    utilsforecast's ``scaled_crps`` (Rangapuram et al., 2021), NaN when ``sum |y| = 0``."""
    return _one(df, "wql", quantiles=quantiles)


def wql_pooled(df: pd.DataFrame, *, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> float:
    """WQL over all rows of ``df`` at once (the per-dataset figure of the Chronos papers):
    :func:`wql` of the rows taken as one series."""
    pooled = wql(df.assign(**{ID: "pooled"}), quantiles=quantiles)
    return float(pooled.iloc[0]) if len(pooled) else float("nan")


def coverage_80(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
                quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Share of actuals inside the 80 % interval [quantile 0.1, quantile 0.9], per series."""
    return _one(df, "coverage_80")


METRICS: dict[str, Metric] = {
    "mae": mae,
    "rmse": rmse,
    "mape": mape,
    "smape": smape,
    "mase": mase,
    "wql": wql,
    "coverage_80": coverage_80,
}
#: Metrics where lower is better (all but coverage).
LOWER_IS_BETTER = ("mae", "rmse", "mape", "smape", "mase", "wql")


def evaluate_all(
    df: pd.DataFrame,
    *,
    season_length: int,
    insample: pd.DataFrame | None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    metrics: Mapping[str, Metric] | None = None,
    scale: pd.Series | None = None,
) -> pd.DataFrame:
    """All ``metrics`` (default :data:`METRICS`) for one forecast: one row per series. With the
    default metrics everything is computed in one pass (one groupby); ``scale`` (by ``unique_id``)
    gives the MASE denominators instead of ``insample`` (a backtest computes them for every window
    at once with :func:`seasonal_scales`)."""
    if metrics is None or metrics is METRICS:
        if scale is None:
            if insample is None:
                raise BadInputError("MASE needs the in-sample context (insample=...) to compute its seasonal naive scale")
            scale = seasonal_scale(insample[insample[ID].isin(df[ID].unique())], season_length)
        return _scores(df, list(METRICS), quantiles=quantiles, scale=scale)
    cols = {
        name: fn(df, season_length=season_length, insample=insample, quantiles=quantiles)
        for name, fn in metrics.items()
    }
    return pd.DataFrame(cols).rename_axis(ID)


def relative_geomean(
    scores_by_model: Mapping[str, pd.Series],
    reference: str = REFERENCE_MODEL,
    *,
    clip: tuple[float, float] | None = RELATIVE_CLIP,
) -> pd.Series:
    """Geometric mean over series (index entries) of ``score(model) / score(reference)``.

    ``scores_by_model`` maps a model name to its scores indexed by series (or by series and window).
    Only entries present and finite for both the model and the reference count; a ratio with a
    zero reference is dropped; ratios are clipped to ``clip`` (default 0.01 … 100). A model with no
    comparable entry gets NaN. Returns a Series indexed by model (the reference itself is 1.0).
    """
    if reference not in scores_by_model:
        raise BadInputError(
            f"relative scores need the reference model {reference!r}; got models {sorted(scores_by_model)}. "
            f"Include the Seasonal Naive baseline in the backtest."
        )
    ref = scores_by_model[reference].astype(float)
    out = {}
    for model, scores in scores_by_model.items():
        s, r = scores.astype(float).align(ref, join="inner")
        ok = np.isfinite(s) & np.isfinite(r) & (r > 0) & (s >= 0)
        ratio = (s[ok] / r[ok]).to_numpy()
        if clip is not None:
            ratio = np.clip(ratio, clip[0], clip[1])
        else:
            ratio = ratio[ratio > 0]
        out[model] = float(np.exp(np.mean(np.log(ratio)))) if len(ratio) else float("nan")
    return pd.Series(out, name=f"relative_geomean_vs_{reference}", dtype=float)
