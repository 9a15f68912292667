"""chronos_flows.champion.promotion on a LocalStore, without Prefect: copy-then-swap of a Chronos model into
the registry, rollback of the copy on a lost race, data warnings in the reason, model_metadata.json."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from blocks.store import LocalStore
from chronos_flows.core import layout
from chronos_flows.runstate import runlog
from chronos_flows.data.cleaning import CleaningReport
from chronos_flows.config.params import build_params
from chronos_flows.core.errors import RunKilledError
from chronos_flows.evaluation.backtest import BacktestResult
from chronos_flows.champion.promotion import promote_champion, promote_run
from chronos_flows.training.specs import BaselineRecord, DataSync, RunSpec, TrainedChronos
from chronos_flows.champion.registry import decide_champion, read_champion

ENV = "dev"


class RecordingStore(LocalStore):
    """A LocalStore that records the order of its writes; ``on_champion_write`` runs just before
    champion.json is written (to let a rival promote in between)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.writes: list[str] = []
        self.on_champion_write = None

    def _note(self, key: str) -> None:
        if key == layout.champion_key(ENV) and self.on_champion_write is not None:
            hook, self.on_champion_write = self.on_champion_write, None
            hook()
        self.writes.append(key)

    def put(self, key, data, *a, **kw):
        self._note(key)
        return super().put(key, data, *a, **kw)

    def put_if_absent(self, key, data, *a, **kw):
        self._note(key)
        return super().put_if_absent(key, data, *a, **kw)

    def put_if_match(self, key, data, etag, *a, **kw):
        self._note(key)
        return super().put_if_match(key, data, etag, *a, **kw)

    def _upload(self, key, src, *a, **kw):  # upload_dir's one-file primitive
        self._note(key)
        return super()._upload(key, src, *a, **kw)


def _result(scores: dict[str, float]) -> BacktestResult:
    board = pd.DataFrame({"model": list(scores), "wql": list(scores.values()), "mase": [1.0] * len(scores)}).set_index("model")
    board = board.sort_values("wql", kind="stable")
    empty = pd.DataFrame()
    return BacktestResult(forecasts=empty, metrics=empty, leaderboard=board, failures={}, cutoffs=empty,
                          settings={"n_series": 3, "n_windows": 2})


def _report(warnings: list[str] = ()) -> CleaningReport:
    return CleaningReport(freq="MS", season_length=12, rows_in=10, rows_out=10, series_in=3, series_out=3,
                          duplicates_resolved_rule="last", fill_method="linear", per_series={}, dropped={},
                          outlier_method="none", warnings=list(warnings))


DATA = DataSync(dataset_key="datasets/x.parquet", dataset_uri="file:///x.parquet", raw_fingerprint="raw-fp",
                cleaned_fingerprint="clean-fp", source="data.csv")


@pytest.fixture
def spec(tmp_path):
    store = RecordingStore(tmp_path / "store")
    params = build_params(store=str(tmp_path / "store"), run_id="run-1", overrides=["evaluation.baselines=[autoets]"])
    model = tmp_path / "work" / "models" / "chronos"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    return RunSpec(params=params, store=store, run_id="run-1", workdir=tmp_path / "work")


def _chronos(spec: RunSpec) -> TrainedChronos:
    return TrainedChronos(model=None, info={"uri": spec.store.uri(layout.models_prefix(ENV, spec.run_id, "chronos")), "steps_done": 5})


def _autoets() -> BaselineRecord:
    return BaselineRecord(family="autoets", result=None, fit_seconds=1.5, config={"season_length": 12}, chunks=1)


def test_when_a_chronos_candidate_wins_then_the_model_is_copied_before_champion_json_points_to_it(spec):
    done = promote_run(spec, _result({"chronos": 0.1, "autoets": 0.2}), _report(), DATA, _chronos(spec), {"autoets": _autoets()})

    assert done.promoted and done.promotion["family"] == "chronos" and "data_warnings" not in done.promotion
    registry = layout.registry_model_prefix(ENV, "run-1", "chronos")
    writes = spec.store.writes
    champion_at = writes.index(layout.champion_key(ENV))
    copied_at = [i for i, k in enumerate(writes) if k.startswith(registry + "/")]
    assert sorted(writes[i] for i in copied_at) == [f"{registry}/config.json", f"{registry}/model.safetensors"]
    assert max(copied_at) < champion_at
    doc, _ = read_champion(spec.store, ENV)
    assert doc["family"] == "chronos" and doc["model_uri"] == spec.store.uri(registry)
    assert doc["judged_on"]["data_fingerprint"] == "clean-fp" and doc["judged_on"]["season_length"] == 12
    md = runlog.load_model_metadata(spec.store, ENV, "run-1")
    assert md.promotion == done.promotion and md.models["autoets"]["fit_seconds"] == 1.5
    assert md.extra["dataset"] == DATA.to_dict() and md.extra["cost_estimate"]["total_usd"] == 0.0


