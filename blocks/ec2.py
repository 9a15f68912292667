"""The ``ec2`` compute backend: one ephemeral GPU instance per run.

Every instance is launched with ``InstanceInitiatedShutdownBehavior=terminate``, an encrypted gp3
root volume deleted on termination, IMDSv2 only, the tags ``Project``/``Environment``/
``CostCenter``/``RunId`` on the instance, its volume and its network interface, and user data
whose first command schedules a hard stop (``shutdown -h +N``): a shutdown terminates the
instance, so it cannot outlive ``max_runtime_minutes`` even if nobody cleans up. The script ends
with ``shutdown -h now`` whatever happens (``trap … EXIT``).

The boto3 client is given (``client=``, ``session=``: the ``Ec2Compute`` Prefect block in
blocks/prefect_blocks.py passes one built from prefect-aws ``AwsCredentials``) or comes from the
standard AWS configuration (``AWS_ENDPOINT_URL`` is honoured by boto3 itself); the region is
``cfg.region`` or the configuration's.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from datetime import datetime
from typing import Any, Callable

from chronos_flows.config.params import Ec2Config
from chronos_flows.core.errors import ChronosFlowsError, ConfigError
from blocks.cloudformation import PROJECT

#: States counted as "still alive" (everything but terminated).
ACTIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
USER_DATA_LIMIT = 16 * 1024  # EC2 refuses user data above 16 KiB (before base64)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")


class Ec2Error(ChronosFlowsError):
    """An EC2 call failed or an instance did not reach the expected state in time."""

    exit_code = 1


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class Ec2Compute:
    """Launch, follow and terminate the training instance of a run."""

    #: Where the user data installs the project and writes its log on the instance.
    install_dir = "/opt/chronos-flows"
    log_file = "/var/log/chronos-flows-bootstrap.log"

    def __init__(self, cfg: Ec2Config, *, env: str, cost_center: str, client: Any | None = None,
                 session: Any | None = None) -> None:
        """``client``: a boto3 EC2 client; else one from ``session`` (a ``boto3.Session``, e.g. from
        prefect-aws ``AwsCredentials``), else from the default AWS configuration."""
        self.cfg = cfg
        self.env = env
        self.cost_center = cost_center
        if client is None:
            if session is None:
                import boto3

                session = boto3.Session()
            client = session.client("ec2", region_name=cfg.region) if cfg.region else session.client("ec2")
        self.client = client

    # ------------------------------------------------------------------ tags

    def tags(self, run_id: str, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
        """The standard tags; ``extra`` adds (or overrides ``Name``), e.g. a tuning trial's study and number."""
        base = {"Project": PROJECT, "Environment": self.env, "CostCenter": self.cost_center, "RunId": run_id,
                "Name": f"{PROJECT}-{self.env}-{run_id}"[:255]}
        for k, v in (extra or {}).items():
            if k in ("Project", "Environment", "CostCenter", "RunId"):
                raise ConfigError(f"tag {k} is set by the ec2 backend; give the extra tag another name")
            base[k] = str(v)[:255]
        return [{"Key": k, "Value": v} for k, v in base.items()]

    # ------------------------------------------------------------------ launch

    def _require(self) -> None:
        c = self.cfg
        missing = [
            name
            for name, value in (
                ("ami_id", c.ami_id),
                ("subnet_id", c.subnet_id),
                ("security_group_ids", c.security_group_ids),
                ("instance_profile", c.instance_profile),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                "compute.ec2." + ", compute.ec2.".join(missing) + " must be set for the ec2 backend; "
                "deploy the stack (`chronos-flows infra deploy`) and use its outputs "
                "(SubnetId, SecurityGroupId, InstanceProfileName), and a Deep Learning AMI id"
            )

    def _root_device(self) -> str:
        from botocore.exceptions import ClientError

        try:
            images = self.client.describe_images(ImageIds=[self.cfg.ami_id])["Images"]
        except ClientError as exc:
            if _code(exc).startswith("InvalidAMIID"):
                images = []
            else:
                raise Ec2Error(f"cannot describe AMI {self.cfg.ami_id}: {exc}") from None
        if not images:
            raise ConfigError(
                f"compute.ec2.ami_id {self.cfg.ami_id} does not exist in this region; "
                "pick a Deep Learning AMI (GPU, CUDA) available in the region"
            )
        return images[0].get("RootDeviceName") or "/dev/xvda"

    def launch_params(self, run_id: str, user_data: str, *, attempt: int | str = 0,
                      extra_tags: dict[str, str] | None = None) -> dict[str, Any]:
        """The ``run_instances`` arguments for this run (validated; no API call but the AMI lookup).

        ``attempt`` (e.g. the lock generation) goes into the idempotency token: a retried call with
        the same attempt returns the same instance, a relaunch after a lost instance needs a new one.
        """
        if not _RUN_ID.match(run_id):
            raise ConfigError(f"run id {run_id!r} is not a valid id (letters, digits, '_', '.', '-')")
        self._require()
        size = len(user_data.encode())
        if size > USER_DATA_LIMIT:
            raise ConfigError(f"user data is {size} bytes; EC2 accepts at most {USER_DATA_LIMIT}: shorten extra_env")
        tags = self.tags(run_id, extra_tags)
        resource_types = ["instance", "volume", "network-interface"]
        if self.cfg.spot:
            resource_types.append("spot-instances-request")
        profile = self.cfg.instance_profile or ""
        params: dict[str, Any] = {
            "ImageId": self.cfg.ami_id,
            "InstanceType": self.cfg.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "IamInstanceProfile": {"Arn": profile} if profile.startswith("arn:") else {"Name": profile},
            # The infra stack's subnet maps a public IP on launch (no NAT: PyPI is reached through the IGW).
            "SubnetId": self.cfg.subnet_id,
            "SecurityGroupIds": list(self.cfg.security_group_ids),
            "BlockDeviceMappings": [
                {
                    "DeviceName": self._root_device(),
                    "Ebs": {
                        "VolumeSize": self.cfg.volume_size_gb,
                        "VolumeType": "gp3",
                        "Encrypted": True,
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "InstanceMetadataTags": "enabled"},
            "TagSpecifications": [{"ResourceType": rt, "Tags": tags} for rt in resource_types],
            # Idempotent launch: a retried call for the same run returns the same instance.
            "ClientToken": hashlib.sha256(f"{PROJECT}/{self.env}/{run_id}/{attempt}".encode()).hexdigest()[:64],
        }
        if self.cfg.spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return params

    def launch(self, run_id: str, user_data: str, *, attempt: int | str = 0,
               extra_tags: dict[str, str] | None = None) -> str:
        """Launch the run's instance; return its id. See :meth:`launch_params` for ``attempt``."""
        from botocore.exceptions import ClientError

        params = self.launch_params(run_id, user_data, attempt=attempt, extra_tags=extra_tags)
        try:
            resp = self.client.run_instances(**params)
        except ClientError as exc:
            code = _code(exc)
            hint = {
                "InsufficientInstanceCapacity": "try another instance type/AZ or on-demand instead of spot",
                "VcpuLimitExceeded": "request a G/VT vCPU quota increase for on-demand or spot",
                "MaxSpotInstanceCountExceeded": "request a spot quota increase or set compute.ec2.spot=false",
                "UnauthorizedOperation": "the caller needs ec2:RunInstances, ec2:CreateTags and iam:PassRole",
            }.get(code, "check the compute.ec2 settings")
            raise Ec2Error(f"cannot launch {self.cfg.instance_type} for run {run_id}: {exc}; {hint}") from None
        return resp["Instances"][0]["InstanceId"]

    # ------------------------------------------------------------------ follow

    def _instance(self, instance_id: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reservations = self.client.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise Ec2Error(f"cannot describe instance {instance_id}: {exc}") from None
        except BotoCoreError as exc:  # no credentials, endpoint unreachable
            raise Ec2Error(f"cannot describe instance {instance_id}: {exc}; check AWS credentials/region") from None
        for r in reservations:
            for inst in r["Instances"]:
                return inst
        return None

    def describe(self, instance_id: str) -> str | None:
        """The instance's state name (``pending``, ``running``, …, ``terminated``) or None if unknown."""
        inst = self._instance(instance_id)
        return inst["State"]["Name"] if inst else None

    def stop_reason(self, instance_id: str) -> str | None:
        """Why the instance stopped or is terminating (EC2's StateReason / StateTransitionReason), if known."""
        inst = self._instance(instance_id)
        if not inst:
            return None
        reason = (inst.get("StateReason") or {}).get("Message") or inst.get("StateTransitionReason")
        return str(reason) if reason else None

    def terminate(self, instance_id: str) -> str:
        """Terminate (idempotent). Return ``terminated``, ``already_terminated`` or ``not_found``."""
        from botocore.exceptions import ClientError

        state = self.describe(instance_id)
        if state is None:
            return "not_found"
        if state == "terminated":
            return "already_terminated"
        try:
            self.client.terminate_instances(InstanceIds=[instance_id])
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return "not_found"
            raise Ec2Error(f"cannot terminate {instance_id}: {exc}; terminate it in the console") from None
        return "terminated"

    def list_active(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Instances tagged for this project and environment (and run) that are not terminated."""
        filters = [
            {"Name": "tag:Project", "Values": [PROJECT]},
            {"Name": "tag:Environment", "Values": [self.env]},
            {"Name": "instance-state-name", "Values": list(ACTIVE_STATES)},
        ]
        if run_id:
            filters.append({"Name": "tag:RunId", "Values": [run_id]})
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = list(self.client.get_paginator("describe_instances").paginate(Filters=filters))
        except (ClientError, BotoCoreError) as exc:
            raise Ec2Error(
                f"cannot list {PROJECT} instances of {self.env}: {exc}; check AWS credentials/region "
                "(the caller needs ec2:DescribeInstances)"
            ) from None
        out = []
        for page in pages:
            for r in page["Reservations"]:
                for inst in r["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                    launched = inst.get("LaunchTime")
                    out.append(
                        {
                            "instance_id": inst["InstanceId"],
                            "state": inst["State"]["Name"],
                            "run_id": tags.get("RunId"),
                            "instance_type": inst.get("InstanceType"),
                            "launch_time": launched.isoformat() if isinstance(launched, datetime) else launched,
                        }
                    )
        return sorted(out, key=lambda d: (d["launch_time"] or "", d["instance_id"]))

    # ------------------------------------------------------------------ user data

    def render_user_data(
        self,
        run_id: str,
        store_url: str,
        env: str | None = None,
        max_runtime_minutes: int | None = None,
        extra_env: dict[str, str] | None = None,
        generation: int | None = None,
    ) -> str:
        """The instance's bash bootstrap for this run only: arm the hard stop, install, check the
        GPU, run ``python -m app.bootstrap`` (which trains only if the state file names
        this run and lock ``generation``), shut down."""
        env = env or self.env
        minutes = int(max_runtime_minutes or self.cfg.max_runtime_minutes)
        if not _RUN_ID.match(run_id):
            raise ConfigError(f"run id {run_id!r} is not a valid id (letters, digits, '_', '.', '-')")
        if minutes < 1:
            raise ConfigError(f"max_runtime_minutes must be at least 1, got {minutes}")
        q = shlex.quote
        exports = {
            "CHRONOS_FLOWS_RUN_ID": run_id,
            "CHRONOS_FLOWS_STORE": store_url,
            "CHRONOS_FLOWS_ENV": env,
            "PYTHONUNBUFFERED": "1",
            "DO_NOT_TRACK": "1",
        }
        for k, v in (extra_env or {}).items():
            if not _ENV_NAME.match(k):
                raise ConfigError(f"extra_env name {k!r} is not a valid environment variable name")
            exports[k] = str(v)
        step = f"python -m app.bootstrap --run-id {q(run_id)} --store {q(store_url)} --env {q(env)}"
        if generation is not None:
            step += f" --generation {int(generation)}"
        lines = [
            "#!/bin/bash",
            f"# {PROJECT} training instance: run {run_id} ({env})",
            "# Hard stop first: shutdown terminates this instance (InstanceInitiatedShutdownBehavior=terminate).",
            f'shutdown -h +{minutes} "{PROJECT}: max runtime {minutes} min reached" || true',
            # Backstop if the graceful shutdown hangs: power off 10 minutes after the limit.
            f"(sleep {(minutes + 10) * 60}; poweroff -f) >/dev/null 2>&1 &",
            "finish() {",
            "  rc=$?",
            '  echo "chronos-flows bootstrap finished with exit code $rc; shutting down"',
            "  sync",
            "  shutdown -h now",
            "}",
            "trap finish EXIT",
            "set -euo pipefail",
            f"exec > >(tee -a {q(self.log_file)}) 2>&1",
            "echo \"chronos-flows bootstrap starting at $(date -u +%FT%TZ)\"",
        ]
        lines += [f"export {k}={q(v)}" for k, v in exports.items()]
        lines += [
            # IMDSv2 (HttpTokens=required): the instance id goes into result.json.
            'IMDS_TOKEN=$(curl -sf -X PUT http://169.254.169.254/latest/api/token '
            '-H "X-aws-ec2-metadata-token-ttl-seconds: 300" || true)',
            'CHRONOS_FLOWS_INSTANCE_ID=$(curl -sf -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" '
            "http://169.254.169.254/latest/meta-data/instance-id || true)",
            "export CHRONOS_FLOWS_INSTANCE_ID",
        ]
        lines += [
            f"mkdir -p {q(self.install_dir)}",
            f"VENV={q(self.install_dir + '/venv')}",
            "python3 -m venv \"$VENV\"",
            '"$VENV/bin/python" -m pip install --quiet --upgrade pip',
            f'"$VENV/bin/python" -m pip install --quiet {q(self.cfg.bootstrap_package)}',
            'export PATH="$VENV/bin:$PATH"',
            "nvidia-smi -L  # fails (and so shuts down) when the AMI has no GPU driver",
            f"cd {q(self.install_dir)}",
            step,
        ]
        script = "\n".join(lines) + "\n"
        size = len(script.encode())
        if size > USER_DATA_LIMIT:
            raise ConfigError(f"user data is {size} bytes; EC2 accepts at most {USER_DATA_LIMIT}: shorten extra_env")
        return script


def verify_instances(ec2: Ec2Compute) -> list[str]:
    """verify-cleanup findings: one line per non-terminated instance of this project and environment."""
    return [
        f"instance {i['instance_id']} is {i['state']} (RunId {i['run_id'] or '?'}, "
        f"{i['instance_type']}, launched {i['launch_time']}); "
        f"terminate it: aws ec2 terminate-instances --instance-ids {i['instance_id']}"
        for i in ec2.list_active()
    ]


def instance_cleanup_steps(params: Any) -> Callable[[str], list[tuple[str, Callable[[], str]]]]:
    """For a run whose process is gone: terminate every instance still tagged with its RunId."""

    def steps(run_id: str) -> list[tuple[str, Callable[[], str]]]:
        if params.compute.backend != "ec2":
            return []
        ec2 = Ec2Compute(params.compute.ec2, env=params.env, cost_center=params.cost_center)
        return [
            (f"terminate-instance-{inst['instance_id']}", (lambda i=inst["instance_id"]: ec2.terminate(i)))
            for inst in ec2.list_active(run_id=run_id)
        ]

    return steps
