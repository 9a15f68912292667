"""Error types. Each one names the problem and the fix; the CLI maps them to exit codes."""

from __future__ import annotations


class ChronosFlowsError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class BadInputError(ChronosFlowsError):
    """Bad data or configuration supplied by the user (exit 2)."""

    exit_code = 2


class ConfigError(BadInputError):
    """Invalid configuration value (exit 2)."""


class StoreError(ChronosFlowsError):
    """The store cannot be reached or refused a permanent operation (exit 2)."""

    exit_code = 2


class TransientStoreError(ChronosFlowsError):
    """A store operation failed in a way worth retrying (throttling, 5xx, connection reset)."""

    exit_code = 1


class PreconditionFailed(ChronosFlowsError):
    """A conditional write/delete lost: the object changed (or exists / is missing)."""

    exit_code = 1


class LockedError(ChronosFlowsError):
    """Another run holds the state-file lock (exit 3)."""

    exit_code = 3

    def __init__(self, run_id: str, since: str, status: str | None = None, heartbeat_age: float | None = None):
        self.run_id = run_id
        self.since = since
        self.status = status
        self.heartbeat_age = heartbeat_age
        extra = f" (status {status})" if status else ""
        super().__init__(
            f"locked by run {run_id} since {since}{extra}; wait for it to finish, "
            f"or run `chronos-flows kill --run-id {run_id}`"
        )


class LostLockError(ChronosFlowsError):
    """This run no longer holds the lock (its lease expired and was taken over, or it was killed)."""

    exit_code = 1


class LeaseExpiredError(LostLockError):
    """The store stayed unreachable until this run's lease ran out: the run fenced itself off (it
    stops and writes nothing more of its work; its cleanup runs once the store is back)."""


class RunKilledError(ChronosFlowsError):
    """The run was marked ``killed`` by ``chronos-flows kill``."""

    exit_code = 1


class TrainingError(ChronosFlowsError):
    """Model training failed."""

    exit_code = 1
