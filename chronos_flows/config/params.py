"""The typed, frozen parameter models of the ``chronos-training`` and ``chronos-forecast`` flows.

Prefect renders :class:`TrainingParams` (and :class:`ForecastParams`) as the deployment's UI form;
the same fields load from a YAML file (:func:`build_params`, :func:`build_forecast_params`) and any
field can be overridden with ``--set section.field=value``. The sections (:class:`DataConfig`,
:class:`CleaningConfig`, …) are defined in :mod:`chronos_flows.config.sections` and re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chronos_flows.config.sections import (
    BASELINES,
    QUANTILES,
    AutoETSConfig,
    ChronosConfig,
    CleaningConfig,
    ComputeConfig,
    DataConfig,
    Ec2Config,
    EvaluationConfig,
    ForecastComputeConfig,
    LightGBMConfig,
    LockConfig,
    ProphetConfig,
    ThetaConfig,
    Frozen,
)
from chronos_flows.core.errors import ConfigError

__all__ = [
    "BASELINES", "DEFAULT_DATA", "DEFAULT_DATA_RELATIVE", "DEFAULT_STORE_DIR", "QUANTILES", "REPO_ROOT",
    "RESUME_OVERRIDABLE", "AutoETSConfig", "ChronosConfig", "CleaningConfig", "ComputeConfig", "DataConfig",
    "Ec2Config", "EvaluationConfig", "ForecastComputeConfig", "ForecastParams", "LightGBMConfig", "LockConfig", "ProphetConfig", "ThetaConfig",
    "TrainingParams", "build_forecast_params", "build_params", "build_resume_params", "format_validation_error",
    "load_config_tree", "params_from_tree", "parse_overrides", "resolve_data_path", "resolve_store_url",
    "DegradationConfig", "MonitorParams", "build_monitor_params",
]  # fmt: skip

M = TypeVar("M", bound=BaseModel)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the shipped example data (EIA weekly US gasoline product supplied), relative to a checkout
DEFAULT_DATA_RELATIVE = Path("data") / "us_gasoline.csv"
DEFAULT_DATA = REPO_ROOT / DEFAULT_DATA_RELATIVE
DEFAULT_STORE_DIR = ".chronos-flows"


def resolve_data_path(path: str | None) -> str:
    """``data.path`` as read at run time. Empty means the shipped EIA gasoline file:
    ``data/us_gasoline.csv`` of the working directory (a deployment's pull step makes that the
    checkout), else the one next to this package. Resolved when the data is read, never when a
    deployment is made, so the form's default is not a path frozen on the deploying machine."""
    if path:
        return str(path)
    here = Path.cwd() / DEFAULT_DATA_RELATIVE
    return str(here if here.is_file() else DEFAULT_DATA)


class TrainingParams(Frozen):
    """Parameters of one chronos-training run: the data, its cleaning, the Chronos model and the
    baselines, how they are evaluated, where training runs. Every field has a default."""

    model_config = ConfigDict(title="Training parameters")

    env: str = Field("dev", pattern=r"^[a-z0-9][a-z0-9_-]*$", title="Environment", description="Environment prefix in the store (dev/stage/prod).")
    store: Optional[str] = Field(
        None,
        title="Store",
        description="Store URL: local directory, file:// URL, s3://bucket/prefix, or block:chronos-store/NAME "
        "(a saved ChronosStore block). Default: $CHRONOS_FLOWS_STORE or ./.chronos-flows.",
    )
    run_id: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", title="Run id", description="Run id (generated when empty).")
    resume_from: Optional[str] = Field(
        None,
        title="Resume from run",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Continue the training of this failed or killed run from its newest stored checkpoint "
        "(set by `chronos-flows run --resume RUN_ID`, which also restores that run's parameters).",
    )
    cost_center: str = Field("train", title="Cost center", description="CostCenter tag put on the run's AWS resources.")
    data: DataConfig = Field(default_factory=DataConfig, title="Data", description=DataConfig.__doc__)
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig, title="Cleaning", description=CleaningConfig.__doc__)
    chronos: ChronosConfig = Field(default_factory=ChronosConfig, title="Chronos", description=ChronosConfig.__doc__)
    prophet: ProphetConfig = Field(default_factory=ProphetConfig, title="Prophet baseline", description=ProphetConfig.__doc__)
    autoets: AutoETSConfig = Field(default_factory=AutoETSConfig, title="AutoETS baseline", description=AutoETSConfig.__doc__)
    theta: ThetaConfig = Field(default_factory=ThetaConfig, title="Theta baseline", description=ThetaConfig.__doc__)
    lightgbm: LightGBMConfig = Field(default_factory=LightGBMConfig, title="LightGBM (global)", description=LightGBMConfig.__doc__)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, title="Evaluation", description=EvaluationConfig.__doc__)
    compute: ComputeConfig = Field(default_factory=ComputeConfig, title="Compute", description=ComputeConfig.__doc__)
    lock: LockConfig = Field(default_factory=LockConfig, title="Lock", description=LockConfig.__doc__)

    @model_validator(mode="after")
    def _check_lengths(self) -> "TrainingParams":
        if self.chronos.context_length < self.evaluation.horizon:
            raise ValueError(
                f"chronos.context_length ({self.chronos.context_length}) is shorter than evaluation.horizon "
                f"({self.evaluation.horizon}); raise the context or shorten the horizon"
            )
        return self

    def store_url(self) -> str:
        return resolve_store_url(self.store)


