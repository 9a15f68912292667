"""The Chronos families (Chronos-2, Chronos-Bolt, T5): model sources, training loops, checkpoints,
forecasting behind the Forecaster interface."""
