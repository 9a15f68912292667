"""The ec2 compute backend against a real local EC2 API (moto_server), the user-data script run by
bash with stand-in system commands, and the instance-side bootstrap against a real S3 store."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from blocks.ec2 import Ec2Compute, Ec2Error, verify_instances
from app.bootstrap import EXIT_ENV, EXIT_ERROR, EXIT_OK, EXIT_REFUSED, main, result_key, run_instance_step
from chronos_flows.config.params import Ec2Config
from chronos_flows.core.errors import ConfigError, TrainingError
from blocks.cloudformation import PROJECT


@pytest.fixture(scope="module")
def network(aws_server):
    """A VPC, subnet, security group, instance profile and an AMI on the local EC2/IAM API."""
    ec2 = aws_server.client("ec2")
    iam = aws_server.client("iam")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]  # first EC2 call: ~2.4 s
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"sg-{uuid.uuid4().hex[:6]}", Description="test", VpcId=vpc)["GroupId"]
    name = f"profile-{uuid.uuid4().hex[:6]}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return {"ami": ami, "vpc": vpc, "subnet": subnet, "sg": sg, "profile": profile}


def _cfg(network, **over) -> Ec2Config:
    base = dict(
        ami_id=network["ami"]["ImageId"],
        subnet_id=network["subnet"],
        security_group_ids=(network["sg"],),
        instance_profile=network["profile"]["InstanceProfileName"],
        volume_size_gb=120,
        max_runtime_minutes=90,
    )
    base.update(over)
    return Ec2Config(**base)


def _env() -> str:
    return f"t{uuid.uuid4().hex[:8]}"  # a fresh environment per test isolates list_active


def _instance(aws_server, iid):
    return aws_server.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


def test_when_launched_then_instance_and_volume_carry_tags_and_launch_settings(aws_env, network):
    env = _env()
    ec2 = Ec2Compute(_cfg(network), env=env, cost_center="train")  # client from the standard AWS config
    iid = ec2.launch("run-a1", ec2.render_user_data("run-a1", "s3://bucket/chronos"))
    inst = _instance(aws_env, iid)
    want = {"Project": PROJECT, "Environment": env, "CostCenter": "train", "RunId": "run-a1"}
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert want.items() <= tags.items()
    assert inst["SubnetId"] == network["subnet"] and inst["VpcId"] == network["vpc"]
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [network["sg"]]
    assert inst["IamInstanceProfile"]["Arn"] == network["profile"]["Arn"]
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["InstanceType"] == "g4dn.2xlarge" and inst.get("InstanceLifecycle") != "spot"
    client = aws_env.client("ec2")
    attr = client.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    vols = client.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
    assert len(vols) == 1
    vol = vols[0]
    assert vol["Encrypted"] is True and vol["VolumeType"] == "gp3" and vol["Size"] == 120
    assert want.items() <= {t["Key"]: t["Value"] for t in vol["Tags"]}.items()
    assert inst["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"] is True
    assert inst["BlockDeviceMappings"][0]["DeviceName"] == network["ami"]["RootDeviceName"]
    ec2.terminate(iid)


def test_when_launched_then_decoded_user_data_starts_with_hard_stop_and_runs_this_run_only(aws_server, network):
    ec2 = Ec2Compute(_cfg(network), env=_env(), cost_center="train", client=aws_server.client("ec2"))
    iid = ec2.launch("run-ud7", ec2.render_user_data("run-ud7", "s3://bucket/chronos", extra_env={"PREFECT_API_URL": "https://p/api"}))
    raw = aws_server.client("ec2").describe_instance_attribute(InstanceId=iid, Attribute="userData")
    script = base64.b64decode(raw["UserData"]["Value"]).decode()
    commands = [ln for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert script.startswith("#!/bin/bash\n")
    assert commands[0].startswith("shutdown -h +90 ")  # the hard stop is the first command
    assert "trap finish EXIT" in script and "shutdown -h now" in script
    assert "--run-id run-ud7" in script and "export CHRONOS_FLOWS_RUN_ID=run-ud7" in script
    assert "nvidia-smi" in script and "pip install --quiet chronos-flows" in script
    assert "export PREFECT_API_URL=https://p/api" in script
    ec2.terminate(iid)


def test_when_user_data_gets_bad_names_or_hostile_values_then_it_refuses_or_quotes_them(aws_server, network):
    ec2 = Ec2Compute(_cfg(network), env="dev", cost_center="train", client=aws_server.client("ec2"))
    script = ec2.render_user_data("r1", "s3://b", generation=7)
    assert "python -m app.bootstrap --run-id r1 --store s3://b --env dev --generation 7" in script
    with pytest.raises(ConfigError, match="not a valid environment variable"):
        ec2.render_user_data("r1", "s3://b", extra_env={"BAD-NAME": "x"})
    with pytest.raises(ConfigError, match="not a valid id"):
        ec2.render_user_data("r1; rm -rf /", "s3://b")
    # values are shell-quoted: a hostile store URL stays one argument
    script = ec2.render_user_data("r1", "s3://b/$(reboot)")
    assert "--store 's3://b/$(reboot)'" in script


def _fake_bin(tmp_path: Path, nvidia_rc: int, train_rc: int) -> tuple[Path, Path]:
    """Stand-ins for the system commands the user data calls; each logs its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    fakes = {
        "shutdown": "exit 0",
        "poweroff": "exit 0",
        "sleep": "exit 0",
        "curl": "exit 7",
        "nvidia-smi": f'echo "GPU 0: Tesla T4 (UUID: GPU-x)"; exit {nvidia_rc}',
        # python3 -m venv DIR → a venv whose python logs and exits with the training exit code
        "python3": (
            'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin"; '
            'printf \'#!/bin/bash\\necho "python $*" >> "%s"\\n'
            'if [ "$2" = "app.bootstrap" ]; then exit %d; fi\\nexit 0\\n\' > "$3/bin/python"; '
            'chmod +x "$3/bin/python"; fi'
        ) % (calls, train_rc),
    }
    for name, body in fakes.items():
        f = bindir / name
        f.write_text(f'#!/bin/bash\necho "{name} $*" >> "{calls}"\n{body}\n')
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    return bindir, calls


