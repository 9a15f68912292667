"""Where everything lives in the store: one layout for the local directory and for S3.

::

    cached-datasets/YYYY/MM/{fingerprint}.parquet     ingested canonical datasets
    {env}/system-state.json                           the lock and live status
    {env}/lock-generation.json                        the lock's generation counter (fencing token)
    {env}/logs/{run_id}/training.json                 the run's execution log
    {env}/logs/{run_id}/cleanup_status.json           the cleanup record
    {env}/{run_id}/models/{model}/                    saved models
    {env}/{run_id}/checkpoints/                       training checkpoints
    {env}/{run_id}/model_metadata.json                config, data fingerprint, metrics, promotion
    {env}/{run_id}/evaluation/                        leaderboard, per-series metrics, report, plots
    {env}/{run_id}/data/                              the run's cleaned data and cleaning report
    {env}/{run_id}/data/eda.json                      the run's exploratory report of its data
    {env}/{run_id}/instance/                          EC2 backend: progress.json, result.json
    {env}/registry/champion.json                      the model that serves
    {env}/registry/{run_id}/{model}/                  promoted models (outside the 60-day expiry)
    {env}/forecasts/{forecast_id}/                    batch forecasts: forecasts.parquet, forecast.json
    {env}/tuning/{study}/                             a tuning study: journal.log, trials.csv, study.json, best_config.yaml
    {env}/capture/{YYYY-MM-DD}/{batch}.parquet        served requests and their forecasts (opt-in data capture)
    {env}/capture/sagemaker/{family}/{run_id}/        a SageMaker endpoint's own capture (JSON Lines) of that champion
    {env}/monitoring/                                 live accuracy of published forecasts (scored history)
    {env}/endpoint/{name}/                            a SageMaker endpoint: endpoint.json, packages/{tag}/model.tar.gz
    {env}/monitoring/history/{forecast_id}/{through}-{sha}.parquet   one scoring of one forecast (append-only)
    {env}/monitoring/degradations/{champion_run_id}.json             a champion found degraded in live use
"""

from __future__ import annotations

DATASETS_PREFIX = "cached-datasets"


def state_key(env: str) -> str:
    return f"{env}/system-state.json"


def generation_key(env: str) -> str:
    """The lock's generation counter (fencing token), kept monotone across releases."""
    return f"{env}/lock-generation.json"


def logs_root(env: str) -> str:
    """Where every run's records live: ``{env}/logs/{run_id}/...``."""
    return f"{env}/logs/"


def logs_prefix(env: str, run_id: str) -> str:
    return f"{env}/logs/{run_id}"


def training_log_key(env: str, run_id: str) -> str:
    return f"{logs_prefix(env, run_id)}/training.json"


def cleanup_status_key(env: str, run_id: str) -> str:
    return f"{logs_prefix(env, run_id)}/cleanup_status.json"


def run_prefix(env: str, run_id: str) -> str:
    return f"{env}/{run_id}"


def models_prefix(env: str, run_id: str, model: str | None = None) -> str:
    base = f"{run_prefix(env, run_id)}/models"
    return f"{base}/{model}" if model else base


def checkpoints_prefix(env: str, run_id: str) -> str:
    return f"{run_prefix(env, run_id)}/checkpoints"


def metadata_key(env: str, run_id: str) -> str:
    return f"{run_prefix(env, run_id)}/model_metadata.json"


def evaluation_prefix(env: str, run_id: str) -> str:
    return f"{run_prefix(env, run_id)}/evaluation"


def run_data_prefix(env: str, run_id: str) -> str:
    return f"{run_prefix(env, run_id)}/data"


def eda_key(env: str, run_id: str) -> str:
    """The run's exploratory report of its cleaned data (``chronos_flows.data.eda``)."""
    return f"{run_data_prefix(env, run_id)}/eda.json"


def champion_key(env: str) -> str:
    return f"{env}/registry/champion.json"


def dataset_key(fingerprint: str, year: int, month: int) -> str:
    return f"{DATASETS_PREFIX}/{year:04d}/{month:02d}/{fingerprint}.parquet"


def registry_model_prefix(env: str, run_id: str, model: str) -> str:
    """Where a promoted model is kept: not under ``{run_id}/models/``, so lifecycle expiry skips it."""
    return f"{env}/registry/{run_id}/{model}"


def instance_progress_key(env: str, run_id: str) -> str:
    """Training progress an EC2 instance reports for the parent flow to follow."""
    return f"{run_prefix(env, run_id)}/instance/progress.json"


