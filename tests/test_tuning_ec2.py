"""Tuning with compute.backend=ec2: one ephemeral instance per trial on the local EC2 API, each
played by a local process running the user data's bootstrap command (tests/test_ec2_flow.py
InstancePlayer) against the local S3 API. The flow follows the trials through the store, prunes
there, relaunches a reclaimed instance (which resumes from the trial's stored checkpoints),
terminates every instance and stops the study on its cost budget."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from blocks.ec2 import Ec2Compute, verify_instances
from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.core.errors import ChronosFlowsError
from chronos_flows.tuning.study import build_tuning_params, open_study
from tests.test_ec2_flow import InstancePlayer, network  # noqa: F401 - the fixture
from tests.test_tuning import STUDY, tuning_file


def _tune(params, player, *, return_state: bool = False):
    from flows.tuning import chronos_tuning

    player.start()
    try:
        if return_state:  # a killed run ends its flow run Cancelled ("Killed"); its summary is the state's result
            return chronos_tuning(params=params, return_state=True).result(raise_on_failure=False)
        return chronos_tuning(params=params)
    finally:
        player.stop.set()
        player.join(timeout=120)


def _instances(aws_env, ids):
    ec2 = aws_env.client("ec2")
    resp = ec2.describe_instances(InstanceIds=list(ids))
    return {i["InstanceId"]: i for r in resp["Reservations"] for i in r["Instances"]}


def _csv(store, key):
    import io

    return pd.read_csv(io.BytesIO(store.get(key)[0]))


def test_when_the_ec2_settings_are_incomplete_then_tuning_on_ec2_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(ChronosFlowsError, match=r"compute\.ec2\.ami_id, compute\.ec2\.subnet_id"):
        build_tuning_params(tuning_file(tmp_path, {}), overrides=["compute.backend=ec2"])


# each "instance" is a local process: one torch thread each (two run at once on a small test machine);
# 60 steps leave the flow time to prune the poor trials from their step-10 validation loss
def test_when_a_small_study_runs_on_ec2_then_each_trial_gets_its_own_instance_all_terminated_and_the_best_config_is_written(
        prefect_api, aws_env, network, s3_store_url, tmp_path):
    params = build_tuning_params(tuning_file(tmp_path, {**STUDY, "study": "ec2-study"}), overrides=network + ["chronos.num_threads=1", "chronos.max_steps=60"],
                                 store=s3_store_url, run_id="tune-ec2-1")
    player = InstancePlayer(aws_env)
    summary = _tune(params, player)

    assert summary["status"] == "succeeded", summary
    study = summary["tuning"]
    assert study["trials"] == 4 and study["stop_reason"] == "max_trials 4 reached", study
    # pruned by the flow from the instances' progress (lr 1e-5 barely moves the random model); a
    # learning trial that lags behind the first completed one may be pruned too (median of one)
    assert study["by_state"].get("COMPLETE", 0) >= 1 and study["by_state"].get("PRUNED", 0) >= 1, study
    # one instance per trial, each booted once, all terminated, tagged with the run, study and trial
    per_trial = {int(k): v for k, v in study["instances"].items()}
    assert sorted(per_trial) == [0, 1, 2, 3] and all(len(v) == 1 for v in per_trial.values()), per_trial
    ids = [v[0] for v in per_trial.values()]
    assert set(player.booted) == set(ids)
    for n, (iid,) in per_trial.items():
        inst = _instances(aws_env, [iid])[iid]
        assert inst["State"]["Name"] == "terminated"
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["RunId"] == "tune-ec2-1" and tags["TuningStudy"] == "ec2-study" and tags["TuningTrial"] == str(n)
        assert "--run-id tune-ec2-1" in player.booted[iid]["script"]
        assert player.booted[iid]["env"]["CHRONOS_FLOWS_TRIAL"].endswith(f"/trials/{n:04d}")
    assert verify_instances(Ec2Compute(params.training.compute.ec2, env="dev", cost_center="train")) == []

    store = open_store(s3_store_url)
    prefix = layout.tuning_prefix("dev", "ec2-study")
    assert store.get(f"{prefix}/best_config.yaml") is not None
    assert study["best_params"]["chronos.learning_rate"] in (2e-3, 1e-3)
    trials = _csv(store, f"{prefix}/trials.csv")
    assert (trials["cost_usd"] > 0).all() and set(trials["attempts"]) == {1}
    # every validation loss of a completed trial reached the study (the median pruner compares with them)
    assert set(trials[trials["state"] == "COMPLETE"]["last_step"]) == {60}
    done = json.loads(store.get(f"{prefix}/trials/0000/result.json")[0])
    assert done["state"] == "COMPLETE" and done["instance_id"] == per_trial[0][0]
    assert not store.list(f"{prefix}/trials/0000/checkpoints/"), "a finished trial's checkpoints are removed"
    assert store.get(layout.state_key("dev")) is None
    assert json.loads(store.get(layout.cleanup_status_key("dev", "tune-ec2-1"))[0])["complete"] is True


def _reclaim_after_first_checkpoint(store, trial: int):
    """Reclaim the trial's first instance as soon as a complete checkpoint of it is in the store."""
    reclaimed: list[str] = []

    def hook(iid, env):
        prefix = env.get("CHRONOS_FLOWS_TRIAL", "")
        if reclaimed or not prefix.endswith(f"/trials/{trial:04d}"):
            return False
        if store.exists(f"{prefix}/checkpoints/manifest.json"):
            reclaimed.append(iid)
            return True
        return False

    return hook, reclaimed


