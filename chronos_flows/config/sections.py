"""The sections of the flows' parameters: one frozen model per topic (data, cleaning, Chronos, each
baseline, evaluation, compute and its EC2 instance, lock, a batch forecast's compute).

:class:`~chronos_flows.config.params.TrainingParams` and :class:`~chronos_flows.config.params.ForecastParams`
compose them, and :mod:`chronos_flows.config.params` re-exports every one of them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


#: words the automatic field titles spell differently from the field name
_TITLE_WORDS = {"id": "id", "iqr": "IQR", "ami": "AMI", "ec2": "EC2", "gb": "GB", "autoets": "AutoETS"}


def _field_title(name: str, _info: Any) -> str:
    """``outlier_iqr_k`` → "Outlier IQR k" (fields whose name reads badly set ``title=`` instead)."""
    text = " ".join(_TITLE_WORDS.get(w, w) for w in name.split("_"))
    return text[:1].upper() + text[1:]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", field_title_generator=_field_title)


class DataConfig(Frozen):
    """The input file and how to read it."""

    model_config = ConfigDict(title="Data")

    path: Optional[str] = Field(
        None,
        title="Data file",
        description="Input file: local path (relative to the working directory), file:// URL or s3:// URI "
        "(CSV, Parquet or Excel). Empty: the shipped EIA weekly US gasoline series, data/us_gasoline.csv "
        "of the working directory (the deployment's checkout), resolved when the run reads it.",
    )
    format: Literal["auto", "csv", "parquet", "excel"] = Field(
        "auto", description="File format; 'auto' decides from the file extension."
    )
    layout: Literal["long", "wide"] = Field(
        "long", description="'long': one row per (series, timestamp); 'wide': one column per series."
    )
    id_column: Optional[str] = Field(
        "unique_id", title="Series id column", description="Series id column (long layout). If absent from a long file, the whole file is one series."
    )
    timestamp_column: str = Field("ds", description="Timestamp column.")
    target_column: str = Field("y", description="Target column (long layout).")
    sheet: Optional[str] = Field(None, title="Excel sheet", description="Excel sheet name (first sheet when empty).")


class CleaningConfig(Frozen):
    """How the data is repaired before training and evaluation: frequency, duplicates, gaps, outliers."""

    model_config = ConfigDict(title="Cleaning")

    freq: Optional[str] = Field(None, title="Frequency", description="Pandas frequency alias (e.g. 'W-MON', 'MS'); inferred when empty.")
    duplicates: Literal["mean", "first", "last", "sum"] = Field(
        "mean", title="Duplicate timestamps", description="How rows with the same series and timestamp are combined."
    )
    fill_method: Literal["interpolate", "ffill", "zero"] = Field(
        "interpolate", title="Gap filling", description="How missing timestamps inside a series are filled (each fill is counted)."
    )
    outliers: Literal["flag", "replace", "off"] = Field(
        "flag",
        title="Outlier handling",
        description="Outliers (rule: `outlier_method`): 'flag' marks them, 'replace' swaps them for the STL fit, 'off' skips detection.",
    )
    outlier_method: Literal["esd", "robust", "stl_iqr"] = Field(
        "esd",
        title="Outlier rule",
        description="'esd' (default): robust STL (on the log scale for positive series whose seasonal swing grows "
        "with the level, then the residual as a share of the fit), residuals tested with the generalized ESD test "
        "(Rosner 1983) at `outlier_alpha`, no flags in the first season nor on intermittent series; 'robust' (the "
        "previous default): residuals beyond `outlier_z` local (rolling) robust standard deviations; 'stl_iqr': the "
        "seed's robust STL + `outlier_iqr_k` × IQR rule.",
    )
    outlier_alpha: float = Field(
        0.01, gt=0, lt=1, title="Outlier test level (ESD)",
        description="'esd' rule: the chance that a clean series with Gaussian residuals gets any flag at all, "
        "whatever its length (the generalized ESD test's significance level).",
    )
    outlier_z: float = Field(
        4.5, gt=0, title="Outlier threshold (robust SDs)",
        description="'robust' rule: residuals beyond this many local robust standard deviations are outliers.",
    )
    outlier_iqr_k: float = Field(3.0, gt=0, title="Outlier IQR multiplier", description="Residuals beyond k × IQR from the quartiles are outliers.")
    outlier_max_share: float = Field(
        0.05, ge=0, le=1, title="Maximum replaced share",
        description="'replace' rewrites at most this share of a series' points; a series with more flags keeps "
        "its values (flags stay) and is named in the cleaning report's warnings.",
    )
    seasonal_period: Optional[int] = Field(
        None, ge=2, title="Season length", description="Season length for STL and MASE; derived from the frequency when empty."
    )
    max_fill_fraction: float = Field(
        0.2,
        title="Maximum filled fraction",
        ge=0,
        le=1,
        description="A series whose cleaned points would be more than this fraction filled (gaps) is dropped, with the reason.",
    )


#: The published pretrained checkpoint each family starts from by default: the smallest of the
#: family (Chronos-2 small has 28M parameters and fine-tunes on a CPU; see NOTES / README).
PRETRAINED_MODELS = {
    "chronos-2": "autogluon/chronos-2-small",
    "chronos-bolt": "amazon/chronos-bolt-tiny",
    "chronos-t5": "amazon/chronos-t5-tiny",
}
#: How a random-initialised Chronos is marked in the leaderboard and the run summary.
RANDOM_INIT_NOTE = "random initialisation: not representative"


class ChronosConfig(Frozen):
    """The Chronos model: family, pretrained weights or a small random model, fine-tuning schedule."""

    model_config = ConfigDict(title="Chronos", protected_namespaces=())

    family: Literal["chronos-2", "chronos-bolt", "chronos-t5"] = Field(
        "chronos-2", title="Model family", description="Chronos model family."
    )
    model: Optional[str] = Field(
        PRETRAINED_MODELS["chronos-2"],
        title="Pretrained model",
        description="Pretrained model: hub id, local directory or s3:// URI. Default: the family's published "
        "pretrained checkpoint (chronos-2: autogluon/chronos-2-small, chronos-bolt: amazon/chronos-bolt-tiny, "
        "chronos-t5: amazon/chronos-t5-tiny); when the Hugging Face hub cannot be reached and that default is not "
        "in the local cache, the run falls back to a random model of `size` with one warning. Empty: a randomly "
        "initialised model of `size` on purpose. A random model is marked 'random initialisation: not "
        "representative' and kept out of the ensemble and the champion race (see `random_competes`).",
    )
    size: Literal["tiny", "mini", "small"] = Field("tiny", title="Random model size", description="Random-initialised configuration when no pretrained weights are used.")
    random_max_steps: int = Field(
        100,
        ge=1,
        title="Training steps of a random model",
        description="Optimizer steps of a random-initialised model (the offline fallback): it trains for "
        "min(max_steps, random_max_steps), so the run still exercises the whole training path without a random "
        "model taking most of its time.",
    )
    random_competes: bool = Field(
        False,
        title="Random model competes",
        description="Let a random-initialised Chronos enter the ensemble and the champion race. Off: it is "
        "trained and scored, marked 'random initialisation: not representative' in the leaderboard and the run "
        "summary, but never combined or promoted — unless it is the run's only candidate (evaluation.baselines "
        "empty), which the promotion reason then says.",
    )
    mode: Literal["finetune", "zero-shot"] = Field("finetune", title="Training mode", description="Fine-tune on the data, or forecast zero-shot.")
    finetune_mode: Literal["full", "lora"] = Field("full", title="Fine-tuning mode", description="Chronos-2 fine-tuning: all weights or a LoRA adapter.")
    lora_rank: int = Field(8, ge=1, le=256, title="LoRA rank", description="Rank of the LoRA adapter (finetune_mode lora; alpha is twice the rank).")
    context_length: int = Field(256, ge=8, description="Context window length used for training and forecasting.")
    max_steps: int = Field(600, ge=1, title="Training steps", description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Windows per batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, title="Gradient accumulation steps", description="Batches accumulated per optimizer step.")
    learning_rate: Optional[float] = Field(
        None,
        gt=0,
        description="Peak learning rate. Empty: 1e-3 for a random-initialised model, 1e-5 when fine-tuning pretrained weights.",
    )
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("linear", title="Learning-rate schedule", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, title="Warm-up fraction", description="Fraction of steps used for warm-up.")
    eval_every: int = Field(50, ge=1, title="Validate every (steps)", description="Validate every N steps.")
    early_stopping_patience: Optional[int] = Field(
        None, ge=1, title="Early-stopping patience", description="Stop after this many validations without improvement (off when empty)."
    )
    checkpoint_every: int = Field(100, ge=1, title="Checkpoint every (steps)", description="Save a checkpoint every N steps.")
    keep_checkpoints: Literal["best-and-last", "last", "all"] = Field(
        "best-and-last",
        title="Checkpoints kept",
        description="Checkpoints kept in the store after training succeeds: the best and the last (to audit and "
        "resume), only the last, or all of them.",
    )
    seed: int = Field(0, title="Random seed", description="Random seed.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': CUDA when present, else CPU.")
    num_threads: Optional[int] = Field(None, ge=1, title="CPU threads", description="CPU threads for torch (default: all cores).")

    @model_validator(mode="before")
    @classmethod
    def _family_default_model(cls, data: Any) -> Any:
        """Without an explicit ``model`` the family's own published checkpoint is the default."""
        if isinstance(data, dict) and "model" not in data:
            family = data.get("family", "chronos-2")
            if family in PRETRAINED_MODELS:
                return {**data, "model": PRETRAINED_MODELS[family]}
        return data


