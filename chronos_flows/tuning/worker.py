"""One tuning trial in its own process: ``python -m chronos_flows.tuning.worker SPEC.json``.

The spec (written by the tuning flow) names the trial's training settings, the base cleaning
settings, the raw data (a local Parquet file), the study journal and the trial. The worker cleans
the data with the trial's settings, cuts off the final backtest span, fine-tunes Chronos on the rest
(reporting each validation loss to the study, which may prune the trial), scores the model on the
rolling validation windows against the base-cleaned targets and writes ``result.json`` atomically:
``{"state": "COMPLETE"|"PRUNED"|"FAIL", "value": …, "step": …, "error": …, "seconds": …}``.
No Prefect here: the flow's task runs this and tells the study the outcome.

:func:`prepare` and :func:`fit_and_score` are also what a trial's EC2 instance runs
(:mod:`chronos_flows.tuning.remote`), with its data, checkpoints and progress in the store.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable
from chronos_flows.core import atomic



def prepare(spec: dict[str, Any], raw: Any) -> dict[str, Any]:
    """The trial's training span (cleaned with its settings) and the reference span (cleaned with the
    base settings, to score against): ``{params, train, reference, freq, season_length}``."""
    from chronos_flows.data.cleaning import clean
    from chronos_flows.config.params import CleaningConfig, TrainingParams
    from chronos_flows.evaluation.splits import min_series_length, split_for_training

    params = TrainingParams.model_validate(spec["params"])
    base_cleaning = CleaningConfig.model_validate(spec["base_cleaning"])
    H = params.evaluation.horizon
    min_len = min_series_length(params)
    cleaned, report = clean(raw, params.cleaning, min_length=min_len, horizon=H)
    if base_cleaning == params.cleaning:
        reference = cleaned
    else:
        reference, _ = clean(raw, base_cleaning, min_length=min_len, horizon=H)
    train, freq = split_for_training(cleaned, report.freq, params.evaluation)
    ref_train, _ = split_for_training(reference, report.freq, params.evaluation)
    return {"params": params, "train": train, "reference": ref_train, "freq": freq, "season_length": report.season_length}


def fit_and_score(prep: dict[str, Any], workdir: Path, progress: Callable[[dict], None], *,
                  checkpoint_dir: Path | None = None, fetch_dir: Any = None) -> dict[str, Any]:
    """Fine-tune on the trial's training span (resuming from ``checkpoint_dir``'s newest checkpoint)
    and score on the validation windows; the COMPLETE result."""
    from chronos_flows.models.chronos.forecasters import ChronosForecaster
    from chronos_flows.models.chronos.data import VAL_WINDOWS
    from chronos_flows.tuning.study import validation_score

    params, train = prep["params"], prep["train"]
    H = params.evaluation.horizon
    kwargs = {"fetch_dir": fetch_dir} if fetch_dir is not None else {}
    forecaster = ChronosForecaster(params.chronos, workdir=workdir / "chronos",
                                   checkpoint_dir=checkpoint_dir or workdir / "checkpoints", progress=progress, **kwargs)
    fitted = forecaster.fit(train, prep["freq"], H)
    value = validation_score(fitted, train, prep["reference"], horizon=H, n_windows=VAL_WINDOWS, freq=prep["freq"],
                             season_length=prep["season_length"], quantiles=params.evaluation.quantiles)
    return {"state": "COMPLETE", "value": value, "step": fitted.info.get("steps_done"),
            "best_val_loss": fitted.info.get("best_val_loss"), "resumed_from_step": fitted.info.get("resumed_from_step")}


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """A local trial: the study journal is a local file, so this process reports to it and prunes itself."""
    import optuna
    import pandas as pd

    from chronos_flows.tuning.study import TuningParams, open_study

    tuning = TuningParams.model_validate(spec["tuning"])
    prep = prepare(spec, pd.read_parquet(spec["raw_path"]))
    study = open_study(Path(spec["journal"]), spec["study"], tuning, create=False)
    trial = optuna.trial.Trial(study, int(spec["trial_id"]))
    reported: set[int] = set()

    def progress(ev: dict[str, Any]) -> None:
        val, step = ev.get("val_loss"), ev.get("step")
        if val is None or step is None or step in reported:
            return
        reported.add(step)
        trial.report(float(val), int(step))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (validation loss {val:.4g} above the median)")

    return fit_and_score(prep, Path(spec["workdir"]), progress)


def main(argv: list[str] | None = None) -> int:
    import optuna

    argv = sys.argv[1:] if argv is None else argv
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    result_path = Path(spec["result"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    try:
        result = run_trial(spec)
    except optuna.TrialPruned as exc:
        result = {"state": "PRUNED", "note": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one trial's failure is recorded, the study goes on
        traceback.print_exc()
        result = {"state": "FAIL", "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.monotonic() - t0, 2)
    atomic.write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
