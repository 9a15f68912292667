"""Fitting the weighted ensemble on a backtest: greedy forward selection with replacement (Caruana
et al. 2004, the method behind AutoGluon's WeightedEnsemble) on the out-of-fold forecasts of every
backtest window, shrunk toward the best single member; the ensemble's score on each judging window
uses weights fitted without that window (nested), and every model is ranked on the judging windows
only. The combination itself and the champion it becomes live in :mod:`chronos_flows.models.ensemble`.
Pure: no Prefect, no boto3.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.evaluation import metrics as M
from chronos_flows.evaluation.backtest import BacktestResult, build_leaderboard, check_history
from chronos_flows.evaluation.windows import split_window
from chronos_flows.models.base import ID, TARGET, TIME, quantile_column
from chronos_flows.models.ensemble import DEFAULT_ITERATIONS, DEFAULT_SHRINKAGE, ENSEMBLE, GATE_METRICS, combine_forecasts


def pair_scores(metric: str, y: np.ndarray, mean: np.ndarray, qs: np.ndarray, quantiles: Sequence[float],
                scale: np.ndarray | None = None) -> np.ndarray:
    """``metric`` per forecast (row) of arrays ``y``/``mean`` (forecasts × steps) and ``qs``
    (forecasts × steps × levels), computed by :mod:`chronos_flows.evaluation.metrics` on the rows
    taken as one series each (NaN actuals ignored; ``scale``: the MASE denominators)."""
    if metric not in GATE_METRICS:
        raise BadInputError(f"the ensemble cannot optimise {metric!r}; choose one of {list(GATE_METRICS)}")
    n, h = y.shape
    qcols = [quantile_column(q) for q in quantiles]
    frame = pd.DataFrame(qs.reshape(n * h, len(qcols)), columns=qcols)
    frame.insert(0, "mean", mean.reshape(n * h))
    frame.insert(0, TARGET, y.reshape(n * h))
    frame.insert(0, ID, np.repeat(np.arange(n), h))
    if metric == "mase":
        if scale is None:
            raise BadInputError("MASE needs the in-sample scales")
        out = M.scaled_mae(frame, pd.Series(np.asarray(scale, dtype=float), index=np.arange(n)))
    else:
        out = M.METRICS[metric](frame, quantiles=quantiles)
    return out.reindex(np.arange(n)).to_numpy(dtype=float)


def fast_pair_scores(metric: str, y: np.ndarray, mean: np.ndarray, qs: np.ndarray, quantiles: Sequence[float],
                     scale: np.ndarray | None = None) -> np.ndarray:
    """:func:`pair_scores` in plain numpy for ``wql``, ``mase`` and ``mae`` (the greedy search
    evaluates thousands of combinations; tests hold it equal to :func:`pair_scores`, the metrics
    module's figures); any other metric goes through :func:`pair_scores`."""
    if metric not in ("wql", "mase", "mae"):
        return pair_scores(metric, y, mean, qs, quantiles, scale)
    valid = np.isfinite(y)
    n_valid = valid.sum(axis=1)
    yv = np.where(valid, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "wql":
            ql = np.asarray(quantiles, dtype=float)
            diff = yv[..., None] - qs
            loss = np.maximum(ql * diff, (ql - 1.0) * diff)
            bad = (valid[..., None] & ~np.isfinite(qs)).any(axis=(1, 2))
            num = np.where(valid[..., None], np.nan_to_num(loss), 0.0).sum(axis=(1, 2))
            den = np.abs(yv).sum(axis=1)
            out = np.where(den > 0, 2.0 * num / (len(ql) * np.where(den > 0, den, 1.0)), np.nan)
        else:
            err = np.where(valid, np.nan_to_num(np.abs(yv - mean)), 0.0).sum(axis=1)
            bad = (valid & ~np.isfinite(mean)).any(axis=1)
            out = err / np.maximum(n_valid, 1)
            if metric == "mase":
                if scale is None:
                    raise BadInputError("MASE needs the in-sample scales")
                sc = np.asarray(scale, dtype=float)
                out = np.where(sc > 0, out / np.where(sc > 0, sc, 1.0), np.nan)
    return np.where(bad | (n_valid == 0), np.nan, out)


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
    """The fitted ensemble: every candidate's weight (0 if never selected) and how it was fitted.

    ``weights`` are the ones the champion uses: fitted on every backtest window (``fit_windows``).
    ``nested`` holds, per judging window, the weights fitted *without* that window (and without any
    window whose forecast period overlaps it): those are the weights the ensemble's leaderboard
    score was computed with. ``greedy_weights`` are the unshrunk weights of the final fit, and
    ``best_single`` the member the final weights are shrunk toward (by ``shrinkage``)."""

    members: list[str]
    weights: dict[str, float]
    gate_metric: str
    fit_windows: list[int]
    judge_windows: list[int]
    fit_score: float
    member_fit_scores: dict[str, float]
    iterations: int
    n_fit_pairs: int
    shrinkage: float = 0.0
    best_single: str | None = None
    greedy_weights: dict[str, float] = field(default_factory=dict)
    nested: dict[int, dict[str, float]] = field(default_factory=dict)
    trace: list[float] = field(default_factory=list, repr=False)
    metrics: list[str] = field(default_factory=list)
    #: "auto": ``shrinkage`` was chosen by leave-one-window-out on the fitting windows (its held-out
    #: objective per candidate in ``shrinkage_scores``; per judging window in ``nested_shrinkage``)
    shrinkage_mode: str = "fixed"
    shrinkage_scores: dict[float, float] = field(default_factory=dict)
    nested_shrinkage: dict[int, float] = field(default_factory=dict)

    def selected(self) -> dict[str, float]:
        """The members with a positive weight, in candidate order."""
        return {m: w for m, w in self.weights.items() if w > 0}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("trace")
        d["nested"] = {str(w): ws for w, ws in self.nested.items()}  # JSON keys are strings
        d["shrinkage_scores"] = {f"{k:g}": v for k, v in self.shrinkage_scores.items()}
        d["nested_shrinkage"] = {str(w): v for w, v in self.nested_shrinkage.items()}
        return d


@dataclass(frozen=True)
class _Arrays:
    """Every member's backtest forecasts over the (series, window) pairs all of them forecast."""

    pairs: pd.DataFrame
    y: np.ndarray
    mean: np.ndarray
    qs: np.ndarray
    scale: np.ndarray | None

    def take(self, mask: np.ndarray) -> "_Arrays":
        return _Arrays(self.pairs[mask].reset_index(drop=True), self.y[mask], self.mean[:, mask], self.qs[:, mask],
                       None if self.scale is None else self.scale[mask])


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
    out = pd.Series(np.nan, index=pd.MultiIndex.from_frame(pairs))
    for w in sorted(pairs["window"].unique()):
        ids = pairs.loc[pairs["window"] == w, ID]
        cut = cutoffs[(cutoffs["window"] == w) & cutoffs[ID].isin(ids)]
        context, _ = split_window(history, cut)
        sc = M.seasonal_scale(context, season_length)
        for uid, v in sc.items():
            out.loc[(uid, w)] = v
    return out.to_numpy(dtype=float)


def _arrays(result: BacktestResult, history: pd.DataFrame, members: Sequence[str], metrics: Sequence[str],
            windows: Sequence[int]) -> _Arrays:
    s = result.settings
    qcols = [quantile_column(q) for q in s["quantiles"]]
    fc = result.forecasts[result.forecasts["window"].isin(list(windows))]
    pairs, y, mean, qs = _member_arrays(fc, members, qcols)
    if pairs.empty:
        raise BadInputError(f"no series was forecast by every ensemble member {list(members)} in window(s) {list(windows)}")
    scale = _scales(history, result.cutoffs, pairs, s["season_length"]) if "mase" in metrics else None
    return _Arrays(pairs, y, mean, qs, scale)


def objective_function(arr: _Arrays, n_members: int, metrics: Sequence[str],
                       quantiles: Sequence[float]) -> Callable[[np.ndarray], float]:
    """The greedy search's objective on ``arr``: with one metric, its mean over the pairs; with
    several, the sum over ``metrics`` of the combination's mean relative to the best single
    member's mean of that metric (so each metric weighs the same and the best member of each scores
    1); a metric no member has a positive score on is left out (none left: an error). Lower is
    better; NaN when no pair has a score."""

    def mean_score(metric: str, w: np.ndarray) -> float:
        m = np.tensordot(w, arr.mean, axes=1)
        q = np.sort(np.tensordot(w, arr.qs, axes=1), axis=-1)
        per = fast_pair_scores(metric, arr.y, m, q, quantiles, arr.scale)
        return float(np.nanmean(per)) if np.isfinite(per).any() else math.nan

    if len(metrics) == 1:
        return lambda w: mean_score(metrics[0], w)
    refs = {}
    for metric in metrics:
        singles = [mean_score(metric, e) for e in np.eye(n_members)]
        finite = [v for v in singles if math.isfinite(v) and v > 0]
        if finite:  # a metric no member can score here (MASE of series flat in-sample) does not weigh
            refs[metric] = min(finite)
    if not refs:
        raise BadInputError(f"no ensemble member has a positive score on any of {list(metrics)} on the backtest "
                            f"windows; choose other evaluation.ensemble_metrics")
    return lambda w: sum(mean_score(metric, w) / ref for metric, ref in refs.items())


def _greedy(arr: _Arrays, members: Sequence[str], metrics: Sequence[str], quantiles: Sequence[float], iterations: int
            ) -> tuple[Callable[[np.ndarray], float], np.ndarray, int, dict[str, float], list[float]]:
    """Greedy weights on ``arr``: ``(objective, greedy weights, index of the best single member,
    every member's score, greedy trace)``."""
    objective = objective_function(arr, len(members), metrics, quantiles)
    greedy, _, trace = greedy_weights(objective, len(members), iterations)
    singles = {}
    for i, m in enumerate(members):
        one = np.zeros(len(members))
        one[i] = 1.0
        singles[m] = objective(one)
    finite = [(v, i) for i, v in enumerate(singles.values()) if math.isfinite(v)]
    best = min(finite)[1] if finite else int(np.argmax(greedy))  # the first of equal scores
    return objective, greedy, best, singles, trace


def _shrunk(greedy: np.ndarray, best: int, shrinkage: float) -> np.ndarray:
    target = np.zeros(len(greedy))
    target[best] = 1.0
    return (1.0 - shrinkage) * greedy + shrinkage * target


def _fit(arr: _Arrays, members: Sequence[str], metrics: Sequence[str], quantiles: Sequence[float], iterations: int,
         shrinkage: float) -> tuple[np.ndarray, np.ndarray, int, float, dict[str, float], list[float]]:
    """Greedy weights on ``arr``, shrunk toward the best single member: ``(weights, greedy weights,
    index of the best single member, score of the weights, every member's score, greedy trace)``."""
    objective, greedy, best, singles, trace = _greedy(arr, members, metrics, quantiles, iterations)
    weights = _shrunk(greedy, best, shrinkage)
    return weights, greedy, best, objective(weights), singles, trace


#: the shrinkage levels ``evaluation.ensemble_shrinkage="auto"`` chooses among
SHRINKAGE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def choose_shrinkage(arr: _Arrays, members: Sequence[str], metrics: Sequence[str], quantiles: Sequence[float],
                     iterations: int, *, n_windows: int, horizon: int, step: int,
                     grid: Sequence[float] = SHRINKAGE_GRID) -> tuple[float | None, dict[float, float]]:
    """The shrinkage of ``grid`` whose weights forecast best out of sample on ``arr``'s windows:
    for each window, greedy weights fitted on the windows that do not overlap it, shrunk by each
    level, scored on that window with the same objective (relative to that window's best member);
    the level with the lowest mean held-out objective wins (ties: the larger shrinkage, the safer).
    ``(None, {})`` when no window has another window to fit on (the caller keeps its default)."""
    windows = sorted(int(w) for w in arr.pairs["window"].unique())
    window_of = arr.pairs["window"].to_numpy()
    totals = {float(lv): [] for lv in grid}
    for v in windows:
        train = ~np.isin(window_of, excluded_windows(v, n_windows, horizon, step))
        test = window_of == v
        if not train.any() or not test.any():
            continue
        try:
            _, greedy, best, _, _ = _greedy(arr.take(train), members, metrics, quantiles, iterations)
            held_out = objective_function(arr.take(test), len(members), metrics, quantiles)
        except BadInputError:
            continue  # nothing to fit or score on this fold (a metric no member scores there)
        for lv in totals:
            score = held_out(_shrunk(greedy, best, lv))
            if math.isfinite(score):
                totals[lv].append(score)
    scores = {lv: float(np.mean(v)) for lv, v in totals.items() if v and len(v) == max(len(x) for x in totals.values())}
    if not scores:
        return None, {}
    chosen = min(scores, key=lambda lv: (scores[lv], -lv))
    return chosen, scores


def excluded_windows(window: int, n_windows: int, horizon: int, step: int) -> list[int]:
    """The windows a nested fit for ``window`` leaves out: itself and every window whose forecast
    period overlaps it (``step < horizon``), so no actual value scored in ``window`` is fitted on."""
    return [v for v in range(n_windows) if abs(v - window) * step < horizon]


def fit_weights(result: BacktestResult, history: pd.DataFrame, members: Sequence[str], *, gate_metric: str,
                fit_windows: Sequence[int] | None = None, judge_windows: Sequence[int] = (),
                iterations: int = DEFAULT_ITERATIONS, shrinkage: float | str = DEFAULT_SHRINKAGE,
                metrics: Sequence[str] | None = None) -> EnsembleFit:
    """Weights of ``members`` (models of the backtest ``result``) optimising ``metrics`` (default:
    ``gate_metric`` alone; several: the sum of each relative to its best member, see
    :func:`objective_function`) over the (series, window) pairs every member forecast: greedy
    selection with replacement, then shrunk toward the member that is best alone on the same
    objective (``w = (1 - shrinkage) · greedy + shrinkage · best``).

    The final ``weights`` are fitted on ``fit_windows`` (default: every window, the out-of-fold
    forecasts of the whole backtest); for each of ``judge_windows`` the weights are fitted again
    without it (:func:`excluded_windows`) — the nested weights its score is computed with.

    ``shrinkage="auto"``: each fit chooses its level by :func:`choose_shrinkage` on its own windows
    only (a judging window's nested fit never sees that window), falling back to
    ``DEFAULT_SHRINKAGE`` where there is a single window to fit on."""
    auto = isinstance(shrinkage, str)
    if auto and shrinkage != "auto":
        raise BadInputError(f"ensemble shrinkage must be a number between 0 and 1 or 'auto', got {shrinkage!r}")
    if not auto and not 0.0 <= float(shrinkage) <= 1.0:
        raise BadInputError(f"ensemble shrinkage must be between 0 and 1, got {shrinkage}")
    metrics = list(dict.fromkeys(metrics or [gate_metric]))
    unknown = [m for m in metrics if m not in GATE_METRICS]
    if unknown:
        raise BadInputError(f"the ensemble cannot optimise {unknown}; choose metrics among {list(GATE_METRICS)}")
    s = result.settings
    n, horizon, step = int(s["n_windows"]), int(s["horizon"]), int(s.get("step") or s["horizon"])
    windows = sorted(int(w) for w in (range(n) if fit_windows is None else fit_windows))
    quantiles = s["quantiles"]
    arr = _arrays(result, history, members, metrics, windows)

    def level(a: _Arrays) -> tuple[float, dict[float, float]]:
        if not auto:
            return float(shrinkage), {}
        chosen, scores = choose_shrinkage(a, members, metrics, quantiles, iterations, n_windows=n, horizon=horizon,
                                          step=step)
        return (DEFAULT_SHRINKAGE if chosen is None else chosen), scores

    final_level, level_scores = level(arr)
    weights, greedy, best, score, singles, trace = _fit(arr, members, metrics, quantiles, iterations, final_level)
    nested: dict[int, dict[str, float]] = {}
    nested_levels: dict[int, float] = {}
    for w in judge_windows:
        mask = ~arr.pairs["window"].isin(excluded_windows(int(w), n, horizon, step)).to_numpy()
        if not mask.any():
            continue  # no window left to fit on without it: the ensemble is not scored there
        sub = arr.take(mask)
        nested_levels[int(w)], _ = level(sub)
        ws = _fit(sub, members, metrics, quantiles, iterations, nested_levels[int(w)])[0]
        nested[int(w)] = {m: float(x) for m, x in zip(members, ws)}
    return EnsembleFit(
        members=list(members),
        weights={m: float(x) for m, x in zip(members, weights)},
        gate_metric=gate_metric,
        metrics=metrics,
        fit_windows=windows,
        judge_windows=sorted(int(w) for w in judge_windows),
        fit_score=float(score),
        member_fit_scores=singles,
        iterations=int(iterations),
        n_fit_pairs=int(len(arr.pairs)),
        shrinkage=float(final_level),
        best_single=members[best],
        greedy_weights={m: float(x) for m, x in zip(members, greedy)},
        nested=nested,
        trace=trace,
        shrinkage_mode="auto" if auto else "fixed",
        shrinkage_scores=level_scores,
        nested_shrinkage=nested_levels if auto else {},
    )


# ----------------------------------------------------------------------------- backtest candidate


def restrict_windows(result: BacktestResult, windows: Sequence[int], extra_settings: Mapping[str, Any] | None = None) -> BacktestResult:
    """``result`` with its leaderboard rebuilt on ``windows`` only (forecasts and metrics of the
    other windows are kept: they are what the ensemble was fitted on)."""
    keep_m = result.metrics["window"].isin(list(windows))
    keep_f = result.forecasts["window"].isin(list(windows))
    models = list(result.failures)
    board = build_leaderboard(result.metrics[keep_m], result.forecasts[keep_f], models, result.failures,
                              result.settings["quantiles"])
    settings = {**result.settings, "judge_windows": [int(w) for w in windows], **dict(extra_settings or {})}
    return BacktestResult(result.forecasts, result.metrics, board, result.failures, result.cutoffs, settings,
                          dict(result.timings))


def add_ensemble(result: BacktestResult, history: pd.DataFrame, *, candidates: Sequence[str], gate_metric: str,
                 fit_windows: Sequence[int], iterations: int = DEFAULT_ITERATIONS,
                 shrinkage: float | str = DEFAULT_SHRINKAGE, metrics: Sequence[str] | None = None) -> BacktestResult:
    """The backtest ``result`` plus the ``ensemble`` model over the ``candidates`` present in it.

    ``fit_windows`` are the windows only the ensemble uses (the extra first window): every model is
    ranked on the other, judging windows. The champion's weights are fitted on the out-of-fold
    forecasts of *all* windows (:func:`fit_weights`); the ensemble's forecasts and scores on each
    judging window use the weights fitted without that window (nested), so its leaderboard score is
    never in-sample. With fewer than two candidates there is no ensemble (``settings["ensemble"]``
    is None), but the leaderboard still judges on the same windows. ``settings["ensemble"]`` holds
    :meth:`EnsembleFit.to_dict`."""
    t0 = time.perf_counter()
    s = result.settings
    judge = [w for w in range(int(s["n_windows"])) if w not in set(fit_windows)]
    if not judge:
        raise BadInputError(f"the ensemble is fitted on windows {list(fit_windows)}: no window is left to judge the models on")
    forecast_by = set(result.forecasts["model"])
    members = [c for c in dict.fromkeys(candidates) if c in result.failures and c in forecast_by and c != ENSEMBLE]
    if len(members) < 2:
        return restrict_windows(result, judge, {"ensemble": None})
    fit = fit_weights(result, history, members, gate_metric=gate_metric, judge_windows=judge, iterations=iterations,
                      shrinkage=shrinkage, metrics=metrics)
    quantiles = s["quantiles"]
    qcols = [quantile_column(q) for q in quantiles]
    df = check_history(history)
    fc_parts, metric_parts, failures = [], [], {}
    for w in judge:
        cut = result.cutoffs[result.cutoffs["window"] == w]
        if w not in fit.nested:
            for uid in cut[ID]:
                failures.setdefault(str(uid), []).append(
                    f"window {w}: no backtest window is left to fit the ensemble's weights without it (overlapping windows)")
            continue
        chosen = {m: x for m, x in fit.nested[w].items() if x > 0}
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
