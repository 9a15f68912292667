"""The persistent AWS resources as code: validate, deploy and destroy ``infra/template.yaml``.

The template (CloudFormation YAML) holds the VPC, the public subnet, the internet gateway, the
S3 gateway endpoint, the store bucket (SSE-S3, public access blocked, lifecycle rules), the
instance role/profile and the HTTPS-egress-only security group. ``chronos-flows infra
deploy|validate|destroy`` wrap the functions here.

boto3 and cfn-lint are imported lazily (this package stays importable without them).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from chronos_flows.config.params import REPO_ROOT
from chronos_flows.core.errors import ChronosFlowsError, ConfigError

#: The ``Project`` tag on every AWS resource of this project (template, instances, volumes).
PROJECT = "chronos-flows"
TEMPLATE_PATH = REPO_ROOT / "infra" / "template.yaml"
#: Object tag that puts a key under the model-artifact lifecycle rule (IA at 30 days, deleted at 60).
LIFECYCLE_TAG_KEY = "lifecycle"
LIFECYCLE_MODEL_ARTIFACT = "model-artifact"
#: S3 refuses transitions to these classes before an object is 30 days old.
_IA_MIN_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30}
_BUSY = re.compile(r"_IN_PROGRESS$")


class InfraError(ChronosFlowsError):
    """A stack operation failed; the message carries CloudFormation's reasons."""

    exit_code = 1


# --------------------------------------------------------------------------- store tagging


def lifecycle_tagging(key: str) -> str | None:
    """The S3 ``Tagging`` value for ``key`` (``{env}/{run_id}/models/…`` and ``checkpoints/…``), else None.

    Prefix lifecycle filters cannot wildcard the run id, so model artifacts are matched by this
    object tag; a store writing them should pass it as ``put_object(..., Tagging=...)``.
    """
    parts = key.split("/")
    if len(parts) >= 4 and parts[2] in ("models", "checkpoints"):
        return f"{LIFECYCLE_TAG_KEY}={LIFECYCLE_MODEL_ARTIFACT}"
    return None


# --------------------------------------------------------------------------- template loading


class _CfnLoader(yaml.SafeLoader):
    """YAML loader understanding CloudFormation's short-form tags (``!Ref``, ``!Sub``, ``!GetAtt`` …)."""


def _short_form(loader: yaml.Loader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _short_form)


def load_template(path: str | Path = TEMPLATE_PATH) -> dict[str, Any]:
    """Parse a CloudFormation YAML (or JSON) template into plain long-form dicts."""
    p = Path(path)
    try:
        data = yaml.load(p.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"template {p} does not exist; pass the path of infra/template.yaml") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"template {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "Resources" not in data:
        raise ConfigError(f"template {p} has no Resources section; is it a CloudFormation template?")
    return data


# --------------------------------------------------------------------------- validation


def validate_template(path: str | Path = TEMPLATE_PATH) -> list[str]:
    """Lint ``path`` with cfn-lint plus this project's own checks. Return findings; empty = valid.

    Each finding reads ``file:line:col: RULE message``. Raises ConfigError if cfn-lint is missing.
    """
    p = Path(path)
    try:
        from cfnlint.api import lint_file
    except ImportError:
        raise ConfigError(
            "cfn-lint is not installed; install it with `pip install cfn-lint` (it is in the [test] extra)"
        ) from None
    findings = []
    for m in lint_file(p):
        findings.append(f"{m.filename}:{m.linenumber}:{m.columnnumber}: {m.rule.id} {m.message}")
    if not findings:  # our checks need a parseable template
        findings.extend(_project_checks(p))
    return findings


def _project_checks(path: Path) -> list[str]:
    """Checks cfn-lint does not make: IA transitions S3 would refuse, the Project tag value."""
    tpl = load_template(path)
    out: list[str] = []
    for name, res in tpl.get("Resources", {}).items():
        props = res.get("Properties", {}) or {}
        if res.get("Type") == "AWS::S3::Bucket":
            for rule in (props.get("LifecycleConfiguration") or {}).get("Rules", []):
                for tr in rule.get("Transitions", []) or []:
                    minimum = _IA_MIN_DAYS.get(tr.get("StorageClass"))
                    days = tr.get("TransitionInDays")
                    if minimum and isinstance(days, int) and days < minimum:
                        out.append(
                            f"{path}: {name} lifecycle rule {rule.get('Id')}: {tr['StorageClass']} transition at "
                            f"{days} days; S3 requires at least {minimum}"
                        )
        for tag in props.get("Tags", []) if isinstance(props.get("Tags"), list) else []:
            if isinstance(tag, dict) and tag.get("Key") == "Project" and tag.get("Value") != PROJECT:
                out.append(f"{path}: {name} has Project tag {tag.get('Value')!r}; expected {PROJECT!r}")
    return out


