"""Backtest every model on the same series, windows and horizon; score, rank, report, plot.

:func:`run_backtest` walks the windows of :func:`chronos_flows.evaluation.windows.backtest_cutoffs` (the final
horizon of each series plus ``n_windows - 1`` rolling origins ``step`` apart). For each window it
gives every forecaster the same context (each series up to its cutoff) and scores the forecasts
against the actuals with :mod:`chronos_flows.evaluation.metrics` — per series, window and model. A series a
model could not forecast (``forecaster.last_failures``) is reported in ``failures`` and never fails
the run.

Leaderboard (one row per model): the mean of each metric and ``wql_pooled`` over the (series,
window) pairs that **every** model forecast (so all models are compared on exactly the same
series; ``n_pairs`` counts them), and ``mase_relative`` / ``wql_relative``: the geometric mean over
those pairs of the model's score divided by Seasonal Naive's (the Chronos papers' aggregate; < 1
beats the reference). If no pair is common to all models (a model failed everywhere) each model is
scored on its own pairs. Lower is better except ``coverage_80`` (target 0.8). Rows are ranked by
``wql_relative`` (``wql`` without the reference).

:func:`write_outputs` writes ``metrics.parquet``, ``forecasts.parquet``, ``leaderboard.csv``,
``report.md`` and PNG plots (best / median / worst series of the best model) atomically into a
directory. Pure: no Prefect, no boto3; matplotlib is used without pyplot (Agg canvas).
"""

from __future__ import annotations

import io
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.evaluation import metrics as M
from chronos_flows.core.errors import BadInputError, ChronosFlowsError
from chronos_flows.models.base import DEFAULT_QUANTILES, ID, TARGET, TIME, Forecast, Forecaster, quantile_column, sort_by_series
from chronos_flows.evaluation.windows import backtest_cutoffs, split_window
from chronos_flows.core import atomic

REFERENCE = M.REFERENCE_MODEL
METRIC_NAMES = list(M.METRICS)
Progress = Callable[[int, int], None]


@dataclass
class BacktestResult:
    #: unique_id, ds, window, cutoff, model, y, mean, quantile columns (one row per evaluated step).
    forecasts: pd.DataFrame
    #: unique_id, window, cutoff, model and one column per metric.
    metrics: pd.DataFrame
    #: one row per model (index ``model``), see the module docstring.
    leaderboard: pd.DataFrame
    #: {model: {unique_id: message}} for series a model could not forecast.
    failures: dict[str, dict[str, str]]
    #: the windows (rows of :func:`backtest_cutoffs`).
    cutoffs: pd.DataFrame
    #: horizon, n_windows, step, freq, season_length, quantiles, reference.
    settings: dict[str, Any]
    #: seconds: ``predict`` per model, ``evaluation`` (splitting + scoring, models excluded), ``total``.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best_model(self) -> str | None:
        return None if self.leaderboard.empty else str(self.leaderboard.index[0])

    def scores(self, model: str) -> dict[str, float]:
        """The leaderboard row of ``model`` as ``{metric: value}`` (input of ``decide_promotion``)."""
        if model not in self.leaderboard.index:
            raise BadInputError(f"model {model!r} is not on the leaderboard ({list(self.leaderboard.index)})")
        row = self.leaderboard.loc[model]
        return {k: float(v) for k, v in row.items() if isinstance(v, (int, float, np.integer, np.floating))}


def check_history(history: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (ID, TIME, TARGET) if c not in history.columns]
    if missing:
        raise BadInputError(
            f"history frame is missing column(s) {missing} (has {list(history.columns)}); pass unique_id, ds, y"
        )
    df = history[[ID, TIME, TARGET]].copy()
    df[TIME] = pd.to_datetime(df[TIME])
    df[TARGET] = df[TARGET].astype(float)
    return sort_by_series(df)


def _check_forecast(fc: pd.DataFrame, model: str, qcols: list[str]) -> None:
    missing = [c for c in (ID, TIME, "mean", *qcols) if c not in fc.columns]
    if missing:
        raise ChronosFlowsError(
            f"model {model!r} returned forecasts without column(s) {missing}; a forecaster must return "
            f"unique_id, ds, mean and the quantile columns {qcols}"
        )


