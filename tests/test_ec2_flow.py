"""The ec2 compute backend end to end: the flow launches an instance on the local EC2 API, a local
process plays the instance by running the user data's bootstrap entry point against the local S3
API, the parent follows the state file and result.json, evaluates the model the instance stored,
and terminates the instance in cleanup."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from blocks.ec2 import Ec2Compute, verify_instances
from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.config.params import build_params
from tests.test_flow_e2e import SMALL


class InstancePlayer(threading.Thread):
    """Watches the local EC2 API for this project's instances and 'boots' each one in its own thread:
    runs the bootstrap command from its user data (with the exports it sets) as a subprocess — the
    instance's life — then terminates it as the user data's `shutdown -h now` would. Like a real
    instance, the process dies when the instance is terminated from outside (a pruned trial, cleanup).

    ``reclaim(iid, env)`` is polled while an instance runs; when it returns True the player plays a
    spot reclaim: kills the process and terminates the instance (no result is written)."""

    def __init__(self, server, *, fail_with: str | None = None, reclaim=None) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.booted: dict[str, dict] = {}
        self.fail_with = fail_with
        self.reclaim = reclaim
        self._seen: set[str] = set()
        self._threads: list[threading.Thread] = []

    def run(self) -> None:
        ec2 = self.server.client("ec2")
        while not self.stop.is_set():
            resp = ec2.describe_instances(
                Filters=[{"Name": "tag:Project", "Values": ["chronos-flows"]}, {"Name": "instance-state-name", "Values": ["pending", "running"]}]
            )
            for res in resp["Reservations"]:
                for inst in res["Instances"]:
                    iid = inst["InstanceId"]
                    if iid not in self._seen:
                        self._seen.add(iid)
                        t = threading.Thread(target=self.boot, args=(iid,), daemon=True)
                        t.start()
                        self._threads.append(t)
            time.sleep(0.3)
        for t in self._threads:
            t.join(timeout=300)

    def _command(self, ec2, iid: str) -> tuple[str, list[str], dict]:
        ud = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
        script = base64.b64decode(ud).decode()
        env = {**os.environ, **self.server.env(), "CHRONOS_FLOWS_INSTANCE_ID": iid, "HF_HUB_OFFLINE": "1"}
        for line in script.splitlines():
            if line.startswith("export ") and "=" in line and "$" not in line.split("=", 1)[0]:
                k, v = line[len("export "):].split("=", 1)
                env[k] = shlex.split(v)[0] if v else ""
        step = next(line for line in script.splitlines() if line.startswith("python -m app.bootstrap"))
        cmd = [sys.executable] + shlex.split(step)[1:] + ["--allow-cpu"]
        if self.fail_with:
            env["CHRONOS_FLOWS_TRAIN_ENTRYPOINT"] = self.fail_with
        return script, cmd, env

    def boot(self, iid: str) -> None:
        ec2 = self.server.client("ec2")
        script, cmd, env = self._command(ec2, iid)
        reclaimed = terminated = False
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                if self.reclaim is not None and self.reclaim(iid, env):
                    reclaimed = True
                    break
                state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
                if state in ("shutting-down", "terminated"):
                    terminated = True
                    break
                time.sleep(0.2)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            err.seek(0)
            stderr = err.read()[-3000:]
        self.booted[iid] = {"script": script, "cmd": cmd, "env": env, "rc": proc.returncode, "stderr": stderr,
                            "reclaimed": reclaimed, "terminated_from_outside": terminated}
        ec2.terminate_instances(InstanceIds=[iid])


@pytest.fixture
def network(aws_env):
    ec2 = aws_env.client("ec2")
    iam = aws_env.client("iam")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    vpc = ec2.create_vpc(CidrBlock="10.88.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.88.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"sg-{uuid.uuid4().hex[:6]}", Description="t", VpcId=vpc)["GroupId"]
    name = f"profile-{uuid.uuid4().hex[:6]}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return [
        "compute.backend=ec2",
        f"compute.ec2.ami_id={ami}",
        f"compute.ec2.subnet_id={subnet}",
        f"compute.ec2.security_group_ids=[{sg}]",
        f"compute.ec2.instance_profile={name}",
        "compute.ec2.region=us-east-1",
        "compute.ec2.max_runtime_minutes=20",
    ]


def _run(params, player):
    from flows.training import chronos_training

    player.start()
    try:
        return chronos_training(params=params)
    finally:
        player.stop.set()
        player.join(timeout=30)


def test_when_training_runs_on_ec2_then_the_instance_trains_and_is_terminated_in_cleanup(prefect_api, aws_env, network, s3_store_url):
    params = build_params(overrides=SMALL + network, store=s3_store_url, run_id="ec2-run-1", env="prod")
    player = InstancePlayer(aws_env)
    summary = _run(params, player)

    assert summary["status"] == "succeeded", summary
    assert len(player.booted) == 1, player.booted
    (iid, boot), = player.booted.items()
    assert boot["rc"] == 0, boot["stderr"]
    assert "shutdown -h +20" in boot["script"] and "--run-id ec2-run-1" in boot["script"]

    ec2 = aws_env.client("ec2")
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "terminated"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["RunId"] == "ec2-run-1" and tags["Environment"] == "prod"

    store = open_store(s3_store_url)
    result = json.loads(store.get("prod/ec2-run-1/instance/result.json")[0])
    assert result["outcome"] == "ok" and result["instance_id"] == iid
    assert store.exists(f"{layout.models_prefix('prod', 'ec2-run-1', 'chronos')}/config.json")
    cleanup = runlog.load_cleanup_status(store, "prod", "ec2-run-1")
    assert cleanup.complete and cleanup.steps[f"terminate-instance-{iid}"].outcome == "done"
    log = runlog.load_training_log(store, "prod", "ec2-run-1")
    assert log.status == "succeeded" and log.cost_estimate["instance_type"] == "g4dn.2xlarge"
    assert log.cost_estimate["total_usd"] > 0
    assert summary["leaderboard"] and {r["model"] for r in summary["leaderboard"]} == {"chronos", "autoets", "theta", "prophet", "seasonal_naive", "lightgbm", "ensemble"}
    assert verify_instances(Ec2Compute(params.compute.ec2, env="prod", cost_center="train")) == []


def test_when_training_fails_on_the_instance_then_the_run_fails_and_nothing_is_left(prefect_api, aws_env, network, s3_store_url):
    params = build_params(overrides=SMALL + network, store=s3_store_url, run_id="ec2-run-2", env="stage")
    player = InstancePlayer(aws_env, fail_with="tests.test_ec2_flow:exploding_train")
    with pytest.raises(Exception, match="exploded on purpose"):
        _run(params, player)

    store = open_store(s3_store_url)
    assert store.get(layout.state_key("stage")) is None
    log = runlog.load_training_log(store, "stage", "ec2-run-2")
    assert log.status == "failed" and "exploded on purpose" in log.error
    assert [t.status for t in log.transitions][-2:] == ["failed", "cleanup"]
    assert runlog.load_cleanup_status(store, "stage", "ec2-run-2").complete
    assert verify_instances(Ec2Compute(params.compute.ec2, env="stage", cost_center="train")) == []


def exploding_train(run_id: str, store_url: str, env: str) -> dict:
    raise RuntimeError("exploded on purpose")
