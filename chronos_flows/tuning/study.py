"""Hyperparameter tuning of Chronos fine-tuning and cleaning settings (domain core: Optuna, no Prefect).

A study (Optuna TPE sampler, median pruner on the intermediate validation loss) searches the
``search_space`` of a :class:`TuningParams`: dotted keys of :class:`~chronos_flows.config.params.TrainingParams`
(``chronos.learning_rate``, ``cleaning.outliers`` …), each a float/int range or a list of choices.

* Every trial trains on the training span only (the final backtest windows that judge the champion
  are cut off first, as in a training run) and is scored on the rolling validation windows at the
  end of that span — the windows fine-tuning holds out — with WQL against the targets cleaned with
  the *base* cleaning settings, so trials that clean differently are judged on the same numbers.
* The study lives in an Optuna journal file (``JournalFileBackend``), mirrored to the store after
  every trial, so an interrupted study resumes from the store; trials left running by an
  interruption are marked failed and do not count against ``max_trials``.
* Trials run as local processes, or with ``compute.backend=ec2`` one ephemeral instance each
  (:mod:`chronos_flows.tuning.remote`: spot allowed, checkpoints in the store, a reclaimed instance
  is replaced and resumes).
* Budgets: ``max_trials`` finished trials, ``max_parallel`` at once, ``timeout_seconds`` wall
  clock, ``max_cost_usd`` (instance cost of the trials: zero on the local backend) — whichever comes
  first ends the study; the best settings are written as a config file ``chronos-flows run --config``
  accepts.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chronos_flows.config.params import TrainingParams, merge_trees, format_validation_error
from chronos_flows.core.errors import BadInputError, ConfigError

#: the settings a study may search (dotted keys of TrainingParams); anything else is refused
TUNABLE: dict[str, str] = {
    "chronos.learning_rate": "float",
    "chronos.max_steps": "int",
    "chronos.context_length": "int",
    "chronos.batch_size": "int",
    "chronos.finetune_mode": "categorical",
    "chronos.lora_rank": "int",
    "chronos.warmup_ratio": "float",
    "chronos.lr_scheduler": "categorical",
    "cleaning.outliers": "categorical",
    "cleaning.fill_method": "categorical",
    "cleaning.outlier_iqr_k": "float",
    "cleaning.outlier_alpha": "float",
}


class SearchParam(BaseModel):
    """One dimension of the search space: a numeric range (``low``/``high``, ``log``, ``step``) or ``choices``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: Optional[float] = Field(None, description="Lowest value (numeric parameters).")
    high: Optional[float] = Field(None, description="Highest value (numeric parameters).")
    log: bool = Field(False, title="Log scale", description="Sample on a log scale (learning rates).")
    step: Optional[float] = Field(None, description="Grid step of a numeric parameter (empty: continuous / 1 for integers).")
    choices: Optional[tuple[Any, ...]] = Field(None, description="The values to choose from (categorical parameters).")


DEFAULT_SEARCH_SPACE: dict[str, SearchParam] = {
    "chronos.learning_rate": SearchParam(low=1e-5, high=1e-2, log=True),
    "chronos.max_steps": SearchParam(low=200, high=1000, step=100),
    "chronos.context_length": SearchParam(choices=(64, 128, 256)),
    "chronos.finetune_mode": SearchParam(choices=("full", "lora")),
    "cleaning.outliers": SearchParam(choices=("flag", "replace")),
}