def instance_result_key(env: str, run_id: str) -> str:
    """The outcome an EC2 instance writes (``running``, then ``ok``/``error``/``refused``)."""
    return f"{run_prefix(env, run_id)}/instance/result.json"


def forecasts_prefix(env: str, forecast_id: str) -> str:
    """A batch of forecasts: ``forecasts.parquet`` and ``forecast.json`` (written last)."""
    return f"{env}/forecasts/{forecast_id}"


def tuning_prefix(env: str, study: str) -> str:
    """A tuning study: ``journal.log`` (Optuna journal), ``trials.csv``, ``best_config.yaml``, ``study.json``."""
    return f"{env}/tuning/{study}"


def trial_prefix(env: str, study: str, number: int) -> str:
    """One tuning trial run on its own instance: spec, progress, result, STOP marker, checkpoints."""
    return f"{tuning_prefix(env, study)}/trials/{number:04d}"


def tuning_data_key(env: str, study: str, run_id: str) -> str:
    """The cleaned data every trial instance of a study trains on."""
    return f"{tuning_prefix(env, study)}/data/{run_id}.parquet"


class TrialKeys:
    """The store keys of one trial under ``prefix`` (:func:`trial_prefix`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.spec = f"{self.prefix}/spec.json"
        self.progress = f"{self.prefix}/progress.json"
        self.result = f"{self.prefix}/result.json"
        self.stop = f"{self.prefix}/STOP"
        self.checkpoints = f"{self.prefix}/checkpoints"


def capture_prefix(env: str) -> str:
    """Data capture of the endpoint: batched Parquet files of requests and their forecasts."""
    return f"{env}/capture"


def sagemaker_capture_prefix(env: str, family: str | None = None, champion_run_id: str | None = None) -> str:
    """Where a SageMaker endpoint's own data capture lands (its JSON Lines, under
    ``{endpoint}/{variant}/YYYY/MM/DD/HH/``): one prefix per deployed champion, ``{env}/capture/sagemaker/
    {family}/{champion_run_id}``, so a captured record says which champion answered it."""
    base = f"{capture_prefix(env)}/sagemaker"
    if family is None or champion_run_id is None:
        return base
    return f"{base}/{family}/{champion_run_id}"


def sagemaker_capture_owner(env: str, key: str) -> tuple[str, str] | None:
    """``(family, champion_run_id)`` of an object under :func:`sagemaker_capture_prefix`, else None."""
    head = sagemaker_capture_prefix(env) + "/"
    if not key.startswith(head):
        return None
    parts = key[len(head):].split("/")
    return (parts[0], parts[1]) if len(parts) > 2 and parts[0] and parts[1] else None


def capture_key(env: str, day: str, batch: str) -> str:
    """One batch of captured requests: ``{env}/capture/{YYYY-MM-DD}/{batch}.parquet``."""
    return f"{capture_prefix(env)}/{day}/{batch}.parquet"


def monitoring_prefix(env: str) -> str:
    """Live accuracy of published forecasts: the scored history and degradation records."""
    return f"{env}/monitoring"


def endpoint_prefix(env: str, endpoint: str) -> str:
    """A SageMaker endpoint's deployment: its record ``endpoint.json`` and the packaged champions."""
    return f"{env}/endpoint/{endpoint}"


def endpoint_record_key(env: str, endpoint: str) -> str:
    """What is deployed: the endpoint's mode, current config/model, champion, API stack outputs."""
    return f"{endpoint_prefix(env, endpoint)}/endpoint.json"


def endpoint_package_key(env: str, endpoint: str, tag: str) -> str:
    """One packaged champion (``model.tar.gz``, the layout the container reads from /opt/ml/model)."""
    return f"{endpoint_prefix(env, endpoint)}/packages/{tag}/model.tar.gz"


def monitoring_history_prefix(env: str) -> str:
    """The scored history: one Parquet object per (forecast, scoring), never rewritten."""
    return f"{monitoring_prefix(env)}/history"


def monitoring_history_key(env: str, forecast_id: str, scored_through: str, actuals_sha: str) -> str:
    """One scoring of ``forecast_id`` on actuals up to ``scored_through`` (compact UTC timestamp) whose
    content hash is ``actuals_sha``: the same scoring always has the same key (re-scoring is idempotent)."""
    return f"{monitoring_history_prefix(env)}/{forecast_id}/{scored_through}-{actuals_sha[:16]}.parquet"


def degradation_key(env: str, champion_run_id: str) -> str:
    """The degradation record of a champion (created once: the event is emitted once per champion)."""
    return f"{monitoring_prefix(env)}/degradations/{champion_run_id}.json"
