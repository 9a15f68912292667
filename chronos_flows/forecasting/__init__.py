"""Batch forecasts from the champion: every series ``horizon`` steps past its own last observation,
in chunks that stream into one Parquet file.

May import: core, config, data, models, champion."""
