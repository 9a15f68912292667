"""Train/test split shared by training and evaluation: the last backtest span is never trained on."""

from __future__ import annotations

import pandas as pd

from chronos_flows.config.params import EvaluationConfig, TrainingParams


def ensemble_fit_windows(ev: EvaluationConfig) -> list[int]:
    """Backtest windows the ensemble's weights are fitted on (the first, extra one), never judged on."""
    return [0] if getattr(ev, "ensemble", False) else []


def backtest_windows(ev: EvaluationConfig) -> int:
    """Windows the backtest runs: the ``n_windows`` judging windows plus the ensemble's fitting window."""
    return ev.n_windows + len(ensemble_fit_windows(ev))


def test_span(ev: EvaluationConfig) -> int:
    """Points at the end of every series covered by the backtest windows."""
    return ev.horizon + (backtest_windows(ev) - 1) * (ev.step or ev.horizon)


def min_series_length(params: TrainingParams) -> int:
    """Shortest series worth keeping: every backtest window plus one context (or a season) before it."""
    ev = params.evaluation
    return test_span(ev) + max(ev.horizon, min(params.chronos.context_length, 2 * ev.horizon))


def split_for_training(cleaned: pd.DataFrame, freq: str, ev: EvaluationConfig) -> tuple[pd.DataFrame, str]:
    """Each series without its final ``test_span`` points (the data Chronos may be fine-tuned on)."""
    span = test_span(ev)
    df = cleaned[["unique_id", "ds", "y"]]
    rank_from_end = df.groupby("unique_id", sort=False).cumcount(ascending=False)
    return df[rank_from_end >= span].reset_index(drop=True), freq
