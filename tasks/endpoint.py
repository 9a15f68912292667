"""Tasks of the chronos-endpoint flow: thin wrappers over the champion package (domain), the
SageMaker and API Gateway adapters (blocks) and the endpoint record in the store."""

from __future__ import annotations

from typing import Any

from prefect import task

from blocks import apigateway, sagemaker
from blocks.resolve import open_store
from chronos_flows.champion.package import (
    package_champion,
    read_record,
    remove_endpoint_objects,
    write_record,
)
from chronos_flows.champion.registry import read_champion
from chronos_flows.config.endpoint import EndpointParams
from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError
from tasks.common import RETRY_DELAYS, logger, retry_transient


def _sm(params: EndpointParams):
    return sagemaker.client(params.region)


@task(name="package-champion", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def package(params: EndpointParams) -> dict[str, Any]:
    """The champion's model.tar.gz in the store (built once per promoted champion)."""
    store = open_store(params.store_url())
    if not store.url.startswith("s3://"):
        raise BadInputError(f"store {store.url}: SageMaker reads model.tar.gz from S3; deploy with --store s3://BUCKET/PREFIX")
    doc, _ = read_champion(store, params.env)
    info = package_champion(store, params.env, params.endpoint_name, doc)
    logger().info("champion %s (%s) packaged at %s%s", info["run_id"], info["family"], info["uri"],
                  " (already there)" if info["reused"] else "")
    return info


@task(name="endpoint-roll-out")
def roll_out(params: EndpointParams, pkg: dict[str, Any]) -> dict[str, Any]:
    """Create the endpoint or update it blue/green to the package; 'unchanged' when it serves it already."""
    store = open_store(params.store_url())
    sm = _sm(params)
    name = params.endpoint_name
    current = sagemaker.status(sm, name)
    if params.action == "update" and not current["exists"]:
        raise BadInputError(f"endpoint {name} does not exist; create it with `chronos-flows endpoint deploy`")
    record = read_record(store, params.env, name) or {}
    if (current["exists"] and current.get("status") == "InService" and record.get("package", {}).get("tag") == pkg["tag"]
            and record.get("endpoint_config") == current.get("endpoint_config") and record.get("mode") == params.mode):
        logger().info("endpoint %s already serves champion %s; nothing to update", name, pkg["run_id"])
        return {"action": "unchanged", "endpoint": name, "endpoint_config": current["endpoint_config"],
                "model": record.get("model"), "previous_config": None, "removed": []}
    capture_uri = (store.uri(layout.sagemaker_capture_prefix(params.env, pkg["family"], pkg["run_id"]))
                   if params.capture else None)
    deployment = sagemaker.Deployment(
        name=name, env=params.env, image_uri=params.image_uri or "", role_arn=params.role_arn or "",
        model_data_url=pkg["uri"], run_id=pkg["run_id"], capture_uri=capture_uri, capture_percent=params.capture_percent,
        variant=sagemaker.Variant(mode=params.mode, memory_mb=params.memory_mb, max_concurrency=params.max_concurrency,
                                  instance_type=params.instance_type, instance_count=params.instance_count),
    )
    result = sagemaker.roll_out(sm, deployment, timeout=params.timeout_seconds, poll_seconds=params.poll_seconds)
    logger().info("endpoint %s %s: config %s serves champion %s%s", name, result["action"], result["endpoint_config"],
                  pkg["run_id"], f"; removed {', '.join(result['removed'])}" if result["removed"] else "")
    return result


@task(name="endpoint-front-door", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def front_door(params: EndpointParams) -> dict[str, Any]:
    """The API Gateway stack NAME-api (API key, usage plan, logging); {} when params.api is off."""
    if not params.api:
        return {}
    out = apigateway.deploy(params.endpoint_name, params.env, stage=params.stage, rate_limit=params.rate_limit,
                            burst_limit=params.burst_limit, quota_limit=params.quota_limit,
                            quota_period=params.quota_period, manage_account_logging=params.manage_account_logging,
                            region=params.region, poll_seconds=params.poll_seconds, timeout=params.timeout_seconds)
    logger().info("front door %s %s: %s", out["stack"], out["action"], out["outputs"].get("InvokeUrl"))
    return out


@task(name="endpoint-record")
def record(params: EndpointParams, pkg: dict[str, Any], result: dict[str, Any], api: dict[str, Any]) -> dict[str, Any]:
    store = open_store(params.store_url())
    return write_record(store, params.env, params.endpoint_name, {
        "mode": params.mode, "endpoint_config": result["endpoint_config"], "model": result["model"],
        "last_action": result["action"], "champion": {k: pkg[k] for k in ("run_id", "family", "write_id")},
        "package": {k: pkg[k] for k in ("tag", "key", "uri")}, "capture": params.capture,
        "variant": ({"memory_mb": params.memory_mb, "max_concurrency": params.max_concurrency} if params.mode == "serverless"
                    else {"instance_type": params.instance_type, "instance_count": params.instance_count}),
        "api": {"stack": api.get("stack"), **(api.get("outputs") or {})} if api else None,
    })


@task(name="endpoint-delete")
def delete(params: EndpointParams) -> dict[str, Any]:
    """Front door, endpoint, configs, models, then the packages and the record; what is left (should be nothing)."""
    name = params.endpoint_name
    sm = _sm(params)
    api = apigateway.destroy(name, region=params.region, poll_seconds=params.poll_seconds, timeout=params.timeout_seconds)
    removed = sagemaker.delete(sm, name, timeout=params.timeout_seconds, poll_seconds=params.poll_seconds)["removed"]
    if api["status"] == "deleted":
        removed.insert(0, f"stack {api['stack']}")
    store = open_store(params.store_url(), check=False)
    objects = remove_endpoint_objects(store, params.env, name)
    left = leftovers(params)
    logger().info("endpoint %s deleted: %s; %d store object(s) removed; left: %s", name, ", ".join(removed) or "nothing",
                  len(objects), ", ".join(left) or "nothing")
    return {"endpoint": name, "removed": removed, "store_objects_removed": len(objects), "left": left}


def leftovers(params: EndpointParams) -> list[str]:
    """Every resource of the endpoint that still exists (SageMaker, API Gateway, CloudFormation)."""
    name = params.endpoint_name
    left = sagemaker.leftovers(_sm(params), name)
    found = [f"SageMaker {kind[:-1].replace('_', ' ')} {n}" for kind, names in left.items() for n in names]
    return found + apigateway.leftovers(name, params.region)
