"""The chronos-monitor flow end to end on the shipped gasoline data: train at week T, forecast at T,
reveal T+1..T+13 unchanged (scored, no degradation) or with a level shift (degradation event emitted
and recorded); the CLI's `monitor`, `accuracy` and `runs show`; the deployments in prefect.yaml."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from blocks.resolve import open_store
from chronos_flows.config.params import DEFAULT_DATA, REPO_ROOT, DataConfig, ForecastParams, MonitorParams, build_params
from chronos_flows.core import layout
from chronos_flows.monitoring.history import read_history
from chronos_flows.monitoring.rule import EVENT
from tests.test_flow_e2e import SMALL

HORIZON = 13
#: one forecast only, so K = 1; a single origin is noisy (an unchanged champion scored 2.4x its backtest WQL
#: here, a 30 % level shift >10x), so the tolerance of one forecast is wider than the default's x2 on K = 2
ONE_FORECAST = {"consecutive": 1, "tolerance": 3.0, "coverage_low": 0.3}


def _events(name: str, resource_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    import anyio

    async def read():
        async with get_client() as client:
            page = await client.read_events(filter=EventFilter(event=EventNameFilter(name=[name]),
                                                               resource=EventResourceFilter(id=[resource_id])), limit=50)
            return page.events

    return anyio.run(read)


@pytest.fixture(scope="module")
def forecast_at_t(prefect_api, tmp_path_factory):
    """Gasoline cut at week T (13 weeks before the end): train (small settings), forecast at T."""
    from flows.forecast import chronos_forecast
    from flows.training import chronos_training

    root = tmp_path_factory.mktemp("monitor-e2e")
    gas = pd.read_csv(DEFAULT_DATA, parse_dates=["ds"])
    cut = gas.iloc[: len(gas) - HORIZON]
    cut_csv = root / "gas-until-T.csv"
    cut.to_csv(cut_csv, index=False)
    store_dir = root / "store"
    overrides = SMALL + [f"evaluation.horizon={HORIZON}", f"data.path={cut_csv}", "evaluation.baselines=[autoets,theta,seasonal_naive]"]
    summary = chronos_training(params=build_params(overrides=overrides, store=str(store_dir), run_id="mon-run-1"))
    assert summary["status"] == "succeeded", summary
    doc = chronos_forecast(params=ForecastParams(store=str(store_dir), forecast_id="at-T", data=DataConfig(path=str(cut_csv))))
    assert doc["horizon"] == HORIZON
    return {"root": root, "store": store_dir, "gas": gas, "T": cut["ds"].max(), "champion": summary["promotion"]}


def _reveal(ctx, name: str, shift: float = 0.0) -> Path:
    gas = ctx["gas"].copy()
    gas.loc[gas["ds"] > ctx["T"], "y"] *= 1.0 + shift
    path = ctx["root"] / f"{name}.csv"
    gas.to_csv(path, index=False)
    return path


def _copy_store(ctx, name: str) -> Path:
    dst = ctx["root"] / f"store-{name}"
    shutil.copytree(ctx["store"], dst)
    return dst


def test_when_weeks_t1_to_t13_are_revealed_unchanged_then_the_forecast_is_scored_and_nothing_degrades(forecast_at_t):
    from flows.monitor import chronos_monitor

    ctx = forecast_at_t
    store_dir = _copy_store(ctx, "unchanged")
    params = MonitorParams(store=str(store_dir), data=DataConfig(path=str(_reveal(ctx, "unchanged"))),
                           degradation=ONE_FORECAST)
    summary = chronos_monitor(params=params)
    assert summary["scored"] == 1 and summary["rows_written"] == 1 and not summary["degraded"], (summary["degradation"], summary["accuracy"])
    assert summary["event_emitted"] is False
    (row,) = summary["accuracy"]
    assert row["forecast_id"] == "at-T" and row["steps"] == f"{HORIZON}/{HORIZON}" and row["points"] == HORIZON
    assert row["wql"] <= row["promised_wql"] * 4, row
    store = open_store(params.store_url())
    assert not store.list("dev/monitoring/degradations/")
    hist = read_history(store, "dev")
    assert len(hist) == 1 and hist.iloc[0]["champion_run_id"] == "mon-run-1" and bool(hist.iloc[0]["complete"])

    # the same data again: idempotent
    again = chronos_monitor(params=params)
    assert again["rows_written"] == 0 and again["rows_already_recorded"] == 1
    assert len(read_history(store, "dev")) == 1

    # the engineer's view: the artifact (table + PNG) and the shell
    from tests.test_flow_e2e import _artifact_markdown

    md = _artifact_markdown("monitor-dev")
    assert "| at-T |" in md and "data:image/png;base64," in md and "not degraded" in md
    from app.cli import main

    assert main(["accuracy", "--store", str(store_dir), "--json"]) == 0


def test_when_the_revealed_weeks_shift_level_then_a_degradation_event_is_emitted_and_recorded(forecast_at_t, capsys):
    from flows.monitor import chronos_monitor

    ctx = forecast_at_t
    store_dir = _copy_store(ctx, "shifted")
    params = MonitorParams(store=str(store_dir), data=DataConfig(path=str(_reveal(ctx, "shifted", shift=0.3))),
                           degradation=ONE_FORECAST)
    summary = chronos_monitor(params=params)
    assert summary["degraded"] and summary["degradation_created"] and summary["event_emitted"], summary
    deg = summary["degradation"]
    assert deg["champion_run_id"] == "mon-run-1" and "wql" in deg["fired"] and deg["event_id"] != "not-emitted"
    store = open_store(params.store_url())
    record = json.loads(store.get(layout.degradation_key("dev", "mon-run-1"))[0])
    assert record["event_emitted_at"] and record["live_wql"] > record["threshold_wql"]

    resource_id = "chronos-flows.champion.dev.mon-run-1"
    deadline, events = time.monotonic() + 30, []
    while time.monotonic() < deadline and not events:
        events = _events(EVENT, resource_id)
        time.sleep(0.5)
    assert len(events) == 1 and events[0].payload["champion_run_id"] == "mon-run-1"
    assert str(events[0].id) == deg["event_id"]

    # a second monitor run does not raise the alarm again for the same champion
    again = chronos_monitor(params=params)
    assert again["degraded"] and not again["degradation_created"] and again["event_emitted"] is False

    # the shell: accuracy and runs show report the live accuracy of the champion
    from app.cli import main

    capsys.readouterr()
    assert main(["accuracy", "--store", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert "at-T" in out and "DEGRADED" in out
    assert main(["runs", "show", "mon-run-1", "--store", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert "live accuracy" in out and "DEGRADED" in out


def test_when_prefect_yaml_is_read_then_training_triggers_on_degradation_and_the_monitor_is_scheduled():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    triggers = [t for d in deps.values() for t in d.get("triggers") or []]
    assert len(triggers) == 1
    training = [d for d in deps.values() if d.get("triggers")][0]
    assert training["entrypoint"] == "flows/training.py:chronos_training"
    trig = DeploymentEventTrigger(**{k: v for k, v in triggers[0].items() if k != "type"})
    assert trig.expect == {EVENT} and trig.enabled
    assert trig.match.model_dump().get("chronos-flows.env") == "dev"
    monitor = deps["monitor-daily"]
    assert monitor["entrypoint"] == "flows/monitor.py:chronos_monitor" and monitor["schedules"][0]["cron"]
    from flows.monitor import chronos_monitor  # the entrypoint resolves

    assert chronos_monitor.name == "chronos-monitor"
