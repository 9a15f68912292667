"""Weighted ensemble of the run's candidates: greedy forward selection with replacement.

Method (Caruana et al. 2004, "Ensemble selection from libraries of models" — the method behind
AutoGluon's WeightedEnsemble): start from the empty ensemble; at each of ``iterations`` steps add
the member (with replacement: a member may be added again) whose addition gives the best gate
metric of the combined forecast on the fitting windows; ties go to the first member in candidate
order. The weights are the members' counts divided by the number of additions, taken at the step
with the best score (the earliest such step), so they are non-negative, sum to 1, and a member
that dominates every combination ends with weight 1 (the ensemble *is* that member).

The combination (:func:`combine_forecasts`): per series and step, ``mean`` and every quantile
level are the weighted averages of the members' ``mean`` and quantile forecasts; quantile columns
are then sorted (a weighted average of ordered quantiles is ordered already, the sort only
guarantees it). A series that some member could not forecast is combined from the members that
did, with their weights renormalised; a series no member forecast is reported in
``last_failures``.

Honest scoring (:func:`add_ensemble`): the weights are fitted on backtest windows that do **not**
judge the champion. With ``evaluation.ensemble`` on, the backtest runs one extra rolling window
before the ``evaluation.n_windows`` judging windows (:func:`chronos_flows.evaluation.splits.backtest_windows`;
Chronos is never trained on it either, see :func:`chronos_flows.evaluation.splits.test_span`): the weights are
fitted on that window 0, the ensemble forecasts the judging windows 1…n with those weights, and the
leaderboard ranks *every* model on the judging windows only, so the ensemble's score is as
out-of-sample as any other candidate's.

The champion (family ``ensemble``) records its members and weights in ``config`` (see
:func:`champion_config`); :func:`ensemble_forecaster` re-creates it: each member forecasts, then
the weighted combination — the same function on the same numbers as in the backtest. Pure: no
Prefect, no boto3.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.evaluation import metrics as M
from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import (
    DEFAULT_QUANTILES,
    ID,
    TARGET,
    TIME,
    Forecaster,
    quantile_column,
    require_long_frame,
)

ENSEMBLE = "ensemble"
#: Greedy additions (AutoGluon's default ensemble size).
DEFAULT_ITERATIONS = 100
GATE_METRICS = ("wql", "mase", "mae", "rmse", "smape", "mape")


# ------------------------------------------------------------------------------------ combination


def combine_forecasts(frames: Sequence[pd.DataFrame | None], weights: Sequence[float], qcols: Sequence[str]) -> pd.DataFrame:
    """The weighted combination of member forecast frames (``unique_id, ds, mean, quantiles``):
    per (series, step) the weighted average over the members that forecast it (weights
    renormalised over them), quantile columns sorted. ``None`` / empty frames and members of weight
    0 are skipped. Returns ``unique_id, ds, mean, *qcols`` sorted by series and time."""
    if len(frames) != len(weights):
        raise BadInputError(f"{len(frames)} member forecasts but {len(weights)} weights")
    cols = ["mean", *qcols]
    used = [(f, float(w)) for f, w in zip(frames, weights) if f is not None and len(f) and float(w) > 0]
    if not used:
        return pd.DataFrame(columns=[ID, TIME, *cols])
    keys = pd.concat([f[[ID, TIME]] for f, _ in used], ignore_index=True)
    keys[ID] = keys[ID].astype(str)
    keys[TIME] = pd.to_datetime(keys[TIME])
    keys = keys.drop_duplicates().sort_values([ID, TIME], kind="stable")
    index = pd.MultiIndex.from_frame(keys)
    num = np.zeros((len(index), len(cols)))
    wsum = np.zeros(len(index))
    for frame, w in used:
        f = frame[[ID, TIME, *cols]].copy()
        f[ID] = f[ID].astype(str)
        f[TIME] = pd.to_datetime(f[TIME])
        vals = f.set_index([ID, TIME])[cols].reindex(index).to_numpy(dtype=float)
        have = np.isfinite(vals).all(axis=1)
        num[have] += w * vals[have]
        wsum[have] += w
    keep = wsum > 0
    out_vals = num[keep] / wsum[keep, None]
    if len(qcols):
        out_vals[:, 1:] = np.sort(out_vals[:, 1:], axis=1)
    out = keys[keep].reset_index(drop=True)
    for j, c in enumerate(cols):
        out[c] = out_vals[:, j]
    return out


class EnsembleForecaster(Forecaster):
    """Members (``[(family, forecaster)]``) and their weights; ``predict`` = each member forecasts,
    then :func:`combine_forecasts`. ``last_failures``: series no member forecast (the members'
    messages); ``member_failures``: ``{family: {unique_id: message}}`` of the last call."""

    name = ENSEMBLE

    def __init__(self, members: Sequence[tuple[str, Forecaster]], weights: Sequence[float]):
        members = list(members)
        w = [float(x) for x in weights]
        if not members:
            raise BadInputError("an ensemble needs at least one member")
        if len(w) != len(members):
            raise BadInputError(f"an ensemble of {len(members)} members needs {len(members)} weights, got {len(w)}")
        if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise BadInputError(f"ensemble weights must be finite, non-negative and not all 0, got {w}")
        self.members = members
        self.weights = w
        self.last_failures: dict[str, str] = {}
        self.member_failures: dict[str, dict[str, str]] = {}
        self.last_seconds = 0.0

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={w:.3g}" for (name, _), w in zip(self.members, self.weights))
        return f"EnsembleForecaster({inner})"

    def predict(self, context: pd.DataFrame, horizon: int, freq: str, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.DataFrame:
        require_long_frame(context)
        if len(context) == 0:
            raise BadInputError("the ensemble got an empty context frame (no rows): pass at least one series with history")
        t0 = time.perf_counter()
        qcols = [quantile_column(q) for q in quantiles]
        frames: list[pd.DataFrame | None] = []
        self.member_failures = {}
        for (name, model), w in zip(self.members, self.weights):
            if w <= 0:
                frames.append(None)
                continue
            got = model.forecast(context, horizon, freq, quantiles)
            frames.append(got.frame)
            self.member_failures[name] = dict(got.failures)
        out = combine_forecasts(frames, self.weights, qcols)
        got = set(out[ID])
        self.last_failures = {}
        for uid in sorted(set(context[ID].astype(str))):
            if uid not in got:
                why = [f"{m}: {f[uid]}" for m, f in self.member_failures.items() if uid in f]
                self.last_failures[uid] = "no ensemble member forecast it" + (f" ({'; '.join(why)})" if why else "")
        self.last_seconds = time.perf_counter() - t0
        return out


# ------------------------------------------------------------------------------ greedy selection


def pair_scores(metric: str, y: np.ndarray, mean: np.ndarray, qs: np.ndarray, quantiles: Sequence[float],
                scale: np.ndarray | None = None) -> np.ndarray:
    """``metric`` per forecast (row) of arrays ``y``/``mean`` (forecasts × steps) and ``qs``
    (forecasts × steps × levels), with :mod:`chronos_flows.evaluation.metrics`' definitions (NaN actuals
    ignored; ``scale``: the MASE denominators)."""
    ok = np.isfinite(y)
    n = ok.sum(axis=1).astype(float)
    n[n == 0] = np.nan
    err = np.where(ok, y - mean, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric in ("mae", "mase"):
            mae = np.abs(err).sum(axis=1) / n
            if metric == "mae":
                return mae
            if scale is None:
                raise BadInputError("MASE needs the in-sample scales")
            return mae / np.where(scale > 0, scale, np.nan)
        if metric == "rmse":
            return np.sqrt((err ** 2).sum(axis=1) / n)
        if metric == "smape":
            denom = np.abs(y) + np.abs(mean)
            r = np.where(ok & (denom > 0), 2.0 * np.abs(err) / np.where(denom > 0, denom, 1.0), 0.0)
            return r.sum(axis=1) / n
        if metric == "mape":
            nz = ok & (y != 0)
            ape = np.where(nz, np.abs(err) / np.where(nz, np.abs(y), 1.0), 0.0)
            cnt = nz.sum(axis=1).astype(float)
            return ape.sum(axis=1) / np.where(cnt > 0, cnt, np.nan)
        if metric == "wql":
            q = np.asarray([float(x) for x in quantiles])
            diff = np.where(ok[..., None], y[..., None] - qs, 0.0)
            loss = np.maximum(q * diff, (q - 1.0) * diff).sum(axis=1)  # forecasts × levels
            denom = np.where(ok, np.abs(y), 0.0).sum(axis=1)
            return (2.0 * loss / np.where(denom > 0, denom, np.nan)[:, None]).mean(axis=1)
    raise BadInputError(f"the ensemble cannot optimise {metric!r}; choose one of {list(GATE_METRICS)}")


def greedy_weights(objective: Callable[[np.ndarray], float], n_members: int,
                   iterations: int = DEFAULT_ITERATIONS) -> tuple[np.ndarray, float, list[float]]:
    """Forward selection with replacement: ``(weights, best score, score after each addition)``.
    ``objective(weights)`` is the score (lower is better) of the combination with ``weights``."""
    if n_members < 1:
        raise BadInputError("greedy selection needs at least one member")
    if iterations < 1:
        raise BadInputError(f"ensemble iterations must be at least 1, got {iterations}")
    counts = np.zeros(n_members)
    best_counts: np.ndarray | None = None
    best = math.inf
    trace: list[float] = []
    for _ in range(int(iterations)):
        scores = []
        for m in range(n_members):
            c = counts.copy()
            c[m] += 1
            s = float(objective(c / c.sum()))
            scores.append(s if math.isfinite(s) else math.inf)
        m = int(np.argmin(scores))  # the first of equal scores
        if not math.isfinite(scores[m]):
            break
        counts[m] += 1
        trace.append(scores[m])
        if scores[m] < best:
            best, best_counts = scores[m], counts.copy()
    if best_counts is None:
        raise BadInputError("no combination of the ensemble members has a valid score")
    return best_counts / best_counts.sum(), best, trace


@dataclass
class EnsembleFit:
    """The fitted ensemble: every candidate's weight (0 if never selected) and how it was fitted."""

    members: list[str]
    weights: dict[str, float]
    gate_metric: str
    fit_windows: list[int]
    judge_windows: list[int]
    fit_score: float
    member_fit_scores: dict[str, float]
    iterations: int
    n_fit_pairs: int
    trace: list[float] = field(default_factory=list, repr=False)

    def selected(self) -> dict[str, float]:
        """The members with a positive weight, in candidate order."""
        return {m: w for m, w in self.weights.items() if w > 0}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("trace")
        return d


