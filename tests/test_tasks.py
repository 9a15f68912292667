"""Task-level behaviour: Prefect retries a step only for transient errors."""

from __future__ import annotations

import pytest
from prefect import flow, task

from chronos_flows.errors import BadInputError, TransientStoreError
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