class ProphetConfig(Frozen):
    """The Prophet baseline."""

    model_config = ConfigDict(title="Prophet")

    n_jobs: int = Field(2, ge=1, title="Parallel processes", description="Parallel processes for per-series Prophet fits.")
    uncertainty_samples: int = Field(200, ge=10, title="Posterior samples", description="Prophet posterior samples used for the quantiles.")


class AutoETSConfig(Frozen):
    """The AutoETS (exponential smoothing) baseline."""

    model_config = ConfigDict(title="AutoETS", protected_namespaces=())

    n_jobs: int = Field(2, ge=1, title="Parallel processes", description="Parallel processes for per-series AutoETS fits.")
    model: str = Field(
        "ZZZ",
        title="ETS components",
        pattern=r"^[ZAM][ZNA][ZNAM]$",
        description="ETS components (error, trend, season): Z = chosen by AICc, A additive, M multiplicative, N none.",
    )
    damped: Optional[bool] = Field(None, title="Damped trend", description="Damped trend: true, false, or empty to let AICc choose.")


class ThetaConfig(Frozen):
    """The Theta baseline (statsforecast; by default the Dynamic Optimised Theta model, which held up
    best out of sample on the shipped panels — see benchmarks/theta.py)."""

    model_config = ConfigDict(title="Theta", protected_namespaces=())

    n_jobs: int = Field(2, ge=1, title="Parallel processes", description="Parallel processes for per-series Theta fits.")
    decomposition_type: Literal["multiplicative", "additive"] = Field(
        "multiplicative",
        title="Seasonal decomposition",
        description="Seasonal adjustment of a series the seasonality test finds seasonal (multiplicative falls back "
        "to additive for series with values <= 0). Out of sample multiplicative had the lower geometric-mean "
        "MASE (by 11 %) and WQL over tourism, aus_livestock and aus_retail; additive won MASE on aus_livestock "
        "only (benchmarks/theta.py).",
    )
    model: Optional[Literal["STM", "OTM", "DSTM", "DOTM"]] = Field(
        "DOTM",
        title="Theta model",
        description="STM: standard Theta (Assimakopoulos & Nikolopoulos 2000); OTM: optimised theta; DSTM: dynamic "
        "standard; DOTM: dynamic optimised (Fiorucci et al. 2016; statsforecast's DynamicOptimizedTheta). Empty: "
        "statsforecast's AutoTheta picks, per series, the variant with the smallest in-sample MSE — which held up "
        "worse out of sample than DOTM alone (1.7 % higher geometric-mean MASE on tourism, aus_livestock and "
        "aus_retail; benchmarks/theta.py).",
    )


