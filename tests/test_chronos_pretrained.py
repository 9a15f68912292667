"""Pretrained Chronos by default (issue 23 item 4): the family's published checkpoint when the hub
(or the local Hugging Face cache standing in for it) has it; offline, one warning and a random
model with a small step budget, marked "random initialisation: not representative"."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from chronos_flows.config.params import ChronosConfig, build_params  # noqa: E402
from chronos_flows.config.sections import PRETRAINED_MODELS, RANDOM_INIT_NOTE  # noqa: E402
from chronos_flows.core.errors import ConfigError  # noqa: E402
from chronos_flows.models.chronos.configs import PRETRAINED_LR, RANDOM_INIT_LR, build_random_pipeline  # noqa: E402
from chronos_flows.models.chronos.forecasters import ChronosForecaster  # noqa: E402
from tests.chronos_resume_worker import HORIZON, make_sine_frame  # noqa: E402

SMALL = dict(context_length=32, batch_size=8, eval_every=5, checkpoint_every=50, seed=1, num_threads=1)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: what the machine sees with ``HF_HUB_OFFLINE=1``."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _publish(cache, repo_id: str, seed: int = 3) -> None:
    """Put a (tiny) Chronos-2 model into ``cache`` the way a hub download leaves it."""
    commit = "0" * 40
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    build_random_pipeline("chronos-2", "tiny", 32, HORIZON, seed).model.save_pretrained(folder / "snapshots" / commit)


def test_when_nothing_is_set_then_chronos_starts_from_the_familys_published_checkpoint():
    assert ChronosConfig().model == PRETRAINED_MODELS["chronos-2"] == "autogluon/chronos-2-small"
    assert build_params(overrides=["chronos.family=chronos-bolt"]).chronos.model == "amazon/chronos-bolt-tiny"
    assert build_params(overrides=["chronos.model="]).chronos.model is None
    assert ChronosConfig().random_competes is False


def test_when_the_default_checkpoint_is_reachable_then_it_is_loaded_and_fine_tuned_as_pretrained(hub_cache, tmp_path):
    _publish(hub_cache, PRETRAINED_MODELS["chronos-2"])
    sine = make_sine_frame()
    cfg = ChronosConfig(max_steps=3, random_max_steps=1, **SMALL)
    fc = ChronosForecaster(cfg, workdir=tmp_path / "w")
    assert fc.cfg.learning_rate == PRETRAINED_LR
    fitted = fc.fit(sine, "MS", HORIZON)
    assert fitted.info["base_model"] == "autogluon/chronos-2-small" and fitted.info["random_init"] is False
    assert fitted.info["steps_done"] == 3  # the random model's budget does not apply
    # zero-shot from the cache equals zero-shot from the snapshot directory itself
    snapshot = next((hub_cache / "models--autogluon--chronos-2-small" / "snapshots").iterdir())
    via_hub = ChronosForecaster(cfg.model_copy(update={"mode": "zero-shot"}), workdir=tmp_path / "a").fit(sine, "MS", HORIZON)
    via_dir = ChronosForecaster(cfg.model_copy(update={"mode": "zero-shot", "model": str(snapshot)}),
                                workdir=tmp_path / "b").fit(sine, "MS", HORIZON)
    pd.testing.assert_frame_equal(via_hub.predict(sine, HORIZON, "MS"), via_dir.predict(sine, HORIZON, "MS"))


def test_when_the_hub_is_unreachable_then_the_default_falls_back_to_a_small_random_model_with_one_warning(hub_cache, tmp_path, caplog):
    sine = make_sine_frame()
    cfg = ChronosConfig(max_steps=600, random_max_steps=4, **SMALL)
    with caplog.at_level(logging.WARNING, logger="chronos_flows.train"):
        fitted = ChronosForecaster(cfg, workdir=tmp_path).fit(sine, "MS", HORIZON)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "autogluon/chronos-2-small" in r.getMessage()]
    assert len(warnings) == 1 and RANDOM_INIT_NOTE in warnings[0] and "unreachable" in warnings[0]
    assert fitted.info["random_init"] is True and fitted.info["base_model"] == "random:chronos-2:tiny"
    assert RANDOM_INIT_NOTE in fitted.info["random_init_reason"]
    assert fitted.info["steps_done"] == 4 and fitted.cfg.learning_rate == RANDOM_INIT_LR  # the small random budget
    out = fitted.predict(sine, HORIZON, "MS")
    assert len(out) == sine["unique_id"].nunique() * HORIZON and np.isfinite(out["mean"]).all()
    assert fitted.metadata()["random_init"] is True


def test_when_a_model_the_user_chose_is_unreachable_then_it_is_an_error_not_a_random_model(hub_cache, tmp_path):
    with pytest.raises(ConfigError, match="amazon/chronos-2.*cannot be reached"):
        ChronosForecaster(ChronosConfig(model="amazon/chronos-2", **SMALL), workdir=tmp_path).fit(make_sine_frame(), "MS", HORIZON)


def test_when_the_model_is_empty_on_purpose_then_a_random_model_trains_within_its_budget(tmp_path):
    cfg = ChronosConfig(model=None, max_steps=50, random_max_steps=3, **SMALL)
    fitted = ChronosForecaster(cfg, workdir=tmp_path).fit(make_sine_frame(), "MS", HORIZON)
    assert fitted.info["random_init"] is True and fitted.info["steps_done"] == 3


# ------------------------------------------------------------------ marked, kept out unless asked


def test_when_chronos_is_random_then_it_is_marked_and_kept_out_of_the_ensemble_and_the_champion_race_unless_asked():
    from chronos_flows.champion.promotion import candidates, competitors, leaderboard_records, mark_not_representative, not_representative
    from chronos_flows.evaluation.backtest import render_report
    from chronos_flows.evaluation.ensemble import add_ensemble
    from tests.test_ensemble import Shifted, backtest, panel

    df = panel()
    params = build_params(overrides=["evaluation.baselines=[autoets]"])
    raw = backtest({"chronos": Shifted(0.0), "autoets": Shifted(2.0), "seasonal_naive": Shifted(-3.0)}, df)
    assert not_representative({"random_init": False}) == {} and mark_not_representative(raw, {}) is raw
    result = mark_not_representative(raw, not_representative({"random_init": True}))
    members = competitors(params, result, ["chronos", "autoets", "seasonal_naive"])
    assert members == ["autoets", "seasonal_naive"]
    with_ens = add_ensemble(result, df, candidates=members, gate_metric="wql", fit_windows=[0])
    assert "chronos" not in with_ens.settings["ensemble"]["members"]
    assert with_ens.leaderboard["wql"].idxmin() == "chronos"  # the best score, and still no candidate
    assert set(candidates(params, with_ens)) == {"autoets", "ensemble"}
    rows = {r["model"]: r["note"] for r in leaderboard_records(with_ens)}
    assert rows == {"chronos": RANDOM_INIT_NOTE, "autoets": "", "seasonal_naive": "", "ensemble": ""}
    assert f"**chronos**: {RANDOM_INIT_NOTE}." in render_report(with_ens)
    asked = build_params(overrides=["evaluation.baselines=[autoets]", "chronos.random_competes=true"])
    assert competitors(asked, result, ["chronos", "autoets"]) == ["chronos", "autoets"]
    assert "chronos" in candidates(asked, with_ens)
    alone = build_params(overrides=["evaluation.baselines=[]", "evaluation.ensemble=false"])
    assert set(candidates(alone, result)) == {"chronos"}  # the only candidate still decides the run


def test_when_the_run_summary_is_printed_then_the_random_chronos_row_says_it_is_not_representative(capsys):
    from app.cli import _print_summary

    board = [{"model": "theta", "mase": 0.9, "wql": 0.1, "note": ""},
             {"model": "chronos", "mase": 1.4, "wql": 0.3, "note": RANDOM_INIT_NOTE}]
    _print_summary({"run_id": "r", "status": "succeeded", "leaderboard": board})
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].strip().startswith("chronos") and lines[3].endswith(f"({RANDOM_INIT_NOTE})")
    assert lines[2].strip().startswith("theta") and "not representative" not in lines[2]