def run_backtest(
    forecasters: Mapping[str, Forecaster],
    history: pd.DataFrame,
    *,
    horizon: int,
    n_windows: int = 1,
    step: int | None = None,
    freq: str,
    season_length: int,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    progress: Progress | None = None,
    min_context: int = 2,
) -> BacktestResult:
    """Backtest every forecaster (keys are the model names) on the same windows of ``history``."""
    if not forecasters:
        raise BadInputError("run_backtest needs at least one forecaster")
    t_start = time.perf_counter()
    quantiles = tuple(sorted(float(q) for q in quantiles))
    qcols = [quantile_column(q) for q in quantiles]
    step = horizon if step is None else int(step)
    df = check_history(history)
    cutoffs = backtest_cutoffs(df, horizon, n_windows, step, min_context=min_context)

    predict_seconds = {name: 0.0 for name in forecasters}
    got: dict[str, list[Forecast]] = {name: [] for name in forecasters}
    total, done = n_windows * len(forecasters), 0
    at_once: dict[str, dict[int, Any]] = {}
    for name, model in forecasters.items():  # models that forecast every window in one call
        t0 = time.perf_counter()
        got_all = model.forecast_windows(df.copy(), cutoffs, horizon, step, freq, quantiles) if n_windows > 1 else None
        predict_seconds[name] += time.perf_counter() - t0
        if got_all is not None:
            at_once[name] = got_all
    for w in range(n_windows):
        context = None
        for name, model in forecasters.items():
            t0 = time.perf_counter()
            if name in at_once:
                fc = at_once[name][w]
            else:
                if context is None:
                    context, _ = split_window(df, cutoffs[cutoffs["window"] == w])
                fc = model.forecast(context.copy(), horizon, freq, quantiles)
            predict_seconds[name] += time.perf_counter() - t0
            _check_forecast(fc.frame, name, qcols)
            got[name].append(fc)
            done += 1
            if progress is not None:
                progress(done, total)
    pairs = _Pairs(df, cutoffs, horizon)
    failures: dict[str, dict[str, list[str]]] = {name: {} for name in forecasters}
    fc_parts = [part for rank, name in enumerate(forecasters)
                if (part := _join_actuals(pairs, got[name], name, rank, failures[name], horizon=horizon, freq=freq,
                                          qcols=qcols)) is not None]
    forecasts = (pd.concat(fc_parts, ignore_index=True).sort_values(["window", "_rank"], kind="stable", ignore_index=True)
                 if fc_parts else None)
    metrics_df = _score(forecasts, pairs, season_length=season_length, quantiles=quantiles) \
        if forecasts is not None else None
    return _backtest_result(
        df, cutoffs, forecasts, metrics_df, failures, predict_seconds, list(forecasters), t_start,
        horizon=horizon, n_windows=n_windows, step=step, freq=freq, season_length=season_length,
        quantiles=quantiles, qcols=qcols,
    )


class _Pairs:
    """The (series, window) pairs of a backtest: their actuals (rows ``window, series, step``) and
    the MASE scale of each pair's context, computed once for all models."""

    def __init__(self, df: pd.DataFrame, cutoffs: pd.DataFrame, horizon: int) -> None:
        ids = df[ID].to_numpy()
        starts, lengths = M.series_bounds(ids)
        self.uids = ids[starts]
        self.n_uid = len(self.uids)
        self.uid_index = pd.Index(self.uids)
        cut = cutoffs.sort_values("window", kind="stable")  # window by window, series sorted
        self.windows = cut["window"].to_numpy()
        uid_code = self.uid_index.get_indexer(cut[ID])
        self.code = self.windows * self.n_uid + uid_code  # one integer per (series, window), increasing
        self.cutoff = cut["cutoff"].to_numpy()
        first = starts[uid_code]
        n_context = cut["n_context"].to_numpy()
        pos = ((first + n_context)[:, None] + np.arange(horizon)).ravel()
        self.actuals = pd.DataFrame({
            ID: ids[pos], "window": np.repeat(self.windows, horizon), "cutoff": np.repeat(self.cutoff, horizon),
            TIME: df[TIME].to_numpy()[pos], TARGET: df[TARGET].to_numpy()[pos],
        })
        self.actual_code = np.repeat(self.code, horizon)
        self.horizon = horizon
        self._df, self._first, self._n_context = df, first, n_context

    def scales(self, season_length: int) -> pd.Series:
        """The MASE denominator of every pair (index: the pair code)."""
        values = M.seasonal_scales(self._df[TARGET].to_numpy(dtype=float), self._first, self._n_context, season_length)
        return pd.Series(values, index=self.code)