# --------------------------------------------------------------------------- intrinsic resolution


def _template_params(tpl: dict[str, Any], params: dict[str, Any]) -> dict[str, str]:
    declared = tpl.get("Parameters", {}) or {}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(
            f"unknown template parameter(s) {', '.join(unknown)}; the template declares: {', '.join(sorted(declared))}"
        )
    out = {k: str(v.get("Default", "")) for k, v in declared.items() if "Default" in v}
    out.update({k: str(v) for k, v in params.items()})
    missing = sorted(set(declared) - set(out))
    if missing:
        raise ConfigError(f"template parameter(s) {', '.join(missing)} have no default; pass them with --param KEY=VALUE")
    return out


# --------------------------------------------------------------------------- stack operations


def _cfn(client: Any | None, region: str | None = None) -> Any:
    if client is not None:
        return client
    import boto3

    return boto3.client("cloudformation", region_name=region)


def _describe(cfn: Any, stack_name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise InfraError(f"cannot describe stack {stack_name}: {exc}") from None
    live = [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
    return live[0] if live else None


def _failure_reasons(cfn: Any, stack_name: str, limit: int = 8) -> str:
    from botocore.exceptions import ClientError

    try:
        events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
    except ClientError as exc:  # the stack may be gone already; the reasons are best effort
        return f"(no stack events: {exc})"
    reasons = [
        f"{e['LogicalResourceId']} {e['ResourceStatus']}: {e.get('ResourceStatusReason', '')}"
        for e in events
        if e.get("ResourceStatus", "").endswith("FAILED")
    ]
    return "; ".join(reasons[:limit]) or "no resource failures recorded"


def _wait(cfn: Any, waiter: str, stack_name: str, timeout: float, poll: float) -> None:
    from botocore.exceptions import WaiterError

    try:
        cfn.get_waiter(waiter).wait(
            StackName=stack_name,
            WaiterConfig={"Delay": max(1, int(poll)), "MaxAttempts": max(1, math.ceil(timeout / max(1, poll)))},
        )
    except WaiterError as exc:
        raise InfraError(
            f"stack {stack_name}: {waiter} did not succeed ({exc}); reasons: {_failure_reasons(cfn, stack_name)}"
        ) from None


def deploy(
    stack_name: str,
    template_path: str | Path = TEMPLATE_PATH,
    params: dict[str, Any] | None = None,
    client: Any | None = None,
    *,
    region: str | None = None,
    timeout: float = 1800,
    poll_seconds: float = 10,
) -> dict[str, Any]:
    """Create or update the stack and wait for it (boto3's CloudFormation waiters).

    Returns ``{"stack", "action" ("created"|"updated"|"unchanged"), "status", "outputs": {...}}``.
    Raises InfraError with CloudFormation's reasons on failure.
    """
    path = Path(template_path)
    tpl = load_template(path)
    values = _template_params(tpl, params or {})
    body = path.read_text()
    cfn = _cfn(client, region)
    env = values.get("Environment", "dev")
    tags = [
        {"Key": "Project", "Value": PROJECT},
        {"Key": "Environment", "Value": env},
        {"Key": "CostCenter", "Value": values.get("CostCenter", "train")},
    ]
    cfn_params = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(values.items())]
    existing = _settled_stack(cfn, stack_name, timeout, poll_seconds)
    common = dict(
        StackName=stack_name,
        TemplateBody=body,
        Parameters=cfn_params,
        Capabilities=["CAPABILITY_IAM"],
        Tags=tags,
    )
    action = _create_or_update(cfn, stack_name, common, existing is None, timeout, poll_seconds)
    stack = _describe(cfn, stack_name) or {}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return {
        "stack": stack_name,
        "action": action,
        "status": stack.get("StackStatus"),
        "outputs": outputs,
    }


def _settled_stack(cfn: Any, stack_name: str, timeout: float, poll_seconds: float) -> dict[str, Any] | None:
    """The existing stack to update, or None to create one: InfraError while it is busy; a stack
    that never got created (it cannot be updated) is deleted first."""
    existing = _describe(cfn, stack_name)
    if existing and _BUSY.search(existing["StackStatus"]):
        raise InfraError(f"stack {stack_name} is busy ({existing['StackStatus']}); wait for it to settle and retry")
    if existing and existing["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED"):
        # A stack that never got created cannot be updated: remove the husk and create anew.
        cfn.delete_stack(StackName=stack_name)
        _wait(cfn, "stack_delete_complete", stack_name, timeout, poll_seconds)
        existing = None
    return existing


def _create_or_update(cfn: Any, stack_name: str, common: dict[str, Any], create: bool, timeout: float,
                      poll_seconds: float) -> str:
    """Create (``create``) or update the stack with ``common`` and wait for it; returns the action
    ``"created"``, ``"updated"`` or ``"unchanged"`` (nothing to update)."""
    from botocore.exceptions import ClientError

    if create:
        try:
            cfn.create_stack(**common)
        except ClientError as exc:
            raise InfraError(f"cannot create stack {stack_name}: {exc}") from None
        _wait(cfn, "stack_create_complete", stack_name, timeout, poll_seconds)
        return "created"
    try:
        cfn.update_stack(**common)
        _wait(cfn, "stack_update_complete", stack_name, timeout, poll_seconds)
        return "updated"
    except ClientError as exc:
        if "No updates are to be performed" not in str(exc):
            raise InfraError(f"cannot update stack {stack_name}: {exc}") from None
        return "unchanged"


def stack_outputs(stack_name: str, client: Any | None = None, *, region: str | None = None) -> dict[str, str]:
    """The deployed stack's outputs; InfraError if it does not exist."""
    stack = _describe(_cfn(client, region), stack_name)
    if stack is None:
        raise InfraError(f"stack {stack_name} does not exist; run `chronos-flows infra deploy` first")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def config_overrides(outputs: dict[str, str]) -> list[str]:
    """``--set`` overrides that point a run at a deployed stack (store, subnet, SG, profile)."""
    need = ("BucketName", "SubnetId", "SecurityGroupId", "InstanceProfileName")
    missing = [k for k in need if k not in outputs]
    if missing:
        raise InfraError(f"stack outputs lack {', '.join(missing)}; is this the chronos-flows template?")
    return [
        f"store=s3://{outputs['BucketName']}",
        f"compute.ec2.subnet_id={outputs['SubnetId']}",
        f"compute.ec2.security_group_ids={json.dumps([outputs['SecurityGroupId']])}",
        f"compute.ec2.instance_profile={outputs['InstanceProfileName']}",
    ]


def destroy(
    stack_name: str,
    client: Any | None = None,
    *,
    region: str | None = None,
    timeout: float = 1800,
    poll_seconds: float = 10,
) -> dict[str, Any]:
    """Delete the stack (idempotent). The bucket is retained (DeletionPolicy Retain) and reported.

    Returns ``{"stack", "status": "deleted"|"not_found", "retained_bucket": name|None}``.
    """
    cfn = _cfn(client, region)
    stack = _describe(cfn, stack_name)
    if stack is None:
        return {"stack": stack_name, "status": "not_found", "retained_bucket": None}
    if _BUSY.search(stack["StackStatus"]) and stack["StackStatus"] != "DELETE_IN_PROGRESS":
        raise InfraError(f"stack {stack_name} is busy ({stack['StackStatus']}); wait for it to settle and retry")
    bucket = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}.get("BucketName")
    cfn.delete_stack(StackName=stack_name)
    _wait(cfn, "stack_delete_complete", stack_name, timeout, poll_seconds)
    return {"stack": stack_name, "status": "deleted", "retained_bucket": bucket}


def lint_cli(argv: list[str] | None = None) -> int:
    """``python -m blocks.cloudformation [template]``: print findings, exit 1 if any."""
    args = sys.argv[1:] if argv is None else argv
    findings = validate_template(args[0] if args else TEMPLATE_PATH)
    for f in findings:
        print(f)
    return 1 if findings else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(lint_cli())
