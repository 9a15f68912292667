"""Judging models: backtest windows, the train/test split, metrics (one signature), the rolling-origin
backtest, the leaderboard and report, and the per-chunk fan-out of local baselines.

May import: core, config, data, models."""