def _join_actuals(pairs: _Pairs, got: list[Forecast], name: str, rank: int, failures: dict[str, list[str]], *,
                  horizon: int, freq: str, qcols: list[str]) -> pd.DataFrame | None:
    """Model ``name``'s forecasts of every window (``got[w]``) joined to the actuals, with window,
    cutoff and model columns; each series a window's forecast left out is added to ``failures``
    ({unique_id: [messages]}, with the model's reported reasons). None when nothing was forecast."""
    frames = []
    for w, fc in enumerate(got):
        expected = pairs.uids[pairs.code[pairs.windows == w] % pairs.n_uid] if pairs.n_uid else []
        present = set(fc.frame[ID].unique())
        for uid in expected:
            if uid not in present:
                msg = fc.failures.get(uid, "no forecast returned")
                failures.setdefault(str(uid), []).append(f"window {w}: {msg}")
        frame = fc.frame[[ID, TIME, "mean", *qcols]]
        frames.append(frame.assign(window=np.int64(w)) if len(frame) else frame.assign(window=pd.Series(dtype=np.int64)))
    fc = pd.concat(frames, ignore_index=True)
    fc[TIME] = pd.to_datetime(fc[TIME])
    fc_code = fc["window"].to_numpy(dtype=np.int64) * pairs.n_uid + pairs.uid_index.get_indexer(fc[ID])
    act = pairs.actuals[np.isin(pairs.actual_code, fc_code)]
    if act.empty:
        return None
    if (len(fc) == len(act) and np.array_equal(fc_code, pairs.actual_code[act.index.to_numpy()])
            and np.array_equal(fc[TIME].to_numpy(), act[TIME].to_numpy())):
        merged = act.reset_index(drop=True)  # the forecasts are the test rows in order (the usual case)
        for col in ("mean", *qcols):
            merged[col] = fc[col].to_numpy()
    else:
        try:
            merged = act.merge(fc, on=[ID, "window", TIME], how="left", validate="one_to_one", indicator=True)
        except pd.errors.MergeError:
            dup = fc.loc[fc.duplicated([ID, "window", TIME], keep=False), ID].unique()
            raise ChronosFlowsError(
                f"model {name!r} returned more than one forecast per timestamp for series {list(dup[:5])}; "
                f"return one row per series and step"
            ) from None
        unmatched = merged.loc[merged.pop("_merge") != "both", ID].unique()
        if len(unmatched):
            raise ChronosFlowsError(
                f"model {name!r} returned forecasts for series {list(unmatched[:5])} whose timestamps do "
                f"not match the test window (expected the {horizon} steps after the cutoff at freq {freq!r})"
            )
    merged.insert(3, "model", name)
    merged["_rank"] = rank
    return merged


def _score(forecasts: pd.DataFrame, pairs: _Pairs, *, season_length: int,
           quantiles: tuple[float, ...]) -> pd.DataFrame:
    """Every model's per-series scores in every window in one :func:`metrics.evaluate_all` call
    (each (model, series, window) a group of its own, scaled by its own window's context): rows
    window by window, models in the order given, series sorted."""
    pair = forecasts["window"].to_numpy(dtype=np.int64) * pairs.n_uid + pairs.uid_index.get_indexer(forecasts[ID])
    rank = forecasts["_rank"].to_numpy(dtype=np.int64)
    n_rank = int(rank.max()) + 1
    window = forecasts["window"].to_numpy(dtype=np.int64)
    key = (window * n_rank + rank) * pairs.n_uid + pair % pairs.n_uid  # increasing: window, model, series
    scale_of_pair = pairs.scales(season_length)
    scale = pd.Series(scale_of_pair.reindex(pair).to_numpy(), index=key)
    scale = scale[~scale.index.duplicated()]
    scores = M.evaluate_all(forecasts[[TARGET, "mean", *[quantile_column(q) for q in quantiles]]].assign(**{ID: key}),
                            season_length=season_length, insample=None, quantiles=quantiles, scale=scale)
    k = scores.index.to_numpy()
    first = pd.Series(np.arange(len(key)), index=key)
    first = first[~first.index.duplicated()].reindex(k).to_numpy()
    out = pd.DataFrame({ID: forecasts[ID].to_numpy()[first], "window": window[first],
                        "cutoff": forecasts["cutoff"].to_numpy()[first], "model": forecasts["model"].to_numpy()[first]})
    for col in scores.columns:
        out[col] = scores[col].to_numpy()
    return out


