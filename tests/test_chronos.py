"""Chronos training with tiny random-initialised models (CPU, offline)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from chronos_flows.config.params import ChronosConfig, build_params
from chronos_flows.core.errors import BadInputError, ConfigError, TrainingError
from chronos_flows.models.base import DEFAULT_QUANTILES, quantile_column
from chronos_flows.models.chronos.forecasters import (
    METADATA_FILE,
    ChronosForecaster,
    build_random_pipeline,
    plot_loss_curve,
    resolve_model_source,
)
from tests.chronos_resume_worker import HORIZON, make_sine_frame, resume_config

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def sine() -> pd.DataFrame:
    return make_sine_frame()


def _cfg(family: str, **kw) -> ChronosConfig:
    # a random model on purpose (model=None), trained for max_steps (its own budget is not what these tests test)
    base = dict(family=family, model=None, random_max_steps=10_000, context_length=32, max_steps=40, batch_size=16,
                eval_every=10, checkpoint_every=20, learning_rate=2e-3, seed=1, num_threads=1)
    base.update(kw)
    return ChronosConfig(**base)


def _weights(fc: ChronosForecaster) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in fc.pipeline.inner_model.state_dict().items()}


def _mean_loss(history, first: bool, n: int = 2) -> float:
    losses = [h["loss"] for h in history if h.get("loss") is not None]
    part = losses[:n] if first else losses[-n:]
    return float(np.mean(part))


# ---------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("family", ["chronos-bolt", "chronos-2"])
def test_when_finetuned_on_noisy_sine_then_train_and_validation_loss_decrease(family, sine, tmp_path):
    fc = ChronosForecaster(_cfg(family, max_steps=60, checkpoint_every=100), workdir=tmp_path)
    before = fc._ensure_pipeline(HORIZON) and _weights(fc)
    fitted = fc.fit(sine, "MS", HORIZON)
    hist = fitted.training_history
    assert fitted is not fc and fitted.info["steps_done"] == 60
    assert _mean_loss(hist, first=False, n=1) < 0.85 * _mean_loss(hist, first=True, n=1)
    vals = [h["val_loss"] for h in hist if "val_loss" in h]
    assert len(vals) >= 3 and min(vals[1:]) < vals[0]
    # the base forecaster is untouched
    after = _weights(fc)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", ["chronos-2", "chronos-bolt"])
def test_when_finetuned_on_seasonal_pattern_then_backtest_mase_and_wql_beat_the_random_initialised_model(family, sine, tmp_path):
    from chronos_flows.evaluation.backtest import run_backtest

    n_windows = 2
    cut = sine.groupby("unique_id").cumcount(ascending=False) >= HORIZON * n_windows  # never train on the test span
    # a random-initialised model learns slowly: a few dozen steps barely move it; a few hundred at a higher rate do
    cfg = _cfg(family, max_steps=300, learning_rate=3e-3, checkpoint_every=1000, eval_every=50)
    base = ChronosForecaster(cfg, workdir=tmp_path)
    tuned = base.fit(sine[cut], "MS", HORIZON)
    res = run_backtest({"random": base, "tuned": tuned}, sine, horizon=HORIZON, n_windows=n_windows, freq="MS",
                       season_length=12)
    lb = res.leaderboard
    assert lb.loc["tuned", "mase"] < 0.7 * lb.loc["random", "mase"], lb[["mase", "wql"]]
    assert lb.loc["tuned", "wql"] < 0.7 * lb.loc["random", "wql"], lb[["mase", "wql"]]


def test_when_t5_family_finetuned_then_its_own_loss_decreases(sine, tmp_path):
    fc = ChronosForecaster(_cfg("chronos-t5", max_steps=12, batch_size=8, eval_every=4, learning_rate=3e-3), workdir=tmp_path)
    fitted = fc.fit(sine, "MS", HORIZON)
    assert fitted.info["steps_done"] == 12
    assert _mean_loss(fitted.training_history, first=False, n=1) < _mean_loss(fitted.training_history, first=True, n=1)


def test_when_early_stopping_patience_hit_then_training_stops_before_max_steps_with_best_weights(sine, tmp_path):
    # a learning rate this high diverges: validation stops improving quickly
    cfg = _cfg("chronos-bolt", max_steps=400, eval_every=2, early_stopping_patience=2, learning_rate=0.5)
    fitted = ChronosForecaster(cfg, workdir=tmp_path).fit(sine, "MS", HORIZON)
    assert fitted.info["stopped_early"] is True
    assert fitted.info["steps_done"] < 400
    assert fitted.info["best_val_loss"] == min(h["val_loss"] for h in fitted.training_history if "val_loss" in h)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_when_training_process_is_killed_then_fit_resumes_from_newest_checkpoint_and_matches_uninterrupted(tmp_path, sine):
    max_steps, every = 30, 5
    work = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.chronos_resume_worker", str(work), "chronos-bolt", str(max_steps), str(every), "0.2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    ckpts = work / "checkpoints"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if ckpts.is_dir() and any(p.name >= "checkpoint-00000010" for p in ckpts.iterdir() if p.name.startswith("checkpoint-")):
                break
            if proc.poll() is not None:
                pytest.fail(f"worker exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint appeared within 120 s")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("checkpoint-"))
    killed_at = int(done[-1].split("-")[1])
    assert 10 <= killed_at < max_steps  # it really was interrupted

    cfg = resume_config("chronos-bolt", max_steps, every)
    resumed = ChronosForecaster(cfg, workdir=work, checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)
    assert resumed.info["resumed_from_step"] >= killed_at
    assert resumed.info["steps_done"] == max_steps
    steps = [h["step"] for h in resumed.training_history]
    assert steps == sorted(set(steps)) and steps[0] == every and steps[-1] == max_steps  # history carried over, no restart

    straight = ChronosForecaster(cfg, workdir=tmp_path / "straight").fit(sine, "MS", HORIZON)
    a, b = _weights(resumed), _weights(straight)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"weight {k} differs after resume")


def test_when_chronos2_run_crashes_after_checkpoint_then_resume_reaches_max_steps_with_same_weights(tmp_path, sine):
    cfg = _cfg("chronos-2", max_steps=30, checkpoint_every=10, eval_every=10)

    def crash(p):
        if p["step"] >= 20:
            raise KeyboardInterrupt("simulated crash")

    ckpts = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        ChronosForecaster(cfg, workdir=tmp_path / "a", checkpoint_dir=ckpts, progress=crash).fit(sine, "MS", HORIZON)
    assert (ckpts / "checkpoint-00000020").is_dir()
    resumed = ChronosForecaster(cfg, workdir=tmp_path / "a", checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)
    assert resumed.info["resumed_from_step"] == 20 and resumed.info["steps_done"] == 30
    straight = ChronosForecaster(cfg, workdir=tmp_path / "b").fit(sine, "MS", HORIZON)
    a, b = _weights(resumed), _weights(straight)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"weight {k} differs after resume")
    assert resumed.info["best_val_loss"] == pytest.approx(straight.info["best_val_loss"], abs=1e-6)


def test_when_bolt_run_with_early_stopping_crashes_then_resume_stops_at_the_same_step_with_same_weights(tmp_path, sine):
    # patience counter, best step and best weights come back from the checkpoint: the resumed run stops where
    # the uninterrupted one does and ends on the same (best) weights
    cfg = _cfg("chronos-bolt", max_steps=400, eval_every=2, checkpoint_every=2, early_stopping_patience=3,
               learning_rate=0.5)
    straight = ChronosForecaster(cfg, workdir=tmp_path / "b").fit(sine, "MS", HORIZON)
    stop = straight.info["steps_done"]
    assert straight.info["stopped_early"] and stop < 400
    crash_at = max(2, (stop // 2) // 2 * 2)

    def crash(p):
        if p["step"] >= crash_at:
            raise KeyboardInterrupt("simulated crash")

    ckpts = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        ChronosForecaster(cfg, workdir=tmp_path / "a", checkpoint_dir=ckpts, progress=crash).fit(sine, "MS", HORIZON)
    resumed = ChronosForecaster(cfg, workdir=tmp_path / "a", checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)
    assert resumed.info["resumed_from_step"] == crash_at
    assert resumed.info["stopped_early"] and resumed.info["steps_done"] == stop
    assert resumed.info["best_step"] == straight.info["best_step"]
    assert resumed.info["best_val_loss"] == pytest.approx(straight.info["best_val_loss"], abs=1e-6)
    a, b = _weights(resumed), _weights(straight)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"weight {k} differs after resume")


@pytest.mark.parametrize("family,broken", [
    ("chronos-bolt", "model.safetensors"), ("chronos-bolt", "chronos_flows.json"), ("chronos-bolt", "optimizer.pt"),
    ("chronos-2", "training_state.pt"),
])
def test_when_checkpoint_is_corrupt_then_fit_fails_before_training_naming_it(family, broken, tmp_path, sine):
    cfg = _cfg(family, max_steps=10, checkpoint_every=5)
    ckpts = tmp_path / "ck"
    ChronosForecaster(cfg, workdir=tmp_path, checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)
    newest = sorted(ckpts.iterdir())[-1]
    if broken == "optimizer.pt":
        (newest / broken).unlink()  # a checkpoint Trainer could not resume from
    else:
        (newest / broken).write_bytes(b"not a torch file")
    reports = []
    with pytest.raises(TrainingError, match=rf"checkpoint .*checkpoint-00000010.* unreadable \({broken}"):
        ChronosForecaster(cfg, workdir=tmp_path, checkpoint_dir=ckpts, progress=reports.append).fit(sine, "MS", HORIZON)
    assert reports == []


def test_when_bolt_checkpoint_is_from_the_loop_before_trainer_then_fit_refuses_to_resume_saying_so(tmp_path, sine):
    from chronos_flows.models.chronos.checkpoints import write_checkpoint

    cfg = _cfg("chronos-bolt", max_steps=10, checkpoint_every=5)
    ckpts = tmp_path / "ck"
    ChronosForecaster(cfg, workdir=tmp_path, checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)
    meta = json.loads((ckpts / "checkpoint-00000010" / "chronos_flows.json").read_text())
    shutil.rmtree(ckpts)
    meta["step"] = 5  # what the old loop wrote: identity + state in trainer_state.json, tensors in training_state.pt
    write_checkpoint(ckpts, 5, meta, {"model": {}, "optimizer": {}, "scheduler": {}, "rng": {}})
    with pytest.raises(TrainingError, match=r"checkpoint-00000005 was written by the earlier Bolt/T5 training loop"):
        ChronosForecaster(cfg, workdir=tmp_path, checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)


def test_when_resumed_from_the_checkpoint_of_a_finished_run_then_no_step_is_taken_and_weights_match(tmp_path, sine):
    cfg = _cfg("chronos-bolt", max_steps=10, checkpoint_every=5, eval_every=5)
    ckpts = tmp_path / "ck"
    first = ChronosForecaster(cfg, workdir=tmp_path, checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)
    reports = []
    again = ChronosForecaster(cfg, workdir=tmp_path, checkpoint_dir=ckpts, progress=reports.append).fit(sine, "MS", HORIZON)
    assert reports == [] and again.info["steps_done"] == 10 and again.info["resumed_from_step"] == 10
    assert again.info["best_step"] == first.info["best_step"] and again.info["history"] == first.info["history"]
    a, b = _weights(first), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the best validation step's weights, as at the end of the run


def test_when_checkpoint_comes_from_another_config_then_fit_refuses_to_resume(tmp_path, sine):
    ckpts = tmp_path / "ck"
    ChronosForecaster(_cfg("chronos-bolt", max_steps=5, checkpoint_every=5), workdir=tmp_path, checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)
    with pytest.raises(TrainingError, match="context_length"):
        ChronosForecaster(_cfg("chronos-bolt", max_steps=5, context_length=48), workdir=tmp_path, checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)


def test_when_checkpoint_writes_then_only_complete_directories_are_visible(tmp_path, sine):
    ckpts = tmp_path / "ck"
    ChronosForecaster(_cfg("chronos-bolt", max_steps=15, checkpoint_every=5), workdir=tmp_path, checkpoint_dir=ckpts).fit(sine, "MS", HORIZON)
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["checkpoint-00000010", "checkpoint-00000015"]  # older pruned, no temporary leftovers
    meta = json.loads((ckpts / "checkpoint-00000015" / "chronos_flows.json").read_text())
    assert meta["step"] == 15 and meta["family"] == "chronos-bolt"
    hf = json.loads((ckpts / "checkpoint-00000015" / "trainer_state.json").read_text())  # Trainer's own state
    assert hf["global_step"] == 15
    files = {p.name for p in (ckpts / "checkpoint-00000015").iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "best_model.safetensors"} <= files


# ---------------------------------------------------------------------------------------------- saving / loading


LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from chronos import BaseChronosPipeline
    ctx_file, horizon, seed, paths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    ctx = [torch.tensor(c, dtype=torch.float32) for c in json.load(open(ctx_file))]
    out = []
    for path in paths:
        pipe = BaseChronosPipeline.from_pretrained(path)
        torch.manual_seed(seed)
        q, m = pipe.predict_quantiles(ctx, prediction_length=horizon)
        if isinstance(q, list):
            q, m = torch.stack([x[0] for x in q]), torch.stack([x[0] for x in m])
        out.append({"cls": type(pipe).__name__, "q": q.tolist(), "mean": m.tolist()})
    assert not any(k.startswith("chronos_flows") for k in sys.modules)
    print(json.dumps(out))
    """
)


