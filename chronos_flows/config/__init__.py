"""Typed, frozen parameter models of the flows (Prefect renders them as the UI form), one section per
topic, and how configuration files and ``--set`` overrides become them.

May import: core."""
