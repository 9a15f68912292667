"""A run's training step without Prefect or boto3 (the EC2 instance runs it too): fit-and-store,
checkpoint sync, progress, following an instance through the store; the typed values the training
flow's steps pass along; the run's cost estimate.

May import: core, config, data, evaluation, models, runstate."""