@pytest.mark.slow  # two instances and a resumed trial (22 s); one trial per instance stays in the default run
def test_when_a_trials_spot_instance_is_reclaimed_mid_training_then_a_new_one_resumes_from_the_stored_checkpoint(
        prefect_api, aws_env, network, s3_store_url, tmp_path):
    tuning = {"search_space": {"chronos.learning_rate": {"low": 1e-3, "high": 2e-3}},
              "budget": {"max_trials": 1, "max_parallel": 1}, "study": "reclaim"}
    params = build_tuning_params(tuning_file(tmp_path, tuning), store=s3_store_url, run_id="tune-ec2-2",
                                 overrides=network + ["compute.ec2.spot=true", "chronos.max_steps=40", "chronos.num_threads=1"])
    store = open_store(s3_store_url)
    hook, reclaimed = _reclaim_after_first_checkpoint(store, 0)
    player = InstancePlayer(aws_env, reclaim=hook)
    summary = _tune(params, player)

    assert summary["status"] == "succeeded", summary
    study = summary["tuning"]
    assert study["by_state"] == {"COMPLETE": 1}, study
    first, second = study["instances"][0] if 0 in study["instances"] else study["instances"]["0"]
    assert reclaimed == [first] and player.booted[first]["reclaimed"] and not player.booted[second]["reclaimed"]
    insts = _instances(aws_env, [first, second])
    assert {i["State"]["Name"] for i in insts.values()} == {"terminated"}
    assert all(i.get("InstanceLifecycle") == "spot" or i.get("SpotInstanceRequestId") for i in insts.values()), insts
    assert player.booted[second]["env"]["CHRONOS_FLOWS_TRIAL_ATTEMPT"] == "1"

    prefix = layout.tuning_prefix("dev", "reclaim")
    result = json.loads(store.get(f"{prefix}/trials/0000/result.json")[0])
    assert result["state"] == "COMPLETE" and result["attempt"] == 1 and result["instance_id"] == second
    assert result["restored_checkpoints"] and result["resumed_from_step"] > 0, result
    assert result["step"] == 40
    journal = tmp_path / "journal.log"
    journal.write_bytes(store.get(f"{prefix}/journal.log")[0])
    (trial,) = open_study(journal, "reclaim", params).get_trials()
    assert trial.user_attrs["attempts"] == 2 and trial.user_attrs["instance_ids"] == [first, second]
    assert trial.user_attrs["resumed_from_step"] == result["resumed_from_step"]