class LightGBMConfig(Frozen):
    """The global gradient-boosted family: one LightGBM model trained across every series of the panel
    (mlforecast lag, rolling-mean and calendar features; chronos_flows.models.global_boost)."""

    model_config = ConfigDict(title="LightGBM (global)", protected_namespaces=())

    n_jobs: int = Field(1, ge=1, title="LightGBM threads", description="Threads LightGBM trains with (fixed, so fits are reproducible).")
    target_transform: Literal["difference+scale", "scale", "difference", "none"] = Field(
        "difference+scale",
        title="Target transform",
        description="Per-series transform applied before the features and inverted on the forecasts: first "
        "differences then standardisation by the series' mean and standard deviation, standardisation only, "
        "differences only, or none.",
    )
    quantile_method: Literal["conformal", "quantile"] = Field(
        "conformal",
        title="Quantile method",
        description="'quantile': one LightGBM model per quantile level with the pinball objective; 'conformal': "
        "mlforecast's conformal intervals around the point forecast, calibrated per series on the last "
        "conformal_windows × horizon points.",
    )
    conformal_windows: int = Field(
        4, ge=2, title="Conformal windows", description="Calibration windows of the conformal intervals (quantile_method conformal)."
    )
    n_estimators: int = Field(200, ge=1, title="Boosting rounds", description="Trees per LightGBM model.")
    learning_rate: float = Field(0.05, gt=0, title="Learning rate", description="LightGBM shrinkage per tree.")
    num_leaves: int = Field(31, ge=2, title="Leaves per tree", description="Maximum leaves per tree.")
    min_child_samples: int = Field(20, ge=1, title="Minimum rows per leaf", description="Fewest training rows a leaf may hold.")
    seed: int = Field(0, title="Random seed", description="LightGBM random seed.")


