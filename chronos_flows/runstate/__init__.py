"""THE state file ``{env}/system-state.json``: the lock (lease, fencing generation, takeover), the one
transition function every writer goes through, the run records (``training.json``,
``cleanup_status.json``, ``model_metadata.json``), idempotent cleanup, run listing and kill, local
work directories and failure records kept while the store is unreachable.

May import: core."""
