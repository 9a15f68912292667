"""The champion on SageMaker, as code (issue 24 part 2): the package the serving container reads from
/opt/ml/model (and the real server process serving it), the front-door template (cfn-lint), the
chronos-endpoint flow and ``chronos-flows endpoint`` against the suite's moto_server (create, update
with a new champion, a failed update, delete, nothing left), verify-cleanup and the cost estimate.

moto 5.2.5 lacks three things these tests need, and says so where they are used:
* SageMaker ``UpdateEndpoint`` (moto answers 500): :class:`MotoGapsProxy`, in front of moto,
  emulates it (DeleteEndpoint + CreateEndpoint on the new config, or a rolled-back update with a
  FailureReason); without the proxy the product's call fails, which the failed-update test uses.
* deleting a CloudFormation stack does not delete its ``AWS::ApiGateway::RestApi`` (moto has no
  delete handler for it; CloudFormation does delete it): the proxy deletes the stack's REST API
  when it forwards DeleteStack; without that, ``endpoint delete`` reports the REST API left over
  (the CLI test checks that too).
* CloudFormation's ``AWS::ApiGateway::ApiKey/UsagePlan/UsagePlanKey/Stage/Account`` (moto's
  CloudFormation skips them): they are checked on the template; the REST API, its resource and
  method, the roles and the log group are created by moto and checked through its APIs.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from blocks import apigateway, cloudformation, sagemaker
from blocks.resolve import open_store
from blocks.store import LocalStore
from chronos_flows.champion.model_dir import open_model_dir
from chronos_flows.champion.package import build_package, package_champion, read_record
from chronos_flows.champion.registry import decide_champion, promote, read_champion
from chronos_flows.config.endpoint import build_endpoint_params
from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError, StoreError
from chronos_flows.training.cost import estimate_endpoint_cost
from tests.conftest import free_port, wait_for_port
from tests.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/chronos-flows:serve"
ROLE = "arn:aws:iam::123456789012:role/chronos-flows-sagemaker"


def seed(store, run_id: str, family: str = "seasonal_naive", config: dict | None = None, weights: dict | None = None,
         env: str = "dev") -> dict:
    """Promote a champion of ``family`` into ``store`` (Chronos: ``weights`` as its registry files)."""
    entry = {"run_id": run_id, "family": family, "config": config if config is not None else {"season_length": 7},
             "judged_on": {"freq": "D", "horizon": 7, "quantiles": [0.1, 0.5, 0.9], "season_length": 7}}
    if weights:
        prefix = layout.registry_model_prefix(env, run_id, "chronos")
        for name, data in weights.items():
            store.put(f"{prefix}/{name}", data)
        entry["model_uri"] = store.uri(prefix)
    current, etag = read_champion(store, env)
    decision = decide_champion({family: {"wql": 0.03 if current is None else current["score"] / 2}}, current)
    assert promote(store, env, entry, decision, etag)
    return read_champion(store, env)[0]


# ------------------------------------------------------------------------------ the package


def test_when_a_chronos_champion_is_packaged_then_the_archive_is_a_read_only_store_of_manifest_champion_and_weights(tmp_path):
    store = LocalStore(tmp_path / "store")
    doc = seed(store, "ch-1", "chronos", {"model_id": "tiny"}, {"config.json": b'{"a": 1}', "model.safetensors": b"W" * 1000})
    manifest = build_package(store, "dev", doc, tmp_path / "model.tar.gz")
    assert manifest["env"] == "dev" and manifest["run_id"] == "ch-1" and manifest["family"] == "chronos"
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        names = sorted(tar.getnames())
        tar.extractall(tmp_path / "opt-ml-model", filter="data")
    prefix = layout.registry_model_prefix("dev", "ch-1", "chronos")
    assert names == sorted(["package.json", "dev/registry/champion.json", f"{prefix}/config.json", f"{prefix}/model.safetensors"])

    pkg_store, env, read_manifest = open_model_dir(tmp_path / "opt-ml-model")
    assert env == "dev" and read_manifest == manifest
    assert read_champion(pkg_store, "dev")[0] == doc  # the serving code reads it with the store's keys
    got = pkg_store.download_dir(prefix, tmp_path / "copy")
    assert sorted(p.name for p in got) == ["config.json", "model.safetensors"]
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == b"W" * 1000
    with pytest.raises(StoreError, match="read-only"):
        pkg_store.put("dev/registry/champion.json", b"{}")


def test_when_a_local_family_is_packaged_then_no_weights_are_needed_and_the_same_champion_reuses_its_package(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(BadInputError, match="no champion to deploy"):
        package_champion(store, "dev", "ep", None)
    doc = seed(store, "sn-1")
    first = package_champion(store, "dev", "ep", doc)
    assert not first["reused"] and first["key"] == layout.endpoint_package_key("dev", "ep", first["tag"])
    with tarfile.open(fileobj=io.BytesIO(store.get(first["key"])[0])) as tar:
        assert sorted(tar.getnames()) == ["dev/registry/champion.json", "package.json"]
    assert package_champion(store, "dev", "ep", doc)["reused"] is True
    # a chronos champion whose weights are gone is refused, naming where they should be
    broken = {**seed(store, "ch-2", "chronos", {}, {"w.bin": b"x"}), "run_id": "ch-gone"}
    with pytest.raises(Exception, match="model is missing: nothing under"):
        package_champion(store, "dev", "ep", broken)


def test_when_the_model_dir_is_not_a_package_then_it_is_refused_naming_the_directory_and_the_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="not a directory"):
        open_model_dir(tmp_path / "nope")
    with pytest.raises(BadInputError, match="no package.json"):
        open_model_dir(tmp_path)
    (tmp_path / "package.json").write_text('{"env": "dev"}')
    with pytest.raises(BadInputError, match="dev/registry/champion.json is missing"):
        open_model_dir(tmp_path)
    (tmp_path / "package.json").write_text("{")
    with pytest.raises(BadInputError, match="cannot be read"):
        open_model_dir(tmp_path)


def test_when_serve_runs_on_a_read_only_packaged_model_dir_then_ping_and_invocations_answer_without_a_store(tmp_path):
    store = LocalStore(tmp_path / "store")
    doc = seed(store, "sn-pkg")
    build_package(store, "dev", doc, tmp_path / "model.tar.gz")
    model_dir = tmp_path / "opt" / "ml" / "model"
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        tar.extractall(model_dir, filter="data")
    for p in [model_dir, *model_dir.rglob("*")]:  # SageMaker may mount it read-only: nothing is written there
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CHRONOS_FLOWS_API_KEYS",)}
    env.update({sagemaker.MODEL_DIR_ENV: str(model_dir), "CHRONOS_FLOWS_STORE": str(tmp_path / "no-store-here")})
    log = open(tmp_path / "serve.log", "w")
    # the container's command: `chronos-flows serve` with $CHRONOS_FLOWS_MODEL_DIR set by the SageMaker model
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_for_port(port, timeout=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 90
            while (r := client.get("/ping")).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert r.status_code == 200, (tmp_path / "serve.log").read_text()[-3000:]
            assert r.json()["champion_run_id"] == "sn-pkg"
            target = [float(i % 7) for i in range(28)]
            out = client.post("/invocations", json={"inputs": [{"target": target, "item_id": "A", "start": "2026-01-01",}],
                                                      "parameters": {"prediction_length": 7, "freq": "D"}})
            assert out.status_code == 200, out.text
            pred = out.json()["predictions"][0]
            assert pred["item_id"] == "A" and pred["mean"] == [float(i % 7) for i in range(28, 35)]  # seasonal naive
            assert out.headers["X-Champion-Run-Id"] == "sn-pkg"
    finally:
        proc.terminate()
        rc = proc.wait(timeout=30)
        log.close()
    assert rc == 0
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == before
    assert not (tmp_path / "no-store-here").exists()  # the store was never opened


def test_when_the_serving_image_is_read_then_it_documents_the_model_dir_mode():
    text = (REPO / "docker" / "Dockerfile.serve").read_text()
    assert sagemaker.MODEL_DIR_ENV in text and "/opt/ml/model" in text


# ------------------------------------------------------------------------------ front door template


def test_when_the_front_door_template_is_linted_then_cfn_lint_and_project_checks_find_nothing():
    assert cloudformation.validate_template(apigateway.TEMPLATE_PATH) == []


def test_when_the_front_door_template_is_read_then_the_method_needs_a_key_and_the_plan_throttles_and_the_stage_logs():
    res = cloudformation.load_template(apigateway.TEMPLATE_PATH)["Resources"]
    method = res["InvocationsMethod"]["Properties"]
    assert method["ApiKeyRequired"] is True and method["HttpMethod"] == "POST"
    assert "runtime.sagemaker:path/endpoints/${EndpointName}/invocations" in method["Integration"]["Uri"]["Fn::Sub"]
    invoke = res["InvokeRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert invoke == [{"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": invoke[0]["Resource"]}]
    assert invoke[0]["Resource"]["Fn::Sub"].endswith(":endpoint/${EndpointName}")  # that endpoint only
    plan = res["UsagePlan"]["Properties"]
    assert plan["Throttle"] == {"RateLimit": {"Ref": "ThrottleRateLimit"}, "BurstLimit": {"Ref": "ThrottleBurstLimit"}}
    assert plan["Quota"] == {"Limit": {"Ref": "QuotaLimit"}, "Period": {"Ref": "QuotaPeriod"}}
    assert plan["ApiStages"] == [{"ApiId": {"Ref": "Api"}, "Stage": {"Ref": "StageName"}}]
    assert res["UsagePlanKey"]["Properties"] == {"KeyId": {"Ref": "ApiKey"}, "KeyType": "API_KEY", "UsagePlanId": {"Ref": "UsagePlan"}}
    stage = res["Stage"]["Properties"]
    assert stage["AccessLogSetting"]["DestinationArn"] == {"Fn::GetAtt": ["AccessLogGroup", "Arn"]}
    assert json.loads(stage["AccessLogSetting"]["Format"].replace("\n", " "))["apiKeyId"] == "$context.identity.apiKeyId"
    assert stage["MethodSettings"][0]["MetricsEnabled"] is True and stage["MethodSettings"][0]["LoggingLevel"] == "ERROR"
    assert res["AccessLogGroup"]["DeletionPolicy"] == "Delete"  # delete leaves nothing


# ------------------------------------------------------------------------------ against moto


class MotoGapsProxy(FaultProxy):
    """In front of the suite's moto_server, emulates what moto 5.2.5 lacks (module docstring):

    * SageMaker UpdateEndpoint: ``mode "ok"``: the endpoint is re-created on the new config (what a
      completed update looks like through DescribeEndpoint); ``mode "rollback"``: SageMaker's failed
      update — the endpoint stays InService on its old config and DescribeEndpoint reports a
      FailureReason;
    * CloudFormation DeleteStack also deletes the stack's REST APIs (``delete_rest_apis``).
    Every other request goes to moto unchanged."""

    REASON = "The primary container for production variant AllTraffic did not pass the ping health check."

    def __init__(self, aws_server):
        super().__init__(aws_server.endpoint_url)
        self.sm = aws_server.client("sagemaker")
        self.mode = "ok"
        self.updates: list[dict] = []
        self.failed: set[str] = set()
        self.cfn = aws_server.client("cloudformation")
        self.apigateway = aws_server.client("apigateway")
        self.delete_rest_apis = True

    def _forward(self, method, path, headers, body):
        target = headers.get("X-Amz-Target", "")
        form = parse_qs(body.decode("utf-8", "replace")) if b"Action=DeleteStack" in body else {}
        if form and self.delete_rest_apis:
            for r in self.cfn.list_stack_resources(StackName=form["StackName"][0])["StackResourceSummaries"]:
                if r["ResourceType"] == "AWS::ApiGateway::RestApi":
                    self.apigateway.delete_rest_api(restApiId=r["PhysicalResourceId"])
        if target == "SageMaker.UpdateEndpoint":
            req = json.loads(body)
            self.updates.append(req)
            if self.mode == "ok":
                self.sm.delete_endpoint(EndpointName=req["EndpointName"])
                self.sm.create_endpoint(EndpointName=req["EndpointName"], EndpointConfigName=req["EndpointConfigName"])
            else:
                self.failed.add(req["EndpointName"])
            arn = self.sm.describe_endpoint(EndpointName=req["EndpointName"])["EndpointArn"]
            return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps({"EndpointArn": arn}).encode()
        status, out_headers, data = super()._forward(method, path, headers, body)
        if target == "SageMaker.DescribeEndpoint" and status == 200:
            doc = json.loads(data)
            if doc.get("EndpointName") in self.failed:
                data = json.dumps({**doc, "FailureReason": self.REASON}).encode()
        return status, out_headers, data


@pytest.fixture
def proxied(aws_env, monkeypatch):
    """boto3 (SageMaker, S3, CloudFormation, API Gateway) through :class:`MotoGapsProxy`."""
    with MotoGapsProxy(aws_env) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        yield proxy


def _params(store_url: str, name: str, **kw):
    return build_endpoint_params(store=store_url, name=name, image_uri=IMAGE, role_arn=ROLE, poll_seconds=0.2,
                                 timeout_seconds=60, **kw)


def _everything(aws_server, name: str) -> list[str]:
    from tasks.endpoint import leftovers

    return leftovers(build_endpoint_params(action="delete", name=name))


def test_when_deployed_updated_with_a_new_champion_and_deleted_then_blue_green_holds_and_nothing_is_left(
        prefect_api, s3_store_url, proxied, aws_env):
    from flows.endpoint import chronos_endpoint

    name = f"ep-{os.urandom(3).hex()}"
    store = open_store(s3_store_url)
    seed(store, "sn-1")
    sm = aws_env.client("sagemaker")

    created = chronos_endpoint(params=_params(s3_store_url, name, mode="serverless", memory_mb=3072, max_concurrency=7))
    assert created["action"] == "created" and created["champion"]["run_id"] == "sn-1"
    desc = sm.describe_endpoint(EndpointName=name)
    assert desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == created["endpoint_config"]
    cfg = sm.describe_endpoint_config(EndpointConfigName=created["endpoint_config"])
    assert cfg["ProductionVariants"][0]["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 7}
    model = sm.describe_model(ModelName=created["model"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == store.uri(created["package"]["key"])
    assert model["PrimaryContainer"]["Environment"] == {sagemaker.MODEL_DIR_ENV: "/opt/ml/model"}
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
    assert store.exists(created["package"]["key"])
    api = created["api"]
    assert api["stack"] == f"{name}-api" and api["InvokeUrl"].endswith("/v1/invocations")
    rest = [a for a in aws_env.client("apigateway").get_rest_apis()["items"] if a["name"] == f"{name}-api"]
    assert len(rest) == 1 and rest[0]["id"] == api["ApiId"]
    record = read_record(store, "dev", name)
    assert record["endpoint_config"] == created["endpoint_config"] and record["champion"]["run_id"] == "sn-1"

    # the same champion again: nothing to do, nothing created
    again = chronos_endpoint(params=_params(s3_store_url, name, action="update"))
    assert again["action"] == "unchanged" and proxied.updates == []

    # a new champion: new model and config, UpdateEndpoint, then the old ones go
    seed(store, "ch-2", "chronos", {"model_id": "tiny"}, {"model.safetensors": b"W" * 64})
    updated = chronos_endpoint(params=_params(s3_store_url, name, action="update"))
    assert updated["action"] == "updated" and updated["champion"]["run_id"] == "ch-2"
    assert proxied.updates == [{"EndpointName": name, "EndpointConfigName": updated["endpoint_config"]}]
    assert updated["previous_config"] == created["endpoint_config"]
    assert sorted(updated["removed"]) == sorted([f"config {created['endpoint_config']}", f"model {created['model']}"])
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == updated["endpoint_config"]
    left = sagemaker.leftovers(sm, name)
    assert left == {"endpoints": [name], "endpoint_configs": [updated["endpoint_config"]], "models": [updated["model"]]}
    with tarfile.open(fileobj=io.BytesIO(store.get(updated["package"]["key"])[0])) as tar:
        assert f"{layout.registry_model_prefix('dev', 'ch-2', 'chronos')}/model.safetensors" in tar.getnames()

    gone = chronos_endpoint(params=build_endpoint_params(action="delete", store=s3_store_url, name=name, poll_seconds=0.2))
    assert gone["left"] == [] and f"endpoint {name}" in gone["removed"] and f"stack {name}-api" in gone["removed"]
    assert _everything(aws_env, name) == []
    assert store.list(layout.endpoint_prefix("dev", name) + "/") == []
    # delete is idempotent
    assert chronos_endpoint(params=build_endpoint_params(action="delete", store=s3_store_url, name=name))["left"] == []


def test_when_an_update_fails_then_the_old_config_keeps_serving_the_new_one_is_removed_and_the_error_says_why(
        prefect_api, s3_store_url, proxied, aws_env, monkeypatch):
    from flows.endpoint import chronos_endpoint

    name = f"ep-{os.urandom(3).hex()}"
    store = open_store(s3_store_url)
    seed(store, "sn-1")
    sm = aws_env.client("sagemaker")
    created = chronos_endpoint(params=_params(s3_store_url, name, api=False))
    seed(store, "sn-2", config={"season_length": 14})

    # SageMaker rolls the update back (the new container fails its health check)
    proxied.mode = "rollback"
    with pytest.raises(sagemaker.EndpointError) as err:
        chronos_endpoint(params=_params(s3_store_url, name, action="update", api=False))
    msg = str(err.value)
    assert "update of endpoint" in msg and "sn-2" in msg and MotoGapsProxy.REASON in msg
    assert f"still serves config {created['endpoint_config']}" in msg
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == created["endpoint_config"]
    assert sagemaker.leftovers(sm, name) == {"endpoints": [name], "endpoint_configs": [created["endpoint_config"]],
                                             "models": [created["model"]]}
    assert read_record(store, "dev", name)["champion"]["run_id"] == "sn-1"  # the record still tells what serves

    # straight at moto, which lacks UpdateEndpoint: the call itself fails, with the same guarantees
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env.endpoint_url)
    with pytest.raises(sagemaker.EndpointError, match="UpdateEndpoint was refused"):
        chronos_endpoint(params=_params(s3_store_url, name, action="update", api=False))
    assert sagemaker.leftovers(sm, name)["endpoint_configs"] == [created["endpoint_config"]]

    chronos_endpoint(params=build_endpoint_params(action="delete", store=s3_store_url, name=name, poll_seconds=0.2))
    assert _everything(aws_env, name) == []


def test_when_the_cli_deploys_updates_and_deletes_then_verify_cleanup_finds_what_is_left_and_then_nothing(
        prefect_api, s3_store_url, proxied, aws_env, capsys):
    from app.cli import main

    name = f"ep-{os.urandom(3).hex()}"
    store = open_store(s3_store_url)
    seed(store, "sn-1")
    common = ["--store", s3_store_url, "--name", name, "--poll-seconds", "0.2"]
    deploy = ["--image-uri", IMAGE, "--role-arn", ROLE]
    assert main(["endpoint", "deploy", *common, *deploy]) == 0
    out = capsys.readouterr().out
    assert f"endpoint {name} created" in out and "serves champion sn-1" in out and "idle cost: $0.00/month" in out

    assert main(["endpoint", "status", *common]) == 0
    out = capsys.readouterr().out
    assert f"endpoint {name}: InService" in out and "serverless" in out and "REST API" in out

    # an endpoint the store records: verify-cleanup reports it (it is deployed), with the fix
    assert main(["verify-cleanup", "--store", s3_store_url]) == 1
    out = capsys.readouterr().out
    assert f"SageMaker endpoint {name} of env dev" in out and f"chronos-flows endpoint delete --env dev --name {name}" in out

    seed(store, "sn-2", config={"season_length": 14})
    assert main(["endpoint", "update", *common, *deploy]) == 0
    assert "serves champion sn-2" in capsys.readouterr().out

    # refusals name the problem: a bad setting (exit 2), an update of an endpoint that does not exist
    assert main(["endpoint", "deploy", *common, *deploy, "--memory-mb", "1000"]) == 2
    assert "memory_mb=1000" in capsys.readouterr().err
    assert main(["endpoint", "update", "--store", s3_store_url, "--name", "ep-missing", *deploy]) == 2
    assert "does not exist; create it with `chronos-flows endpoint deploy`" in capsys.readouterr().err

    # a stack delete that leaves the REST API behind (moto's, without the proxy's help): delete says so
    proxied.delete_rest_apis = False
    assert main(["endpoint", "delete", *common]) == 1
    err = capsys.readouterr().err
    assert f"endpoint {name}: still exists after delete: REST API" in err and f"({name}-api)" in err
    for api in aws_env.client("apigateway").get_rest_apis()["items"]:
        if api["name"] == f"{name}-api":
            aws_env.client("apigateway").delete_rest_api(restApiId=api["id"])
    assert main(["endpoint", "delete", *common]) == 0
    assert "nothing left" in capsys.readouterr().out
    assert main(["verify-cleanup", "--store", s3_store_url, "--endpoints", "--set", "env=dev"]) == 0
    assert main(["endpoint", "status", *common]) == 0
    assert "not deployed; idle cost $0.00/month" in capsys.readouterr().out

    # something left behind by hand (an API key of the endpoint's name) is found
    key = aws_env.client("apigateway").create_api_key(name=f"{name}-key", enabled=True)
    assert apigateway.leftovers(name) == [f"API key {key['id']} ({name}-key)"]
    aws_env.client("apigateway").delete_api_key(apiKey=key["id"])


def test_when_an_endpoint_is_serverless_or_deleted_then_it_costs_nothing_idle_and_real_time_bills_its_hours():
    assert estimate_endpoint_cost(None)["total_usd_per_month"] == 0.0
    sl = estimate_endpoint_cost("serverless", memory_mb=2048, requests_per_month=1_000_000, seconds_per_request=0.1)
    assert sl["idle_usd_per_month"] == 0.0
    assert sl["usage_usd_per_month"] == pytest.approx(2 * 0.1 * 1e6 * 0.00002 + 3.5)  # GB-s + API requests
    rt = estimate_endpoint_cost("realtime", instance_type="ml.m5.large", instance_count=2, api=False)
    assert rt["idle_usd_per_month"] == pytest.approx(0.115 * 2 * 730)
    with pytest.raises(Exception, match="no hourly price for 'ml.x9.huge'"):
        estimate_endpoint_cost("realtime", instance_type="ml.x9.huge")


def test_when_endpoint_settings_are_wrong_then_the_error_names_the_setting_and_the_fix():
    with pytest.raises(BadInputError, match="needs image_uri"):
        build_endpoint_params(action="deploy")
    with pytest.raises(BadInputError, match="capture=true needs mode=realtime"):
        build_endpoint_params(image_uri=IMAGE, role_arn=ROLE, capture=True)
    with pytest.raises(BadInputError, match="name"):
        build_endpoint_params(action="delete", name="Not_A_Name")
    p = build_endpoint_params(image_uri=IMAGE, role_arn=ROLE, mode="realtime", capture=True, env="prod")
    assert p.endpoint_name == "chronos-flows-prod" and p.capture


def test_when_the_roll_out_captures_then_each_champion_captures_into_its_own_prefix_the_monitor_reads(aws_env, s3_store_url):
    from tasks.endpoint import roll_out

    name = f"ep-{os.urandom(3).hex()}"
    params = _params(s3_store_url, name, mode="realtime", capture=True, api=False)
    pkg = {"uri": "s3://b/k/model.tar.gz", "run_id": "run-7", "family": "theta", "tag": "run-7-w", "write_id": "w"}
    out = roll_out.fn(params, pkg)
    sm = aws_env.client("sagemaker")
    cap = sm.describe_endpoint_config(EndpointConfigName=out["endpoint_config"])["DataCaptureConfig"]
    assert cap["DestinationS3Uri"] == f"{s3_store_url}/dev/capture/sagemaker/theta/run-7"
    key = "dev/capture/sagemaker/theta/run-7/" + name + "/AllTraffic/2024/01/01/00/x.jsonl"
    assert layout.sagemaker_capture_owner("dev", key) == ("theta", "run-7")
    sagemaker.delete(sm, name, poll_seconds=0.1)


def test_when_capture_is_on_then_the_config_captures_into_the_env_capture_prefix(aws_env, s3_store_url):
    store = open_store(s3_store_url)
    sm = aws_env.client("sagemaker")
    name = f"ep-{os.urandom(3).hex()}"
    d = sagemaker.Deployment(name=name, env="dev", image_uri=IMAGE, role_arn=ROLE, model_data_url="s3://b/k/model.tar.gz",
                             run_id="r1", variant=sagemaker.Variant(mode="realtime", instance_type="ml.c5.large", instance_count=2),
                             capture_uri=store.uri(f"{layout.capture_prefix('dev')}/sagemaker"), capture_percent=25)
    out = sagemaker.roll_out(sm, d, poll_seconds=0.1, timeout=30)
    cfg = sm.describe_endpoint_config(EndpointConfigName=out["endpoint_config"])
    assert cfg["ProductionVariants"][0]["InstanceType"] == "ml.c5.large" and cfg["ProductionVariants"][0]["InitialInstanceCount"] == 2
    cap = cfg["DataCaptureConfig"]
    assert cap["EnableCapture"] and cap["InitialSamplingPercentage"] == 25
    assert cap["DestinationS3Uri"] == f"{s3_store_url}/dev/capture/sagemaker"
    st = sagemaker.status(sm, name)
    assert st["data_capture"] and st["champion_run_ids"] == ["r1"] and not st["serverless"]
    assert sagemaker.delete(sm, name, poll_seconds=0.1)["removed"] == [f"endpoint {name}", f"config {out['endpoint_config']}",
                                                                          f"model {out['model']}"]
    assert sagemaker.leftovers(sm, name) == {"endpoints": [], "endpoint_configs": [], "models": []}
