"""Batch forecasts fanned out as ``forecast-chunk`` tasks: the same forecasts.parquet on a Dask
LocalCluster of 2 worker processes as on the local runner, the model loaded once per process (not
once per chunk), and a chunk that fails costs its own series only."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from blocks.store import LocalStore
from chronos_flows.core import layout
from chronos_flows.config.params import ForecastParams
from chronos_flows.core.errors import BadInputError
from tests.test_forecast import panel, seed_champion

THETA = {"season_length": 4, "decomposition_type": "multiplicative", "model": None}
DASK_KWARGS = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": None}


def _forecasts(store_dir, forecast_id: str) -> pd.DataFrame:
    uri = LocalStore(store_dir).uri(f"{layout.forecasts_prefix('dev', forecast_id)}/forecasts.parquet")
    return pd.read_parquet(uri.removeprefix("file://"))


def _params(store_dir, data, forecast_id: str, **extra) -> ForecastParams:
    fields = {"horizon": 6, "chunk_size": 3, "n_jobs": 1, "plot_series": 1, **extra}
    return ForecastParams(store=str(store_dir), forecast_id=forecast_id, data={"path": str(data)}, **fields)


class _Counting:
    """Wraps ``tasks.forecast.champion_forecaster`` (model loads) and the models' ``predict_arrays``."""

    def __init__(self, monkeypatch) -> None:
        import tasks.forecast as tf

        self.loads = 0
        self.batches: list[int] = []
        real = tf.champion_forecaster

        def load(*args, **kwargs):
            self.loads += 1
            model = real(*args, **kwargs)
            if hasattr(model, "predict_arrays"):
                inner = model.predict_arrays

                def predict_arrays(arrays, *a, **k):
                    self.batches.append(len(arrays))
                    return inner(arrays, *a, **k)

                model.predict_arrays = predict_arrays
            return model

        monkeypatch.setattr(tf, "champion_forecaster", load)
        tf._drop_model()  # an earlier test's model must not count as this one's


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(**DASK_KWARGS) as c:
        yield c


@pytest.fixture
def tiny_chronos(tmp_path):
    from chronos_flows.models.chronos.configs import build_random_pipeline

    build_random_pipeline("chronos-2", "tiny", 64, 8, seed=3).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize("family", ["theta", "chronos"])
def test_when_the_forecast_flow_runs_on_a_dask_local_cluster_then_forecasts_parquet_equals_the_local_runner(
        prefect_api, tmp_path, cluster, monkeypatch, family, request):
    from flows.forecast import chronos_forecast

    df = panel(8, n=70)
    data = tmp_path / "panel.csv"
    df.to_csv(data, index=False)
    if family == "chronos":
        config = {"chronos_family": "chronos-2", "context_length": 64, "batch_size": 4}
        seed_champion(tmp_path / "store", "chronos", config, data=df, model_dir=request.getfixturevalue("tiny_chronos"))
    else:
        seed_champion(tmp_path / "store", "theta", THETA, data=df)
    counting = _Counting(monkeypatch)
    local = chronos_forecast(params=_params(tmp_path / "store", data, "fc-local", device="cpu"))
    assert counting.loads == 1  # 3 chunks, one model
    if family == "chronos":  # the array fast path inside every chunk: one batched call of its series each
        assert counting.batches == [3, 3, 2]
    t0 = time.monotonic()
    dask = chronos_forecast(params=_params(tmp_path / "store", data, "fc-dask", device="cpu",
                                           compute={"task_runner": "dask", "dask_address": cluster.scheduler_address}))
    took = time.monotonic() - t0

    a, b = _forecasts(tmp_path / "store", "fc-local"), _forecasts(tmp_path / "store", "fc-dask")
    assert len(a) == 8 * 6 and list(a["unique_id"].unique()) == [f"s{i}" for i in range(8)]
    assert a[["unique_id", "ds"]].equals(b[["unique_id", "ds"]])
    pd.testing.assert_frame_equal(b, a, rtol=1e-5, atol=1e-6)
    assert local["counts"] == dask["counts"] == {"series_forecast": 8, "rows": 48, "series_skipped": 0, "chunks": 3}
    assert dask["skipped"] == local["skipped"] == {}
    assert took < 60, took


