"""Prefect blocks of chronos-flows, built on prefect-aws's ``AwsCredentials`` (as its ``S3Bucket`` is).

* :class:`ChronosStore` — where datasets, the run-state lock, logs and models live: an S3
  bucket/prefix or a local directory. ``open()`` returns the store adapter of blocks/store.py
  (``S3Store`` with the conditional-write core that ``S3Bucket`` lacks, or ``LocalStore``).
* :class:`Ec2Compute` — the ephemeral GPU instance of the ``ec2`` backend. ``compute()`` returns the
  EC2 adapter of blocks/ec2.py with a client from the credentials.

Register them for the UI with ``prefect block register -m blocks.prefect_blocks``. A flow uses a
saved store as ``--store block:chronos-store/NAME`` (``blocks.resolve.open_store`` loads it). This module imports
prefect and prefect-aws; the adapters (blocks/store.py, blocks/ec2.py) do not, and the EC2 instance
imports only those.
"""

from __future__ import annotations

from typing import Any, Optional

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field, model_validator

from blocks import ec2 as ec2_backend
from blocks.store import BLOCK_SCHEME, open_url
from chronos_flows.config.params import Ec2Config
from chronos_flows.core.errors import StoreError

__all__ = ["AwsCredentials", "ChronosStore", "Ec2Compute", "load_store_block"]


def _session_and_params(credentials: AwsCredentials | None) -> tuple[Any, dict[str, Any]]:
    """The boto3 session and ``session.client`` overrides (endpoint_url, verify, config, ...) of
    ``credentials``; (None, {}) for the default AWS configuration."""
    if credentials is None:
        return None, {}
    return credentials.get_boto3_session(), credentials.aws_client_parameters.get_params_override()


class ChronosStore(Block):
    """The chronos-flows object store: an S3 bucket/prefix (conditional writes keep the run-state lock
    safe) or a local directory with the same layout.

    Example:
        ```python
        from prefect_aws import AwsCredentials
        from blocks.prefect_blocks import ChronosStore

        ChronosStore(bucket_name="my-bucket", bucket_folder="chronos",
                     credentials=AwsCredentials.load("prod")).save("prod")
        store = ChronosStore.load("prod").open()
        ```
    """

    _block_type_name = "Chronos Store"
    _block_type_slug = "chronos-store"
    _description = (
        "The chronos-flows object store: s3://bucket/prefix (with conditional writes for the lock) "
        "or a local directory. Use it as --store block:chronos-store/NAME."
    )

    url: Optional[str] = Field(
        None,
        title="Store URL",
        description="s3://BUCKET/PREFIX, file:///abs/path or a local directory path. "
        "Leave empty to give the bucket below instead.",
    )
    bucket_name: Optional[str] = Field(
        None, title="Bucket name", description="Name of the S3 bucket (instead of a URL)."
    )
    bucket_folder: str = Field(
        "",
        title="Bucket folder",
        description="Prefix inside the bucket under which every key of the store lives (e.g. 'chronos').",
    )
    credentials: Optional[AwsCredentials] = Field(
        None,
        title="AWS credentials",
        description="prefect-aws AwsCredentials block used for S3 (keys or profile, region, and "
        "AWS client parameters such as endpoint_url for an S3-compatible server). Empty: the default "
        "AWS configuration (AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, instance role).",
    )

    @model_validator(mode="after")
    def _one_location(self) -> "ChronosStore":
        if bool(self.url) == bool(self.bucket_name):
            raise ValueError("give exactly one of url (s3://BUCKET/PREFIX or a directory) and bucket_name")
        if self.url and self.url.startswith(BLOCK_SCHEME):
            raise ValueError(f"url {self.url!r} names a block; give the store's own s3:// URL or path")
        return self

    @property
    def store_url(self) -> str:
        """The store's URL (``s3://bucket/folder`` when given as bucket and folder)."""
        if self.bucket_name:
            folder = self.bucket_folder.strip("/")
            return f"s3://{self.bucket_name}/{folder}" if folder else f"s3://{self.bucket_name}"
        return self.url or ""

    def open(self, check: bool = True) -> Any:
        """The store adapter (S3Store or LocalStore); with ``check`` it is verified reachable."""
        session, params = _session_and_params(self.credentials)
        return open_url(self.store_url, session=session, client_kwargs=params, check=check)


