"""The kernel every other part stands on: error types (each names the problem and the fix), the
:class:`~chronos_flows.core.store.ObjectStore` protocol, the store layout (every key), column names,
and the atomic-write, compare-and-swap and clock helpers.

May import: nothing of chronos_flows."""