class TuningBudget(BaseModel):
    """Whichever budget is reached first ends the study cleanly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_trials: int = Field(20, ge=1, title="Maximum trials", description="Finished trials (completed, pruned or failed) in the study, counting earlier sessions.")
    max_parallel: int = Field(2, ge=1, title="Trials in parallel", description="Trials running at once (local processes, or one EC2 instance each).")
    timeout_seconds: Optional[float] = Field(None, gt=0, title="Wall-clock limit (seconds)", description="Stop this session after this long; running trials are stopped and recorded as failed.")
    max_cost_usd: Optional[float] = Field(None, ge=0, title="Maximum cost (USD)", description="Stop the study once its trials' instance cost reaches this: no new trial, running ones stopped (local trials cost nothing).")


class TuningParams(BaseModel):
    """Parameters of the ``chronos-tuning`` flow: the base training settings, what to search and the budgets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    training: TrainingParams = Field(default_factory=TrainingParams, title="Base training settings",
                                     description="The training run every trial starts from (data, cleaning, Chronos, evaluation, store, lock).")
    search_space: dict[str, SearchParam] = Field(default_factory=lambda: dict(DEFAULT_SEARCH_SPACE), title="Search space",
                                                 description="Dotted TrainingParams keys to search, each a range or a list of choices.")
    budget: TuningBudget = Field(default_factory=TuningBudget, title="Budgets", description=TuningBudget.__doc__)
    study: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", title="Study name",
                                 description="Name of the study in the store; an existing study resumes (default: a new name).")
    seed: int = Field(0, description="Seed of the TPE sampler.")
    pruner_startup_trials: int = Field(2, ge=0, title="Trials before pruning", description="Finished trials before the median pruner may stop a trial.")
    pruner_warmup_steps: int = Field(0, ge=0, title="Steps before pruning", description="Training steps of a trial before it may be pruned.")
    enqueue: tuple[dict[str, Any], ...] = Field((), title="Settings to try first",
                                                description="Trials to run first (e.g. the current production settings), as {dotted key: value}.")
    final_run: bool = Field(False, title="Train with the best settings", description="After the study, run chronos-training with the best settings.")

    @field_validator("search_space")
    @classmethod
    def _not_empty(cls, v: dict[str, SearchParam]) -> dict[str, SearchParam]:
        if not v:
            raise ValueError("the search space is empty; give at least one parameter (e.g. chronos.learning_rate)")
        return v


def build_tuning_params(config_file: str | Path | None = None, overrides: list[str] | None = None,
                        **training_fields: Any) -> TuningParams:
    """A tuning config file: the training sections as for ``chronos-flows run`` (data:, chronos:, …)
    plus a ``tuning:`` section (search_space, budget, study, seed, enqueue, final_run). ``--set``
    overrides reach both (``--set tuning.budget.max_trials=4``). Errors name the field (exit 2)."""
    from chronos_flows.config.params import load_config_tree, parse_overrides, params_from_tree

    tree = merge_trees(load_config_tree(config_file), parse_overrides(overrides or []))
    tuning = tree.pop("tuning", None) or {}
    if not isinstance(tuning, dict):
        raise ConfigError(f"the tuning: section{f' of {config_file}' if config_file else ''} must be a mapping "
                          "(search_space:, budget:, …)")
    training = params_from_tree(tree, config_file, **training_fields)
    try:
        params = TuningParams.model_validate({**tuning, "training": training})
    except ValidationError as exc:
        lines = [f"invalid tuning settings{f' in {config_file}' if config_file else ''}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  tuning.{loc}: {err['msg']}")
        lines.append("fix the field(s) above (see README 'Tuning') and run again")
        raise ConfigError("\n".join(lines)) from None
    validate_space(params)
    return params


def with_updates(params: TuningParams, **updates: Any) -> TuningParams:
    """``params`` with top-level ``updates`` (e.g. the CLI's ``--study``), validated like the file."""
    if not updates:
        return params
    try:
        return TuningParams.model_validate({**params.model_dump(mode="json"), **updates})
    except ValidationError as exc:
        lines = ["invalid tuning settings:"] + [f"  tuning.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


# ------------------------------------------------------------------------------------------ space


def apply_overrides(base: TrainingParams, overrides: dict[str, Any]) -> TrainingParams:
    """``base`` with dotted ``overrides`` applied (validated like a config file)."""
    tree: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = tree
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    try:
        return TrainingParams.model_validate(merge_trees(base.model_dump(mode="json"), tree))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "the trial's settings")) from None


