"""The typed, frozen values the training flow's steps take and return (no shared mutable context).

The flow (``flows.lifecycle.LockedRun``) holds the lock handle and the run's mutable record; every
step takes a :class:`RunSpec` (what never changes during the run) plus the values it needs, and
returns one of these. Pure: no Prefect, no boto3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from chronos_flows.config.params import TrainingParams
from chronos_flows.evaluation.backtest import BacktestResult
from chronos_flows.models.base import Forecaster
from chronos_flows.core.store import ObjectStore

#: ``guard(refresh=True)`` raises RunKilledError / LostLockError when the run must stop (the flow's
#: lock check; ``refresh=False`` checks what the heartbeat last saw, without reading the store)
Guard = Callable[..., None]


def no_guard(refresh: bool = True) -> None:
    """The guard of work done outside a run (tests, benchmarks): never stops it."""


@dataclass(frozen=True)
class RunSpec:
    """What every step of one run reads and nobody changes: its settings, store, id and work directory."""

    params: TrainingParams
    store: ObjectStore
    run_id: str
    workdir: Path

    @property
    def env(self) -> str:
        return self.params.env


@dataclass(frozen=True)
class DataSync:
    """Where the run's data went (``data_sync``) and the fingerprints the champion is judged on."""

    dataset_key: str
    dataset_uri: str
    raw_fingerprint: str
    cleaned_fingerprint: str
    source: str

    def to_dict(self) -> dict[str, str]:
        """As recorded in model_metadata.json (``extra.dataset``)."""
        return asdict(self)


@dataclass(frozen=True)
class TrainedChronos:
    """The fitted Chronos model and what its training recorded (``uri`` of the run's model; on the
    EC2 backend also ``instance_id``, ``instance_type``, ``instance_seconds``)."""

    model: Forecaster
    info: dict[str, Any]

    @property
    def instance_id(self) -> Optional[str]:
        return self.info.get("instance_id")

    @property
    def instance_seconds(self) -> Optional[float]:
        return self.info.get("instance_seconds")


@dataclass(frozen=True)
class BaselineRecord:
    """One local baseline's backtest (AutoETS, Theta, Prophet) and how it ran."""

    family: str
    result: BacktestResult
    fit_seconds: float
    config: dict[str, Any]
    failures: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    cached_chunks: int = 0

    def info(self) -> dict[str, Any]:
        """As recorded in model_metadata.json and training.json (``models.<family>``)."""
        return {"fit_seconds": self.fit_seconds, "failures": dict(self.failures), "config": self.config,
                "chunks": self.chunks, "cached_chunks": self.cached_chunks}


@dataclass(frozen=True)
class ChampionInRun:
    """The current champion as this run sees it."""

    doc: Optional[dict] = None
    #: a forecaster to backtest as ``champion`` on this run's windows (None: see ``same_as``)
    model: Optional[Forecaster] = None
    #: the candidate of this run that *is* the champion (same local family, same config)
    same_as: Optional[str] = None

    @property
    def run_id(self) -> Optional[str]:
        return self.doc.get("run_id") if self.doc else None


@dataclass(frozen=True)
class RunResults:
    """What the run produced, as its cleanup records it (training.json, the summary): built by the
    flow from the steps' return values when the run ends, whatever the outcome."""

    #: training.json ``models``: the Chronos training record and the baselines' (autoets, prophet)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    promotion: Optional[dict[str, Any]] = None
    cost: Optional[dict[str, Any]] = None
    #: the tuning flow's study summary
    tuning: Optional[dict[str, Any]] = None
    #: every instance launched for the run (terminated by its cleanup)
    instance_ids: tuple[str, ...] = ()
    #: billed seconds of the run's instance, also when training failed (the cost estimate uses it)
    instance_seconds: Optional[float] = None
