"""Hyperparameter tuning: the search space is checked (exit 2 naming the parameter), a small study
(4 trials, 2 in parallel, a tiny model) prunes, writes a best config that `run` accepts, resumes
from the store, and stops on its wall-clock budget; the run holds the lock and leaves its records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.config.params import build_params
from chronos_flows.core.errors import ChronosFlowsError
from chronos_flows.tuning.study import build_tuning_params

REPO = Path(__file__).resolve().parents[1]

#: a small base run: horizon 8, one backtest window, a tiny Chronos-2 trained 30 steps
BASE = {
    "evaluation": {"horizon": 8, "n_windows": 1, "baselines": ["seasonal_naive"]},
    "chronos": {"context_length": 64, "max_steps": 30, "batch_size": 16, "eval_every": 10, "checkpoint_every": 10},
}


def tuning_file(tmp_path: Path, tuning: dict, name: str = "tune.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**BASE, "tuning": tuning}))
    return path


@pytest.mark.parametrize("space,message", [
    ({}, "search space is empty"),
    ({"chronos.hidden_size": {"low": 1, "high": 2}}, "search_space.chronos.hidden_size: not a tunable parameter"),
    ({"chronos.learning_rate": {"low": 0.1, "high": 0.001}}, "search_space.chronos.learning_rate: low 0.1 must not exceed high 0.001"),
    ({"chronos.learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "search_space.chronos.learning_rate: a log-scale range needs low > 0"),
    ({"cleaning.outliers": {"low": 1, "high": 2}}, "search_space.cleaning.outliers: a categorical parameter needs choices"),
    ({"cleaning.outliers": {"choices": ["flag", "bogus"]}}, "search_space.cleaning.outliers: the value 'bogus' is not valid"),
    ({"chronos.context_length": {"choices": []}}, "search_space.chronos.context_length: choices is empty"),
    ({"chronos.context_length": {"low": 4, "high": 64}}, "search_space.chronos.context_length: the value 4.0 is not valid"),
    ({"cleaning.outlier_alpha": {"low": 0.01, "high": 1.0}}, "search_space.cleaning.outlier_alpha: the value 1.0 is not valid"),
])
def test_when_the_search_space_is_empty_or_invalid_then_the_error_names_the_parameter(tmp_path, space, message):
    with pytest.raises(ChronosFlowsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        build_tuning_params(tuning_file(tmp_path, {"search_space": space}))


def test_when_the_outlier_test_level_is_searched_then_the_space_is_accepted(tmp_path):
    params = build_tuning_params(tuning_file(tmp_path, {"search_space": {"cleaning.outlier_alpha": {"low": 0.001, "high": 0.05, "log": True}}}))
    assert params.search_space["cleaning.outlier_alpha"].high == 0.05


def test_when_tune_gets_an_invalid_space_then_it_exits_2_with_one_line_and_writes_nothing(tmp_path):
    cfg = tuning_file(tmp_path, {"search_space": {"chronos.learning_rate": {"low": 1e-2, "high": 1e-4}}})
    store = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-m", "app.cli", "tune", "--config", str(cfg), "--store", str(store)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "search_space.chronos.learning_rate" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not store.exists() or not any(store.rglob("*.json"))


def test_when_the_study_name_is_not_a_plain_name_then_tune_exits_2_and_writes_nothing(tmp_path):
    cfg = tuning_file(tmp_path, {})
    store = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-m", "app.cli", "tune", "--config", str(cfg), "--store", str(store),
                           "--study", "../../escape"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "tuning.study" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not store.exists() or not any(store.rglob("*.json"))


STUDY = {
    "search_space": {"chronos.learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}},
    "budget": {"max_trials": 4, "max_parallel": 2},
    "pruner_startup_trials": 1,
    # two learning rates that learn, then two that barely move the random model: pruned at step 10
    "enqueue": [{"chronos.learning_rate": 2e-3}, {"chronos.learning_rate": 1e-3},
                {"chronos.learning_rate": 1e-5}, {"chronos.learning_rate": 1.2e-5}],
    "study": "small-study",
}


def test_when_a_small_study_runs_then_it_prunes_writes_the_best_config_that_run_accepts_and_resumes(prefect_api, tmp_path):
    from flows.training import chronos_training
    from flows.tuning import chronos_tuning

    store_dir = tmp_path / "store"
    params = build_tuning_params(tuning_file(tmp_path, STUDY), store=str(store_dir), run_id="tune-run-1")
    summary = chronos_tuning(params=params)

    assert summary["status"] == "succeeded", summary
    study = summary["tuning"]
    assert study["trials"] == 4 and study["stop_reason"] == "max_trials 4 reached"
    assert study["by_state"].get("PRUNED", 0) >= 1 and study["by_state"].get("COMPLETE", 0) >= 2, study
    assert study["best_params"]["chronos.learning_rate"] in (2e-3, 1e-3)

    store = open_store(params.training.store_url())
    prefix = layout.tuning_prefix("dev", "small-study")
    trials = pd.read_csv(store.uri(f"{prefix}/trials.csv").removeprefix("file://"))
    assert list(trials["trial"]) == [0, 1, 2, 3]
    done = trials[trials["state"] == "COMPLETE"]
    assert done["value"].min() == pytest.approx(study["best_value"])
    # the tuning run held the lock and left a training run's records
    assert store.get(layout.state_key("dev")) is None
    log = json.loads(store.get(layout.training_log_key("dev", "tune-run-1"))[0])
    assert log["status"] == "succeeded"
    assert [t["status"] for t in log["transitions"]] == ["initialization", "data_sync", "training", "results_sync", "cleanup"]
    assert log["summary"]["tuning"]["best_trial"] == study["best_trial"]
    assert json.loads(store.get(layout.cleanup_status_key("dev", "tune-run-1"))[0])["complete"] is True

    # the best settings are a config file `chronos-flows run --config` accepts, and it runs
    best_file = tmp_path / "best.yaml"
    best_file.write_bytes(store.get(f"{prefix}/best_config.yaml")[0])
    best = build_params(best_file, store=str(store_dir), run_id="best-run")
    assert best.chronos.learning_rate == study["best_params"]["chronos.learning_rate"]
    assert best.chronos.max_steps == 30 and best.evaluation.horizon == 8
    run = chronos_training(params=best)
    assert run["status"] == "succeeded", run

    # the study resumes from the store: one more trial, the earlier four untouched
    more = params.model_copy(update={"budget": params.budget.model_copy(update={"max_trials": 5}),
                                     "training": params.training.model_copy(update={"run_id": "tune-run-2"})})
    again = chronos_tuning(params=more)
    assert again["status"] == "succeeded" and again["tuning"]["trials"] == 5
    after = pd.read_csv(store.uri(f"{prefix}/trials.csv").removeprefix("file://"))
    pd.testing.assert_frame_equal(after.iloc[:4][["trial", "state", "value"]], trials[["trial", "state", "value"]])
    assert after.iloc[4]["state"] in ("COMPLETE", "PRUNED")


def test_when_the_wall_clock_budget_runs_out_then_the_study_stops_cleanly_and_records_the_stopped_trials(prefect_api, tmp_path):
    from flows.tuning import chronos_tuning

    tuning = {"search_space": {"chronos.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
              "budget": {"max_trials": 20, "max_parallel": 2, "timeout_seconds": 4}, "study": "short"}
    params = build_tuning_params(tuning_file(tmp_path, tuning), store=str(tmp_path / "store"), run_id="tune-short")
    summary = chronos_tuning(params=params)
    assert summary["status"] == "succeeded", summary
    study = summary["tuning"]
    assert study["stop_reason"] == "timeout of 4 s reached"
    assert 1 <= study["trials"] <= 4  # nothing started after the budget ran out
    store = open_store(params.training.store_url())
    trials = pd.read_csv(store.uri(f"{layout.tuning_prefix('dev', 'short')}/trials.csv").removeprefix("file://"))
    stopped = trials[trials["note"].fillna("").str.contains("wall-clock budget")]
    assert len(stopped) >= 1 and set(stopped["state"]) == {"FAIL"}
    assert store.get(layout.state_key("dev")) is None
    assert not _worker_processes(), "a stopped trial's process is still running"


def _worker_processes() -> list[str]:
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "chronos_flows.tuning.worker" in text:
            out.append(text)
    return out


def test_when_a_study_is_plotted_then_optunas_history_and_importance_plots_are_pngs_and_closed():
    import io

    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    import optuna

    from chronos_flows.tuning.study import plot_history_png, plot_importance_png

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("lr", 1e-4, 1e-2, log=True) - 3e-3) ** 2 + 0.1 * t.suggest_int("steps", 1, 5),
                   n_trials=8)
    open_before = plt.get_fignums()
    for png in (plot_history_png(study), plot_importance_png(study)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(io.BytesIO(png))
        assert img.shape[:2] == (240, 480)  # 6 x 3 inches at 80 dpi
        assert img[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    assert plt.get_fignums() == open_before  # the pyplot figures are closed