@pytest.mark.slow  # a trial left running until its cost limit (15 s)
def test_when_the_trials_instance_cost_reaches_max_cost_usd_then_the_study_stops_and_the_running_trial_is_stopped(
        prefect_api, aws_env, network, s3_store_url, tmp_path):
    # $36/h = $0.01/s, billed with a one-minute minimum: $0.60 per instance from its launch
    tuning = {"search_space": {"chronos.learning_rate": {"low": 1e-3, "high": 2e-3}},
              "budget": {"max_trials": 10, "max_parallel": 1, "max_cost_usd": 1.0}, "study": "costly"}
    params = build_tuning_params(tuning_file(tmp_path, tuning), store=s3_store_url, run_id="tune-ec2-3",
                                 overrides=network + ["compute.ec2.hourly_prices={g4dn.2xlarge: 36.0}",
                                                      "compute.ec2.volume_size_gb=8", "chronos.num_threads=1"])
    player = InstancePlayer(aws_env)
    summary = _tune(params, player)

    assert summary["status"] == "succeeded", summary
    study = summary["tuning"]
    assert study["stop_reason"].startswith("max_cost_usd 1 reached"), study
    assert study["trials"] == 2 and study["by_state"] == {"COMPLETE": 1, "FAIL": 1}, study
    assert study["cost_usd"] >= 1.0
    store = open_store(s3_store_url)
    trials = _csv(store, f"{layout.tuning_prefix('dev', 'costly')}/trials.csv")
    stopped = trials[trials["state"] == "FAIL"].iloc[0]
    assert "cost budget" in stopped["note"] and stopped["cost_usd"] >= 0.6
    ids = [i for v in study["instances"].values() for i in v]
    assert len(ids) == 2 and {i["State"]["Name"] for i in _instances(aws_env, ids).values()} == {"terminated"}
    assert verify_instances(Ec2Compute(params.training.compute.ec2, env="dev", cost_center="train")) == []


def test_when_an_instance_dies_mid_upload_then_the_next_attempt_restores_only_the_complete_checkpoints(tmp_path):
    from chronos_flows.core.layout import TrialKeys
    from chronos_flows.tuning.remote import TrialCheckpoints, TrialStopped, TrialGuard, put_json

    store = open_store(str(tmp_path / "store"))
    local = tmp_path / "first" / "checkpoints"
    (local / "checkpoint-00000010").mkdir(parents=True)
    (local / "checkpoint-00000010" / "trainer_state.json").write_text("{}")
    (local / "checkpoint-00000010" / "training_state.pt").write_bytes(b"x")
    ckpts = TrialCheckpoints(store, "dev/tuning/s/trials/0000/checkpoints", local, guard=lambda refresh: None)
    ckpts()
    # a reclaim halfway through the next upload: one file of checkpoint 20 is stored, the manifest is not updated
    store.put("dev/tuning/s/trials/0000/checkpoints/checkpoint-00000020/trainer_state.json", b"{}")

    again = TrialCheckpoints(store, "dev/tuning/s/trials/0000/checkpoints", tmp_path / "second", guard=lambda refresh: None)
    assert again.restore() == ["checkpoint-00000010"]
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["checkpoint-00000010"]
    assert (tmp_path / "second" / "checkpoint-00000010" / "training_state.pt").read_bytes() == b"x"

    keys = TrialKeys("dev/tuning/s/trials/0000")
    put_json(store, keys.stop, {"reason": "pruned at step 10"})
    with pytest.raises(TrialStopped, match="pruned at step 10"):
        TrialGuard(store, "dev", "run-1", None, keys)(True)