def _backtest_result(
    df: pd.DataFrame, cutoffs: pd.DataFrame, forecasts: pd.DataFrame | None, metrics_df: pd.DataFrame | None,
    failures: Mapping[str, Mapping[str, list[str]]], predict_seconds: Mapping[str, float], models: list[str],
    t_start: float, *, horizon: int, n_windows: int, step: int, freq: str, season_length: int,
    quantiles: tuple[float, ...], qcols: list[str],
) -> BacktestResult:
    """Assemble the :class:`BacktestResult`: concatenated forecasts and metrics, the leaderboard,
    the failures joined per series, the settings, and the timings since ``t_start``."""
    fc_cols = [ID, "window", "cutoff", "model", TIME, TARGET, "mean", *qcols]
    forecasts = forecasts[fc_cols] if forecasts is not None else pd.DataFrame(columns=fc_cols)
    m_cols = [ID, "window", "cutoff", "model", *METRIC_NAMES]
    metrics_df = metrics_df[m_cols] if metrics_df is not None else pd.DataFrame(columns=m_cols)
    flat_failures = {name: {uid: "; ".join(msgs) for uid, msgs in f.items()} for name, f in failures.items()}
    leaderboard = build_leaderboard(metrics_df, forecasts, models, flat_failures, quantiles)
    total_s = time.perf_counter() - t_start
    timings = {f"predict_{k}": round(v, 4) for k, v in predict_seconds.items()}
    timings["evaluation"] = round(total_s - sum(predict_seconds.values()), 4)
    timings["total"] = round(total_s, 4)
    settings = {
        "horizon": int(horizon),
        "n_windows": int(n_windows),
        "step": int(step),
        "freq": freq,
        "season_length": int(season_length),
        "quantiles": list(quantiles),
        "reference": REFERENCE,
        "n_series": int(df[ID].nunique()),
    }
    return BacktestResult(forecasts, metrics_df, leaderboard, flat_failures, cutoffs, settings, timings)


def build_leaderboard(
    metrics_df: pd.DataFrame,
    forecasts: pd.DataFrame,
    models: Sequence[str],
    failures: Mapping[str, Mapping[str, str]],
    quantiles: Sequence[float],
) -> pd.DataFrame:
    """Per-model aggregates over the (series, window) pairs common to all models (see module doc)."""
    key = [ID, "window"]
    m_model, f_model = metrics_df["model"].to_numpy(), forecasts["model"].to_numpy()
    pairs = {m: set(zip(metrics_df[ID].to_numpy()[m_model == m].tolist(), metrics_df["window"].to_numpy()[m_model == m].tolist()))
             for m in models}
    common = set.intersection(*pairs.values()) if pairs else set()
    rows = []
    rel_input: dict[str, dict[str, pd.Series]] = {"mase": {}, "wql": {}}
    for m in models:
        sub = metrics_df[m_model == m]
        fsub = forecasts[f_model == m]
        if common and pairs[m] != common:  # only pairs every model forecast
            idx = pd.MultiIndex.from_frame(sub[key])
            sub = sub[idx.isin(list(common))]
            fidx = pd.MultiIndex.from_frame(fsub[key])
            fsub = fsub[fidx.isin(list(common))]
        row: dict[str, Any] = {"model": m}
        for name in METRIC_NAMES:
            row[name] = float(sub[name].mean()) if len(sub) else float("nan")
        row["wql_pooled"] = M.wql_pooled(fsub, quantiles=quantiles) if len(fsub) else float("nan")
        row["n_series"] = int(sub[ID].nunique())
        row["n_pairs"] = int(len(sub))
        row["failures"] = int(len(failures.get(m, {})))
        rows.append(row)
        if REFERENCE in models:
            index = pd.MultiIndex.from_arrays([sub[ID].to_numpy(), sub["window"].to_numpy()], names=key)
            for name in rel_input:
                rel_input[name][m] = pd.Series(sub[name].to_numpy(), index=index, name=name)
    lb = pd.DataFrame(rows).set_index("model")
    for name, by_model in rel_input.items():
        if REFERENCE in by_model:
            lb[f"{name}_relative"] = M.relative_geomean(by_model, REFERENCE).reindex(lb.index)
        else:
            lb[f"{name}_relative"] = float("nan")
    order = "wql_relative" if REFERENCE in models and lb["wql_relative"].notna().any() else "wql"
    lb = lb.sort_values(order, na_position="last", kind="stable")
    lb.insert(0, "rank", range(1, len(lb) + 1))
    cols = ["rank", *METRIC_NAMES, "wql_pooled", "mase_relative", "wql_relative", "n_series", "n_pairs", "failures"]
    return lb[cols]