def _round_trip(variants, tmp_path, sine):
    """Fine-tune + save each (family, finetune_mode, steps); load all in ONE plain chronos-only process; compare."""
    saved, ours, cfgs = [], [], []
    for family, finetune_mode, steps in variants:
        cfg = _cfg(family, max_steps=steps, finetune_mode=finetune_mode, eval_every=3,
                   learning_rate=1e-3 if finetune_mode == "full" else 1e-2)
        fitted = ChronosForecaster(cfg, workdir=tmp_path / f"w-{family}-{finetune_mode}").fit(sine, "MS", HORIZON)
        out = tmp_path / f"{family}-{finetune_mode}" / "models" / "chronos"
        meta = fitted.save(out)
        assert meta["family"] == family and meta["steps_done"] == steps and meta["training_data_fingerprint"]
        assert "data_fingerprint" not in meta  # the run's data_fingerprint is the cleaned dataset's hash
        on_disk = json.loads((out / METADATA_FILE).read_text())
        assert on_disk["training_config"]["family"] == family and on_disk["params"] > 0
        assert not (out / "adapter_config.json").exists()  # a LoRA adapter is merged before saving
        saved.append(out)
        ours.append(fitted.predict(sine, HORIZON, "MS"))
        cfgs.append(cfg)
    ctx = [g["y"].to_numpy()[-32:].tolist() for _, g in sine.groupby("unique_id", sort=True)]
    ctx_file = tmp_path / "ctx.json"
    ctx_file.write_text(json.dumps(ctx))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    res = subprocess.run(
        [sys.executable, "-c", LOADER, str(ctx_file), str(HORIZON), "1", *map(str, saved)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    for (family, _, _), fc, got, out, cfg in zip(variants, ours, results, saved, cfgs):
        q = np.array(got["q"])  # (series, horizon, 9)
        mine = np.stack([fc[quantile_column(lv)].to_numpy().reshape(len(ctx), HORIZON) for lv in DEFAULT_QUANTILES], axis=-1)
        np.testing.assert_allclose(mine, q, rtol=1e-5, atol=1e-5, err_msg=family)
        np.testing.assert_allclose(fc["mean"].to_numpy().reshape(len(ctx), HORIZON), np.array(got["mean"]), rtol=1e-5, atol=1e-5)
        pd.testing.assert_frame_equal(ChronosForecaster.load(out, cfg).predict(sine, HORIZON, "MS"), fc)


def test_when_saved_models_are_loaded_by_plain_chronos_process_then_forecasts_match(tmp_path, sine):
    _round_trip([("chronos-bolt", "full", 6), ("chronos-2", "full", 6), ("chronos-2", "lora", 6)], tmp_path, sine)


@pytest.mark.slow
def test_when_saved_t5_model_is_loaded_by_plain_chronos_process_then_sampled_forecasts_match(tmp_path, sine):
    _round_trip([("chronos-t5", "full", 2)], tmp_path, sine)


def test_when_zero_shot_then_forecast_has_horizon_rows_quantile_columns_and_no_training(tmp_path, sine):
    cfg = _cfg("chronos-2", mode="zero-shot")
    fc = ChronosForecaster(cfg, workdir=tmp_path, checkpoint_dir=tmp_path / "ck")
    fitted = fc.fit(sine, "MS", HORIZON)
    assert fitted is not fc and fitted.info["steps_done"] == 0 and fitted.training_history == []
    assert not (tmp_path / "ck").exists()
    out = fitted.predict(sine, HORIZON, "MS", quantiles=(0.1, 0.5, 0.9))
    assert list(out.columns) == ["unique_id", "ds", "mean", "0.1", "0.5", "0.9"]
    assert len(out) == sine["unique_id"].nunique() * HORIZON
    last = sine.groupby("unique_id")["ds"].max()
    first_fc = out.groupby("unique_id")["ds"].min()
    assert all(first_fc[u] == last[u] + pd.offsets.MonthBegin(1) for u in last.index)
    assert out[["mean", "0.1", "0.5", "0.9"]].notna().all().all()
    assert np.isfinite(out[["mean", "0.1", "0.5", "0.9"]].to_numpy()).all()


def test_when_loss_curve_plotted_then_png_written(tmp_path):
    hist = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "elapsed_s": s} for s in range(1, 11)] + [{"step": 10, "loss": 0.1, "val_loss": 0.2}]
    path = plot_loss_curve(hist, tmp_path / "plots" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- bad configs


def test_when_context_shorter_than_horizon_then_config_error_before_any_training(tmp_path, sine):
    cfg = _cfg("chronos-bolt", context_length=8)
    with pytest.raises(ConfigError, match=r"context_length \(8\) is shorter than the horizon \(12\)"):
        ChronosForecaster(cfg, workdir=tmp_path, checkpoint_dir=tmp_path / "ck").fit(sine, "MS", 12)
    assert not (tmp_path / "ck").exists()


def test_when_family_unknown_then_config_error_names_the_known_families(tmp_path):
    bad = _cfg("chronos-bolt").model_copy(update={"family": "chronos-9"})
    with pytest.raises(ConfigError, match="chronos-9.*chronos-2, chronos-bolt, chronos-t5"):
        ChronosForecaster(bad, workdir=tmp_path)
    with pytest.raises(ConfigError, match="chronos-9"):
        build_random_pipeline("chronos-9", "tiny", 32, 8, 0)
    with pytest.raises(ConfigError, match="chronos.family"):
        build_params(overrides=["chronos.family=chronos-9"])


def test_when_model_directory_is_incomplete_then_config_error_names_missing_file(tmp_path, sine):
    pipe = build_random_pipeline("chronos-bolt", "tiny", 32, 8, 0)
    good = tmp_path / "m"
    pipe.model.save_pretrained(good)
    (good / "model.safetensors").unlink()
    cfg = _cfg("chronos-bolt", model=str(good))
    with pytest.raises(ConfigError, match=r"missing its weights file \(model.safetensors"):
        ChronosForecaster(cfg, workdir=tmp_path).fit(sine, "MS", HORIZON)
    with pytest.raises(ConfigError, match="does not exist"):
        ChronosForecaster(_cfg("chronos-bolt", model=str(tmp_path / "nope")), workdir=tmp_path).fit(sine, "MS", HORIZON)
    (good / "config.json").unlink()
    with pytest.raises(ConfigError, match="missing config.json"):
        resolve_model_source(str(good), tmp_path / "cache", None)


def test_when_local_model_family_differs_from_config_then_config_error(tmp_path, sine):
    d = tmp_path / "m"
    build_random_pipeline("chronos-2", "tiny", 32, 8, 0).save_pretrained(d)
    with pytest.raises(ConfigError, match="is a chronos-2 model but chronos.family is chronos-bolt"):
        ChronosForecaster(_cfg("chronos-bolt", model=str(d)), workdir=tmp_path).fit(sine, "MS", HORIZON)


def test_when_series_too_short_then_bad_input_error_names_series(tmp_path):
    short = make_sine_frame(n_series=2, length=12)
    with pytest.raises(BadInputError, match=r"'s0' with 12"):
        ChronosForecaster(_cfg("chronos-bolt"), workdir=tmp_path).fit(short, "MS", HORIZON)


# ---------------------------------------------------------------------------------------------- model sources


def test_when_model_is_s3_uri_then_fetched_once_into_cache_and_fine_tuned(tmp_path, sine):
    src = tmp_path / "bucket-copy"
    build_random_pipeline("chronos-bolt", "tiny", 32, 8, 0).model.save_pretrained(src)
    calls = []

    def fetch_dir(uri: str, dest: Path) -> None:
        calls.append(uri)
        shutil.copytree(src, dest, dirs_exist_ok=True)

    uri = "s3://models/chronos/bolt-tiny"
    cfg = _cfg("chronos-bolt", model=uri, max_steps=3)
    fitted = ChronosForecaster(cfg, workdir=tmp_path / "w", fetch_dir=fetch_dir).fit(sine, "MS", HORIZON)
    again = resolve_model_source(uri, tmp_path / "w" / "model-cache", fetch_dir)
    assert calls == [uri]
    assert Path(again).is_dir() and (Path(again) / ".chronos-flows-complete").is_file()
    assert fitted.info["base_model"] == uri and fitted.info["steps_done"] == 3


def test_when_s3_download_is_incomplete_then_config_error_and_nothing_cached(tmp_path):
    def fetch_config_only(uri: str, dest: Path) -> None:
        (dest / "config.json").write_text("{}")

    with pytest.raises(ConfigError, match="incomplete.*weights file"):
        resolve_model_source("s3://b/m", tmp_path / "cache", fetch_config_only)
    assert not any((tmp_path / "cache").iterdir())


def test_when_no_learning_rate_is_set_then_it_follows_the_starting_point(tmp_path):
    from chronos_flows.config.params import ChronosConfig
    from chronos_flows.models.chronos.forecasters import ChronosForecaster
    from chronos_flows.models.chronos.configs import PRETRAINED_LR, RANDOM_INIT_LR

    random_init = ChronosForecaster(ChronosConfig(model=None), workdir=tmp_path)
    pretrained = ChronosForecaster(ChronosConfig(model="amazon/chronos-2"), workdir=tmp_path)
    explicit = ChronosForecaster(ChronosConfig(model="amazon/chronos-2", learning_rate=3e-4), workdir=tmp_path)
    assert random_init.cfg.learning_rate == RANDOM_INIT_LR
    assert pretrained.cfg.learning_rate == PRETRAINED_LR < RANDOM_INIT_LR
    assert explicit.cfg.learning_rate == 3e-4


def test_when_training_succeeded_then_keep_checkpoints_selects_best_and_last_or_what_it_says():
    from chronos_flows.models.chronos.checkpoints import checkpoints_to_keep

    names = [f"checkpoint-{s:08d}" for s in (5, 10, 15, 20)] + ["README"]
    assert checkpoints_to_keep(names, 10) == {"checkpoint-00000010", "checkpoint-00000020", "README"}
    # the best step between checkpoints: the next checkpoint carries the best weights (best_model)
    assert checkpoints_to_keep(names, 7) == {"checkpoint-00000010", "checkpoint-00000020", "README"}
    assert checkpoints_to_keep(names, 20) == {"checkpoint-00000020", "README"}
    assert checkpoints_to_keep(names, None) == {"checkpoint-00000020", "README"}  # no validation: the last
    assert checkpoints_to_keep(names, 10, "last") == {"checkpoint-00000020", "README"}
    assert checkpoints_to_keep(names, 10, "all") == set(names)
    assert checkpoints_to_keep([], 10) == set()


@pytest.mark.parametrize("family", ["chronos-2", "chronos-bolt"])
def test_when_a_quantile_family_forecasts_then_the_global_rng_does_not_change_its_forecast(tmp_path, family):
    """Chronos-2 and Bolt forecast quantiles directly: their calls skip the seeded RNG fork that T5's
    sampling needs (it costs as much as a tiny model's step on the serving path), so their forecasts
    must not depend on the global RNG's state."""
    d = tmp_path / "m"
    pipe = build_random_pipeline(family, "tiny", 32, 8, 0)
    (pipe.save_pretrained if family == "chronos-2" else pipe.model.save_pretrained)(d)
    fc = ChronosForecaster(_cfg(family, model=str(d)), workdir=tmp_path)
    assert fc.samples is False
    arrays = [np.sin(np.arange(40) / 3.0) * 5 + 10 + i for i in range(3)]
    torch.manual_seed(123)
    mean_a, q_a = fc.predict_arrays(arrays, 8, [0.1, 0.5, 0.9])
    torch.manual_seed(456)
    mean_b, q_b = fc.predict_arrays(arrays, 8, [0.1, 0.5, 0.9])
    np.testing.assert_array_equal(mean_a, mean_b)
    np.testing.assert_array_equal(q_a, q_b)
    assert ChronosForecaster(_cfg("chronos-t5"), workdir=tmp_path).samples is True


@pytest.mark.parametrize("family", ["chronos-2", "chronos-bolt", "chronos-t5"])
def test_when_a_forecaster_forecasts_in_inference_mode_then_forecasts_match_upstream_and_it_can_still_be_fine_tuned(
        tmp_path, sine, family):
    """Forecasts run under ``torch.inference_mode`` (cheaper than upstream's no_grad alone): the
    numbers are upstream's, nothing the model keeps becomes an inference tensor (fine-tuning the same
    forecaster afterwards trains), and what leaves is plain numpy."""
    fc = ChronosForecaster(_cfg(family, max_steps=4, eval_every=2, checkpoint_every=100, batch_size=8), workdir=tmp_path)
    arrays = [np.sin(np.arange(40) / 3.0) * 5 + 10 + i for i in range(3)]
    mean, q = fc.predict_arrays(arrays, HORIZON, [0.1, 0.5, 0.9])
    assert isinstance(mean, np.ndarray) and isinstance(q, np.ndarray)
    if family != "chronos-t5":  # T5 samples: its reference would need the same seeded RNG fork
        ref_q, ref_mean = fc._predict_quantiles(fc.pipeline, [torch.tensor(a[-32:], dtype=torch.float32) for a in arrays],
                                                HORIZON, [0.1, 0.5, 0.9])
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
        np.testing.assert_allclose(q, ref_q, rtol=1e-6)
    assert not any(p.is_inference() for p in fc.pipeline.inner_model.parameters())
    fitted = fc.fit(sine, "MS", HORIZON)
    assert fitted.info["steps_done"] == 4
    assert all(h["loss"] is None or np.isfinite(h["loss"]) for h in fitted.training_history)