def test_when_the_tuning_run_is_killed_while_trials_run_on_ec2_then_every_trial_instance_is_terminated(
        prefect_api, aws_env, network, s3_store_url, tmp_path):
    from chronos_flows.runstate.statefile import mark_killed

    tuning = {"search_space": {"chronos.learning_rate": {"low": 1e-3, "high": 2e-3}},
              "budget": {"max_trials": 4, "max_parallel": 2}, "study": "killed"}
    params = build_tuning_params(tuning_file(tmp_path, tuning), store=s3_store_url, run_id="tune-ec2-4",
                                 overrides=network + ["chronos.num_threads=1", "chronos.max_steps=200", "chronos.random_max_steps=200"])
    store = open_store(s3_store_url)
    killed: list[str] = []

    def kill_once_both_train(iid, env):  # `chronos-flows kill` as soon as both trials report progress
        prefix = layout.tuning_prefix("dev", "killed")
        if not killed and all(store.exists(f"{prefix}/trials/{n:04d}/progress.json") for n in (0, 1)):
            killed.append(iid)
            mark_killed(store, "dev", "tune-ec2-4")
        return False

    player = InstancePlayer(aws_env, reclaim=kill_once_both_train)
    summary = _tune(params, player, return_state=True)

    assert killed and summary["status"] == "killed", summary
    prefix = layout.tuning_prefix("dev", "killed")
    journal = tmp_path / "journal.log"
    journal.write_bytes(store.get(f"{prefix}/journal.log")[0])
    trials = open_study(journal, "killed", params).get_trials()
    assert len(trials) == 2 and {t.state.name for t in trials} == {"FAIL"}, [(t.number, t.state, t.user_attrs) for t in trials]
    assert sorted(i for t in trials for i in t.user_attrs["instance_ids"]) == sorted(player.booted)
    assert all("the tuning run ended" in t.user_attrs["fail_reason"] for t in trials)
    assert len(player.booted) == 2 and all(b["terminated_from_outside"] or b["rc"] is not None for b in player.booted.values())
    assert {i["State"]["Name"] for i in _instances(aws_env, player.booted).values()} == {"terminated"}
    assert verify_instances(Ec2Compute(params.training.compute.ec2, env="dev", cost_center="train")) == []
    assert store.get(layout.state_key("dev")) is None


def test_when_the_wall_clock_budget_runs_out_on_ec2_then_running_trials_are_stopped_and_their_instances_terminated(
        prefect_api, aws_env, network, s3_store_url, tmp_path):
    tuning = {"search_space": {"chronos.learning_rate": {"low": 1e-3, "high": 2e-3}},
              "budget": {"max_trials": 10, "max_parallel": 2, "timeout_seconds": 8}, "study": "clock"}
    params = build_tuning_params(tuning_file(tmp_path, tuning), store=s3_store_url, run_id="tune-ec2-6",
                                 overrides=network + ["chronos.num_threads=1", "chronos.max_steps=100000", "chronos.random_max_steps=100000"])
    player = InstancePlayer(aws_env)
    summary = _tune(params, player)

    assert summary["status"] == "succeeded", summary
    study = summary["tuning"]
    assert study["stop_reason"] == "timeout of 8 s reached", study
    assert study["by_state"] == {"FAIL": 2}, study  # the two first trials, stopped; nothing started after
    store = open_store(s3_store_url)
    trials = _csv(store, f"{layout.tuning_prefix('dev', 'clock')}/trials.csv")
    assert trials["note"].str.contains("wall-clock budget").all(), trials["note"].tolist()
    ids = [i for v in study["instances"].values() for i in v]
    assert len(ids) == 2 and {i["State"]["Name"] for i in _instances(aws_env, ids).values()} == {"terminated"}
    assert verify_instances(Ec2Compute(params.training.compute.ec2, env="dev", cost_center="train")) == []
    assert store.get(layout.state_key("dev")) is None
