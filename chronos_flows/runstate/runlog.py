"""Run records kept in the store (versioned pydantic schemas, atomic writes via ``store.put``).

* ``{env}/logs/{run_id}/training.json`` — :class:`TrainingLog`, the run's execution log.
* ``{env}/logs/{run_id}/cleanup_status.json`` — :class:`CleanupStatus`.
* ``{env}/{run_id}/model_metadata.json`` — :class:`ModelMetadata`.

Read-modify-write helpers (:func:`record_transition`, :func:`mark_failed`) are compare-and-swap
loops, so a takeover marking an old run failed cannot lose a concurrent update.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chronos_flows.core import layout
from chronos_flows.core.cas import Write, compare_and_swap
from chronos_flows.core.clock import iso
from chronos_flows.core.errors import BadInputError
from chronos_flows.core.store import ObjectStore

SCHEMA_VERSION = 1
FINISHED_STATUSES = ("succeeded", "failed", "killed")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION


class Transition(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    at: str
    details: dict[str, Any] = Field(default_factory=dict)


class TrainingLog(_Model):
    run_id: str
    env: str
    generation: Optional[int] = None
    flow_run_id: Optional[str] = None
    status: str = "initialization"
    started_at: Optional[str] = None
    ended_at: Optional[str] = None
    params: dict[str, Any] = Field(default_factory=dict)
    transitions: list[Transition] = Field(default_factory=list)
    phases: dict[str, float] = Field(default_factory=dict)
    error: Optional[str] = None
    cost_estimate: Optional[dict[str, Any]] = None
    models: dict[str, Any] = Field(default_factory=dict)
    summary: dict[str, Any] = Field(default_factory=dict)
    #: the failed or killed run this attempt continues (``run --resume``); its own record is untouched
    resumed_from: Optional[str] = None
    #: store outages during the run: start, end, seconds, what waited (``waited``), failures, first error
    outages: list[dict[str, Any]] = Field(default_factory=list)


class CleanupStep(BaseModel):
    model_config = ConfigDict(extra="allow")

    outcome: Literal["done", "already_done", "failed", "skipped"]
    detail: str = ""
    at: str


class CleanupStatus(_Model):
    run_id: str
    env: str
    started_at: str
    finished_at: Optional[str] = None
    complete: bool = False
    steps: dict[str, CleanupStep] = Field(default_factory=dict)


class ModelMetadata(_Model):
    run_id: str
    env: str
    created_at: str = Field(default_factory=lambda: iso(None))
    params: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: Optional[str] = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    leaderboard: list[dict[str, Any]] = Field(default_factory=list)
    promotion: Optional[dict[str, Any]] = None
    extra: dict[str, Any] = Field(default_factory=dict)


def _encode(model: BaseModel) -> bytes:
    return model.model_dump_json(indent=2).encode()


def _decode(cls, data: bytes, where: str):
    try:
        return cls.model_validate_json(data)
    except ValidationError as e:
        raise BadInputError(f"{where} is not a valid {cls.__name__} record: {e.errors()[:3]}; fix or delete it") from e


def _load(store: ObjectStore, key: str, cls):
    got = store.get(key)
    if got is None:
        return None
    return _decode(cls, got[0], store.uri(key))


# -- training.json ------------------------------------------------------------------------------


def load_training_log(store: ObjectStore, env: str, run_id: str) -> TrainingLog | None:
    return _load(store, layout.training_log_key(env, run_id), TrainingLog)


def save_training_log(store: ObjectStore, log: TrainingLog) -> None:
    store.put(layout.training_log_key(log.env, log.run_id), _encode(log))


def update_training_log(store: ObjectStore, env: str, run_id: str, mutate) -> TrainingLog:
    """Compare-and-swap read-modify-write of training.json (created if missing)."""
    key = layout.training_log_key(env, run_id)

    def step(current):
        log = TrainingLog(run_id=run_id, env=env) if current is None else _decode(TrainingLog, current[0], store.uri(key))
        mutate(log)
        return Write(_encode(log), log)

    return compare_and_swap(store, key, step, attempts=20)[0]


def record_transition(store: ObjectStore, env: str, run_id: str, status: str,
                      at: datetime | str | None = None, details: dict | None = None) -> TrainingLog:
    at_s = iso(at)

    def mutate(log: TrainingLog) -> None:
        log.transitions.append(Transition(status=status, at=at_s, details=dict(details or {})))
        log.status = status
        if log.started_at is None:
            log.started_at = at_s

    return update_training_log(store, env, run_id, mutate)


def mark_failed(store: ObjectStore, env: str, run_id: str, reason: str,
                at: datetime | str | None = None, generation: int | None = None) -> TrainingLog:
    """Record that ``run_id`` failed (e.g. its lock was taken over). Creates the log if missing;
    a run already finished (succeeded/failed/killed) keeps its status but gets the note."""
    at_s = iso(at)

    def mutate(log: TrainingLog) -> None:
        log.transitions.append(Transition(status="failed", at=at_s, details={"reason": reason}))
        if log.status not in FINISHED_STATUSES:
            log.status = "failed"
            log.error = reason
        if log.ended_at is None:
            log.ended_at = at_s
        if log.generation is None and generation is not None:
            log.generation = generation

    return update_training_log(store, env, run_id, mutate)


def finish_training_log(store: ObjectStore, env: str, run_id: str, status: str, reason: str,
                        at: datetime | str | None = None) -> TrainingLog:
    """The final ``status`` and cause of a run finished by another process (``kill`` of a dead run,
    a lock given back by its launcher) — no transition: those come from the one writer. A cause
    recorded earlier (e.g. the store outage that stopped it) is kept, not overwritten."""
    at_s = iso(at)

    def mutate(log: TrainingLog) -> None:
        log.error = f"{log.error}; then {reason}" if log.error and reason not in log.error else (log.error or reason)
        log.status = status
        log.ended_at = log.ended_at or at_s

    return update_training_log(store, env, run_id, mutate)


# -- cleanup_status.json ------------------------------------------------------------------------


def load_cleanup_status(store: ObjectStore, env: str, run_id: str) -> CleanupStatus | None:
    return _load(store, layout.cleanup_status_key(env, run_id), CleanupStatus)


def save_cleanup_status(store: ObjectStore, status: CleanupStatus) -> None:
    store.put(layout.cleanup_status_key(status.env, status.run_id), _encode(status))


# -- model_metadata.json ------------------------------------------------------------------------


def save_model_metadata(store: ObjectStore, md: ModelMetadata) -> None:
    store.put(layout.metadata_key(md.env, md.run_id), _encode(md))


def load_model_metadata(store: ObjectStore, env: str, run_id: str) -> ModelMetadata | None:
    return _load(store, layout.metadata_key(env, run_id), ModelMetadata)
