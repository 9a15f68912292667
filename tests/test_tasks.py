"""Task-level behaviour: Prefect retries a step only for transient errors."""

from __future__ import annotations

import pytest
from prefect import flow, task

from chronos_flows.core.errors import BadInputError, TransientStoreError
from tasks.common import artifact_key, is_transient, retry_transient


def test_when_errors_are_classified_then_only_transient_ones_retry():
    from botocore.exceptions import EndpointConnectionError

    assert is_transient(TransientStoreError("503 SlowDown"))
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not is_transient(BadInputError("empty file"))
    assert not is_transient(KeyError("bug"))


def test_when_artifact_keys_are_built_then_they_are_valid_prefect_keys():
    assert artifact_key("Leaderboard", "20261123-182217-580f16") == "leaderboard-20261123-182217-580f16"
    assert artifact_key("plot_best", "Run.ID_1") == "plot-best-run-id-1"


@pytest.mark.parametrize(
    ("error", "expected_calls"),
    [(TransientStoreError("throttled"), 3), (BadInputError("bad column"), 1)],
)
def test_when_a_step_fails_then_prefect_retries_it_only_if_transient(prefect_api, error, expected_calls):
    calls = []

    @task(retries=3, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise error
        return "ok"

    @flow
    def wrapper() -> str:
        return flaky()

    if expected_calls == 3:
        assert wrapper() == "ok"
    else:
        with pytest.raises(BadInputError):
            wrapper()
    assert len(calls) == expected_calls


def test_when_a_task_run_finishes_then_only_the_completed_line_is_dropped_and_failures_and_retries_still_log():
    import logging

    from tasks.common import DropRoutineTaskFinish, quiet_routine_task_logs

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, __file__, 1, msg, None, None)

    drop = DropRoutineTaskFinish()
    assert not drop.filter(record(logging.INFO, "Finished in state Completed()"))
    assert not drop.filter(record(logging.INFO, "Finished in state Cached(type=COMPLETED)"))
    for level, msg in [
        (logging.ERROR, "Finished in state Failed('Task run encountered an exception ValueError: x')"),
        (logging.INFO, "Finished in state AwaitingRetry(message='Retry 1/3', type=SCHEDULED)"),
        (logging.ERROR, "Finished in state Crashed('Execution was interrupted')"),
        (logging.INFO, "Finished in state Completed(message='cached')"),
        (logging.INFO, "checkpoint checkpoint-00000005 synced"),
    ]:
        assert drop.filter(record(level, msg)), msg
    quiet_routine_task_logs()
    quiet_routine_task_logs()  # installed once, however often a flow starts in this process
    assert sum(isinstance(f, DropRoutineTaskFinish) for f in logging.getLogger("prefect.task_runs").filters) == 1
