"""The ``chronos-endpoint`` flow: wiring only.

deploy/update: package the champion (model.tar.gz in the store) → create the SageMaker endpoint or
update it blue/green → the API Gateway front door stack → the record ``{env}/endpoint/{name}/endpoint.json``.
delete: the front door, the endpoint, its configs and models, the packages and the record; fails
when anything is left.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from chronos_flows.config.endpoint import EndpointParams
from chronos_flows.core.errors import ChronosFlowsError
from tasks.endpoint import delete, front_door, package, record, roll_out


@flow(name="chronos-endpoint", persist_result=False, log_prints=True)
def chronos_endpoint(params: EndpointParams) -> dict[str, Any]:
    """Deploy, update or delete the environment's SageMaker endpoint; see README "Serving on SageMaker".

    Args:
        params: Endpoint parameters (action, env, name, image, role, serverless or real-time, capture, API).
    """
    if params.action == "delete":
        out = delete(params)
        _artifact(params, [f"removed: {', '.join(out['removed']) or 'nothing'}",
                           f"left: {', '.join(out['left']) or 'nothing'}"])
        if out["left"]:
            raise ChronosFlowsError(f"endpoint {params.endpoint_name}: still exists after delete: {', '.join(out['left'])}")
        return out
    pkg = package(params)
    result = roll_out(params, pkg)
    api = front_door(params)
    rec = record(params, pkg, result, api)
    summary = {**result, "champion": rec["champion"], "package": rec["package"], "api": rec["api"], "mode": params.mode}
    _artifact(params, [f"{result['action']}: config `{result['endpoint_config']}` serves champion "
                       f"`{pkg['run_id']}` ({pkg['family']}), {params.mode}",
                       f"package: {pkg['uri']}",
                       f"invoke URL: {(rec['api'] or {}).get('InvokeUrl', 'no API (api=false)')}"])
    return summary


def _artifact(params: EndpointParams, lines: list[str]) -> None:
    create_markdown_artifact(key=f"endpoint-{params.endpoint_name}",
                             markdown=f"# Endpoint {params.endpoint_name} ({params.action})\n\n"
                             + "\n".join(f"- {ln}" for ln in lines),
                             description=f"chronos-endpoint {params.action}")
