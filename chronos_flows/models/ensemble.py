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

Shrinkage: the greedy weights are shrunk toward the member that is best alone on the same
forecasts, ``w = (1 - shrinkage) · greedy + shrinkage · best`` (``evaluation.ensemble_shrinkage``).
Both metrics the champion is gated on (WQL, MASE) are convex in the combined forecast, so on any
window the shrunk ensemble's loss is at most ``(1 - shrinkage)`` × the greedy ensemble's loss +
``shrinkage`` × the best member's: shrinkage bounds how much overfitted weights can hurt.

Honest scoring (:func:`chronos_flows.evaluation.ensemble.add_ensemble`): the weights are fitted, as
AutoGluon does on its validation windows, on the out-of-fold forecasts of *every* backtest window —
with ``evaluation.ensemble`` on, the backtest runs one extra rolling window before the
``evaluation.n_windows`` judging windows (:func:`chronos_flows.evaluation.splits.backtest_windows`;
Chronos is never trained on it either, see :func:`chronos_flows.evaluation.splits.test_span`). The
ensemble's forecast on each judging window uses the weights fitted *without* that window (and
without any window overlapping it): nested, never in-sample. The leaderboard ranks every model on
the judging windows only; the champion's weights are the ones fitted on all windows.

The champion (family ``ensemble``) records its members and weights in ``config`` (see
:func:`champion_config`); :func:`ensemble_forecaster` re-creates it: each member forecasts, then
the weighted combination — the same function on the same numbers as in the backtest. Pure: no
Prefect, no boto3.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import (
    DEFAULT_QUANTILES,
    ID,
    TIME,
    Forecaster,
    quantile_column,
    require_long_frame,
)

ENSEMBLE = "ensemble"
#: Greedy additions (AutoGluon's default ensemble size).
DEFAULT_ITERATIONS = 100
#: Weight moved from the greedy weights to the best single member (``evaluation.ensemble_shrinkage``).
DEFAULT_SHRINKAGE = 0.5
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
        "metrics": list(fit.get("metrics") or [fit["gate_metric"]]),
        "iterations": fit["iterations"],
        "fit_windows": list(fit["fit_windows"]),
        "fit_score": fit["fit_score"],
        "shrinkage": fit.get("shrinkage", 0.0),
        "best_single": fit.get("best_single"),
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