def validate_space(params: TuningParams) -> None:
    """Refuse a search space that cannot be searched, naming the parameter (BadInputError: exit 2)."""
    base = params.training
    if base.compute.backend == "ec2":
        _check_ec2(base)
    for name, spec in params.search_space.items():
        kind = TUNABLE.get(name)
        if kind is None:
            raise BadInputError(f"search_space.{name}: not a tunable parameter; tunable: {', '.join(TUNABLE)}")
        if spec.choices is not None:
            if spec.low is not None or spec.high is not None:
                raise BadInputError(f"search_space.{name}: give either choices or low/high, not both")
            if len(spec.choices) == 0:
                raise BadInputError(f"search_space.{name}: choices is empty; list at least one value")
            values = list(spec.choices)
        else:
            if kind == "categorical":
                raise BadInputError(f"search_space.{name}: a categorical parameter needs choices")
            if spec.low is None or spec.high is None:
                raise BadInputError(f"search_space.{name}: needs low and high (or choices)")
            if not (math.isfinite(spec.low) and math.isfinite(spec.high)) or spec.low > spec.high:
                raise BadInputError(f"search_space.{name}: low {spec.low} must not exceed high {spec.high}")
            if spec.log and spec.low <= 0:
                raise BadInputError(f"search_space.{name}: a log-scale range needs low > 0, got {spec.low}")
            if spec.step is not None and spec.step <= 0:
                raise BadInputError(f"search_space.{name}: step must be positive, got {spec.step}")
            if spec.log and spec.step is not None:
                raise BadInputError(f"search_space.{name}: log scale and step cannot be combined")
            values = [spec.low, spec.high]
        for v in values:
            value = int(v) if kind == "int" and isinstance(v, float) and v.is_integer() else v
            try:
                apply_overrides(base, {name: value})
            except ConfigError as exc:
                detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
                raise BadInputError(f"search_space.{name}: the value {v!r} is not valid ({detail})") from None
    for j, item in enumerate(params.enqueue):
        unknown = sorted(set(item) - set(params.search_space))
        if unknown:
            raise BadInputError(f"enqueue[{j}]: {unknown} not in the search space")
        try:
            apply_overrides(base, item)
        except ConfigError as exc:
            raise BadInputError(f"enqueue[{j}]: {exc}") from None


def suggest(trial: Any, space: dict[str, SearchParam]) -> dict[str, Any]:
    """The trial's values for every dimension of ``space`` (Optuna's suggest API)."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        kind = TUNABLE[name]
        if spec.choices is not None:
            out[name] = trial.suggest_categorical(name, list(spec.choices))
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            out[name] = trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)
    return out


# ------------------------------------------------------------------------------------------ study


def open_study(journal: Path, name: str, params: TuningParams, *, create: bool = True):
    """The study in ``journal`` (created when missing): TPE sampler, median pruner."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    sampler = optuna.samplers.TPESampler(seed=params.seed, n_startup_trials=max(2, params.pruner_startup_trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=params.pruner_startup_trials, n_warmup_steps=params.pruner_warmup_steps)
    if create:
        return optuna.create_study(study_name=name, storage=storage, direction="minimize", sampler=sampler,
                                   pruner=pruner, load_if_exists=True)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]


def fail_stale_trials(study) -> list[int]:
    """Trials a previous session left RUNNING (it was interrupted): mark them failed."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted: the session running it ended")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return [t.number for t in stale]


def _check_ec2(base: TrainingParams) -> None:
    """One instance per trial: the launch settings must be complete and the instance type priced
    (the cost budget and each trial's cost use it) before the study starts."""
    ec2 = base.compute.ec2
    missing = [name for name, value in (("ami_id", ec2.ami_id), ("subnet_id", ec2.subnet_id),
                                        ("security_group_ids", ec2.security_group_ids),
                                        ("instance_profile", ec2.instance_profile)) if not value]
    if missing:
        raise ConfigError("compute.backend ec2 runs each trial on its own instance: set compute.ec2."
                          + ", compute.ec2.".join(missing) + " (the infra stack's outputs and a Deep Learning AMI id)")
    if ec2.instance_type not in ec2.hourly_prices:
        raise ConfigError(f"compute.ec2.hourly_prices has no price for {ec2.instance_type}; add it "
                          "(each trial's cost and tuning.budget.max_cost_usd use it)")


def budget_reason(params: TuningParams, *, finished: int, elapsed_s: float, cost_usd: float) -> Optional[str]:
    """Why no further trial may start, or None."""
    b = params.budget
    if finished >= b.max_trials:
        return f"max_trials {b.max_trials} reached"
    if b.timeout_seconds is not None and elapsed_s >= b.timeout_seconds:
        return f"timeout of {b.timeout_seconds:g} s reached"
    return cost_reason(params, cost_usd)


def cost_reason(params: TuningParams, cost_usd: float) -> Optional[str]:
    """``max_cost_usd`` reached by ``cost_usd`` (the trials' instance cost so far), or None."""
    limit = params.budget.max_cost_usd
    if limit is not None and cost_usd >= limit:
        return f"max_cost_usd {limit:g} reached (spent ${cost_usd:.2f})"
    return None


def spent_usd(study) -> float:
    """Instance cost of the study's trials so far (earlier sessions included; recorded per trial)."""
    return float(sum(float(t.user_attrs.get("cost_usd") or 0.0) for t in study.get_trials(deepcopy=False)))


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: number, state, value, params, steps reported, duration, failure reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name, "value": t.value,
               "last_step": max(t.intermediate_values) if t.intermediate_values else None,
               "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
               if t.datetime_complete and t.datetime_start else None,
               "note": t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_at") or ""}
        if "cost_usd" in t.user_attrs:  # ec2 trials: the instances' cost and launches
            row.update(cost_usd=t.user_attrs["cost_usd"], attempts=t.user_attrs.get("attempts"))
        row.update(t.params)
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(study):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.value is not None]
    return min(done, key=lambda t: t.value) if done else None


