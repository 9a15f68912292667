"""Forecasters: one module per model family behind :class:`~chronos_flows.models.base.Forecaster`."""
