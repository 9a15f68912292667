"""A second weekly-style run on unchanged data reuses the persisted results of ingest, clean and the
baselines' backtest chunks (Prefect task caching) and gets the same leaderboard."""

from __future__ import annotations

import json
import sys

import anyio

from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.config.params import build_params
from tests.test_flow_e2e import SMALL

def _task_states(flow_run_id) -> dict[str, list[str]]:
    """{task name: [state names]} of a flow run's task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        out: dict[str, list[str]] = {}
        for tr in runs:  # "ingest-a1b" → ingest, "backtest-autoets-chunk-0" → backtest-autoets
            name = tr.name.split("-chunk-")[0] if "-chunk-" in tr.name else tr.name.rsplit("-", 1)[0]
            out.setdefault(name, []).append(tr.state.name)
        return out

    return anyio.run(read)


def _by_task(states: dict[str, list[str]], prefix: str) -> list[str]:
    return [s for name, got in states.items() if name.startswith(prefix) for s in got]


def test_when_a_second_run_sees_unchanged_data_then_ingest_clean_and_the_baselines_are_cached(prefect_api, tmp_path):
    from flows.training import chronos_training

    store_dir = str(tmp_path / "store")
    # the first run recomputes (and refreshes any entry an earlier test of this session left)
    first = build_params(overrides=SMALL + ["compute.cache=false"], store=store_dir, run_id="week-1")
    second = build_params(overrides=SMALL, store=store_dir, run_id="week-2")
    s1 = chronos_training(params=first, return_state=True)
    s2 = chronos_training(params=second, return_state=True)
    assert s1.result()["status"] == "succeeded" and s2.result()["status"] == "succeeded"

    one, two = _task_states(s1.state_details.flow_run_id), _task_states(s2.state_details.flow_run_id)
    chunks1, chunks2 = _by_task(one, "backtest-"), _by_task(two, "backtest-")
    assert len(chunks1) == len(chunks2) == 4  # autoets, theta, prophet, lightgbm: one gasoline series each
    assert set(chunks1) == {"Completed"}, one
    assert set(chunks2) == {"Cached"}, two
    assert one["ingest"] == ["Completed"] and one["clean"] == ["Completed"]
    assert two["ingest"] == ["Cached"] and two["clean"] == ["Cached"]

    store = open_store(first.store_url())
    md1 = json.loads(store.get(layout.metadata_key("dev", "week-1"))[0])
    md2 = json.loads(store.get(layout.metadata_key("dev", "week-2"))[0])
    board1 = {row["model"]: row for row in md1["leaderboard"]}
    board2 = {row["model"]: row for row in md2["leaderboard"]}
    for model in ("autoets", "theta", "prophet", "lightgbm", "seasonal_naive", "chronos"):
        assert board2[model] == board1[model] | {"rank": board2[model]["rank"]}, model
    assert md2["models"]["autoets"]["cached_chunks"] == 1 and md1["models"]["autoets"]["cached_chunks"] == 0

    log1 = json.loads(store.get(layout.training_log_key("dev", "week-1"))[0])["phases"]
    log2 = json.loads(store.get(layout.training_log_key("dev", "week-2"))[0])["phases"]
    fit1 = sum(log1[f] for f in ("autoets", "theta", "prophet"))
    fit2 = sum(log2[f] for f in ("autoets", "theta", "prophet"))
    assert fit2 < fit1, (fit1, fit2)
    # the figure for the README, past pytest's capture (capsys here would leave Prefect's console
    # handler bound to a stream closed after this test: later flow runs' logging would fail)
    print(f"\nbaseline phases: {fit1:.2f} s computed, {fit2:.2f} s cached; preflight {log1['preflight']:.2f} s → {log2['preflight']:.2f} s",
          file=sys.__stdout__, flush=True)
