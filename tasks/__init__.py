"""Thin Prefect task wrappers over the pure domain functions in chronos_flows."""
