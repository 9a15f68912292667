"""The champion: ``{env}/registry/champion.json`` points at the model that serves.

A candidate is promoted only if it beats **both** the current champion and the Prophet baseline on
the gate metric (lower is better) by the configured relative margin::

    candidate <= other * (1 - margin)   and   candidate < other

(so an equal score is never a promotion, whatever the margin). A missing champion or baseline is
simply not compared against; a NaN candidate score is never promoted; a NaN score of the champion
or baseline counts as beaten (there is nothing valid to protect).

Promotion is a compare-and-swap on the champion file: ``put_if_absent`` when there is no champion,
``put_if_match`` on the ETag that was read otherwise. When the condition fails (someone else
promoted meanwhile) the champion is re-read and the decision is made again against the new one;
the file is never overwritten blindly and a rejected model never replaces it. Pure: works on any
:class:`chronos_flows.store.ObjectStore`.

Champion JSON (schema_version 1)::

    {"schema_version": 1, "run_id": ..., "model": ..., "model_uri": ..., "gate_metric": "wql",
     "score": 0.021, "scores": {"wql": 0.021, "mase": 0.8, ...}, "promoted_at": "2026-...Z",
     "previous": {"run_id": ..., "score": ...} | null}
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from chronos_flows import layout
from chronos_flows.errors import BadInputError, ConfigError, PreconditionFailed
from chronos_flows.store import ObjectStore

SCHEMA_VERSION = 1
MAX_CAS_ATTEMPTS = 10


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    gate_metric: str
    margin: float
    candidate_score: float
    champion_score: float | None = None
    baseline_score: float | None = None
    champion_run_id: str | None = None
    #: the inputs, kept so the decision can be re-made against a newer champion
    candidate: dict[str, float] = field(default_factory=dict, repr=False)
    baseline: dict[str, float] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for model_metadata.json and the run summary."""
        d = asdict(self)
        d.pop("candidate")
        d.pop("baseline")
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _score(entry: Mapping[str, Any], gate_metric: str, what: str) -> float:
    """``entry[gate_metric]``, else ``entry["scores"][gate_metric]``, else ``entry["score"]`` when
    ``entry["gate_metric"] == gate_metric``."""
    value: Any = None
    if gate_metric in entry and not isinstance(entry[gate_metric], Mapping):
        value = entry[gate_metric]
    elif isinstance(entry.get("scores"), Mapping) and gate_metric in entry["scores"]:
        value = entry["scores"][gate_metric]
    elif entry.get("gate_metric") == gate_metric and "score" in entry:
        value = entry["score"]
    if value is None:
        raise ConfigError(
            f"the {what} has no {gate_metric!r} score (has {sorted(k for k in entry if k != 'previous')}); "
            f"evaluate it with that metric or set evaluation.gate_metric to the metric it was promoted on"
        )
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"the {what}'s {gate_metric!r} score {value!r} is not a number") from None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def _beats(candidate: float, other: float, margin: float) -> bool:
    if math.isnan(other):
        return True
    return candidate <= other * (1.0 - margin) and candidate < other


def decide_promotion(
    candidate: Mapping[str, float],
    champion: Mapping[str, Any] | None,
    baseline: Mapping[str, float] | None,
    *,
    gate_metric: str = "wql",
    margin: float = 0.0,
) -> PromotionDecision:
    """Whether ``candidate`` (scores, lower is better) replaces ``champion`` (its champion.json or
    scores) given the ``baseline`` (Prophet's scores); the reason states the numbers."""
    if not 0 <= margin < 1:
        raise ConfigError(f"promotion margin must be in [0, 1), got {margin}")
    cand = _score(candidate, gate_metric, "candidate")
    champ = _score(champion, gate_metric, "current champion") if champion is not None else None
    base = _score(baseline, gate_metric, "Prophet baseline") if baseline is not None else None
    champ_run = str(champion.get("run_id")) if champion is not None and champion.get("run_id") else None
    need = f"by a margin of {margin:.1%}" if margin > 0 else "strictly"
    parts: list[str] = []
    ok = True
    if math.isnan(cand):
        ok = False
        parts.append(f"candidate {gate_metric} is not a number")
    else:
        for label, other in (("champion" + (f" {champ_run}" if champ_run else ""), champ), ("prophet", base)):
            if other is None:
                parts.append(f"no {label.split()[0]} to compare")
                continue
            if _beats(cand, other, margin):
                parts.append(f"beats {label} ({_fmt(cand)} vs {_fmt(other)})")
            else:
                ok = False
                parts.append(f"does not beat {label} {need} ({_fmt(cand)} vs {_fmt(other)}, needs <= {_fmt(other * (1 - margin))} and < {_fmt(other)})")
    verdict = "promoted" if ok else "kept current champion"
    reason = f"{verdict}: candidate {gate_metric} {_fmt(cand)}; " + "; ".join(parts)
    return PromotionDecision(
        promoted=ok,
        reason=reason,
        gate_metric=gate_metric,
        margin=float(margin),
        candidate_score=cand,
        champion_score=champ,
        baseline_score=base,
        champion_run_id=champ_run,
        candidate={k: float(v) for k, v in candidate.items() if isinstance(v, (int, float))},
        baseline=None if baseline is None else {k: float(v) for k, v in baseline.items() if isinstance(v, (int, float))},
    )