@pytest.mark.parametrize(
    "nvidia_rc,train_rc,trains,rc",
    [(0, 0, True, 0), (0, 5, True, 5), (9, 0, False, 9)],
    ids=["succeeded", "training-fails", "no-gpu"],
)
def test_when_user_data_runs_then_hard_stop_comes_first_and_instance_always_shuts_down(
    tmp_path, network, nvidia_rc, train_rc, trains, rc
):
    bindir, calls = _fake_bin(tmp_path, nvidia_rc, train_rc)
    ec2 = Ec2Compute(_cfg(network, max_runtime_minutes=45), env="dev", cost_center="train", client=object())
    ec2.install_dir = str(tmp_path / "opt")
    ec2.log_file = str(tmp_path / "bootstrap.log")
    script = tmp_path / "user-data.sh"
    script.write_text(ec2.render_user_data("run-x", "s3://bucket/p"))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    proc = subprocess.run(
        ["bash", str(script)], env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == rc
    log = calls.read_text().splitlines()
    assert log[0].startswith("shutdown -h +45 ")
    assert log[-1] == "shutdown -h now"  # the EXIT trap, whatever happened
    ran = [ln for ln in log if "app.bootstrap" in ln]
    assert bool(ran) is trains
    if trains:
        assert ran[0] == "python -m app.bootstrap --run-id run-x --store s3://bucket/p --env dev"
    assert "chronos-flows bootstrap finished with exit code" in Path(ec2.log_file).read_text()


def test_when_spot_then_instance_is_a_one_time_spot_instance(aws_server, network):
    ec2 = Ec2Compute(_cfg(network, spot=True), env=_env(), cost_center="train", client=aws_server.client("ec2"))
    params = ec2.launch_params("run-s", "#!/bin/bash\n")
    assert params["InstanceMarketOptions"]["SpotOptions"]["SpotInstanceType"] == "one-time"
    iid = ec2.launch("run-s", "#!/bin/bash\n")
    assert _instance(aws_server, iid)["InstanceLifecycle"] == "spot"
    assert ec2.terminate(iid) == "terminated"


def test_when_terminated_twice_or_unknown_then_terminate_is_idempotent(aws_server, network):
    ec2 = Ec2Compute(_cfg(network), env=_env(), cost_center="train", client=aws_server.client("ec2"))
    iid = ec2.launch("run-t", "#!/bin/bash\n")
    waiter = {"Delay": 1, "MaxAttempts": 30}  # boto3's own waiters
    ec2.client.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=waiter)
    assert ec2.describe(iid) == "running"
    assert ec2.terminate(iid) == "terminated"
    ec2.client.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=waiter)
    assert ec2.describe(iid) == "terminated"
    assert ec2.terminate(iid) == "already_terminated"
    assert ec2.terminate("i-0123456789abcdef0") == "not_found"
    assert ec2.describe("i-0123456789abcdef0") is None