def _member_arrays(forecasts: pd.DataFrame, members: Sequence[str], qcols: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """``(pairs, y, mean, qs)`` over the (series, window) pairs every member forecast: ``pairs``
    (unique_id, window), ``y`` pairs × h, ``mean`` members × pairs × h, ``qs`` members × pairs × h × Q."""
    key = [ID, "window"]
    sub = forecasts[forecasts["model"].isin(members)]
    per = {m: sub[sub["model"] == m].sort_values([ID, "window", TIME], kind="stable") for m in members}
    sizes = {m: per[m].groupby(key).size() for m in members}
    idx = sizes[members[0]].index
    for m in members[1:]:
        idx = idx.intersection(sizes[m].index)
    h = int(max(sizes[m].reindex(idx).max() for m in members)) if len(idx) else 0
    full = np.logical_and.reduce([sizes[m].reindex(idx).to_numpy() == h for m in members]) if len(idx) else []
    common = pd.Series(1, index=idx[full] if len(idx) else idx).sort_index()
    pairs = common.index.to_frame(index=False)
    if pairs.empty:
        return pairs, np.empty((0, 0)), np.empty((len(members), 0, 0)), np.empty((len(members), 0, 0, len(qcols)))
    means, qs, y = [], [], None
    for m in members:
        f = per[m]
        f = f[pd.MultiIndex.from_frame(f[key]).isin(common.index)]
        if y is None:
            y = f[TARGET].to_numpy(dtype=float).reshape(len(pairs), h)
        means.append(f["mean"].to_numpy(dtype=float).reshape(len(pairs), h))
        qs.append(f[list(qcols)].to_numpy(dtype=float).reshape(len(pairs), h, len(qcols)))
    return pairs, y, np.stack(means), np.stack(qs)


def _scales(history: pd.DataFrame, cutoffs: pd.DataFrame, pairs: pd.DataFrame, season_length: int) -> np.ndarray:
    """MASE denominators of ``pairs`` (unique_id, window) from each window's context."""
    from chronos_flows.evaluation.windows import split_window

    out = pd.Series(np.nan, index=pd.MultiIndex.from_frame(pairs))
    for w in sorted(pairs["window"].unique()):
        ids = pairs.loc[pairs["window"] == w, ID]
        cut = cutoffs[(cutoffs["window"] == w) & cutoffs[ID].isin(ids)]
        context, _ = split_window(history, cut)
        sc = M.seasonal_scale(context, season_length)
        for uid, v in sc.items():
            out.loc[(uid, w)] = v
    return out.to_numpy(dtype=float)


def fit_weights(result: Any, history: pd.DataFrame, members: Sequence[str], *, gate_metric: str,
                fit_windows: Sequence[int], iterations: int = DEFAULT_ITERATIONS) -> EnsembleFit:
    """Greedy weights of ``members`` (models of the backtest ``result``) on ``fit_windows``,
    optimising the mean ``gate_metric`` over the (series, window) pairs every member forecast."""
    s = result.settings
    quantiles = s["quantiles"]
    qcols = [quantile_column(q) for q in quantiles]
    fc = result.forecasts[result.forecasts["window"].isin(list(fit_windows))]
    pairs, y, mean, qs = _member_arrays(fc, members, qcols)
    if pairs.empty:
        raise BadInputError(f"no series was forecast by every ensemble member {list(members)} in window(s) {list(fit_windows)}")
    scale = _scales(history, result.cutoffs, pairs, s["season_length"]) if gate_metric == "mase" else None

    def objective(w: np.ndarray) -> float:
        m = np.tensordot(w, mean, axes=1)
        q = np.sort(np.tensordot(w, qs, axes=1), axis=-1)
        per = pair_scores(gate_metric, y, m, q, quantiles, scale)
        return float(np.nanmean(per)) if np.isfinite(per).any() else math.nan

    weights, best, trace = greedy_weights(objective, len(members), iterations)
    singles = {}
    for i, m in enumerate(members):
        one = np.zeros(len(members))
        one[i] = 1.0
        singles[m] = objective(one)
    judge = [w for w in range(int(s["n_windows"])) if w not in set(fit_windows)]
    return EnsembleFit(
        members=list(members),
        weights={m: float(w) for m, w in zip(members, weights)},
        gate_metric=gate_metric,
        fit_windows=sorted(int(w) for w in fit_windows),
        judge_windows=judge,
        fit_score=float(best),
        member_fit_scores=singles,
        iterations=int(iterations),
        n_fit_pairs=int(len(pairs)),
        trace=trace,
    )


# ----------------------------------------------------------------------------- backtest candidate


def restrict_windows(result: Any, windows: Sequence[int], extra_settings: Mapping[str, Any] | None = None) -> Any:
    """``result`` with its leaderboard rebuilt on ``windows`` only (forecasts and metrics of the
    other windows are kept: they are what the ensemble was fitted on)."""
    from chronos_flows.evaluation.backtest import BacktestResult, build_leaderboard

    keep_m = result.metrics["window"].isin(list(windows))
    keep_f = result.forecasts["window"].isin(list(windows))
    models = list(result.failures)
    board = build_leaderboard(result.metrics[keep_m], result.forecasts[keep_f], models, result.failures,
                              result.settings["quantiles"])
    settings = {**result.settings, "judge_windows": [int(w) for w in windows], **dict(extra_settings or {})}
    return BacktestResult(result.forecasts, result.metrics, board, result.failures, result.cutoffs, settings,
                          dict(result.timings))


def add_ensemble(result: Any, history: pd.DataFrame, *, candidates: Sequence[str], gate_metric: str,
                 fit_windows: Sequence[int], iterations: int = DEFAULT_ITERATIONS) -> Any:
    """The backtest ``result`` plus the ``ensemble`` model: weights fitted on ``fit_windows``
    (:func:`fit_weights`) over the ``candidates`` present in it, forecasts and scores on the other
    windows, and the leaderboard of every model on those judging windows only. With fewer than two
    candidates there is no ensemble (``settings["ensemble"]`` is None), but the leaderboard still
    judges on the same windows. ``settings["ensemble"]`` holds :meth:`EnsembleFit.to_dict`."""
    from chronos_flows.evaluation.backtest import BacktestResult, _check_history
    from chronos_flows.evaluation.windows import split_window

    t0 = time.perf_counter()
    s = result.settings
    judge = [w for w in range(int(s["n_windows"])) if w not in set(fit_windows)]
    if not judge:
        raise BadInputError(f"the ensemble is fitted on windows {list(fit_windows)}: no window is left to judge the models on")
    fitted = set(result.forecasts.loc[result.forecasts["window"].isin(list(fit_windows)), "model"])
    members = [c for c in dict.fromkeys(candidates) if c in result.failures and c in fitted and c != ENSEMBLE]
    if len(members) < 2:
        return restrict_windows(result, judge, {"ensemble": None})
    fit = fit_weights(result, history, members, gate_metric=gate_metric, fit_windows=fit_windows, iterations=iterations)
    chosen = fit.selected()
    quantiles = s["quantiles"]
    qcols = [quantile_column(q) for q in quantiles]
    df = _check_history(history)
    fc_parts, metric_parts, failures = [], [], {}
    for w in judge:
        cut = result.cutoffs[result.cutoffs["window"] == w]
        context, actuals = split_window(df, cut)
        cutoff_of = cut.set_index(ID)["cutoff"]
        fw = result.forecasts[result.forecasts["window"] == w]
        frames = [fw.loc[fw["model"] == m, [ID, TIME, "mean", *qcols]] for m in chosen]
        comb = combine_forecasts(frames, list(chosen.values()), qcols)
        got = set(comb[ID])
        for uid in cut[ID]:
            if str(uid) not in got:
                failures.setdefault(str(uid), []).append(f"window {w}: no ensemble member forecast it")
        if comb.empty:
            continue
        act = actuals[actuals[ID].astype(str).isin(got)].copy()
        act[ID] = act[ID].astype(str)
        merged = act.merge(comb, on=[ID, TIME], how="left", validate="one_to_one")
        scores = M.evaluate_all(merged, season_length=s["season_length"], insample=context[context[ID].astype(str).isin(got)],
                                quantiles=quantiles).reset_index()
        for frame in (merged, scores):
            frame.insert(1, "window", w)
            frame.insert(2, "cutoff", frame[ID].map(cutoff_of).to_numpy())
            frame.insert(3, "model", ENSEMBLE)
        fc_parts.append(merged)
        metric_parts.append(scores)
    forecasts = pd.concat([result.forecasts, *fc_parts], ignore_index=True) if fc_parts else result.forecasts
    metrics_df = pd.concat([result.metrics, *metric_parts], ignore_index=True) if metric_parts else result.metrics
    all_failures = {**result.failures, ENSEMBLE: {u: "; ".join(m) for u, m in failures.items()}}
    timings = {**result.timings, "ensemble": round(time.perf_counter() - t0, 4)}
    merged_result = BacktestResult(forecasts, metrics_df, result.leaderboard, all_failures, result.cutoffs, dict(s), timings)
    return restrict_windows(merged_result, judge, {"ensemble": fit.to_dict()})


# ------------------------------------------------------------------------------------ the champion


def champion_config(fit: Mapping[str, Any], member_configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """champion.json ``config`` of an ensemble: the members with a positive weight, each
    ``{"family", "weight", "config"}`` (a Chronos member's config also names its ``model_uri``),
    and how the weights were fitted. ``fit`` is :meth:`EnsembleFit.to_dict` output."""
    members = []
    for name, w in fit["weights"].items():
        if w > 0:
            if name not in member_configs:
                raise BadInputError(f"ensemble member {name!r} has no recorded configuration")
            members.append({"family": name, "weight": float(w), "config": dict(member_configs[name])})
    return {
        "members": members,
        "gate_metric": fit["gate_metric"],
        "iterations": fit["iterations"],
        "fit_windows": list(fit["fit_windows"]),
        "fit_score": fit["fit_score"],
    }


def ensemble_forecaster(champion: Mapping[str, Any], member_forecaster: Callable[[dict[str, Any]], Forecaster]) -> EnsembleForecaster:
    """Re-create an ensemble champion: ``member_forecaster(member_doc)`` builds each member from a
    champion-like document ``{"family", "config", "run_id"}`` (local family: re-created from its
    config; Chronos: its registry copy of the ensemble's run)."""
    members = (champion.get("config") or {}).get("members")
    if not members:
        raise BadInputError(f"ensemble champion {champion.get('run_id')} records no members (config.members)")
    built, weights = [], []
    for m in members:
        if m.get("family") in (None, ENSEMBLE) or "weight" not in m:
            raise BadInputError(f"ensemble member {m} needs a family (not 'ensemble') and a weight")
        doc = {"family": m["family"], "config": dict(m.get("config") or {}), "run_id": champion.get("run_id")}
        built.append((m["family"], member_forecaster(doc)))
        weights.append(float(m["weight"]))
    return EnsembleForecaster(built, weights)


def report_lines(settings: Mapping[str, Any]) -> list[str]:
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
    lines += [
        f"Weights by greedy forward selection with replacement (Caruana et al. 2004, {fit['iterations']} additions) "
        f"optimising mean `{fit['gate_metric']}` on window {fw} ({fit['n_fit_pairs']} series); the leaderboard "
        f"above ranks every model on {span} only, which the weights never saw.",
        "",
        f"| member | weight | {fit['gate_metric']} on the fitting window |",
        "|---|---:|---:|",
    ]
    for m in fit["members"]:
        lines.append(f"| {m} | {fit['weights'][m]:.2f} | {fit['member_fit_scores'][m]:.4g} |")
    lines += [f"| **ensemble** | 1.00 | {fit['fit_score']:.4g} |", ""]
    return lines