BASELINES = ("autoets", "theta", "prophet", "seasonal_naive", "lightgbm")


class EvaluationConfig(Frozen):
    """The rolling-origin backtest every candidate is scored on, and the champion gate."""

    model_config = ConfigDict(title="Evaluation")

    horizon: int = Field(13, ge=1, title="Forecast horizon", description="Forecast horizon (steps) evaluated and trained for.")
    n_windows: int = Field(4, ge=1, title="Backtest windows", description="Rolling-origin backtest windows (1 = the final horizon only).")
    step: Optional[int] = Field(None, ge=1, title="Window step", description="Steps between window origins (default: horizon).")
    quantiles: tuple[float, ...] = Field(QUANTILES, title="Quantile levels", description="Quantile levels forecast and scored by WQL.")
    gate_metric: Literal["wql", "mase", "mae", "rmse", "smape"] = Field(
        "wql", title="Champion metric", description="Metric deciding the champion (lower is better)."
    )
    promotion_margin: float = Field(
        0.0, ge=0, lt=1, title="Promotion margin", description="Relative improvement the best candidate needs over the current champion (0.05 = 5%)."
    )
    plot_series: int = Field(3, ge=0, title="Series plotted", description="Series plotted (best, median, worst).")
    baselines: tuple[Literal["autoets", "theta", "prophet", "seasonal_naive", "lightgbm"], ...] = Field(
        BASELINES,
        title="Baselines",
        description="Baseline families backtested beside Chronos; each may become champion ('lightgbm' is the global "
        "gradient-boosted model trained across the panel). Seasonal Naive is always scored as the reference of the relative metrics, but is a candidate only when listed.",
    )

    ensemble: bool = Field(
        True,
        title="Weighted ensemble",
        description="Also build a weighted ensemble of Chronos and the baselines (greedy forward selection with "
        "replacement, Caruana 2004) as a champion candidate. The backtest runs one extra window before the judging "
        "windows; the champion's weights are fitted on the out-of-fold forecasts of all windows, the ensemble's "
        "score on each judging window uses weights fitted without that window (nested), and every model is "
        "ranked on the judging windows only.",
    )
    ensemble_metrics: tuple[Literal["wql", "mase", "mae", "rmse", "smape"], ...] = Field(
        ("wql", "mase"),
        min_length=1,
        title="Ensemble objective",
        description="Metrics the ensemble's weights optimise: one metric, its mean; several, the sum of each relative "
        "to the best single member on it. The default weighs the quantiles (WQL) and the point forecast (MASE) "
        "alike: weights chosen on WQL alone followed a member whose point forecasts were poor out of sample "
        "(README, 'The champion').",
    )
    ensemble_shrinkage: Union[Literal["auto"], Annotated[float, Field(ge=0, le=1)]] = Field(
        "auto",
        title="Ensemble shrinkage",
        description="Share of the ensemble's weight moved from the greedy weights to the member that is best alone "
        "on the same windows (0 = pure greedy selection, 1 = the best single member). The gate metrics are convex "
        "in the combined forecast, so the ensemble's loss is at most (1 - shrinkage) x the greedy ensemble's plus "
        "shrinkage x the best member's. 'auto' (default): each fit chooses among 0, 0.25, 0.5, 0.75 and 1 by "
        "leave-one-window-out on its own fitting windows (0.5 when it has a single window); the report shows the "
        "choice and its evidence.",
    )

    @field_validator("baselines", "ensemble_metrics")
    @classmethod
    def _unique_baselines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v))

    @field_validator("quantiles")
    @classmethod
    def _quantiles_in_range(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < q < 1 for q in v):
            raise ValueError("quantiles must be a non-empty list of levels strictly between 0 and 1")
        return tuple(sorted(v))