def merge_results(*results: BacktestResult) -> BacktestResult:
    """One result from backtests of different models on the same windows (e.g. Prophet run as its
    own step); the leaderboard is rebuilt so relative scores use the common (series, window) pairs."""
    if not results:
        raise BadInputError("merge_results needs at least one backtest result")
    first = results[0]
    for other in results[1:]:
        for k in ("horizon", "n_windows", "step", "freq", "quantiles"):
            if other.settings.get(k) != first.settings.get(k):
                raise ChronosFlowsError(
                    f"cannot merge backtests with different {k}: {first.settings.get(k)!r} vs {other.settings.get(k)!r}"
                )
    models = [m for r in results for m in r.failures]
    if len(set(models)) != len(models):
        raise ChronosFlowsError(f"cannot merge backtests that share a model: {models}")
    forecasts = pd.concat([r.forecasts for r in results], ignore_index=True)
    metrics_df = pd.concat([r.metrics for r in results], ignore_index=True)
    failures = {m: f for r in results for m, f in r.failures.items()}
    leaderboard = build_leaderboard(metrics_df, forecasts, models, failures, first.settings["quantiles"])
    timings: dict[str, float] = {}
    for r in results:
        for k, v in r.timings.items():
            timings[k] = round(timings.get(k, 0.0) + v, 4)
    return BacktestResult(forecasts, metrics_df, leaderboard, failures, first.cutoffs, dict(first.settings), timings)


# --------------------------------------------------------------------------- outputs



def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def markdown_table(df: pd.DataFrame, index_name: str | None = None) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""
    frame = df.reset_index() if index_name else df
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    sep = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, sep, *body])


def _safe_name(uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(uid)).strip("_")[:80] or "series"


def pick_series(metrics_df: pd.DataFrame, model: str, n: int, metric: str = "wql") -> list[tuple[str, str, float]]:
    """``[(label, unique_id, score)]``: best, median, worst (and evenly spaced ranks for n > 3) of
    ``model`` by its mean ``metric`` over windows (falls back to MASE then MAE if it is all NaN)."""
    sub = metrics_df[metrics_df["model"] == model]
    for name in (metric, "mase", "mae"):
        per = sub.groupby(ID)[name].mean().dropna().sort_values(kind="stable")
        if len(per):
            break
    else:
        return []
    n = min(n, len(per))
    if n <= 0:
        return []
    positions = sorted(set(int(round(p)) for p in np.linspace(0, len(per) - 1, n))) if n > 1 else [0]
    out = []
    for i, pos in enumerate(positions):
        if pos == 0:
            label = "best"
        elif pos == len(per) - 1:
            label = "worst"
        elif len(positions) == 3:
            label = "median"
        else:
            label = f"rank{pos + 1}"
        out.append((label, str(per.index[pos]), float(per.iloc[pos])))
    return out


