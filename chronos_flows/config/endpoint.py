"""Parameters of the chronos-endpoint flow (``chronos-flows endpoint deploy|update|delete``): which
environment's champion, which SageMaker endpoint, how it runs, its data capture and its front door."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field, ValidationError, model_validator

from chronos_flows.config.params import resolve_store_url
from chronos_flows.config.sections import Frozen
from chronos_flows.core.errors import BadInputError

#: SageMaker serverless memory sizes (MB)
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)


class EndpointParams(Frozen):
    """One endpoint operation. Defaults: a serverless endpoint (costs $0 idle) named
    ``chronos-flows-{env}`` behind an API Gateway stage ``v1`` with an API key."""

    model_config = ConfigDict(title="Endpoint parameters")

    action: Literal["deploy", "update", "delete"] = Field("deploy", description="deploy (create or update), update "
                                                          "(the endpoint must exist), delete (everything of it)")
    env: str = Field("dev", pattern=r"^[a-z0-9][a-z0-9-]*$", title="Environment", description="Environment whose champion serves.")
    store: Optional[str] = Field(None, description="Store URL (s3://bucket/prefix: SageMaker reads the package from S3). "
                                 "Default: $CHRONOS_FLOWS_STORE.")
    name: Optional[str] = Field(None, pattern=r"^[a-z0-9](-*[a-z0-9]){0,39}$", title="Endpoint name",
                                description="SageMaker endpoint name (lower case, at most 40 characters). Default chronos-flows-{env}.")
    image_uri: Optional[str] = Field(None, description="ECR URI of the serving image (docker/Dockerfile.serve); "
                                     "needed by deploy and update")
    role_arn: Optional[str] = Field(None, description="SageMaker execution role: reads the package (and writes the "
                                    "capture) in the store's bucket, pulls the image; needed by deploy and update")
    mode: Literal["serverless", "realtime"] = Field("serverless", description="serverless ($0 idle) or realtime "
                                                    "(instances billed while the endpoint exists)")
    memory_mb: int = Field(2048, description="Serverless memory (1024-6144, a multiple of 1024)")
    max_concurrency: int = Field(5, ge=1, le=200, description="Serverless concurrent invocations")
    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$", description="Real-time instance type")
    instance_count: int = Field(1, ge=1, le=20, description="Real-time instances")
    capture: bool = Field(False, description="Capture requests and responses into {env}/capture/sagemaker/{family}/{champion run id}/, which the monitor scores (real-time only)")
    capture_percent: int = Field(100, ge=1, le=100, description="Share of requests captured")
    api: bool = Field(True, description="Deploy the API Gateway front door (stack NAME-api)")
    stage: str = Field("v1", pattern=r"^[A-Za-z0-9_]{1,64}$", description="API stage")
    rate_limit: float = Field(20, gt=0, description="Usage plan: steady requests/s per key")
    burst_limit: int = Field(40, ge=1, description="Usage plan: burst per key")
    quota_limit: int = Field(100000, ge=1, description="Usage plan: requests per key per quota period")
    quota_period: Literal["DAY", "WEEK", "MONTH"] = Field("MONTH", description="Usage plan quota period")
    manage_account_logging: bool = Field(True, description="Set API Gateway's account CloudWatch role (execution logs)")
    region: Optional[str] = Field(None, description="AWS region (default: the AWS configuration's)")
    timeout_seconds: float = Field(1800, gt=0, description="Longest wait for the endpoint or a stack to settle")
    poll_seconds: float = Field(15, gt=0, description="Seconds between status polls")

    @model_validator(mode="after")
    def _check(self):
        if self.mode == "serverless" and self.memory_mb not in SERVERLESS_MEMORY_MB:
            raise ValueError(f"memory_mb={self.memory_mb}: serverless endpoints take one of "
                             f"{', '.join(map(str, SERVERLESS_MEMORY_MB))}")
        if self.capture and self.mode == "serverless":
            raise ValueError("capture=true needs mode=realtime: SageMaker serverless endpoints do not capture data")
        if self.action != "delete" and not (self.image_uri and self.role_arn):
            raise ValueError(f"{self.action} needs image_uri (the ECR image of docker/Dockerfile.serve) and role_arn "
                             "(the SageMaker execution role)")
        return self

    @property
    def endpoint_name(self) -> str:
        return self.name or f"chronos-flows-{self.env}"

    def store_url(self) -> str:
        return resolve_store_url(self.store)


def build_endpoint_params(**fields) -> EndpointParams:
    """EndpointParams from CLI fields (None = default); BadInputError naming the field otherwise."""
    try:
        return EndpointParams(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'endpoint'}: {e['msg']}" for e in exc.errors())
        raise BadInputError(f"endpoint settings: {problems}") from None
