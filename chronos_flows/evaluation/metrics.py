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

MAE, RMSE, MAPE, WQL and coverage are computed by utilsforecast's losses (``mae``, ``rmse``,
``mape``, ``scaled_crps`` — which is exactly this WQL —, ``coverage``); the conventions kept on
top of them: a series with a missing forecast step scores NaN (utilsforecast's mean would skip the
step), WQL is NaN when ``sum |y| = 0`` (utilsforecast adds machine epsilon instead), sMAPE is
utilsforecast's times 2 (the M4 convention, range 0..2, not 0..1) and MASE keeps its own
in-sample scale because of the period-1 fallback for series not longer than a season, which
utilsforecast's ``mase`` does not have. ``tests/test_metrics.py`` checks every metric against a
plain loop.

:func:`relative_geomean` turns per-series scores of several models into the geometric mean of
their ratios to a reference model (Seasonal Naive), the aggregate the Chronos papers report.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

import utilsforecast.losses as ufl

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


def _point_frame(df: pd.DataFrame) -> pd.DataFrame:
    _require(df, [ID, TARGET, "mean"], "metric input")
    out = df[[ID, TARGET, "mean"]].copy()
    out[TARGET] = out[TARGET].astype(float)
    out["mean"] = out["mean"].astype(float)
    return out[out[TARGET].notna()]


def _per_series(values: pd.Series, ids: pd.Series, invalid: pd.Series | None = None) -> pd.Series:
    """Mean of ``values`` per series; NaN for a series with any ``invalid`` row (a missing forecast)."""
    out = values.groupby(ids, sort=True).mean()
    if invalid is not None:
        bad = invalid.groupby(ids, sort=True).any()
        out = out.where(~bad.reindex(out.index, fill_value=False))
    return out.rename_axis(ID)


def _by_series(out: pd.DataFrame, column: str, invalid: pd.Series, ids: pd.Series, name: str) -> pd.Series:
    """A utilsforecast result (one row per series) as a Series by ``unique_id``; NaN for a series
    with any ``invalid`` row (a missing forecast), never a partial mean."""
    res = out.set_index(ID)[column].astype(float).sort_index()
    bad = invalid.groupby(ids, sort=True).any()
    return res.where(~bad.reindex(res.index, fill_value=False)).rename(name).rename_axis(ID)


def _point(fn: Callable[..., pd.DataFrame], df: pd.DataFrame, name: str) -> pd.Series:
    f = _point_frame(df)
    return _by_series(fn(f, models=["mean"], id_col=ID, target_col=TARGET), "mean", f["mean"].isna(), f[ID], name)


def mae(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
        quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Mean absolute error of the ``mean`` forecast, per series."""
    return _point(ufl.mae, df, "mae")


def rmse(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Root mean squared error of the ``mean`` forecast, per series."""
    return _point(ufl.rmse, df, "rmse")


def mape(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Mean absolute percentage error as a fraction; steps with a zero actual are skipped."""
    return _point(ufl.mape, df, "mape")


def smape(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
          quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Symmetric MAPE, ``2|y-f| / (|y|+|f|)`` averaged (0..2); 0/0 counts as 0."""
    return 2.0 * _point(ufl.smape, df, "smape")


def seasonal_scale(insample: pd.DataFrame, season_length: int) -> pd.Series:
    """In-sample MAE of the seasonal naive forecast per series (the MASE denominator).

    A series not longer than ``season_length`` uses period 1 instead; NaNs are skipped.
    """
    _require(insample, [ID, TARGET], "MASE in-sample frame")
    m = max(int(season_length), 1)
    out = {}
    for uid, g in insample.sort_values([ID, TIME] if TIME in insample.columns else [ID]).groupby(ID, sort=True):
        y = g[TARGET].to_numpy(dtype=float)
        p = m if len(y) > m else 1
        diffs = np.abs(y[p:] - y[:-p]) if len(y) > p else np.array([np.nan])
        out[uid] = float(np.nanmean(diffs)) if np.isfinite(diffs).any() else np.nan
    return pd.Series(out, name="scale", dtype=float).rename_axis(ID)


def scaled_mae(df: pd.DataFrame, scale: pd.Series) -> pd.Series:
    """MAE per series divided by that series' ``scale`` (indexed by ``unique_id``); a zero or
    missing scale gives NaN. :func:`mase` with the denominators given (the ensemble's optimiser
    reuses the scales of its fixed (series, window) pairs)."""
    err = mae(df)
    scale = scale.astype(float).reindex(err.index)
    return (err / scale.where(scale > 0)).rename("mase")


def mase(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Mean absolute scaled error: MAE / in-sample seasonal naive MAE (needs ``insample``)."""
    if insample is None:
        raise BadInputError("MASE needs the in-sample context (insample=...) to compute its seasonal naive scale")
    ids = df[ID].unique()
    return scaled_mae(df, seasonal_scale(insample[insample[ID].isin(ids)], season_length))


def _quantile_frame(df: pd.DataFrame, quantiles: Sequence[float]) -> tuple[pd.DataFrame, list[str]]:
    cols = [quantile_column(q) for q in quantiles]
    _require(df, [ID, TARGET, *cols], "quantile metric input")
    f = df[[ID, TARGET, *cols]].copy()
    f[TARGET] = f[TARGET].astype(float)
    return f[f[TARGET].notna()], cols


def wql(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
        quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Weighted quantile loss averaged over ``quantiles`` (Chronos papers' WQL), per series:
    utilsforecast's ``scaled_crps`` (Rangapuram et al., 2021), NaN when ``sum |y| = 0``."""
    f, cols = _quantile_frame(df, quantiles)
    out = ufl.scaled_crps(f, models={"wql": cols}, quantiles=np.asarray([float(q) for q in quantiles]),
                          id_col=ID, target_col=TARGET)
    zero = f[TARGET].abs().groupby(f[ID], sort=True).sum() <= 0
    res = _by_series(out, "wql", f[cols].isna().any(axis=1), f[ID], "wql")
    return res.where(~zero.reindex(res.index, fill_value=False))


def wql_pooled(df: pd.DataFrame, *, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> float:
    """WQL over all rows of ``df`` at once (the per-dataset figure of the Chronos papers):
    :func:`wql` of the rows taken as one series."""
    pooled = wql(df.assign(**{ID: "pooled"}), quantiles=quantiles)
    return float(pooled.iloc[0]) if len(pooled) else float("nan")


def coverage_80(df: pd.DataFrame, *, season_length: int = 1, insample: pd.DataFrame | None = None,
                quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.Series:
    """Share of actuals inside the 80 % interval [quantile 0.1, quantile 0.9], per series."""
    lo, hi = quantile_column(0.1), quantile_column(0.9)
    _require(df, [ID, TARGET, lo, hi], "coverage_80 input (needs the 0.1 and 0.9 quantiles)")
    f = df[df[TARGET].notna()]
    f = pd.DataFrame({ID: f[ID], TARGET: f[TARGET].astype(float), "m-lo-80": f[lo].astype(float), "m-hi-80": f[hi].astype(float)})
    out = ufl.coverage(f, models=["m"], level=80, id_col=ID, target_col=TARGET)
    return _by_series(out, "m",
                      f["m-lo-80"].isna() | f["m-hi-80"].isna(), f[ID], "coverage_80")


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
) -> pd.DataFrame:
    """All ``metrics`` (default :data:`METRICS`) for one forecast: one row per series."""
    metrics = METRICS if metrics is None else metrics
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
