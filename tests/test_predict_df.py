"""chronos-forecasting's own ``predict_df`` is the reference for the frames the batch path builds.

The batch path (``forecast_panel`` → ``ChronosForecaster.predict_series``) splits the panel once,
sends arrays to the model and builds one output frame per chunk, instead of calling
``pipeline.predict_df`` per chunk: ``benchmarks/forecast.py`` measures both. These tests pin that the
two give the same forecasts. The one convention that differs on purpose: chronos-flows sorts each
row's quantiles (a forecast never crosses its own band), ``predict_df`` returns them as the model
emits them, so the comparison sorts the reference's quantiles first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chronos_flows.forecasting.batch import forecast_panel
from chronos_flows.models.base import quantile_column

Q = (0.1, 0.2, 0.5, 0.8, 0.9)


def _panel(n_series: int, lengths: list[int], freq: str) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    parts = []
    for i in range(n_series):
        n = lengths[i % len(lengths)]
        ds = pd.date_range("2019-01-07", periods=n, freq=freq)
        y = 20 + 5 * np.sin(np.arange(n) * 2 * np.pi / 13) + rng.normal(0, 1, n)
        parts.append(pd.DataFrame({"unique_id": f"s{i:02d}", "ds": ds, "y": y}))
    return pd.concat(parts, ignore_index=True)


def _save_tiny(family: str, path, context: int, horizon: int) -> None:
    from chronos_flows.models.chronos.configs import build_random_pipeline

    pipe = build_random_pipeline(family, "tiny", context, horizon, seed=11)
    module = pipe if family == "chronos-2" else pipe.inner_model  # Bolt pipelines save their module
    module.save_pretrained(path)


@pytest.mark.parametrize("family", ["chronos-2", "chronos-bolt"])
def test_when_a_chronos_champion_forecasts_a_panel_then_the_frame_equals_upstream_predict_df(tmp_path, family):
    import torch
    from chronos import BaseChronosPipeline

    from chronos_flows.config.params import ChronosConfig
    from chronos_flows.models.chronos.forecasters import ChronosForecaster

    context, horizon = 64, 8
    _save_tiny(family, tmp_path / "model", context, horizon)
    df = _panel(9, [90, 40, 71], "W-MON")  # unequal lengths, some shorter than the context

    model = ChronosForecaster.load(tmp_path / "model", ChronosConfig(family=family, context_length=context, batch_size=4,
                                                                      device="cpu"), workdir=tmp_path)
    chunks: list[pd.DataFrame] = []
    forecast_panel(model, df, horizon=horizon, freq="W-MON", quantiles=Q, family="chronos", champion_run_id="r",
                   chunk_size=4, sink=chunks.append)
    ours = pd.concat(chunks, ignore_index=True).sort_values(["unique_id", "ds"], ignore_index=True)

    pipe = BaseChronosPipeline.from_pretrained(str(tmp_path / "model"), device_map="cpu", dtype=torch.float32)
    up_in = df.rename(columns={"unique_id": "item_id", "ds": "timestamp", "y": "target"})
    up_in = up_in.groupby("item_id", group_keys=False).tail(context)  # the context ours uses
    ref = pipe.predict_df(up_in, prediction_length=horizon, quantile_levels=list(Q), freq="W-MON")
    ref = ref.sort_values(["item_id", "timestamp"], ignore_index=True)

    assert len(ours) == len(ref) == 9 * horizon
    assert ours["unique_id"].tolist() == ref["item_id"].astype(str).tolist()
    assert (pd.DatetimeIndex(ours["ds"]) == pd.DatetimeIndex(ref["timestamp"])).all()
    ref_q = np.sort(ref[[str(q) for q in Q]].to_numpy(dtype=float), axis=1)
    np.testing.assert_allclose(ours[[quantile_column(q) for q in Q]].to_numpy(dtype=float), ref_q, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours["mean"].to_numpy(dtype=float), ref["predictions"].to_numpy(dtype=float), rtol=1e-4, atol=1e-4)
