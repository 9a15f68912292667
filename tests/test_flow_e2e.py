"""One fast end-to-end run of the whole chronos-training flow on the embedded default."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.config.params import build_params

SMALL = [
    "evaluation.horizon=8",
    "evaluation.n_windows=2",
    "chronos.context_length=64",
    "chronos.max_steps=20",
    "chronos.batch_size=16",
    "chronos.eval_every=10",
    "chronos.checkpoint_every=10",
    "prophet.n_jobs=1",
    "prophet.uncertainty_samples=50",
]


@pytest.fixture
def small_params(tmp_path):
    return build_params(overrides=SMALL, store=str(tmp_path / "store"), run_id="e2e-run-1")


def test_when_the_default_flow_runs_then_the_store_holds_a_complete_run(prefect_api, small_params, tmp_path):
    from flows.training import chronos_training

    summary = chronos_training(params=small_params)

    assert summary["status"] == "succeeded", summary
    store = open_store(small_params.store_url())
    env, run = small_params.env, small_params.run_id

    # the lock is released and every run file is there
    assert store.get(layout.state_key(env)) is None
    log = json.loads(store.get(layout.training_log_key(env, run))[0])
    assert log["status"] == "succeeded"
    assert [t["status"] for t in log["transitions"]] == [
        "initialization", "data_sync", "training", "results_sync", "cleanup",
    ]
    assert log["schema_version"] >= 1 and log["phases"]["training"] > 0
    cleanup = json.loads(store.get(layout.cleanup_status_key(env, run))[0])
    assert cleanup["complete"] is True
    assert all(step["outcome"] in ("done", "already_done") for step in cleanup["steps"].values())
    metadata = json.loads(store.get(layout.metadata_key(env, run))[0])
    assert metadata["data_fingerprint"]
    assert store.exists(f"{layout.models_prefix(env, run, 'chronos')}/config.json")
    assert any(k.startswith(layout.DATASETS_PREFIX + "/") for k in store.list(layout.DATASETS_PREFIX))

    # the leaderboard has every model with sane metrics
    board = pd.read_csv(store.uri(f"{layout.evaluation_prefix(env, run)}/leaderboard.csv").removeprefix("file://"))
    assert set(board["model"]) == {"chronos", "autoets", "theta", "prophet", "seasonal_naive", "lightgbm", "ensemble"}
    for col in ("mae", "rmse", "mase", "wql"):
        assert board[col].map(lambda v: math.isfinite(v) and v >= 0).all(), col
    sn = board.set_index("model").loc["seasonal_naive"]
    assert sn["wql_relative"] == pytest.approx(1.0)
    # gasoline is ~8-10 million barrels/day: errors far beyond that would mean a broken pipeline
    assert board["mae"].max() < 5.0
    assert summary["leaderboard"] and summary["promotion"] is not None

    # the exploratory report (issue 25): eda.json in the run's data, linked from the summary, and its artifact
    eda = json.loads(store.get(layout.eda_key(env, run))[0])
    assert eda["series"] == 1 and eda["season_length"] == 52 and eda["per_series"][0]["unique_id"] == "us_gasoline"
    assert summary["artifacts"]["eda"] == store.uri(layout.eda_key(env, run))
    from tasks.common import artifact_key

    assert _artifact_markdown(artifact_key(f"eda-{run}")).count("data:image/png;base64,") >= 2

    from chronos_flows.runstate.cleanup import verify_cleanup

    ok, findings = verify_cleanup(store, env)
    assert ok, findings


def test_when_a_model_is_promoted_then_champion_points_at_a_registry_copy_and_an_equal_model_is_kept(prefect_api, tmp_path, capsys):
    from chronos import BaseChronosPipeline

    from flows.training import chronos_training
    from chronos_flows.champion.registry import read_champion

    store_dir = tmp_path / "store"
    first = build_params(overrides=SMALL + ["evaluation.baselines=[]"], store=str(store_dir), run_id="promo-1")
    s1 = chronos_training(params=first)
    assert s1["status"] == "succeeded" and s1["promotion"]["promoted"] is True, s1["promotion"]
    store = open_store(first.store_url())
    champion, etag = read_champion(store, "dev")
    assert champion["run_id"] == "promo-1"
    assert champion["model_uri"].endswith("dev/registry/promo-1/chronos")
    # offline the Chronos is random: as the run's only candidate it still competes, and says so
    assert champion["not_representative"] == "random initialisation: not representative"
    assert "chronos: random initialisation: not representative (competes: the only candidate)" in s1["promotion"]["reason"]
    BaseChronosPipeline.from_pretrained(champion["model_uri"].removeprefix("file://"))

    # the same seed and data give the same score: equal is not better, the champion stays
    second = build_params(overrides=SMALL + ["evaluation.baselines=[]"], store=str(store_dir), run_id="promo-2")
    s2 = chronos_training(params=second)
    assert s2["status"] == "succeeded" and s2["promotion"]["promoted"] is False, s2["promotion"]
    again, etag2 = read_champion(store, "dev")
    assert again == champion and etag2 == etag
    assert not store.list("dev/registry/promo-2/")
    md = json.loads(store.get(layout.metadata_key("dev", "promo-2"))[0])
    assert md["promotion"]["promoted"] is False and md["promotion"]["champion_run_id"] == "promo-1"
    assert md["promotion"]["champion_rescored"] is True
    # the champion was re-scored on this run's windows, next to the candidate
    board = {row["model"]: row for row in md["leaderboard"]}
    assert "champion" in board and board["champion"]["wql"] == pytest.approx(board["chronos"]["wql"])
    assert md["promotion"]["champion_score"] == pytest.approx(board["champion"]["wql"], rel=1e-4)

    # a champion whose model copy is gone is gated on its stored score; the run still succeeds
    for key in store.list("dev/registry/promo-1/"):
        store.delete(key)
    third = build_params(overrides=SMALL + ["evaluation.baselines=[]"], store=str(store_dir), run_id="promo-3")
    s3 = chronos_training(params=third)
    assert s3["status"] == "succeeded" and s3["promotion"]["promoted"] is False
    assert "champion" not in {row["model"] for row in s3["leaderboard"]}
    assert s3["promotion"]["champion_score"] == pytest.approx(champion["score"])

    from app.cli import main

    assert main(["runs", "--store", str(store_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [l for l in lines if l.startswith("promo-")]
    assert [r.split()[0] for r in rows] == ["promo-3", "promo-2", "promo-1"]  # newest first
    assert rows[0].split()[-1] == "no" and rows[2].split()[-1] == "yes" and "chronos=" in rows[2]
    assert main(["runs", "show", "promo-1", "--store", str(store_dir)]) == 0
    shown = capsys.readouterr().out
    assert "run promo-1: succeeded" in shown and "seasonal_naive" in shown and "PROMOTED" in shown


def _artifact_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import anyio

    async def read() -> str:
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return arts[0].data if arts else ""

    return anyio.run(read)


def test_when_the_default_flow_runs_twice_then_the_best_family_is_champion_and_the_second_run_keeps_it_by_the_rule(prefect_api, tmp_path):
    from flows.training import chronos_training
    from chronos_flows.champion.registry import read_champion

    store_dir = tmp_path / "store"
    s1 = chronos_training(params=build_params(overrides=SMALL, store=str(store_dir), run_id="twice-1"))
    assert s1["status"] == "succeeded", s1
    store = open_store(s1["store"])
    champion, etag = read_champion(store, "dev")
    assert champion is not None, "a successful run always leaves a champion"
    board = {row["model"]: row["wql"] for row in s1["leaderboard"]}
    # offline (HF_HUB_OFFLINE=1) the default pretrained Chronos is unreachable: a random model, marked and kept out
    notes = {row["model"]: row["note"] for row in s1["leaderboard"]}
    assert notes.pop("chronos") == "random initialisation: not representative" and set(notes.values()) == {""}
    assert "chronos: random initialisation: not representative (kept out" in s1["promotion"]["reason"]
    candidates = {m: board[m] for m in ("autoets", "theta", "prophet", "seasonal_naive", "lightgbm", "ensemble")}
    best = min(candidates, key=candidates.get)
    assert champion["family"] == best and champion["run_id"] == "twice-1"
    assert champion["score"] == pytest.approx(candidates[best], rel=1e-4)  # the summary rounds to 6 digits
    assert champion["judged_on"]["freq"] == "W-MON" and champion["judged_on"]["horizon"] == 8
    assert champion["judged_on"]["data_fingerprint"] and champion["judged_on"]["dataset_uri"]
    if best == "chronos":
        assert champion["model_uri"].endswith("dev/registry/twice-1/chronos")
    else:
        assert champion["model_uri"] is None and champion["config"]
    reason1 = s1["promotion"]["reason"]
    assert s1["promotion"]["promoted"] is True and reason1.startswith(f"no champion yet: promoted {best} (wql ")
    md1 = json.loads(store.get(layout.metadata_key("dev", "twice-1"))[0])
    assert md1["models"]["chronos"]["random_init"] is True and "chronos" not in md1["models"]["ensemble"]["members"]
    assert md1["promotion"]["reason"] == reason1 and md1["promotion"]["family"] == best
    assert reason1 in _artifact_markdown("champion-decision-twice-1")

    # same data, same settings: the champion is re-scored on the same windows and equal keeps it
    s2 = chronos_training(params=build_params(overrides=SMALL, store=str(store_dir), run_id="twice-2"))
    assert s2["status"] == "succeeded", s2
    reason2 = s2["promotion"]["reason"]
    assert s2["promotion"]["promoted"] is False
    assert reason2.startswith(f"kept {best} from run twice-1 (wql ") and "re-scored on this run's windows" in reason2
    assert read_champion(store, "dev") == (champion, etag)
    md2 = json.loads(store.get(layout.metadata_key("dev", "twice-2"))[0])
    assert md2["promotion"]["reason"] == reason2 and md2["promotion"]["champion_score"] == pytest.approx(champion["score"])
    assert reason2 in _artifact_markdown("champion-decision-twice-2")

    # the champion delivers: batch forecasts of the data it was judged on, its horizon and quantiles
    from chronos_flows.config.params import ForecastParams
    from flows.forecast import chronos_forecast

    doc = chronos_forecast(params=ForecastParams(store=str(store_dir), forecast_id="after-twice"))
    assert doc["champion"]["run_id"] == "twice-1" and doc["champion"]["family"] == best
    assert doc["counts"] == {"series_forecast": 1, "rows": 8, "series_skipped": 0, "chunks": 1}
    assert doc["data"]["fingerprint"] == champion["judged_on"]["data_fingerprint"]
    frame = pd.read_parquet(doc["forecasts_uri"].removeprefix("file://"))
    qcols = [f"{q:g}" for q in champion["judged_on"]["quantiles"]]
    assert list(frame.columns) == ["unique_id", "ds", "mean", *qcols, "family", "champion_run_id"]
    assert (frame[qcols].diff(axis=1).iloc[:, 1:] >= 0).all().all()
    assert "data:image/png;base64," in _artifact_markdown("forecast-plots-after-twice")


def test_when_the_data_needed_heavy_repair_then_the_summary_metadata_and_champion_say_so(prefect_api, tmp_path):
    from flows.training import chronos_training
    from chronos_flows.config.params import DEFAULT_DATA
    from chronos_flows.champion.registry import read_champion

    gas = pd.read_csv(DEFAULT_DATA)
    holey = gas.drop(index=gas.index[5:-30:9])  # ~11% of the weeks missing: filled, under the 20% limit
    path = tmp_path / "holey.csv"
    holey.to_csv(path, index=False)
    params = build_params(overrides=SMALL + ["evaluation.baselines=[seasonal_naive]", f"data.path={path}",
                                             "cleaning.freq=W-MON"], store=str(tmp_path / "store"), run_id="holey-1")
    summary = chronos_training(params=params)
    assert summary["status"] == "succeeded", summary
    warnings = summary["promotion"]["data_warnings"]
    assert warnings and warnings[0].startswith("heavy repair: ") and "were filled (interpolate)" in warnings[0]
    assert "DATA WARNING: heavy repair" in summary["promotion"]["reason"]
    champion, _ = read_champion(open_store(summary["store"]), "dev")
    assert champion["judged_on"]["data_warnings"] == warnings
    md = json.loads(open_store(summary["store"]).get(layout.metadata_key("dev", "holey-1"))[0])
    assert md["promotion"]["data_warnings"] == warnings and md["extra"]["cleaning"]["warnings"] == warnings


def test_when_another_run_holds_the_lock_then_the_flow_run_ends_cancelled_locked_naming_the_holder(prefect_api, tmp_path):
    """A deployment run refused by the lock is not a crash: Cancelled, named "Locked", one message."""
    from chronos_flows.runstate.lock import RunLock
    from flows.training import chronos_training

    params = build_params(overrides=SMALL, store=str(tmp_path / "store"), run_id="refused-1")
    RunLock(open_store(params.store_url()), "dev", lease_seconds=600).acquire("the-holder")
    state = chronos_training(params=params, return_state=True)
    assert state.is_cancelled() and state.name == "Locked"
    assert "locked by run the-holder since" in state.message and "chronos-flows kill" in state.message
    assert state.result(raise_on_failure=False)["status"] == "refused"
    assert open_store(params.store_url()).get(layout.training_log_key("dev", "refused-1")) is None
    # the run's log: one warning naming the holder, no error, no traceback
    logs = _flow_run_logs(str(state.state_details.flow_run_id))
    loud = [r.message for r in logs if r.level >= 30]
    assert len(loud) == 1 and "refused: locked by run the-holder" in loud[0], loud
    assert not any("Traceback" in r.message for r in logs)


def _fingerprints(doc, path=""):
    """Every (path, value) of a key named data_fingerprint anywhere in a JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "data_fingerprint":
                yield f"{path}.{k}", v
            yield from _fingerprints(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _fingerprints(v, f"{path}[{i}]")


def _flow_run_logs(flow_run_id: str) -> list:
    """What `prefect flow-run logs` shows: the flow run's and its task runs' logs, from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the run's last lines are still queued for the API
    logs: list = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=len(logs))
            logs += page
            if len(page) < 200:
                return logs


def test_when_a_run_succeeds_then_its_logs_records_checkpoints_and_lock_files_are_what_a_reviewer_needs(prefect_api, tmp_path, monkeypatch):
    """Issue 11: phase timings and metric lines in the run's Prefect logs without the task-finish
    noise, one data fingerprint in model_metadata.json, best+last checkpoints, no lock-file litter."""
    import chronos_flows.training.fit
    from blocks.store import LOCK_STRIPES
    from chronos_flows.models.chronos.checkpoints import checkpoint_step
    from flows.training import chronos_training

    class SyncEveryStep(chronos_flows.training.fit.TrainProgress):  # every checkpoint reaches the store, whatever the timing
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.every_s = 0.0

    monkeypatch.setattr(chronos_flows.training.fit, "TrainProgress", SyncEveryStep)

    params = build_params(overrides=SMALL + ["chronos.checkpoint_every=5", "chronos.eval_every=5"],
                          store=str(tmp_path / "store"), run_id="reviewed-1")
    summary = chronos_training(params=params)
    assert summary["status"] == "succeeded", summary
    store = open_store(params.store_url())
    env, run = params.env, params.run_id

    # one data fingerprint: the cleaned dataset's; the Chronos training frame's hash has its own name
    md = json.loads(store.get(layout.metadata_key(env, run))[0])
    found = dict(_fingerprints(md))
    assert set(found.values()) == {md["data_fingerprint"]}, found
    chronos = md["models"]["chronos"]
    assert chronos["training_data_fingerprint"] and chronos["training_data_fingerprint"] != md["data_fingerprint"]

    # checkpoints 5, 10, 15, 20 were written; only the best and the last are kept
    prefix = layout.checkpoints_prefix(env, run)
    kept = sorted({k[len(prefix) + 1:].split("/")[0] for k in store.list(prefix + "/")})
    best = chronos["best_step"]
    first_with_best = min(s for s in (5, 10, 15, 20) if s >= best)
    assert [checkpoint_step(n) for n in kept] == sorted({first_with_best, 20}), kept
    assert len(store.list(f"{prefix}/{kept[-1]}/")) >= 2  # a whole checkpoint, not a stub

    # a bounded set of lock files for every key the run wrote
    locks = list((tmp_path / "store" / ".chronos-store" / "locks").iterdir())
    assert 0 < len(locks) <= LOCK_STRIPES

    # the logs a reviewer reads: a line per phase with its time, a summary, metrics per model, one champion line
    log = json.loads(store.get(layout.training_log_key(env, run))[0])
    lines = _flow_run_logs(log["flow_run_id"])
    messages = [ln.message for ln in lines]
    for phase in ("preflight", "data_sync", "training", "autoets", "prophet", "evaluate", "results_sync"):
        assert any(re.fullmatch(rf"phase {phase}: \d+\.\d s", m) for m in messages), (phase, messages)
    (summary_line,) = [m for m in messages if m.startswith("phases: ")]
    assert "training " in summary_line and re.search(r"total \d+\.\d s$", summary_line), summary_line
    for model in ("chronos", "autoets", "prophet", "seasonal_naive"):
        assert any(m.startswith(f"{model}: wql ") and "mase" in m for m in messages), model
    assert len([m for m in messages if m.startswith("champion: ")]) == 1, messages
    task_finished = [ln for ln in lines if ln.task_run_id is not None and ln.message.startswith("Finished in state")]
    assert not task_finished, [ln.message for ln in task_finished]
    assert any(ln.task_run_id is not None for ln in lines)  # the task runs' own lines still arrive
    assert any(ln.task_run_id is None and ln.message.startswith("Finished in state") for ln in lines)  # the flow's one line


def test_when_a_run_fails_then_its_first_error_line_names_the_cause_and_the_traceback_comes_below(prefect_api, tmp_path):
    """Issue 11: a failure reads as one clear line first (the cause), the traceback only below it."""
    from flows.training import chronos_training

    params = build_params(overrides=[*SMALL, f"chronos.model={tmp_path / 'no-such-model'}"],
                          store=str(tmp_path / "store"), run_id="fails-1")
    state = chronos_training(params=params, return_state=True)
    assert state.is_failed()
    errors = [r.message for r in _flow_run_logs(str(state.state_details.flow_run_id)) if r.level >= 40]
    assert errors, "a failed run logged no error"
    first_line = errors[0].splitlines()[0]
    assert "no-such-model" in first_line and "Traceback" not in first_line, errors[0][:500]
    log = json.loads(open_store(params.store_url()).get(layout.training_log_key("dev", "fails-1"))[0])
    assert log["status"] == "failed" and "no-such-model" in log["error"]
