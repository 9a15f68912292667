"""Live accuracy of what was published: published forecasts (batch forecasts under
``{env}/forecasts/`` and captured endpoint requests under ``{env}/capture/``) scored against the
actuals that arrived since (MASE, WQL, 80 % coverage, bias; pooled per forecast and per horizon
step), the scored history under ``{env}/monitoring/`` (append-only, conditional writes), the
degradation rule and its records, the engineer's report (markdown table and PNG). Pure: pandas and
the store protocol, no Prefect, no boto3.

May import: core, config, data, evaluation, models, forecasting, serving."""