def plot_forecast(
    result: BacktestResult, history: pd.DataFrame, uid: str, model: str, path: Path, title: str = ""
) -> Path:
    """PNG of ``uid``: recent history, actuals, ``model``'s mean and 10–90 % band per window, other
    models' means dashed, cutoffs as vertical lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    q = result.settings["quantiles"]
    lo_col, hi_col = quantile_column(0.1 if 0.1 in q else min(q)), quantile_column(0.9 if 0.9 in q else max(q))
    hist = check_history(history)
    hist = hist[hist[ID] == uid]
    fc = result.forecasts[result.forecasts[ID] == uid]
    horizon = result.settings["horizon"]
    first_test = fc[TIME].min() if len(fc) else hist[TIME].max()
    before = hist[hist[TIME] < first_test].tail(max(3 * horizon, 2 * result.settings["season_length"]))
    shown = pd.concat([before, hist[hist[TIME] >= first_test]])

    fig = Figure(figsize=(10, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(shown[TIME], shown[TARGET], color="black", lw=1.2, label="actual")
    palette = ["#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    others = [m for m in result.leaderboard.index if m != model]
    for w, g in fc[fc["model"] == model].groupby("window"):
        ax.fill_between(g[TIME], g[lo_col], g[hi_col], color="#1f77b4", alpha=0.25, lw=0,
                        label=f"{model} {lo_col}–{hi_col}" if w == fc["window"].min() else None)
        ax.plot(g[TIME], g["mean"], color="#1f77b4", lw=1.6, label=f"{model} mean" if w == fc["window"].min() else None)
        ax.axvline(g["cutoff"].iloc[0], color="grey", ls=":", lw=0.8)
    for i, other in enumerate(others):
        for w, g in fc[fc["model"] == other].groupby("window"):
            ax.plot(g[TIME], g["mean"], color=palette[i % len(palette)], lw=1.0, ls="--",
                    label=other if w == fc["window"].min() else None)
    ax.set_title(title or f"{uid} — {model}")
    ax.set_xlabel(TIME)
    ax.set_ylabel(TARGET)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic.write_bytes(path, buf.getvalue())


def _final_cutoffs_line(cutoffs: pd.DataFrame, n_windows: int) -> str:
    """The final window's cutoff: one date when every series shares it, else the range."""
    final = cutoffs.loc[cutoffs["window"] == n_windows - 1, "cutoff"]
    first, last = final.min(), final.max()
    if first == last:
        return f"- final-window cutoff: {first:%Y-%m-%d} (all series)"
    return f"- final-window cutoffs: {first:%Y-%m-%d} … {last:%Y-%m-%d}"


def _ensemble_report_lines(settings: Mapping[str, Any]) -> list[str]:
    """Markdown lines of the evaluation report's ensemble section (empty without an ensemble run)."""
    if "judge_windows" not in settings:
        return []
    fit = settings.get("ensemble")
    judge = settings["judge_windows"]
    span = f"window {judge[0]}" if len(judge) == 1 else f"windows {judge[0]}–{judge[-1]}"
    lines = ["## Ensemble", ""]
    if not fit:
        return lines + [f"No ensemble (fewer than two candidates); the leaderboard judges on {span}.", ""]
    fw = ", ".join(str(w) for w in fit["fit_windows"])
    shrink = fit.get("shrinkage", 0.0)
    best = fit.get("best_single")
    metrics = fit.get("metrics") or [fit["gate_metric"]]
    objective = (f"mean `{metrics[0]}`" if len(metrics) == 1 else
                 " + ".join(f"`{m}`" for m in metrics) + " (each relative to its best member: 1 = as good as the best "
                 "single member on that metric)")
    column = f"{metrics[0]}" if len(metrics) == 1 else "objective"
    lines += [
        f"Weights by greedy forward selection with replacement (Caruana et al. 2004, {fit['iterations']} additions) "
        f"optimising {objective} on the out-of-fold forecasts of windows {fw} ({fit['n_fit_pairs']} "
        f"series × window pairs), shrunk by {shrink:.2f} toward the best single member ({best}). The ensemble's "
        f"score on each judging window uses weights fitted without that window (nested); the leaderboard above "
        f"ranks every model on {span} only.",
        "",
    ]
    if fit.get("shrinkage_mode") == "auto":
        scores = fit.get("shrinkage_scores") or {}
        nested_levels = fit.get("nested_shrinkage") or {}
        evidence = (", ".join(f"{k}: {v:.4f}" for k, v in scores.items()) if scores else
                    f"a single fitting window, so the default {shrink:.2f}")
        lines += [
            f"Shrinkage chosen by leave-one-window-out on the fitting windows (held-out objective by level, lower is better: {evidence})"
            + ("; in the nested fits: " + ", ".join(f"window {w} {v:.2f}" for w, v in nested_levels.items())
               if nested_levels else "") + ".",
            "",
        ]
    lines += [
        f"| member | weight | greedy weight | {column} on the fitting windows |",
        "|---|---:|---:|---:|",
    ]
    greedy = fit.get("greedy_weights") or fit["weights"]
    for m in fit["members"]:
        lines.append(f"| {m} | {fit['weights'][m]:.2f} | {greedy[m]:.2f} | {fit['member_fit_scores'][m]:.4g} |")
    lines += [f"| **ensemble** | 1.00 | 1.00 | {fit['fit_score']:.4g} |", ""]
    nested = fit.get("nested") or {}
    if nested:
        lines += ["Nested weights (the ensemble's forecast on each judging window):", "",
                  "| judging window | " + " | ".join(fit["members"]) + " |", "|---|" + "---:|" * len(fit["members"])]
        for w, ws in nested.items():
            lines.append(f"| {w} | " + " | ".join(f"{ws[m]:.2f}" for m in fit["members"]) + " |")
        lines.append("")
    return lines