def load_store_block(name: str) -> ChronosStore:
    """``ChronosStore.load(name)`` with a :class:`StoreError` naming the fix when there is none."""
    try:
        return ChronosStore.load(name)
    except ValueError as e:
        from prefect.settings import PREFECT_API_URL

        api = PREFECT_API_URL.value() or "the ephemeral Prefect API (PREFECT_API_URL is not set)"
        raise StoreError(
            f"no ChronosStore block named {name!r} on {api}: create it (see README, AWS) or fix "
            f"--store block:chronos-store/NAME ({e})"
        ) from e


class Ec2Compute(Block):
    """The ephemeral GPU EC2 instance a run trains on (compute backend 'ec2')."""

    _block_type_name = "Chronos EC2 Compute"
    _block_type_slug = "chronos-ec2-compute"
    _description = "The ephemeral GPU EC2 instance of chronos-flows' 'ec2' compute backend."

    credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        title="AWS credentials",
        description="prefect-aws AwsCredentials block used for EC2 (keys or profile, region, and AWS "
        "client parameters such as endpoint_url). Default: the default AWS configuration.",
    )
    region: Optional[str] = Field(
        None, title="AWS region", description="AWS region of the instance (default: the credentials' region)."
    )
    instance_type: str = Field("g4dn.2xlarge", title="Instance type", description="GPU instance type.")
    ami_id: Optional[str] = Field(None, title="AMI id", description="AMI (a Deep Learning AMI with CUDA drivers).")
    subnet_id: Optional[str] = Field(None, title="Subnet id", description="Public subnet from the infra stack.")
    security_group_ids: list[str] = Field(
        default_factory=list, title="Security group ids", description="Security groups (HTTPS egress only)."
    )
    instance_profile: Optional[str] = Field(
        None, title="Instance profile", description="IAM instance profile name or ARN."
    )
    spot: bool = Field(False, title="Spot instance", description="Request a one-time spot instance.")
    volume_size_gb: int = Field(
        100, ge=8, title="Root volume (GB)", description="Root EBS volume (gp3, encrypted, deleted on termination)."
    )
    max_runtime_minutes: int = Field(
        240, ge=5, title="Maximum runtime (minutes)", description="Hard limit after which the instance shuts itself down."
    )

    def ec2_config(self, base: Ec2Config | None = None) -> Ec2Config:
        """``base`` (default: the defaults) with this block's instance settings."""
        base = base or Ec2Config()
        return base.model_copy(update={
            "region": self.region or self.credentials.region_name,
            "instance_type": self.instance_type,
            "ami_id": self.ami_id,
            "subnet_id": self.subnet_id,
            "security_group_ids": tuple(self.security_group_ids),
            "instance_profile": self.instance_profile,
            "spot": self.spot,
            "volume_size_gb": self.volume_size_gb,
            "max_runtime_minutes": self.max_runtime_minutes,
        })

    def get_client(self) -> Any:
        """A boto3 EC2 client from the credentials (endpoint and client parameters included)."""
        session, params = _session_and_params(self.credentials)
        region = self.region or self.credentials.region_name
        if region:
            params["region_name"] = region
        return session.client("ec2", **params)

    def compute(self, *, env: str = "dev", cost_center: str = "train",
                base: Ec2Config | None = None) -> ec2_backend.Ec2Compute:
        """The EC2 adapter (launch, follow, terminate) for runs of ``env``."""
        return ec2_backend.Ec2Compute(self.ec2_config(base), env=env, cost_center=cost_center,
                                      client=self.get_client())

