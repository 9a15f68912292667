"""chronos-flows: train, evaluate and ship Amazon Chronos forecasting models.

The ``chronos_flows`` package holds the pure domain code (configuration, data cleaning, windows,
metrics, forecasters, the run-state lock protocol, the CLI). It imports neither Prefect nor boto3
at module level; ``blocks/`` own I/O, ``tasks/`` wrap domain functions as Prefect tasks and
``flows/`` wire the pipeline.
"""

__version__ = "0.1.0"
