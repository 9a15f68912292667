"""The champion of an environment: the decision rule, promotion by compare-and-swap on
``champion.json`` (copy-then-swap of the model into the registry), reading it consistently.

May import: core, config, data, evaluation, models, runstate, training, monitoring."""