def test_when_an_instance_is_left_over_then_list_active_and_verify_find_it_until_terminated(aws_server, network):
    env = _env()
    ec2 = Ec2Compute(_cfg(network), env=env, cost_center="train", client=aws_server.client("ec2"))
    other_env = Ec2Compute(_cfg(network), env=_env(), cost_center="train", client=aws_server.client("ec2"))
    leftover = ec2.launch("run-old", "#!/bin/bash\n")
    current = ec2.launch("run-new", "#!/bin/bash\n")
    foreign = other_env.launch("run-old", "#!/bin/bash\n")
    assert sorted(i["instance_id"] for i in ec2.list_active()) == sorted([leftover, current])
    assert [i["instance_id"] for i in ec2.list_active(run_id="run-old")] == [leftover]
    findings = verify_instances(ec2)
    line = next(f for f in findings if leftover in f)
    assert len(findings) == 2 and "RunId run-old" in line and "running" in line and "launched 20" in line
    for iid in (leftover, current):
        ec2.terminate(iid)
    assert ec2.list_active() == [] and verify_instances(ec2) == []
    assert [i["instance_id"] for i in other_env.list_active()] == [foreign]
    other_env.terminate(foreign)


def test_when_required_settings_are_missing_or_ami_unknown_then_config_error_names_them(aws_server, network):
    client = aws_server.client("ec2")
    with pytest.raises(ConfigError) as err:
        Ec2Compute(Ec2Config(), env="dev", cost_center="train", client=client).launch("r", "#!/bin/bash\n")
    for field in ("ami_id", "subnet_id", "security_group_ids", "instance_profile"):
        assert f"compute.ec2.{field}" in str(err.value)
    with pytest.raises(ConfigError, match="ami-00000000deadbeef0"):
        Ec2Compute(_cfg(network, ami_id="ami-00000000deadbeef0"), env="dev", cost_center="train", client=client).launch(
            "r", "#!/bin/bash\n"
        )
    with pytest.raises(ConfigError, match="at most 16384"):
        Ec2Compute(_cfg(network), env="dev", cost_center="train", client=client).launch("r", "#" * 20000)


# --------------------------------------------------------------------------- instance side


def _hold_training(store, env: str, run_id: str):
    from chronos_flows.runstate.lock import RunLock

    handle = RunLock(store, env, lease_seconds=60).acquire(run_id)
    handle.transition("data_sync")
    handle.transition("training")
    return handle


def _result(store, env, run_id) -> dict:
    got = store.get(result_key(env, run_id))
    assert got is not None
    return json.loads(got[0])


