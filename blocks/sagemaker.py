"""SageMaker hosting of the champion (boto3, no Prefect): Model, EndpointConfig and Endpoint,
serverless or real-time, with optional data capture, blue/green updates and a clean delete.

Names: the endpoint is ``NAME``; every deployment creates a model and an endpoint config both named
``NAME-YYYYmmddHHMMSS-xxxx`` (tags Project, Environment, CostCenter, Endpoint, ChampionRunId).

* :func:`roll_out` creates the endpoint, or updates it blue/green: a new model and config, then
  ``UpdateEndpoint``; SageMaker keeps the old fleet serving until the new one is ``InService``.
  Only then are the old config and model removed. When the update is refused or fails, the new
  config and model are removed, the old ones keep serving and :class:`EndpointError` says why.
* :func:`delete` removes the endpoint, then every config and model of ``NAME`` (idempotent).
* :func:`leftovers` lists what of ``NAME`` still exists (``verify-cleanup``).

boto3/botocore are imported lazily.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from chronos_flows.core.errors import ChronosFlowsError

PROJECT = "chronos-flows"
VARIANT = "AllTraffic"
#: the container's environment: serve the package SageMaker unpacked into /opt/ml/model
MODEL_DIR = "/opt/ml/model"
MODEL_DIR_ENV = "CHRONOS_FLOWS_MODEL_DIR"
_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed")
_NOT_FOUND = ("Could not find", "does not exist", "not found")


class EndpointError(ChronosFlowsError):
    """A SageMaker operation failed; the message says why and what still serves."""

    exit_code = 1


@dataclass(frozen=True)
class Variant:
    """How the endpoint runs: ``serverless`` (memory, max concurrency; $0 idle) or ``realtime``
    (instance type and count; billed while it exists)."""

    mode: str = "serverless"
    memory_mb: int = 2048
    max_concurrency: int = 5
    instance_type: str = "ml.m5.large"
    instance_count: int = 1

    def production_variant(self, model_name: str) -> dict[str, Any]:
        v: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name}
        if self.mode == "serverless":
            v["ServerlessConfig"] = {"MemorySizeInMB": self.memory_mb, "MaxConcurrency": self.max_concurrency}
        else:
            v.update(InstanceType=self.instance_type, InitialInstanceCount=self.instance_count, InitialVariantWeight=1.0)
        return v


@dataclass(frozen=True)
class Deployment:
    """One roll-out's inputs."""

    name: str
    env: str
    image_uri: str
    role_arn: str
    model_data_url: str
    run_id: str
    variant: Variant = field(default_factory=Variant)
    capture_uri: Optional[str] = None
    capture_percent: int = 100
    cost_center: str = "serve"

    def tags(self) -> list[dict[str, str]]:
        return [{"Key": "Project", "Value": PROJECT}, {"Key": "Environment", "Value": self.env},
                {"Key": "CostCenter", "Value": self.cost_center}, {"Key": "Endpoint", "Value": self.name},
                {"Key": "ChampionRunId", "Value": self.run_id[:256]}]


def client(region: Optional[str] = None):
    import boto3

    return boto3.client("sagemaker", region_name=region)


def _not_found(exc: Exception) -> bool:
    return any(s in str(exc) for s in _NOT_FOUND)


def _why(exc: Exception) -> str:
    """A ClientError as one line (code and message; moto's HTML for an API it lacks is cut)."""
    err = getattr(exc, "response", {}).get("Error", {}) if hasattr(exc, "response") else {}
    code, msg = err.get("Code"), str(err.get("Message") or exc)
    if "<html" in msg.lower() or "<!doctype" in msg.lower():
        msg = "the API answered with an HTML error page (the operation is not available on this endpoint URL)"
    return f"{code}: {msg}" if code else msg


def describe(sm, name: str) -> Optional[dict[str, Any]]:
    """``DescribeEndpoint``, or None when there is no such endpoint."""
    from botocore.exceptions import ClientError

    try:
        return sm.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise EndpointError(f"cannot describe endpoint {name}: {_why(exc)}") from None


def config_models(sm, config_name: str) -> list[str]:
    """The models an endpoint config serves ([] when the config is gone)."""
    from botocore.exceptions import ClientError

    try:
        cfg = sm.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError as exc:
        if _not_found(exc):
            return []
        raise EndpointError(f"cannot describe endpoint config {config_name}: {_why(exc)}") from None
    return [v["ModelName"] for v in cfg.get("ProductionVariants", [])]