def resolve_store_url(store: str | None) -> str:
    """The store URL: explicit, else ``$CHRONOS_FLOWS_STORE``, else ``./.chronos-flows`` (absolute file:// URL).

    ``block:chronos-store/NAME`` (a saved ChronosStore Prefect block) is kept as it is: ``open_store``
    loads the block when the store is opened (so plain URLs never import Prefect or prefect-aws)."""
    value = store or os.environ.get("CHRONOS_FLOWS_STORE") or DEFAULT_STORE_DIR
    if value.startswith("s3://") or value.startswith("file://") or value.startswith("block:"):
        return value
    return Path(value).expanduser().resolve().as_uri()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → nested dict; values parsed as YAML scalars (``1`` → int, ``[1,2]`` → list)."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set evaluation.horizon=8")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: cannot parse value: {exc}") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def merge_trees(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_trees(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config_tree(config_file: str | Path | None) -> dict[str, Any]:
    """The mapping a YAML config file holds ({} without a file); errors name the file and the fix."""
    if not config_file:
        return {}
    path = Path(config_file)
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections or fields (data:, horizon:, …)")
    return loaded


def _validated(model: type[M], config_file: str | Path | None, overrides: list[str] | None, fields: dict[str, Any]) -> M:
    """A flow's parameter model from a YAML file, ``--set`` overrides and explicit fields (in that order of precedence, lowest first)."""
    tree = merge_trees(load_config_tree(config_file), parse_overrides(overrides or []))
    tree = merge_trees(tree, {k: v for k, v in fields.items() if v is not None})
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, config_file)) from None


def params_from_tree(tree: dict[str, Any], source: str | Path | None = None, **fields: Any) -> TrainingParams:
    """Validate a config mapping (plus explicit ``fields``) as TrainingParams; errors name ``source``."""
    tree = merge_trees(tree, {k: v for k, v in fields.items() if v is not None})
    try:
        return TrainingParams.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def build_params(config_file: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> TrainingParams:
    """Load a YAML config (optional), apply ``--set`` overrides and explicit fields, validate."""
    tree = merge_trees(load_config_tree(config_file), parse_overrides(overrides or []))
    return params_from_tree(tree, config_file, **fields)


def format_validation_error(exc: ValidationError, source: str | Path | None = None) -> str:
    where = f" in {source}" if source else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    lines.append("fix the field(s) above (see README 'Configuration') and run again")
    return "\n".join(lines)


class ForecastParams(Frozen):
    """Parameters of one chronos-forecast run: batch forecasts of every series from the environment's
    champion. Every field has a default (the champion's own settings where it recorded them)."""

    model_config = ConfigDict(title="Forecast parameters")

    env: str = Field("dev", pattern=r"^[a-z0-9][a-z0-9_-]*$", title="Environment", description="Environment whose champion forecasts.")
    store: Optional[str] = Field(
        None,
        title="Store",
        description="Store URL: local directory, file:// URL, s3://bucket/prefix, or block:chronos-store/NAME "
        "(a saved ChronosStore block). Default: $CHRONOS_FLOWS_STORE or ./.chronos-flows.",
    )
    forecast_id: Optional[str] = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", title="Forecast id", description="Id of this batch (generated when empty)."
    )
    data: Optional[DataConfig] = Field(
        None,
        title="Data",
        description="Data to forecast, read and cleaned exactly as in training. Empty: the dataset the "
        "champion was judged on (its copy in the store), with the champion's cleaning settings.",
    )
    cleaning: Optional[CleaningConfig] = Field(
        None, title="Cleaning", description="Cleaning settings. Empty: the champion's own (recommended)."
    )
    horizon: Optional[int] = Field(None, ge=1, title="Forecast horizon", description="Steps forecast past each series' last observation. Empty: the champion's horizon.")
    quantiles: Optional[tuple[float, ...]] = Field(
        None, title="Quantile levels", description="Quantile levels written beside the mean. Empty: the levels the champion was judged on."
    )
    chunk_size: int = Field(
        1000, ge=1, title="Series per chunk",
        description="Series per forecast-chunk task and model call (the unit of fan-out); bounds peak memory on large panels.",
    )
    n_jobs: int = Field(
        2, ge=1, title="Parallel processes",
        description="Parallel processes for local families (AutoETS, Theta, Prophet) with the local task runner; "
        "on Dask each worker forecasts its chunk in 1 process (the chunks are the parallelism).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device of a Chronos champion: 'auto' uses CUDA when present.")
    plot_series: int = Field(3, ge=0, title="Series plotted", description="Series plotted (history, forecast and 80% interval) as Prefect artifacts.")
    compute: ForecastComputeConfig = Field(
        default_factory=ForecastComputeConfig, title="Compute", description=ForecastComputeConfig.__doc__
    )

    @field_validator("quantiles")
    @classmethod
    def _quantiles_in_range(cls, v: Optional[tuple[float, ...]]) -> Optional[tuple[float, ...]]:
        if v is None:
            return v
        if not v or any(not 0 < q < 1 for q in v):
            raise ValueError("quantiles must be a non-empty list of levels strictly between 0 and 1")
        return tuple(sorted(set(v)))

    def store_url(self) -> str:
        return resolve_store_url(self.store)