def test_when_state_file_names_this_run_in_training_then_bootstrap_trains_and_records_ok(s3_store_url):
    from blocks.resolve import open_store

    store = open_store(s3_store_url)
    handle = _hold_training(store, "dev", "run-ok")
    calls = []
    rc = run_instance_step("run-ok", s3_store_url, "dev", lambda: calls.append(1) or {"steps": 3})
    assert rc == EXIT_OK and calls == [1]
    res = _result(store, "dev", "run-ok")
    assert res["outcome"] == "ok" and res["result"] == {"steps": 3} and res["generation"] == handle.generation
    assert res["duration_seconds"] >= 0 and res["finished_at"] >= res["started_at"]


def test_when_state_file_is_missing_or_names_another_run_then_bootstrap_refuses(s3_store_url):
    from blocks.resolve import open_store

    store = open_store(s3_store_url)
    never = []
    assert run_instance_step("run-x", s3_store_url, "dev", lambda: never.append(1) or {}) == EXIT_REFUSED
    assert "no dev/system-state.json" in _result(store, "dev", "run-x")["reason"]
    handle = _hold_training(store, "dev", "run-other")
    assert run_instance_step("run-x", s3_store_url, "dev", lambda: never.append(1) or {}) == EXIT_REFUSED
    assert "run-other" in _result(store, "dev", "run-x")["reason"]
    assert run_instance_step("run-other", s3_store_url, "dev", lambda: never.append(1) or {},
                             generation=handle.generation + 1) == EXIT_REFUSED
    assert "generation" in _result(store, "dev", "run-other")["reason"]
    assert never == []


def test_when_run_is_not_in_training_status_then_bootstrap_refuses(tmp_path):
    from blocks.resolve import open_store
    from chronos_flows.runstate.lock import RunLock

    store = open_store(tmp_path.as_uri())
    RunLock(store, "dev", lease_seconds=60).acquire("run-init")  # status initialization
    assert run_instance_step("run-init", tmp_path.as_uri(), "dev", lambda: {}) == EXIT_REFUSED
    assert "status initialization" in _result(store, "dev", "run-init")["reason"]


def test_when_training_raises_then_bootstrap_records_the_error_and_returns_its_exit_code(tmp_path):
    from blocks.resolve import open_store

    store = open_store(tmp_path.as_uri())
    _hold_training(store, "dev", "run-err")

    def boom() -> dict:
        raise TrainingError("loss is NaN at step 12; lower chronos.learning_rate")

    assert run_instance_step("run-err", tmp_path.as_uri(), "dev", boom) == TrainingError.exit_code
    res = _result(store, "dev", "run-err")
    assert res["outcome"] == "error" and res["error"]["type"] == "TrainingError" and "NaN" in res["error"]["message"]

    def crash() -> dict:
        raise RuntimeError("CUDA error: out of memory")

    assert run_instance_step("run-err", tmp_path.as_uri(), "dev", crash) == EXIT_ERROR
    assert "out of memory" in _result(store, "dev", "run-err")["error"]["message"]


def test_when_main_runs_without_gpu_then_it_records_the_error_unless_cpu_is_allowed(tmp_path, monkeypatch):
    from blocks.resolve import open_store

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no nvidia-smi on PATH
    store = open_store(tmp_path.as_uri())
    _hold_training(store, "dev", "run-m")
    args = ["--run-id", "run-m", "--store", tmp_path.as_uri(), "--env", "dev", "--train", "json:loads"]
    assert main(args) == EXIT_ENV
    res = _result(store, "dev", "run-m")
    assert res["outcome"] == "error" and "nvidia-smi" in res["error"]["message"]
    # --allow-cpu: the entry point is called with run_id/store_url/env (json.loads rejects those → error)
    assert main(args + ["--allow-cpu"]) == EXIT_ERROR
    assert _result(store, "dev", "run-m")["error"]["type"] == "TypeError"
    assert main(["--run-id", "run-m", "--store", tmp_path.as_uri(), "--train", "nomodule_xyz:f", "--allow-cpu"]) == EXIT_ENV
    assert "cannot import nomodule_xyz" in _result(store, "dev", "run-m")["error"]["message"]
    assert main(["--env", "dev"]) == EXIT_ENV  # no run id / store