def test_when_several_chunks_and_batches_run_locally_then_the_model_is_loaded_once_and_tasks_name_their_chunk(
        prefect_api, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.forecast import chronos_forecast

    seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 4})
    data = tmp_path / "panel.csv"
    panel(7, n=40).to_csv(data, index=False)
    counting = _Counting(monkeypatch)
    state = chronos_forecast(params=_params(tmp_path / "store", data, "fc-1", chunk_size=2), return_state=True)
    doc = state.result()
    chronos_forecast(params=_params(tmp_path / "store", data, "fc-2", chunk_size=2))
    assert counting.loads == 1 and doc["counts"]["chunks"] == 4 and doc["counts"]["series_forecast"] == 7
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    names = sorted(r.name for r in runs if r.name.startswith("forecast-chunk"))
    assert names == ["forecast-chunk-0-s0..s1", "forecast-chunk-1-s2..s3", "forecast-chunk-2-s4..s5", "forecast-chunk-3-s6"]


def test_when_a_chunk_fails_then_its_series_are_skipped_with_the_error_and_the_others_are_written(
        prefect_api, tmp_path, monkeypatch):
    import tasks.forecast as tf
    from flows.forecast import chronos_forecast

    seed_champion(tmp_path / "store", "seasonal_naive", {"season_length": 4})
    data = tmp_path / "panel.csv"
    panel(7, n=40).to_csv(data, index=False)
    real = tf.forecast_chunk

    def flaky(model, frame, **kwargs):
        if "s4" in set(frame["unique_id"]):
            raise MemoryError("worker ran out of memory")
        return real(model, frame, **kwargs)

    monkeypatch.setattr(tf, "forecast_chunk", flaky)
    doc = chronos_forecast(params=_params(tmp_path / "store", data, "fc-flaky"))
    assert doc["counts"] == {"series_forecast": 4, "rows": 24, "series_skipped": 3, "chunks": 3}
    assert sorted(doc["skipped"]) == ["s3", "s4", "s5"]
    assert doc["skipped"]["s4"] == "forecast chunk 1 (s3..s5) failed: MemoryError: worker ran out of memory"
    frame = _forecasts(tmp_path / "store", "fc-flaky")
    assert list(frame["unique_id"].unique()) == ["s0", "s1", "s2", "s6"]
    assert np.isfinite(frame["mean"]).all()

    monkeypatch.setattr(tf, "forecast_chunk", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(BadInputError, match=r"could not forecast any series .*forecast chunk 0 \(s0..s2\) failed: RuntimeError: boom"):
        chronos_forecast(params=_params(tmp_path / "store", data, "fc-lost"))
    assert not LocalStore(tmp_path / "store").exists(f"{layout.forecasts_prefix('dev', 'fc-lost')}/forecast.json")


def test_when_forecast_compute_settings_are_invalid_then_they_are_refused_naming_the_field(tmp_path, capsys):
    from app.cli import main
    from chronos_flows.config.params import build_forecast_params
    from chronos_flows.core.errors import ConfigError

    params = build_forecast_params(overrides=["compute.task_runner=dask", "compute.dask_address=tcp://10.0.0.5:8786",
                                              "compute.max_chunks_in_flight=4"])
    assert params.compute.runner_config().dask_address == "tcp://10.0.0.5:8786"
    for bad, says in ((["compute.task_runner=spark"], "compute.task_runner"),
                      (["compute.dask_address=tcp://x:1"], "compute.task_runner=dask"),
                      (["compute.task_runner=dask", "compute.dask_address=tcp://x:1", "compute.dask_cluster_class=a.B"], "exclude"),
                      (["compute.max_chunks_in_flight=0"], "compute.max_chunks_in_flight")):
        with pytest.raises(ConfigError, match=says):
            build_forecast_params(overrides=bad)
    # the CLI: --set compute.… like any other field, refused with exit 2 before anything runs
    assert main(["forecast", "--store", str(tmp_path / "store"), "--set", "compute.task_runner=spark"]) == 2
    assert "compute.task_runner" in capsys.readouterr().err and not (tmp_path / "store").exists()