def render_report(result: BacktestResult, plots: Mapping[str, Path] | None = None) -> str:
    s = result.settings
    lb = result.leaderboard
    lines = [
        "# Evaluation report",
        "",
        f"- series: {s['n_series']}, horizon: {s['horizon']}, windows: {s['n_windows']} (step {s['step']}), "
        f"frequency: `{s['freq']}`, season length: {s['season_length']}",
        f"- quantiles: {', '.join(f'{q:g}' for q in s['quantiles'])}",
        _final_cutoffs_line(result.cutoffs, s["n_windows"]),
        f"- best model: **{result.best_model}**",
        "",
        "## Leaderboard",
        "",
        markdown_table(lb, index_name="model"),
        "",
        *[f"**{m}**: {why}." for m, why in (s.get("not_representative") or {}).items()],
        *([""] if s.get("not_representative") else []),
        "Metric means are over the (series, window) pairs every model forecast (`n_pairs`). "
        f"`*_relative` = geometric mean over those pairs of the model's score divided by {REFERENCE}'s "
        "(< 1 beats the reference). `wql_pooled` is the WQL of all pairs pooled. Lower is better, "
        "except `coverage_80` (target 0.80).",
        "",
        *_ensemble_report_lines(s),
        "## Failures",
        "",
    ]
    any_fail = False
    for model, fails in result.failures.items():
        for uid, msg in sorted(fails.items()):
            any_fail = True
            lines.append(f"- `{model}` / `{uid}`: {msg}")
    if not any_fail:
        lines.append("None: every model forecast every series in every window.")
    if plots:
        lines += ["", "## Forecasts", ""]
        for label, p in plots.items():
            lines += [f"### {label.replace('plot_', '')}", "", f"![{label}](plots/{Path(p).name})", ""]
    lines += [
        "",
        "## Metrics",
        "",
        "MAE, RMSE of the mean forecast; MAPE (fraction, zero actuals skipped); sMAPE (0–2); MASE "
        "(MAE / in-sample seasonal naive MAE of the window's context); WQL (mean over quantile levels of "
        "2·Σ pinball / Σ|y|); coverage_80 (share of actuals inside the 0.1–0.9 quantiles).",
        "",
    ]
    return "\n".join(lines)


def write_outputs(
    result: BacktestResult, out_dir: Path, *, history: pd.DataFrame, plot_series: int = 3
) -> dict[str, Path]:
    """Write the evaluation directory; return ``{name: path}`` (``metrics``, ``forecasts``,
    ``leaderboard``, ``report`` and ``plot_best`` / ``plot_median`` / ``plot_worst`` …)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["metrics"] = atomic.write_bytes(out_dir / "metrics.parquet", _parquet_bytes(result.metrics))
    paths["forecasts"] = atomic.write_bytes(out_dir / "forecasts.parquet", _parquet_bytes(result.forecasts))
    paths["leaderboard"] = atomic.write_bytes(
        out_dir / "leaderboard.csv", result.leaderboard.reset_index().to_csv(index=False).encode()
    )
    plots: dict[str, Path] = {}
    best = result.best_model
    if best is not None and plot_series > 0:
        for label, uid, score in pick_series(result.metrics, best, plot_series):
            title = f"{uid} — {best} ({label} series, mean WQL {score:.4f})"
            plots[f"plot_{label}"] = plot_forecast(
                result, history, uid, best, out_dir / "plots" / f"{label}_{_safe_name(uid)}.png", title
            )
    paths.update(plots)
    paths["report"] = atomic.write_bytes(out_dir / "report.md", render_report(result, plots).encode())
    return paths