def test_when_nvidia_smi_lists_a_gpu_then_main_runs_the_training_entry_point(tmp_path, monkeypatch):
    from blocks.resolve import open_store

    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA A10G (UUID: GPU-1234)"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    store = open_store(tmp_path.as_uri())
    _hold_training(store, "dev", "run-g")
    args = ["--run-id", "run-g", "--store", tmp_path.as_uri(), "--env", "dev", "--train", "builtins:dict"]
    assert main(args) == EXIT_OK
    res = _result(store, "dev", "run-g")
    assert res["environment"]["gpu"] == ["GPU 0: NVIDIA A10G (UUID: GPU-1234)"]
    assert res["result"] == {"run_id": "run-g", "store_url": tmp_path.as_uri(), "env": "dev"}


def test_when_the_ec2_api_is_unreachable_then_listing_and_describing_raise_ec2_error():
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "ec2", region_name="us-east-1", endpoint_url="http://127.0.0.1:9", aws_access_key_id="x",
        aws_secret_access_key="x", config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    ec2 = Ec2Compute(Ec2Config(), env="dev", cost_center="train", client=client)
    with pytest.raises(Ec2Error, match="cannot list chronos-flows instances of dev"):
        ec2.list_active()
    with pytest.raises(Ec2Error, match="credentials/region"):
        ec2.describe("i-0123456789abcdef0")


#: run as ``python -c`` on the "instance": Prefect cannot be imported, then the bootstrap's main
NO_PREFECT_BOOTSTRAP = """
import sys

class NoPrefect:
    def find_spec(self, name, path=None, target=None):
        if name == "prefect" or name.startswith("prefect."):
            raise ImportError(f"{name}: Prefect is not installed on this instance")
        return None

sys.meta_path.insert(0, NoPrefect())
try:
    import prefect  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit(99)
from app.bootstrap import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_when_prefect_cannot_be_imported_then_the_instance_training_step_stores_the_model_and_result(tmp_path):
    from blocks.store import read_uri
    from blocks.resolve import open_store
    from chronos_flows.core import layout
    from chronos_flows.runstate import runlog
    from chronos_flows.data.cleaning import clean
    from chronos_flows.config.params import build_params, resolve_data_path
    from chronos_flows.data.ingest import load_dataset, to_parquet_bytes
    from chronos_flows.evaluation.splits import min_series_length
    from tests.test_flow_e2e import SMALL

    store_url = (tmp_path / "store").as_uri()
    params = build_params(overrides=SMALL + ["chronos.max_steps=4", "chronos.eval_every=2", "chronos.checkpoint_every=2"],
                          store=store_url, run_id="run-np")
    store = open_store(store_url)
    # what the parent flow writes before it launches the instance: the state file, training.json, the cleaned data
    handle = _hold_training(store, "dev", "run-np")
    runlog.save_training_log(store, runlog.TrainingLog(run_id="run-np", env="dev", generation=handle.generation,
                                                       params=params.model_dump(mode="json")))
    raw = load_dataset(resolve_data_path(params.data.path), params.data, fetch=read_uri)
    cleaned, report = clean(raw, params.cleaning, min_length=min_series_length(params), horizon=params.evaluation.horizon)
    prefix = layout.run_data_prefix("dev", "run-np")
    store.put(f"{prefix}/cleaned.parquet", to_parquet_bytes(cleaned))
    store.put(f"{prefix}/cleaning_report.json", json.dumps(report.to_dict(), default=str).encode())

    proc = subprocess.run(
        [sys.executable, "-c", NO_PREFECT_BOOTSTRAP, "--run-id", "run-np", "--store", store_url, "--env", "dev", "--allow-cpu"],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    res = _result(store, "dev", "run-np")
    assert res["outcome"] == "ok" and res["generation"] == handle.generation, res
    model_prefix = layout.models_prefix("dev", "run-np", "chronos")
    assert res["result"]["uri"] == store.uri(model_prefix)
    assert store.list(model_prefix + "/"), "no model files in the store"
    assert store.get(layout.instance_progress_key("dev", "run-np")) is not None