def status(sm, name: str) -> dict[str, Any]:
    """The endpoint's status, config, models and their champion run id (``{"exists": False}`` when absent)."""
    desc = describe(sm, name)
    if desc is None:
        return {"endpoint": name, "exists": False}
    config = desc.get("EndpointConfigName")
    models = config_models(sm, config) if config else []
    run_ids = []
    for m in models:
        try:
            arn = sm.describe_model(ModelName=m)["ModelArn"]
            tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn).get("Tags", [])}
            run_ids.append(tags.get("ChampionRunId"))
        except Exception:  # noqa: BLE001 - status is best effort beyond the endpoint itself
            run_ids.append(None)
    variants = desc.get("ProductionVariants") or []
    return {
        "endpoint": name, "exists": True, "status": desc.get("EndpointStatus"), "failure_reason": desc.get("FailureReason"),
        "endpoint_config": config, "models": models, "champion_run_ids": run_ids, "arn": desc.get("EndpointArn"),
        "serverless": any("CurrentServerlessConfig" in v for v in variants),
        "data_capture": (desc.get("DataCaptureConfig") or {}).get("EnableCapture", False),
        "capture_uri": (desc.get("DataCaptureConfig") or {}).get("DestinationS3Uri"),
    }


def wait_settled(sm, name: str, *, timeout: float = 1800, poll_seconds: float = 15,
                 sleep: Callable[[float], None] = time.sleep) -> Optional[dict[str, Any]]:
    """Poll until the endpoint is no longer Creating/Updating/RollingBack (or gone: None)."""
    deadline = time.monotonic() + timeout
    while True:
        desc = describe(sm, name)
        if desc is None or desc.get("EndpointStatus") not in _BUSY:
            return desc
        if time.monotonic() > deadline:
            raise EndpointError(f"endpoint {name} still {desc.get('EndpointStatus')} after {timeout:.0f}s; "
                                f"`chronos-flows endpoint status` follows it")
        sleep(poll_seconds)


def _new_names(name: str) -> str:
    return f"{name}-{datetime.now(timezone.utc):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:4]}"


def _create_model_and_config(sm, d: Deployment, resource: str) -> None:
    from botocore.exceptions import ClientError

    try:
        sm.create_model(
            ModelName=resource, ExecutionRoleArn=d.role_arn, Tags=d.tags(),
            PrimaryContainer={"Image": d.image_uri, "ModelDataUrl": d.model_data_url, "Mode": "SingleModel",
                              "Environment": {MODEL_DIR_ENV: MODEL_DIR}},
        )
    except ClientError as exc:
        raise EndpointError(f"cannot create model {resource}: {_why(exc)}") from None
    kwargs: dict[str, Any] = dict(EndpointConfigName=resource, Tags=d.tags(),
                                  ProductionVariants=[d.variant.production_variant(resource)])
    if d.capture_uri:
        kwargs["DataCaptureConfig"] = {
            "EnableCapture": True, "InitialSamplingPercentage": int(d.capture_percent),
            "DestinationS3Uri": d.capture_uri,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        }
    try:
        sm.create_endpoint_config(**kwargs)
    except ClientError as exc:
        _remove(sm, [], [resource])
        raise EndpointError(f"cannot create endpoint config {resource}: {_why(exc)}") from None


def _remove(sm, configs: list[str], models: list[str]) -> list[str]:
    """Delete configs then models (a missing one counts as removed); returns what was removed."""
    from botocore.exceptions import ClientError

    done = []
    for kind, names, call in (("config", configs, lambda n: sm.delete_endpoint_config(EndpointConfigName=n)),
                              ("model", models, lambda n: sm.delete_model(ModelName=n))):
        for n in names:
            try:
                call(n)
            except ClientError as exc:
                if not _not_found(exc):
                    raise EndpointError(f"cannot delete endpoint {kind} {n}: {_why(exc)}") from None
            done.append(f"{kind} {n}")
    return done


