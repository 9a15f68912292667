"""Shared fixtures: a real S3/EC2 API server (moto_server) on 127.0.0.1 and an isolated Prefect API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

# Offline, quiet, isolated: set before anything imports prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="chronos-flows-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("CHRONOS_FLOWS_STORE", None)

# Prefect configures logging (binding its console handler to the sys.stderr of the moment) when
# prefect.main is first imported (`from prefect import flow`): do it now, under the session's capture,
# not first inside a test whose ``capsys`` stream closes when that test ends (later in-process flow runs
# would then fail on their first log line when a subset of the test files runs).
import prefect.main  # noqa: E402,F401


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on 127.0.0.1:{port} did not start within {timeout}s")


class AwsServer:
    """A moto_server subprocess speaking the S3 and EC2 APIs on 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen(
            cmd + ["-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, service: str = "s3"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client("s3").create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def aws_server():
    server = AwsServer()
    yield server
    server.stop()


@pytest.fixture
def aws_env(aws_server, monkeypatch):
    """Point boto3 (in this process and in subprocesses) at the local AWS API server."""
    for k, v in aws_server.env().items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(k, raising=False)
    return aws_server


@pytest.fixture
def s3_store_url(aws_env):
    """A fresh bucket on the local server, as a store URL."""
    return f"s3://{aws_env.new_bucket()}/chronos"


@pytest.fixture(scope="session")
def prefect_api():
    """One isolated Prefect API (SQLite in a temp PREFECT_HOME) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


#: the shipped data sets
DATA = Path(__file__).resolve().parents[1] / "data"


def livestock(n_series: int):
    """The first ``n_series`` series (file order) of the shipped monthly aus_livestock panel."""
    import pandas as pd

    df = pd.read_csv(DATA / "aus_livestock.csv", parse_dates=["ds"])
    ids = df["unique_id"].unique()[:n_series]
    return df[df["unique_id"].isin(ids)].reset_index(drop=True)


@pytest.fixture(scope="module")
def livestock_panel():
    """Four monthly series of the shipped livestock panel."""
    return livestock(4)


def quarterly(uid: str, start: str, n: int, seed: int):
    """A quarterly series with a trend, a fixed seasonal pattern and Gaussian noise."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = 100 + 0.5 * np.arange(n) + np.tile([8.0, -3.0, -9.0, 4.0], n // 4 + 1)[:n] + rng.normal(0, 1.5, n)
    return pd.DataFrame({"unique_id": uid, "ds": pd.date_range(start, periods=n, freq="QS"), "y": y})


@pytest.fixture(scope="module")
def quarterly_panel():
    """Two quarterly series ending at different quarters."""
    import pandas as pd

    return pd.concat([quarterly("a", "2000-01-01", 40, 1), quarterly("b", "2003-07-01", 30, 2)], ignore_index=True)
