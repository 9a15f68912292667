"""The endpoint's public front door: ``infra/endpoint.yaml`` (API Gateway REST API with an API key,
a usage plan and invocation logging) deployed as its own stack ``NAME-api`` per endpoint, and the
checks that nothing of it is left after ``chronos-flows endpoint delete``.

boto3 is imported lazily."""

from __future__ import annotations

from typing import Any, Optional

from blocks import cloudformation
from chronos_flows.config.params import REPO_ROOT

TEMPLATE_PATH = REPO_ROOT / "infra" / "endpoint.yaml"


def stack_name(endpoint: str) -> str:
    return f"{endpoint}-api"


def deploy(endpoint: str, env: str, *, stage: str = "v1", rate_limit: float = 20, burst_limit: int = 40,
           quota_limit: int = 100000, quota_period: str = "MONTH", cost_center: str = "serve",
           manage_account_logging: bool = True, region: Optional[str] = None, poll_seconds: float = 10,
           timeout: float = 1800) -> dict[str, Any]:
    """Create or update the front-door stack of ``endpoint``; returns cloudformation.deploy's result."""
    params = {
        "Environment": env, "EndpointName": endpoint, "StageName": stage, "ThrottleRateLimit": rate_limit,
        "ThrottleBurstLimit": burst_limit, "QuotaLimit": quota_limit, "QuotaPeriod": quota_period,
        "CostCenter": cost_center, "ManageAccountLogging": "true" if manage_account_logging else "false",
    }
    return cloudformation.deploy(stack_name(endpoint), TEMPLATE_PATH, params, region=region,
                                 poll_seconds=poll_seconds, timeout=timeout)


def destroy(endpoint: str, *, region: Optional[str] = None, poll_seconds: float = 10,
            timeout: float = 1800) -> dict[str, Any]:
    """Delete the front-door stack (API, stage, key, usage plan, roles, log group); idempotent."""
    return cloudformation.destroy(stack_name(endpoint), region=region, poll_seconds=poll_seconds, timeout=timeout)


def _client(region: Optional[str]):
    import boto3

    return boto3.client("apigateway", region_name=region)


def api_key_value(key_id: str, region: Optional[str] = None) -> Optional[str]:
    """The value of the API key ``key_id`` (what clients send as ``x-api-key``)."""
    return _client(region).get_api_key(apiKey=key_id, includeValue=True).get("value")


def leftovers(endpoint: str, region: Optional[str] = None) -> list[str]:
    """What of ``endpoint``'s front door exists: its stack, REST API (and stages), API key, usage plan."""
    from botocore.exceptions import ClientError

    found = []
    cfn = cloudformation._cfn(None, region)
    if cloudformation._describe(cfn, stack_name(endpoint)) is not None:
        found.append(f"CloudFormation stack {stack_name(endpoint)}")
    ag = _client(region)
    try:
        for api in ag.get_rest_apis(limit=500).get("items", []):
            if api.get("name") == f"{endpoint}-api":
                stages = [s["stageName"] for s in ag.get_stages(restApiId=api["id"]).get("item", [])]
                found.append(f"REST API {api['id']} ({api['name']})" + (f" with stage(s) {', '.join(stages)}" if stages else ""))
        found += [f"API key {k['id']} ({k['name']})" for k in ag.get_api_keys(nameQuery=f"{endpoint}-key", limit=500).get("items", [])
                  if k.get("name") == f"{endpoint}-key"]
        found += [f"usage plan {p['id']} ({p['name']})" for p in ag.get_usage_plans(limit=500).get("items", [])
                  if p.get("name") == f"{endpoint}-plan"]
    except ClientError as exc:
        found.append(f"API Gateway of {endpoint} could not be listed: {exc}")
    return found