def read_champion(store: ObjectStore, env: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(champion, etag)``, or ``(None, None)`` when no model has been promoted in ``env``."""
    key = layout.champion_key(env)
    got = store.get(key)
    if got is None:
        return None, None
    data, etag = got
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(
            f"{store.uri(key)} is not valid JSON ({exc}); restore it from a run's model_metadata.json "
            f"or delete it to let the next good model become champion"
        ) from None
    if not isinstance(doc, dict):
        raise BadInputError(f"{store.uri(key)} must hold a JSON object, not {type(doc).__name__}")
    return doc, etag


def champion_document(entry: Mapping[str, Any], decision: PromotionDecision, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The champion.json content for ``entry`` (``run_id``, ``model``, ``model_uri``, optional ``scores``)."""
    for required in ("run_id", "model", "model_uri"):
        if not entry.get(required):
            raise BadInputError(f"champion entry needs {required!r}; got keys {sorted(entry)}")
    scores = dict(entry.get("scores") or decision.candidate)
    prev = None
    if previous is not None:
        prev_score = previous.get("score")
        prev = {"run_id": previous.get("run_id"), "score": prev_score, "gate_metric": previous.get("gate_metric")}
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": entry["run_id"],
        "model": entry["model"],
        "model_uri": entry["model_uri"],
        "gate_metric": decision.gate_metric,
        "score": decision.candidate_score,
        "scores": scores,
        "promoted_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        # a nonce: ETags are content MD5s, so content must never repeat (FACTS: stale CAS)
        "write_id": uuid.uuid4().hex,
        "previous": prev,
        **{k: v for k, v in entry.items() if k not in {"run_id", "model", "model_uri", "scores", "previous"}},
    }


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    #: the decision that held at write time (the last one made, if not promoted)
    decision: PromotionDecision
    #: the champion document after the call (ours if promoted)
    champion: dict[str, Any] | None
    attempts: int


def promote_outcome(
    store: ObjectStore,
    env: str,
    entry: Mapping[str, Any],
    decision: PromotionDecision,
    expected_etag: str | None,
) -> PromotionOutcome:
    """:func:`promote` returning the decision that held at write time and the resulting champion.

    Each attempt reads the champion; if it is not the one the decision was made against
    (``expected_etag``), the decision is made again against it. A rejected decision writes nothing.
    The write is conditional on the ETag just read, so a promotion racing in between makes it fail
    with ``PreconditionFailed`` and the loop starts over.
    """
    key = layout.champion_key(env)
    for attempt in range(1, MAX_CAS_ATTEMPTS + 1):
        current, etag = read_champion(store, env)
        if current is not None and current.get("run_id") == entry.get("run_id") and current.get("model_uri") == entry.get("model_uri"):
            # our own earlier write landed (e.g. the response of a retried request was lost)
            return PromotionOutcome(True, decision, current, attempt)
        if etag != expected_etag:
            decision = decide_promotion(
                decision.candidate, current, decision.baseline, gate_metric=decision.gate_metric, margin=decision.margin
            )
            expected_etag = etag
        if not decision.promoted:
            return PromotionOutcome(False, decision, current, attempt)
        doc = champion_document(entry, decision, current)
        data = json.dumps(doc, indent=2).encode("utf-8")
        try:
            if etag is None:
                store.put_if_absent(key, data)
            else:
                store.put_if_match(key, data, etag)
        except PreconditionFailed:
            continue  # someone else promoted meanwhile: re-read and re-decide
        return PromotionOutcome(True, decision, doc, attempt)
    raise PreconditionFailed(
        f"{store.uri(key)} kept changing during {MAX_CAS_ATTEMPTS} promotion attempts; run the promotion again"
    )


def promote(
    store: ObjectStore,
    env: str,
    entry: Mapping[str, Any],
    decision: PromotionDecision,
    expected_etag: str | None,
) -> bool:
    """Make ``entry`` (``run_id``, ``model``, ``model_uri``, optional ``scores`` and extra fields) the
    champion of ``env`` if ``decision`` says so. ``expected_etag`` is the ETag of the champion the
    decision was made against (``None``: there was none). Compare-and-swap; a lost race re-reads
    and re-decides against the new champion. Returns whether ``entry`` is now the champion."""
    return promote_outcome(store, env, entry, decision, expected_etag).promoted
