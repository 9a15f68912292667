"""Data in: ingest (file bytes to the canonical long frame), frequency inference and grids, cleaning
and its report.

May import: core, config."""