def build_forecast_params(config_file: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> ForecastParams:
    """:func:`build_params` for the forecast flow's parameters."""
    return _validated(ForecastParams, config_file, overrides, fields)


#: What ``run --resume`` may change: where and how the work runs, not what is trained or judged.
RESUME_OVERRIDABLE = ("lock.", "compute.", "chronos.device", "chronos.num_threads", "prophet.n_jobs", "autoets.n_jobs", "theta.n_jobs", "lightgbm.n_jobs")


def build_resume_params(recorded: dict[str, Any], overrides: list[str], *, run_id: str, resume_from: str) -> TrainingParams:
    """The parameters of a resumed attempt: the original run's recorded ones, with only the
    :data:`RESUME_OVERRIDABLE` fields overridable (anything else would train or judge another model)."""
    tree = parse_overrides(overrides)
    flat: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            (walk(v, f"{prefix}{k}.") if isinstance(v, dict) else flat.append(f"{prefix}{k}"))

    walk(tree, "")
    refused = [k for k in flat if not k.startswith(RESUME_OVERRIDABLE)]
    if refused:
        raise ConfigError(
            f"cannot change {', '.join(refused)} when resuming run {resume_from}: a resumed run continues with its "
            f"recorded parameters; only {', '.join(RESUME_OVERRIDABLE)} may be set. Start a new run to change the others"
        )
    base = {k: v for k, v in recorded.items() if k not in ("run_id", "resume_from")}
    try:
        return TrainingParams.model_validate(merge_trees(base, tree) | {"run_id": run_id, "resume_from": resume_from})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"the recorded parameters of run {resume_from}")) from None


class DegradationConfig(Frozen):
    """When the serving champion counts as degraded in live use (README "Monitoring"): live WQL above its
    backtest WQL x (1 + tolerance) on `consecutive` scored forecasts, or their pooled 80% coverage
    outside [coverage_low, coverage_high]."""

    model_config = ConfigDict(title="Degradation rule")

    tolerance: float = Field(1.0, ge=0, description="How much worse than the backtest WQL live WQL may be (1.0: twice the backtest WQL).")
    consecutive: int = Field(2, ge=1, title="Consecutive forecasts", description="Scored forecasts in a row that must all exceed the threshold.")
    coverage_low: float = Field(0.4, ge=0, le=1, title="Coverage low", description="Pooled 80% coverage below this fires the rule.")
    coverage_high: float = Field(1.0, ge=0, le=1, title="Coverage high", description="Pooled 80% coverage above this fires the rule (1.0: never).")
    min_points: int = Field(4, ge=1, title="Minimum points", description="A forecast counts once it has this many scored points.")


class MonitorParams(Frozen):
    """Parameters of one chronos-monitor run: score every published forecast against the newest data,
    append the scored history, raise chronos-flows.champion.degraded when the rule fires."""

    model_config = ConfigDict(title="Monitor parameters")

    env: str = Field("dev", pattern=r"^[a-z0-9][a-z0-9_-]*$", title="Environment", description="Environment whose forecasts to score.")
    store: Optional[str] = Field(
        None, title="Store",
        description="Store URL: local directory, file:// URL, s3://bucket/prefix, or block:chronos-store/NAME. "
        "Default: $CHRONOS_FLOWS_STORE or ./.chronos-flows.",
    )
    data: DataConfig = Field(
        default_factory=DataConfig, title="Data",
        description="The newest data (actuals), read as training reads it. Empty path: the shipped example, as in training.",
    )
    cleaning: Optional[CleaningConfig] = Field(
        None, title="Cleaning", description="Cleaning of the history that scales MASE. Empty: the champion's own settings."
    )
    unknown_ids: Literal["error", "ignore"] = Field(
        "error", title="Unknown series",
        description="Series in the data that no published forecast knows: 'error' refuses the data, 'ignore' leaves them out (reported).",
    )
    include_capture: bool = Field(True, title="Score captured requests", description="Also score the endpoint's captured requests ({env}/capture/).")
    degradation: DegradationConfig = Field(default_factory=DegradationConfig, title="Degradation rule", description=DegradationConfig.__doc__)
    emit_events: bool = Field(True, title="Emit events", description="Emit chronos-flows.champion.degraded when the rule fires (the training deployment's trigger).")

    def store_url(self) -> str:
        return resolve_store_url(self.store)


def build_monitor_params(config_file: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> MonitorParams:
    """:func:`build_params` for the monitor flow's parameters."""
    return _validated(MonitorParams, config_file, overrides, fields)