def test_when_a_baseline_wins_then_no_chronos_files_are_copied_to_the_registry(spec):
    done = promote_run(spec, _result({"chronos": 0.3, "autoets": 0.2}), _report(), DATA, _chronos(spec), {"autoets": _autoets()})

    assert done.promoted and read_champion(spec.store, ENV)[0]["family"] == "autoets"
    assert spec.store.list(layout.registry_model_prefix(ENV, "run-1", "chronos") + "/") == []


def test_when_the_compare_and_swap_loses_a_race_then_the_copied_files_are_deleted_and_the_champion_is_unchanged(spec):
    current, etag = read_champion(spec.store, ENV)
    decision = decide_champion({"chronos": {"wql": 0.1}}, current, gate_metric="wql")
    rival = {"schema_version": 2, "run_id": "rival", "family": "autoets", "model": "autoets", "config": {},
             "gate_metric": "wql", "score": 0.01, "scores": {"wql": 0.01}, "write_id": "rival-write"}
    spec.store.on_champion_write = lambda: spec.store.put(layout.champion_key(ENV), json.dumps(rival).encode())
    entry = {"run_id": "run-1", "family": "chronos", "config": {}, "model_uri": spec.store.uri(layout.registry_model_prefix(ENV, "run-1", "chronos"))}

    promoted, final = promote_champion(spec.store, ENV, entry, decision, etag, spec.workdir / "models" / "chronos")

    assert not promoted and final.champion_run_id == "rival" and not final.promoted
    assert spec.store.list(layout.registry_model_prefix(ENV, "run-1", "chronos") + "/") == []
    assert read_champion(spec.store, ENV)[0]["run_id"] == "rival"


def test_when_data_warnings_exist_then_the_reason_carries_them(spec):
    warn = ["series s1: 40% of values filled"]
    done = promote_run(spec, _result({"chronos": 0.3, "autoets": 0.2}), _report(warn), DATA, _chronos(spec), {"autoets": _autoets()})

    assert done.promotion["reason"].endswith(" — DATA WARNING: series s1: 40% of values filled")
    assert done.promotion["data_warnings"] == warn
    assert read_champion(spec.store, ENV)[0]["judged_on"]["data_warnings"] == warn


def test_when_the_guard_stops_the_run_then_nothing_is_written_to_the_registry(spec):
    def killed() -> None:
        raise RunKilledError("run run-1 was killed")

    with pytest.raises(RunKilledError):
        promote_run(spec, _result({"chronos": 0.1}), _report(), DATA, _chronos(spec), {}, guard=killed)
    assert spec.store.writes == [] and read_champion(spec.store, ENV)[0] is None



def test_when_lightgbm_wins_then_its_panel_is_copied_to_the_registry_before_the_swap_and_champion_json_says_so(tmp_path):
    store = RecordingStore(tmp_path / "store")
    params = build_params(store=str(tmp_path / "store"), run_id="run-1", overrides=["evaluation.baselines=[lightgbm]"])
    spec = RunSpec(params=params, store=store, run_id="run-1", workdir=tmp_path / "work")
    source = layout.run_data_prefix(ENV, "run-1") + "/cleaned.parquet"
    store.put(source, b"the cleaned panel")

    done = promote_run(spec, _result({"chronos": 0.3, "lightgbm": 0.2}), _report(), DATA, _chronos(spec), {})

    doc, _ = read_champion(store, ENV)
    history = doc["needs_history"]
    assert done.promoted and doc["family"] == "lightgbm" and doc["config"]["season_length"] == 12
    assert history["key"] == layout.registry_model_prefix(ENV, "run-1", "history") + "/cleaned.parquet"
    assert store.get(history["key"])[0] == b"the cleaned panel"
    assert store.writes.index(history["key"]) < store.writes.index(layout.champion_key(ENV))


def test_when_a_lightgbm_promotion_loses_the_race_then_its_registry_copy_of_the_panel_is_deleted(spec):
    current, etag = read_champion(spec.store, ENV)
    decision = decide_champion({"lightgbm": {"wql": 0.1}}, current, gate_metric="wql")
    rival = {"schema_version": 2, "run_id": "rival", "family": "autoets", "model": "autoets", "config": {},
             "gate_metric": "wql", "score": 0.01, "scores": {"wql": 0.01}, "write_id": "rival-write"}
    spec.store.on_champion_write = lambda: spec.store.put(layout.champion_key(ENV), json.dumps(rival).encode())
    source = layout.run_data_prefix(ENV, "run-1") + "/cleaned.parquet"
    spec.store.put(source, b"panel")
    key = layout.registry_model_prefix(ENV, "run-1", "history") + "/cleaned.parquet"
    entry = {"run_id": "run-1", "family": "lightgbm", "config": {"season_length": 12},
             "needs_history": {"key": key, "source_key": source}}

    promoted, _ = promote_champion(spec.store, ENV, entry, decision, etag, spec.workdir / "models" / "chronos")

    assert not promoted and key in spec.store.writes and spec.store.get(key) is None
    assert read_champion(spec.store, ENV)[0]["run_id"] == "rival"