def best_config_yaml(base: TrainingParams, best_params: dict[str, Any], *, study: str, trial: int, value: float) -> str:
    """A config file for ``chronos-flows run --config``: the base settings with the best values.
    Run-specific fields (store, run id, resume) are left out: the file describes a model, not a run."""
    params = apply_overrides(base, best_params)
    tree = params.model_dump(mode="json", exclude={"store", "run_id", "resume_from"})
    header = (f"# best settings of study {study}: trial {trial}, validation WQL {value:.5g}\n"
              f"# tuned: {', '.join(f'{k}={v}' for k, v in best_params.items())}\n"
              "# use: chronos-flows run --config THIS_FILE\n")
    return header + yaml.safe_dump(tree, sort_keys=False)


# ------------------------------------------------------------------------------------------ scoring


def validation_score(forecaster: Any, history: pd.DataFrame, reference: pd.DataFrame, *, horizon: int,
                     n_windows: int, freq: str, season_length: int, quantiles: Sequence[float]) -> float:
    """Pooled WQL of ``forecaster`` on the last ``n_windows`` rolling windows of ``history`` (the
    trial's cleaned training span), scored against ``reference`` (the same span cleaned with the base
    settings). These are the validation windows fine-tuning held out, never the backtest windows."""
    from chronos_flows.evaluation.backtest import run_backtest
    from chronos_flows.evaluation.metrics import wql_pooled
    from chronos_flows.models.base import ID, TARGET, TIME

    result = run_backtest({"trial": forecaster}, history, horizon=horizon, n_windows=n_windows, freq=freq,
                          season_length=season_length, quantiles=quantiles)
    fc = result.forecasts.drop(columns=[c for c in (TARGET,) if c in result.forecasts.columns])
    merged = fc.merge(reference[[ID, TIME, TARGET]], on=[ID, TIME], how="inner")
    if merged.empty:
        raise BadInputError("no validation window could be scored: the training span is too short for "
                            f"{n_windows} windows of {horizon}; lower evaluation.horizon or tune on longer data")
    return float(wql_pooled(merged, quantiles=quantiles))


# ------------------------------------------------------------------------------------------ plots


def _optuna_png(draw, study) -> bytes:
    """PNG of one of optuna's matplotlib plots (``optuna.visualization.matplotlib``) of ``study``;
    the figure is closed afterwards (pyplot keeps every open figure)."""
    import warnings

    import matplotlib.pyplot as plt
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = draw(study)
    fig = ax.figure
    try:
        fig.set_size_inches(6, 3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()
    finally:
        plt.close(fig)


def plot_history_png(study) -> bytes:
    """Each completed trial's validation WQL and the best so far, by trial number (optuna's
    ``plot_optimization_history``)."""
    from optuna.visualization.matplotlib import plot_optimization_history

    return _optuna_png(lambda st: plot_optimization_history(st, target_name="validation WQL"), study)


def plot_importance_png(study) -> bytes:
    """Horizontal bars of the parameter importances (optuna's ``plot_param_importances``, fANOVA
    over completed trials)."""
    from optuna.visualization.matplotlib import plot_param_importances

    return _optuna_png(plot_param_importances, study)


def param_importances(study) -> dict[str, float]:
    """fANOVA importances, or {} when fewer than two completed trials vary a parameter."""
    import optuna

    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):
        return {}


