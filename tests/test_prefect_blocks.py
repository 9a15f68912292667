"""The ChronosStore and Ec2Compute Prefect blocks (blocks/prefect_blocks.py) built on prefect-aws's
AwsCredentials: saved and loaded through a real Prefect API (the session's test harness), their
adapters used against the real local S3/EC2 API server (moto_server), with no AWS_* variables in
the environment, so only the credentials block can point them at it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from blocks.store import LocalStore, S3Store
from blocks.resolve import open_store
from chronos_flows.config.params import TrainingParams, resolve_store_url
from chronos_flows.core.errors import PreconditionFailed, StoreError
from tests.test_ec2 import network  # noqa: F401  (a VPC, subnet, security group, profile and AMI)

REPO = Path(__file__).resolve().parents[1]
AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EC2", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION")


@pytest.fixture
def no_aws_env(monkeypatch, tmp_path):
    for k in AWS_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def _credentials(aws_server):
    from prefect_aws import AwsClientParameters, AwsCredentials

    return AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=aws_server.endpoint_url),
    )


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def saved_store(prefect_api, aws_server, no_aws_env):
    """A ChronosStore block pointing at a fresh bucket of the local S3 server, saved by name."""
    from blocks.prefect_blocks import ChronosStore

    bucket = aws_server.new_bucket()
    name = _name()
    ChronosStore(bucket_name=bucket, bucket_folder="chronos", credentials=_credentials(aws_server)).save(name)
    return name, bucket


def test_when_store_block_is_saved_through_the_prefect_api_then_it_loads_by_name_and_does_compare_and_swap(
    saved_store, aws_server
):
    from blocks.prefect_blocks import ChronosStore

    name, bucket = saved_store
    blk = ChronosStore.load(name)
    assert blk.store_url == f"s3://{bucket}/chronos"
    assert blk.credentials.aws_client_parameters.endpoint_url == aws_server.endpoint_url
    assert blk.credentials.aws_secret_access_key.get_secret_value() == "testing"
    store = blk.open()
    assert isinstance(store, S3Store) and store.url == f"s3://{bucket}/chronos"
    assert store.client.meta.endpoint_url == aws_server.endpoint_url
    etag = store.put_if_absent("dev/state.json", b'{"seq": 1}')
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("dev/state.json", b'{"seq": 2}')
    etag2 = store.put_if_match("dev/state.json", b'{"seq": 2}', etag)
    with pytest.raises(PreconditionFailed):
        store.put_if_match("dev/state.json", b'{"seq": 3}', etag)  # stale ETag
    assert store.get("dev/state.json") == (b'{"seq": 2}', etag2)
    raw = aws_server.client("s3").get_object(Bucket=bucket, Key="chronos/dev/state.json")
    assert raw["Body"].read() == b'{"seq": 2}'


def test_when_store_is_a_block_url_then_open_store_and_a_flow_resolve_it_to_the_same_store(saved_store):
    from prefect import flow

    from tasks.state import open_run_store

    name, bucket = saved_store
    url = f"block:chronos-store/{name}"
    assert resolve_store_url(url) == url
    params = TrainingParams(store=url)
    first = open_store(params.store_url())
    assert first.url == f"s3://{bucket}/chronos"
    etag = first.put_if_absent("dev/k", b"v1")

    @flow(name="resolve-store-block")
    def resolve(store_url: str) -> tuple[str, tuple[bytes, str] | None]:
        store = open_run_store(store_url)
        store.put_if_match("dev/k", b"v2", etag)
        return store.url, store.get("dev/k")

    got_url, got = resolve(url)
    assert got_url == first.url
    assert got == first.get("dev/k") and got[0] == b"v2"
    assert open_store(f"block:{name}").url == first.url  # the slug may be left out


def test_when_store_block_name_is_unknown_or_of_another_type_then_store_error_names_the_fix(prefect_api):
    with pytest.raises(StoreError, match="no ChronosStore block named 'missing-x'.*block:chronos-store/NAME"):
        open_store("block:chronos-store/missing-x")
    with pytest.raises(StoreError, match="use block:chronos-store/NAME"):
        open_store("block:aws-credentials/prod")


def test_when_store_block_gives_a_local_path_then_it_opens_a_local_store(tmp_path):
    from blocks.prefect_blocks import ChronosStore

    st = ChronosStore(url=str(tmp_path / "blk")).open()
    assert isinstance(st, LocalStore) and st.root == tmp_path / "blk"
    for field in ("url", "bucket_name", "bucket_folder", "credentials"):
        assert ChronosStore.model_fields[field].description
    with pytest.raises(ValueError, match="exactly one of url"):
        ChronosStore(url="s3://b/p", bucket_name="b")
    with pytest.raises(ValueError, match="exactly one of url"):
        ChronosStore()


def test_when_ec2_block_is_saved_and_loaded_then_its_adapter_launches_through_the_configured_endpoint(
    prefect_api, aws_server, no_aws_env, network  # noqa: F811
):
    from blocks.prefect_blocks import Ec2Compute

    name = _name()
    Ec2Compute(
        credentials=_credentials(aws_server),
        instance_type="g5.xlarge",
        ami_id=network["ami"]["ImageId"],
        subnet_id=network["subnet"],
        security_group_ids=[network["sg"]],
        instance_profile=network["profile"]["InstanceProfileName"],
        max_runtime_minutes=60,
    ).save(name)
    blk = Ec2Compute.load(name)
    assert blk.credentials.aws_client_parameters.endpoint_url == aws_server.endpoint_url
    assert blk.security_group_ids == [network["sg"]] and blk.instance_type == "g5.xlarge"
    env = f"t{uuid.uuid4().hex[:8]}"
    ec2 = blk.compute(env=env, cost_center="blocks")
    assert ec2.client.meta.endpoint_url == aws_server.endpoint_url
    assert ec2.client.meta.region_name == "us-east-1"
    assert ec2.cfg.instance_type == "g5.xlarge" and ec2.cfg.max_runtime_minutes == 60
    iid = ec2.launch("run-blk1", ec2.render_user_data("run-blk1", "s3://bucket/chronos"))
    assert [(i["instance_id"], i["instance_type"]) for i in ec2.list_active("run-blk1")] == [(iid, "g5.xlarge")]
    inst = aws_server.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["InstanceType"] == "g5.xlarge"
    ec2.terminate(iid)


def test_when_block_register_runs_against_a_prefect_server_then_both_block_types_are_registered(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "block", "register", "-m", "blocks.prefect_blocks"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Chronos Store" in r.stdout and "Chronos EC2 Compute" in r.stdout

    async def read():
        async with get_client() as client:
            store = await client.read_block_type_by_slug("chronos-store")
            schemas = await client.read_block_schemas()
            return store, {s.block_type.slug: s for s in schemas if s.block_type}

    import asyncio

    store_type, schemas = asyncio.run(read())
    assert store_type.name == "Chronos Store"
    props = schemas["chronos-store"].fields["properties"]
    assert {"url", "bucket_name", "bucket_folder", "credentials"} <= props.keys()
    assert "chronos-ec2-compute" in schemas and "aws-credentials" in schemas


def test_when_a_plain_url_is_opened_by_the_cli_then_prefect_aws_is_never_imported(tmp_path):
    code = (
        "import sys\n"
        "import app.cli, flows.training\n"
        "from blocks.resolve import open_store\n"
        "from chronos_flows.config.params import resolve_store_url\n"
        f"open_store(resolve_store_url({str(tmp_path / 'st')!r}))\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('prefect_aws', 'blocks.prefect_blocks')))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
