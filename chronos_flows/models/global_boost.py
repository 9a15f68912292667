"""Global gradient-boosted family (``lightgbm``): one LightGBM model trained across every series of
the panel, on mlforecast's lag, rolling-mean and calendar features.

Method (mlforecast ``MLForecast`` + ``lightgbm.LGBMRegressor``, recursive multi-step forecasts):

* Target transforms (``target_transform``), applied per series before the features are built and
  inverted on the forecasts so series of different levels and trends share one model:
  ``"difference+scale"`` (first differences, then each series standardised by its own mean and
  standard deviation: mlforecast's ``Differences([1])`` + ``LocalStandardScaler``), ``"scale"``
  (standardised only), ``"difference"``, ``"none"``.
* Features (:func:`feature_plan`), sized to the season length ``m``, the horizon and the history
  the panel has: every lag ``1 … m+1`` (for a season longer than 59 steps: ``1 … 6`` and
  ``m-1, m, m+1``), rolling means of lag 1 over 3
  and ``m`` steps, and the calendar features of the frequency (month for monthly data, quarter for
  quarterly, ISO week for weekly, day of week and month for daily, hour and day of week below a
  day). When the typical (median) series is too short to train on the seasonal lags and the
  ``m``-step mean, only the lags ``1 … min(m, 6)`` that fit are used, so short panels still get a model.
* Quantiles (``quantile_method``): ``"conformal"`` — mlforecast's conformal prediction intervals
  (``PredictionIntervals(n_windows=conformal_windows, h=horizon, scale_estimator="mad")``): the
  model is fitted once before the last ``conformal_windows × horizon`` points of each series, and
  its signed errors there, each divided by its series' spread (MAD of the first differences), are
  pooled over all series per horizon step and re-scaled to the spread of each series forecast
  (mlforecast's ``scale_aligned`` transfer; pooling over the panel, not each series' own few
  errors, is what makes the 80 % interval cover about 80 %). Quantile level ``q < 0.5`` is the lower
  bound of the ``100·(1-2q)`` % interval, ``q > 0.5`` the upper bound of the ``100·(2q-1)`` %
  interval, ``0.5`` the point forecast. Or ``"quantile"`` — one LightGBM model per quantile level
  with the pinball (quantile) objective, each forecast recursively. Quantile columns are sorted per
  step so they never cross.
* Too short: a series with fewer points than the lags, the rolling windows, the differences and
  the conformal windows need (:attr:`FeaturePlan.min_length`), or with a missing value, is left
  out of the training data and of the forecasts and recorded in ``last_failures`` with the reason;
  it never fails the call. A panel where no series is long enough gives an empty frame, every
  series reported.
* Deterministic: fixed ``seed``, ``deterministic=True``, row-wise histograms and ``n_jobs``
  LightGBM threads, so two fits on the same data give identical forecasts.

Training: :meth:`GlobalBoostForecaster.fit` trains on a panel and returns a new, fitted forecaster
(inputs untouched); its ``predict`` applies the trained model to any context (mlforecast's
``new_df``: the features, target transforms and interval scales are computed from the context, the
pooled calibration errors are the fit's; a context of another frequency than the fit's
gets the fit's calendar features and its own future timestamps; a longer horizon than the fit's
retrains on the fit's panel with the context's series in it). An unfitted forecaster's ``predict`` trains on
the context it is given first — the backtest path: one model per backtest window, trained across
all series of that window's context. A champion of this family therefore needs the panel's history
at forecast time (champion.json says so: ``needs_history``), which batch forecasts and the
endpoint load from the dataset the champion was judged on. mlforecast and lightgbm are imported
lazily.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import DEFAULT_QUANTILES, ID, TARGET, TIME, Forecaster, future_index, quantile_column
from chronos_flows.models.local.common import check_predict_args, interval_key

NAME = "lightgbm"
TARGET_TRANSFORMS = ("difference+scale", "scale", "difference", "none")
QUANTILE_METHODS = ("conformal", "quantile")
#: the shortest lags every plan has (up to the season length)
SHORT_LAGS = 6
#: seasons up to this long get every lag ``1 … m+1``; longer ones the short lags and ``m-1, m, m+1``
DENSE_SEASON = 59
#: rows per series the model needs after its features are built
MIN_TRAIN_ROWS = 2
#: what :meth:`GlobalBoostForecaster.settings` records (and :meth:`from_settings` accepts)
DEFAULTS: dict[str, Any] = {
    "target_transform": "difference+scale",
    "quantile_method": "conformal",
    "conformal_windows": 4,
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 20,
    "seed": 0,
}
#: the fewest observations a series ever needs (lag 1 + one difference + training rows; the
#: conformal windows add ``conformal_windows × horizon``), what serving and batch checks use
MIN_HISTORY = 1 + 1 + MIN_TRAIN_ROWS


def week_of_year(dates: pd.DatetimeIndex) -> np.ndarray:
    """ISO week number (1–53) of each timestamp: the calendar feature of weekly data."""
    return pd.DatetimeIndex(dates).isocalendar().week.to_numpy(dtype=np.int64)


def calendar_features(freq: str) -> list[Any]:
    """mlforecast date features for pandas frequency ``freq`` (names of DatetimeIndex attributes
    or :func:`week_of_year`); none for yearly or unknown frequencies."""
    code = pd.tseries.frequencies.to_offset(freq).name.upper()
    if code.startswith(("MS", "ME", "M", "BMS", "BME", "SMS", "SME")) and not code.startswith("MIN"):
        return ["month"]
    if code.startswith(("QS", "QE", "Q", "BQ")):
        return ["quarter"]
    if code.startswith("W"):
        return [week_of_year]
    if code in ("D", "B", "C"):
        return ["dayofweek", "month"]
    if code.startswith(("H", "MIN", "T", "S", "L", "U", "N", "BH", "CBH")):
        return ["hour", "dayofweek"]
    return []


@dataclass(frozen=True)
class FeaturePlan:
    """The features of one fit, chosen from the season length, the horizon and the series lengths."""

    lags: tuple[int, ...]
    #: rolling-mean window sizes over lag 1
    rolling: tuple[int, ...]
    date_features: tuple[Any, ...]
    #: points a series needs to be trained on and calibrated (shorter series are dropped)
    min_length: int
    seasonal: bool

    def describe(self) -> dict[str, Any]:
        return {"lags": list(self.lags), "rolling_means": list(self.rolling), "seasonal": self.seasonal,
                "date_features": [f if isinstance(f, str) else f.__name__ for f in self.date_features],
                "min_length": self.min_length}


def _need(lags: Sequence[int], rolling: Sequence[int], diff: int) -> int:
    """Points before the first complete feature row: the largest lag (a rolling mean over lag 1 of
    window ``w`` needs ``w`` points), plus the points the differences consume."""
    return max([*lags, *rolling, 1]) + diff


def feature_plan(season_length: int, horizon: int, freq: str, lengths: Sequence[int], *,
                 target_transform: str = "difference+scale", conformal_windows: int = 0) -> FeaturePlan:
    """The lags, rolling means and calendar features of a panel whose series have ``lengths``
    points. The seasonal lags up to ``m+1`` (and the ``m``-step rolling mean) are used only when the median
    series still has ``max(horizon, MIN_TRAIN_ROWS)`` training rows after them and the conformal
    windows; otherwise only the short lags are."""
    m = max(int(season_length), 1)
    diff = 1 if "difference" in target_transform else 0
    calib = int(conformal_windows) * int(horizon)
    short = tuple(range(1, min(m, SHORT_LAGS) + 1)) if m > 1 else (1, 2, 3)
    short_rolling = (3,)
    median = float(np.median(lengths)) if len(lengths) else 0.0
    lags, rolling, seasonal = short, short_rolling, False
    if m > 1:
        s_lags = tuple(range(1, m + 2)) if m <= DENSE_SEASON else tuple(sorted({*short, m - 1, m, m + 1}))
        s_rolling = tuple(sorted({3, m}))
        if median >= _need(s_lags, s_rolling, diff) + calib + max(int(horizon), MIN_TRAIN_ROWS):
            lags, rolling, seasonal = s_lags, s_rolling, True
    if not seasonal:  # short series: lags the median series can still train on
        room = int(median) - diff - calib - MIN_TRAIN_ROWS
        lags = tuple(l for l in lags if l <= max(room, 1)) or (1,)
        rolling = tuple(w for w in rolling if w <= max(room, 1))
    return FeaturePlan(lags=lags, rolling=rolling, date_features=tuple(calendar_features(freq)),
                       min_length=_need(lags, rolling, diff) + MIN_TRAIN_ROWS + calib, seasonal=seasonal)


def _check_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(DEFAULTS)
    unknown = sorted(set(cfg) - set(DEFAULTS) - {"season_length"})
    if unknown:
        raise BadInputError(f"unknown {NAME} setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    out.update({k: v for k, v in cfg.items() if k in DEFAULTS})
    if out["target_transform"] not in TARGET_TRANSFORMS:
        raise BadInputError(f"{NAME} target_transform must be one of {list(TARGET_TRANSFORMS)}, got {out['target_transform']!r}")
    if out["quantile_method"] not in QUANTILE_METHODS:
        raise BadInputError(f"{NAME} quantile_method must be one of {list(QUANTILE_METHODS)}, got {out['quantile_method']!r}")
    for key, low in (("conformal_windows", 2), ("n_estimators", 1), ("num_leaves", 2), ("min_child_samples", 1)):
        if int(out[key]) < low:
            raise BadInputError(f"{NAME} {key} must be at least {low}, got {out[key]}")
        out[key] = int(out[key])
    if not float(out["learning_rate"]) > 0:
        raise BadInputError(f"{NAME} learning_rate must be positive, got {out['learning_rate']}")
    out["learning_rate"] = float(out["learning_rate"])
    out["seed"] = int(out["seed"])
    return out


class GlobalBoostForecaster(Forecaster):
    """LightGBM trained across the panel (see the module docstring)."""

    name = NAME

    def __init__(self, season_length: int, *, n_jobs: int = 1, progress: Any = None, **settings: Any):
        try:
            season_length = int(season_length)
        except (TypeError, ValueError):
            raise BadInputError(f"{NAME} season_length must be an integer, got {season_length!r}") from None
        if season_length < 1:
            raise BadInputError(f"{NAME} season_length must be at least 1, got {season_length}")
        if int(n_jobs) < 1:
            raise BadInputError(f"{NAME} n_jobs must be at least 1, got {n_jobs}")
        self.season_length = season_length
        self.n_jobs = int(n_jobs)
        self.progress = progress
        self._settings = _check_settings(settings)
        self.last_failures: dict[str, str] = {}
        self.last_seconds = 0.0
        # set on the forecaster fit returns
        self._mlf: Any = None
        self._fitted: dict[str, Any] | None = None
        self._plan_used: FeaturePlan | None = None
        self._train: pd.DataFrame | None = None
        #: the quantile levels the ``quantile`` method trains one model each for
        self._quantile_levels: tuple[float, ...] = DEFAULT_QUANTILES

    # -- configuration ---------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that determines the forecasts (what champion.json records)."""
        return {"season_length": self.season_length, **self._settings}

    @classmethod
    def from_settings(cls, cfg: Mapping[str, Any], *, n_jobs: int = 1, progress: Any = None) -> "GlobalBoostForecaster":
        cfg = dict(cfg)
        if "season_length" not in cfg:
            raise BadInputError(f"the recorded {NAME} configuration {cfg} has no season_length")
        return cls(cfg.pop("season_length"), n_jobs=n_jobs, progress=progress, **cfg)

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "unfitted"
        return f"GlobalBoostForecaster({self.settings()}, {state})"

    @property
    def fitted(self) -> bool:
        return self._mlf is not None

    @property
    def fit_info(self) -> dict[str, Any]:
        """What the last fit used (features, series, seconds, dropped series); {} before a fit."""
        return dict(self._fitted or {})

    # -- model -----------------------------------------------------------------------------
    def _regressor(self, **extra: Any) -> Any:
        from lightgbm import LGBMRegressor

        s = self._settings
        return LGBMRegressor(
            n_estimators=s["n_estimators"], learning_rate=s["learning_rate"], num_leaves=s["num_leaves"],
            min_child_samples=s["min_child_samples"], random_state=s["seed"], n_jobs=self.n_jobs,
            deterministic=True, force_row_wise=True, verbosity=-1, **extra,
        )

    def _models(self, quantiles: Sequence[float]) -> dict[str, Any]:
        models = {"mean": self._regressor()}
        if self._settings["quantile_method"] == "quantile":
            for q in quantiles:
                models[f"q{quantile_column(q)}"] = self._regressor(objective="quantile", alpha=float(q))
        return models

    def _transforms(self) -> list[Any]:
        from mlforecast.target_transforms import Differences, LocalStandardScaler

        t = self._settings["target_transform"]
        out: list[Any] = []
        if "difference" in t:
            out.append(Differences([1]))
        if "scale" in t:
            out.append(LocalStandardScaler())
        return out

    def _plan(self, lengths: Sequence[int], horizon: int, freq: str) -> FeaturePlan:
        s = self._settings
        return feature_plan(self.season_length, horizon, freq, lengths, target_transform=s["target_transform"],
                            conformal_windows=s["conformal_windows"] if s["quantile_method"] == "conformal" else 0)

    @staticmethod
    def _split(frame: pd.DataFrame, min_length: int, label: str) -> tuple[pd.DataFrame, dict[str, str]]:
        """The series of ``frame`` long enough and complete, and why each other one is left out."""
        grouped = frame[TARGET].isna().groupby(frame[ID], sort=True)
        counts = pd.DataFrame({"n": grouped.size(), "nan": grouped.sum()})
        failures: dict[str, str] = {}
        for uid, row in counts.iterrows():
            if row["nan"]:
                failures[str(uid)] = f"{label}: the series has {int(row['nan'])} missing value(s); fill them (cleaning.fill_method) or drop the series"
            elif row["n"] < min_length:
                failures[str(uid)] = (f"{label}: too short for its features ({int(row['n'])} observations, needs at least "
                                      f"{min_length} for the lags, rolling means, differences and conformal windows)")
        keep = frame[~frame[ID].astype(str).isin(failures)]
        return keep, failures

    @staticmethod
    def _long(frame: pd.DataFrame) -> pd.DataFrame:
        df = frame[[ID, TIME, TARGET]].copy()
        df[ID] = df[ID].astype(str)
        df[TARGET] = df[TARGET].astype(float)
        return df.sort_values([ID, TIME], kind="stable", ignore_index=True)

    def fit(self, train: pd.DataFrame, freq: str, horizon: int) -> "GlobalBoostForecaster":
        """A new forecaster trained on every long-enough series of ``train`` for ``horizon`` steps
        (``self`` and ``train`` are not modified)."""
        check_predict_args(NAME, train, horizon, freq, DEFAULT_QUANTILES)
        from mlforecast import MLForecast
        from mlforecast.lag_transforms import RollingMean
        from mlforecast.utils import PredictionIntervals

        t0 = time.perf_counter()
        df = self._long(train)
        plan = self._plan(df.groupby(ID, sort=True).size().to_list(), int(horizon), freq)
        good, dropped = self._split(df, plan.min_length, NAME)
        new = GlobalBoostForecaster(self.season_length, n_jobs=self.n_jobs, progress=self.progress, **self._settings)
        new._quantile_levels = self._quantile_levels
        info: dict[str, Any] = {"features": plan.describe(), "horizon": int(horizon), "freq": freq, "dropped": dict(dropped),
                                "n_series": int(good[ID].nunique()), "n_rows": int(len(good))}
        if good.empty:
            new._fitted = {**info, "seconds": round(time.perf_counter() - t0, 3)}
            new._plan_used = plan
            return new
        mlf = MLForecast(
            models=self._models(self._quantile_levels), freq=freq, lags=list(plan.lags),
            lag_transforms={1: [RollingMean(window_size=w) for w in plan.rolling]} if plan.rolling else None,
            date_features=list(plan.date_features) or None, target_transforms=self._transforms() or None, num_threads=1,
        )
        intervals = None
        if self._settings["quantile_method"] == "conformal":
            # per-series source scales: what re-scales the calibration residuals to a new series
            intervals = PredictionIntervals(n_windows=self._settings["conformal_windows"], h=int(horizon), scale_estimator="mad")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlf.fit(good, prediction_intervals=intervals)
        new._mlf = mlf
        new._plan_used = plan
        new._train = good
        new._fitted = {**info, "seconds": round(time.perf_counter() - t0, 3)}
        return new

    def predict(self, context: pd.DataFrame, horizon: int, freq: str,
                quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.DataFrame:
        check_predict_args(NAME, context, horizon, freq, quantiles)
        t0 = time.perf_counter()
        quantiles = [float(q) for q in quantiles]
        qcols = [quantile_column(q) for q in quantiles]
        empty = pd.DataFrame(columns=[ID, TIME, "mean", *qcols])
        df = self._long(context)
        model = self
        refit = (not self.fitted or int(horizon) > self._fitted["horizon"]
                 or (self._settings["quantile_method"] == "quantile"
                     and any(f"q{c}" not in self._mlf.models_ for c in qcols)))
        if refit:  # train on the context itself (the backtest path), across all its series
            model = self._refit_on(df, freq, int(horizon), quantiles)
        plan = model._plan_used
        good, failures = self._split(df, plan.min_length, NAME)
        if model._mlf is None or good.empty:
            self.last_failures = {**{u: f"{NAME}: not forecast (no series long enough to train on)" for u in df[ID].unique()},
                                  **failures}
            self.last_seconds = time.perf_counter() - t0
            return empty
        out = model._forecast(good, int(horizon), quantiles, qcols, new_data=not refit)
        finite = np.isfinite(out[["mean", *qcols]].to_numpy(dtype=float)).all(axis=1)
        bad = sorted(set(out.loc[~finite, ID]))
        if bad:  # e.g. a transform the series cannot take: reported, never returned
            failures.update({u: f"{NAME} produced non-finite forecasts" for u in bad})
            out = out[~out[ID].isin(bad)].reset_index(drop=True)
        if freq != model._fitted["freq"]:  # a trained model applied to data of another frequency: its timestamps
            last = good.groupby(ID, sort=True)[TIME].max()
            out[TIME] = np.concatenate([future_index(last[u], int(horizon), freq).to_numpy() for u in out[ID].unique()])
        if self.progress is not None:
            n = int(df[ID].nunique())
            self.progress(n, n)
        self.last_failures = failures
        self.last_seconds = time.perf_counter() - t0
        return out

    def _refit_on(self, df: pd.DataFrame, freq: str, horizon: int, quantiles: Sequence[float]) -> "GlobalBoostForecaster":
        """A forecaster trained for this call: on the context, or — when this one was fitted for a
        shorter horizon — on its training panel with the context's series replacing theirs."""
        base = self
        train = df
        if self.fitted:
            old = self._train[~self._train[ID].isin(df[ID].unique())]
            train = pd.concat([old, df], ignore_index=True)
            base = GlobalBoostForecaster(self.season_length, n_jobs=self.n_jobs, **self._settings)
        if self._settings["quantile_method"] == "quantile":
            base = _with_quantiles(base, quantiles)
        return base.fit(train, freq, horizon)

    def _forecast(self, good: pd.DataFrame, horizon: int, quantiles: Sequence[float], qcols: Sequence[str],
                  new_data: bool) -> pd.DataFrame:
        method = self._settings["quantile_method"]
        keys = [interval_key(q) for q in quantiles]
        levels = sorted({k[1] for k in keys if k is not None})
        kwargs: dict[str, Any] = {}
        if method == "conformal" and levels:
            kwargs["level"] = levels
        # Every series is forecast as a new series of the trained model (mlforecast's ``new_df``):
        # its features and target transforms from its own context, and, for the conformal method,
        # the calibration residuals of the whole panel — each divided by its series' spread (MAD of
        # the first differences), pooled per horizon step, and re-scaled to the forecast series'
        # spread (transfer "scale_aligned"). mlforecast's predict on new data replaces the model's
        # series state: it works on a copy, so the fitted forecaster never changes.
        import copy

        mlf = copy.deepcopy(self._mlf) if new_data else self._mlf
        h_fit = int(self._fitted["horizon"])
        kwargs["new_df"] = good
        if "level" in kwargs:
            kwargs["transfer_conformal"] = "scale_aligned"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = mlf.predict(h_fit if "level" in kwargs else horizon, **kwargs)
        fc = fc.sort_values([ID, TIME], kind="stable", ignore_index=True)
        fc = fc[fc.groupby(ID, sort=False).cumcount() < horizon].reset_index(drop=True)
        mean = fc["mean"].to_numpy(dtype=float)
        if method == "conformal":
            cols = ["mean" if k is None else f"mean-{k[0]}-{k[1]}" for k in keys]
        else:
            cols = [f"q{c}" for c in qcols]
        qs = fc[cols].to_numpy(dtype=float).reshape(len(fc), len(cols))
        order = np.argsort(np.asarray(quantiles), kind="stable")
        ordered = np.empty_like(qs)
        ordered[:, order] = np.sort(qs, axis=1)  # never crossing, whatever order quantiles come in
        out = pd.DataFrame({ID: fc[ID].astype(str).to_numpy(), TIME: pd.to_datetime(fc[TIME]).to_numpy(), "mean": mean})
        out[list(qcols)] = ordered
        return out


def _with_quantiles(model: GlobalBoostForecaster, quantiles: Sequence[float]) -> GlobalBoostForecaster:
    """``model`` whose quantile models cover ``quantiles`` (the default levels and these)."""
    levels = tuple(sorted({*DEFAULT_QUANTILES, *(float(q) for q in quantiles)}))
    clone = GlobalBoostForecaster(model.season_length, n_jobs=model.n_jobs, progress=model.progress, **model._settings)
    clone._quantile_levels = levels
    return clone
