"""Forecasters: one module per model family behind one :class:`~chronos_flows.models.base.Forecaster`
interface on long frames. ``local/`` fits one series at a time (Seasonal Naive, AutoETS, Theta,
Prophet), ``chronos/`` holds the Chronos families (load, train, checkpoints, forecast),
``ensemble`` combines candidates, ``families`` re-creates any family from its recorded config.

May import: core, config."""
