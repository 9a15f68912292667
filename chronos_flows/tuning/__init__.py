"""Hyperparameter tuning (Optuna, no Prefect): the study, one trial in its own process, and one trial
on its own EC2 instance through the store.

May import: core, config, data, evaluation, models, runstate, training."""