class Ec2Config(Frozen):
    """The ephemeral GPU instance of the 'ec2' backend."""

    model_config = ConfigDict(title="EC2")

    region: Optional[str] = Field(None, title="AWS region", description="AWS region (default: the AWS configuration's).")
    instance_type: str = Field("g4dn.2xlarge", description="GPU instance type.")
    ami_id: Optional[str] = Field(None, title="AMI id", description="AMI (a Deep Learning AMI with CUDA drivers).")
    subnet_id: Optional[str] = Field(None, description="Public subnet from the infra stack.")
    security_group_ids: tuple[str, ...] = Field((), title="Security group ids", description="Security groups (HTTPS egress only).")
    instance_profile: Optional[str] = Field(None, description="IAM instance profile name or ARN.")
    spot: bool = Field(False, title="Spot instance", description="Request a spot instance.")
    volume_size_gb: int = Field(100, ge=8, title="Root volume (GB)", description="Root EBS volume (gp3, encrypted, deleted on termination).")
    max_runtime_minutes: int = Field(240, ge=5, title="Maximum runtime (minutes)", description="Hard limit after which the instance shuts itself down.")
    bootstrap_package: str = Field(
        "chronos-flows", description="pip requirement the instance installs (a wheel URL or package spec)."
    )
    hourly_prices: dict[str, float] = Field(
        {"g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752, "g5.xlarge": 1.006, "g5.2xlarge": 1.212},
        title="Hourly prices (USD)",
        description="On-demand USD per instance hour, used for the run's cost estimate.",
    )


class ComputeConfig(Frozen):
    """Where Chronos trains (the flow's process or an ephemeral GPU EC2 instance) and where the
    baselines' backtests run (local processes or a Dask cluster)."""

    model_config = ConfigDict(title="Compute")

    backend: Literal["local", "ec2"] = Field("local", title="Backend", description="Where the train step runs.")
    ec2: Ec2Config = Field(default_factory=Ec2Config, title="EC2", description="EC2 settings (backend 'ec2').")
    task_runner: Literal["local", "dask"] = Field(
        "local",
        title="Baseline task runner",
        description="Where the baselines' backtest chunks run: 'local' (one chunk after another in the flow's "
        "process, each fitting its series in the family's parallel processes) or 'dask' (chunks spread over a "
        "Dask cluster through prefect-dask's DaskTaskRunner).",
    )
    chunk_series: int = Field(
        100, ge=1, title="Series per chunk", description="Series per baseline backtest task (the unit of fan-out and of caching)."
    )
    dask_address: Optional[str] = Field(
        None,
        title="Dask scheduler address",
        description="Address of a running Dask scheduler (e.g. tcp://10.0.0.5:8786), task runner 'dask'. "
        "Empty: a cluster of the class below is started for the run.",
    )
    dask_cluster_class: Optional[str] = Field(
        None,
        title="Dask cluster class",
        description="Import path of a Dask cluster class started for the run when no address is given "
        "(e.g. distributed.LocalCluster, dask_cloudprovider.aws.FargateCluster). Empty: a distributed.LocalCluster.",
    )
    dask_cluster_kwargs: dict[str, Any] = Field(
        {},
        title="Dask cluster arguments",
        description="Keyword arguments of the cluster class (e.g. {\"n_workers\": 2, \"processes\": true}).",
    )
    cache: bool = Field(
        True,
        title="Reuse cached results",
        description="Reuse the persisted results of ingest, clean and the baselines' backtest chunks when their inputs "
        "(data fingerprint, configuration, windows) are unchanged; false recomputes them and refreshes the cache.",
    )

    @model_validator(mode="after")
    def _check_dask(self) -> "ComputeConfig":
        if self.dask_address and (self.dask_cluster_class or self.dask_cluster_kwargs):
            raise ValueError("compute.dask_address and compute.dask_cluster_class/kwargs exclude each other: give one")
        return self


class LockConfig(Frozen):
    """The training lock: one training run per environment at a time."""

    model_config = ConfigDict(title="Lock")

    lease_seconds: float = Field(120.0, gt=0, title="Lease (seconds)", description="A lock not renewed for this long may be taken over.")
    heartbeat_seconds: float = Field(20.0, gt=0, title="Heartbeat (seconds)", description="How often the holder renews its lease.")


class ForecastComputeConfig(Frozen):
    """Where a batch forecast's chunks of series run: one after another in the flow's process
    (the default), or spread over a Dask cluster through prefect-dask's DaskTaskRunner."""

    model_config = ConfigDict(title="Forecast compute")

    task_runner: Literal["local", "dask"] = Field(
        "local",
        title="Chunk task runner",
        description="Where the forecast-chunk tasks run: 'local' (one chunk after another in the flow's process, "
        "the model loaded once) or 'dask' (chunks spread over a Dask cluster; each worker loads the model once).",
    )
    dask_address: Optional[str] = Field(
        None,
        pattern=r"^\S+$",
        title="Dask scheduler address",
        description="Address of a running Dask scheduler (e.g. tcp://10.0.0.5:8786), task runner 'dask'. "
        "Empty: a cluster of the class below is started for the batch.",
    )
    dask_cluster_class: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
        title="Dask cluster class",
        description="Import path of a Dask cluster class started for the batch when no address is given "
        "(e.g. distributed.LocalCluster, dask_cloudprovider.aws.FargateCluster). Empty: a distributed.LocalCluster.",
    )
    dask_cluster_kwargs: dict[str, Any] = Field(
        {},
        title="Dask cluster arguments",
        description="Keyword arguments of the cluster class (e.g. {\"n_workers\": 2, \"processes\": true}).",
    )
    max_chunks_in_flight: Optional[int] = Field(
        None,
        ge=1,
        title="Chunks in flight",
        description="Chunks submitted but not yet written to the forecasts file at any time (bounds the flow's "
        "memory to that many chunks of forecasts). Empty: twice the runner's workers (2 with the local runner).",
    )

    @model_validator(mode="after")
    def _check_dask(self) -> "ForecastComputeConfig":
        if self.dask_address and (self.dask_cluster_class or self.dask_cluster_kwargs):
            raise ValueError("compute.dask_address and compute.dask_cluster_class/kwargs exclude each other: give one")
        if self.task_runner == "local" and (self.dask_address or self.dask_cluster_class or self.dask_cluster_kwargs):
            raise ValueError("compute.dask_* settings apply to the Dask runner only: set compute.task_runner=dask "
                             "or remove them")
        return self

    def runner_config(self) -> ComputeConfig:
        """These settings as the :class:`ComputeConfig` the shared chunk runner reads."""
        return ComputeConfig(task_runner=self.task_runner, dask_address=self.dask_address,
                             dask_cluster_class=self.dask_cluster_class, dask_cluster_kwargs=dict(self.dask_cluster_kwargs))