def roll_out(sm, d: Deployment, *, timeout: float = 1800, poll_seconds: float = 15,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Create the endpoint, or update it blue/green to ``d``'s package; see the module docstring.

    Returns ``{"action": "created"|"updated", "endpoint", "endpoint_config", "model",
    "previous_config", "removed": [...]}``."""
    from botocore.exceptions import ClientError

    current = describe(sm, d.name)
    if current is not None and current.get("EndpointStatus") in _BUSY:
        raise EndpointError(f"endpoint {d.name} is {current['EndpointStatus']}; wait until it settles "
                            "(`chronos-flows endpoint status`) and retry")
    if current is not None and current.get("EndpointStatus") == "Failed":
        raise EndpointError(f"endpoint {d.name} is Failed ({current.get('FailureReason')}); "
                            "`chronos-flows endpoint delete` it, then deploy again")
    resource = _new_names(d.name)
    _create_model_and_config(sm, d, resource)
    if current is None:
        try:
            sm.create_endpoint(EndpointName=d.name, EndpointConfigName=resource, Tags=d.tags())
        except ClientError as exc:
            _remove(sm, [resource], [resource])
            raise EndpointError(f"cannot create endpoint {d.name}: {_why(exc)}") from None
        desc = wait_settled(sm, d.name, timeout=timeout, poll_seconds=poll_seconds, sleep=sleep)
        if desc is None or desc.get("EndpointStatus") != "InService":
            reason = (desc or {}).get("FailureReason") or f"status {(desc or {}).get('EndpointStatus', 'gone')}"
            delete(sm, d.name, timeout=timeout, poll_seconds=poll_seconds, sleep=sleep)
            raise EndpointError(f"endpoint {d.name} did not come into service: {reason}; its endpoint, config and "
                                "model were removed (check the image, the role and the container's CloudWatch logs)")
        return {"action": "created", "endpoint": d.name, "endpoint_config": resource, "model": resource,
                "previous_config": None, "removed": []}

    old_config = current["EndpointConfigName"]
    old_models = config_models(sm, old_config)
    try:
        sm.update_endpoint(EndpointName=d.name, EndpointConfigName=resource)
        desc = wait_settled(sm, d.name, timeout=timeout, poll_seconds=poll_seconds, sleep=sleep)
        failure = None
        if desc is None:
            failure = "the endpoint disappeared during the update"
        elif desc.get("EndpointStatus") != "InService" or desc.get("EndpointConfigName") != resource:
            failure = desc.get("FailureReason") or (
                f"status {desc.get('EndpointStatus')} on config {desc.get('EndpointConfigName')}")
    except ClientError as exc:
        failure = f"UpdateEndpoint was refused: {_why(exc)}"
    if failure is not None:
        _remove(sm, [resource], [resource])
        raise EndpointError(f"update of endpoint {d.name} to champion {d.run_id} failed: {failure}. "
                            f"The endpoint still serves config {old_config} (model {', '.join(old_models) or '?'}); "
                            f"the new config and model {resource} were removed")
    removed = _remove(sm, [old_config], [m for m in old_models if m != resource])
    return {"action": "updated", "endpoint": d.name, "endpoint_config": resource, "model": resource,
            "previous_config": old_config, "removed": removed}


def _owned(name: str, candidate: str) -> bool:
    return candidate == name or (candidate.startswith(name + "-") and len(candidate) == len(name) + 20)


def _list(sm, op: str, key: str, name_key: str, name: str) -> list[str]:
    out, token = [], None
    while True:
        kwargs: dict[str, Any] = {"NameContains": name, "MaxResults": 100}
        if token:
            kwargs["NextToken"] = token
        page = getattr(sm, op)(**kwargs)
        out += [item[name_key] for item in page.get(key, []) if _owned(name, item[name_key])]
        token = page.get("NextToken")
        if not token:
            return out


def leftovers(sm, name: str) -> dict[str, list[str]]:
    """What of endpoint ``name`` exists: ``{"endpoints", "endpoint_configs", "models"}``."""
    from botocore.exceptions import ClientError

    try:
        return {
            "endpoints": [e for e in _list(sm, "list_endpoints", "Endpoints", "EndpointName", name) if e == name],
            "endpoint_configs": _list(sm, "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", name),
            "models": _list(sm, "list_models", "Models", "ModelName", name),
        }
    except ClientError as exc:
        raise EndpointError(f"cannot list SageMaker resources of {name}: {_why(exc)}") from None


def delete(sm, name: str, *, timeout: float = 1800, poll_seconds: float = 15,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Delete endpoint ``name`` and every config and model of it; idempotent. Returns what was removed."""
    from botocore.exceptions import ClientError

    removed = []
    desc = wait_settled(sm, name, timeout=timeout, poll_seconds=poll_seconds, sleep=sleep)
    if desc is not None:
        try:
            sm.delete_endpoint(EndpointName=name)
        except ClientError as exc:
            if not _not_found(exc):
                raise EndpointError(f"cannot delete endpoint {name}: {_why(exc)}") from None
        deadline = time.monotonic() + timeout
        while describe(sm, name) is not None:  # configs and models can go only once the endpoint has
            if time.monotonic() > deadline:
                raise EndpointError(f"endpoint {name} is still being deleted after {timeout:.0f}s; run delete again")
            sleep(poll_seconds)
        removed.append(f"endpoint {name}")
    left = leftovers(sm, name)
    removed += _remove(sm, left["endpoint_configs"], left["models"])
    return {"endpoint": name, "removed": removed}
