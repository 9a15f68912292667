"""The champion: ``{env}/registry/champion.json`` names the model that serves, of any family.

The rule (:func:`decide_champion`), on the gate metric (lower is better) of the run's own backtest:

* the candidates are this run's models — the new Chronos model and every enabled baseline
  (AutoETS, Prophet, Seasonal Naive) — scored on the same windows; the best valid score wins the
  candidacy (ties: the first candidate in the order given);
* with no champion, the best candidate is promoted, so a successful run always leaves one;
* with a champion, it is re-scored on the same windows when it can be (its stored score
  otherwise), and the best candidate replaces it only if ``candidate <= champion * (1 - margin)``
  **and** ``candidate < champion``: an equal score keeps the champion, whatever the margin.
  With the default margin 0 the champion is therefore never worse than the best candidate on the
  run's backtest; with a margin, never worse by more than that margin.

A NaN candidate score is never promoted; a champion with a NaN or missing score counts as beaten.

Live evidence (``champion_live``, from :func:`chronos_flows.monitoring.rule.live_status`): when the
monitor has scored the champion's published forecasts, the reason reports its live WQL next to its
backtest score. A champion that has **degraded in live use** (a degradation record exists) does not
keep its place on the strength of its old backtest: with only its stored score (not re-scored on
this run's windows) it counts as beaten, so the best valid candidate replaces it; re-scored on this
run's windows (which hold the data that degraded it) it is compared without the margin's protection
(margin 0: the candidate must still be strictly better).

Promotion is a compare-and-swap on the champion file: ``put_if_absent`` when there is none,
``put_if_match`` on the ETag that was read otherwise. When the condition fails (someone else
promoted meanwhile) the champion is re-read and the decision made again against its stored score;
the file is never overwritten blindly and a rejected model never replaces it. Pure: works on any
:class:`chronos_flows.core.store.ObjectStore`.

Champion JSON, schema_version 2 (version-1 files, Chronos-only, still read — :func:`normalize`)::

    {"schema_version": 2, "run_id": ..., "family": "autoets", "model": "autoets",
     "model_uri": "s3://…/registry/RUN/chronos" | null,   # Chronos: the registry copy to load
     "config": {...},                                      # what re-creates the forecaster
     "gate_metric": "wql", "score": 0.021, "scores": {"wql": 0.021, "mase": 0.8, ...},
     "judged_on": {"data_fingerprint": ..., "dataset_uri": ..., "freq": "W-MON",
                   "season_length": 52, "horizon": 13, "n_windows": 4, ...},
     "needs_history": {"key": ".../registry/RUN/history/cleaned.parquet", "reason": ...},  # lightgbm (alone
                                                   # or in an ensemble): the panel it is trained on when loaded
     "promoted_at": "2026-...Z", "write_id": "<nonce>",
     "previous": {"run_id": ..., "family": ..., "score": ..., "gate_metric": ...} | null}

Local families (AutoETS, Prophet, Seasonal Naive) store no weights: they are fitted on the history
at forecast time from ``config``.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from chronos_flows.core import layout
from chronos_flows.core.cas import Keep, Write, compare_and_swap
from chronos_flows.core.errors import BadInputError, ConfigError, PreconditionFailed
from chronos_flows.core.store import ObjectStore

SCHEMA_VERSION = 2
MAX_CAS_ATTEMPTS = 10


@dataclass(frozen=True)
class ChampionDecision:
    """Which model serves after a run, and why (the reason states every number)."""

    promoted: bool
    reason: str
    gate_metric: str
    margin: float
    #: the best candidate of the run (promoted or not); None when no candidate has a valid score
    best: str | None
    best_score: float | None
    champion_score: float | None = None
    champion_run_id: str | None = None
    champion_family: str | None = None
    #: whether champion_score was measured on this run's windows (else: its stored score)
    champion_rescored: bool = False
    #: {candidate: gate score} of every candidate, in the order given
    candidate_scores: dict[str, float] = field(default_factory=dict)
    #: the champion's live evidence the decision used (None: none)
    champion_live: dict[str, Any] | None = None
    #: every candidate's full scores, kept so the decision can be re-made against a newer champion
    candidates: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for model_metadata.json and the run summary."""
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "gate_metric": self.gate_metric,
            "margin": self.margin,
            "best": self.best,
            "best_score": clean(self.best_score),
            "champion_score": clean(self.champion_score),
            "champion_run_id": self.champion_run_id,
            "champion_family": self.champion_family,
            "champion_rescored": self.champion_rescored,
            "candidate_scores": {k: clean(v) for k, v in self.candidate_scores.items()},
            **({"champion_live": self.champion_live} if self.champion_live is not None else {}),
        }


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
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _beats(candidate: float, other: float, margin: float) -> bool:
    if math.isnan(other):
        return True
    return candidate <= other * (1.0 - margin) and candidate < other


def decide_champion(
    candidates: Mapping[str, Mapping[str, float]],
    champion: Mapping[str, Any] | None,
    *,
    champion_scores: Mapping[str, float] | None = None,
    gate_metric: str = "wql",
    margin: float = 0.0,
    champion_live: Mapping[str, Any] | None = None,
) -> ChampionDecision:
    """Whether the best of ``candidates`` (``{name: scores}``, lower is better) replaces
    ``champion`` (its champion.json, or None). ``champion_scores``: the champion re-scored on the
    run's windows; without them its stored score is used. ``champion_live``: the champion's live
    evidence (``degraded``, ``live_wql``, ``n_forecasts``, ``reason``), ignored when it is about
    another run than the champion's."""
    if not 0 <= margin < 1:
        raise ConfigError(f"promotion margin must be in [0, 1), got {margin}")
    if not candidates:
        raise BadInputError("no champion candidates: enable Chronos or at least one baseline (evaluation.baselines)")
    gate = {name: _score(s, gate_metric, f"candidate {name}") for name, s in candidates.items()}
    valid = {n: v for n, v in gate.items() if not math.isnan(v)}
    full = {n: {k: float(v) for k, v in s.items() if isinstance(v, (int, float))} for n, s in candidates.items()}
    others = ", ".join(f"{n} {_fmt(v)}" for n, v in gate.items())
    best = min(valid, key=lambda n: (valid[n], list(gate).index(n))) if valid else None
    best_score = valid[best] if best is not None else None
    doc = normalize(champion) if champion is not None else None
    champ_run = str(doc.get("run_id")) if doc is not None and doc.get("run_id") else None
    champ_family = doc.get("family") if doc is not None else None
    rescored = champion_scores is not None
    champ_score: float | None = None
    if doc is not None:
        src = champion_scores if champion_scores is not None else doc
        try:
            champ_score = _score(src, gate_metric, "current champion")
        except ConfigError:
            champ_score = float("nan")  # nothing valid to protect: counts as beaten
    live = None
    if champion_live is not None and doc is not None and str(champion_live.get("champion_run_id") or champ_run) == champ_run:
        live = dict(champion_live)
    degraded = bool(live and live.get("degraded"))
    if degraded and not rescored and champ_score is not None:
        champ_score_for_rule = float("nan")  # the old backtest does not protect a champion degraded in live use
    else:
        champ_score_for_rule = champ_score
    rule_margin = 0.0 if degraded else margin
    common = dict(gate_metric=gate_metric, margin=float(margin), best=best, best_score=best_score,
                  champion_score=champ_score, champion_run_id=champ_run, champion_family=champ_family,
                  champion_rescored=rescored and doc is not None, candidate_scores=gate, candidates=full,
                  champion_live=live)
    need = f"by {margin:.1%}" if margin > 0 else "(equal keeps the champion)"
    if best is None:
        what = f"kept {champ_family} from run {champ_run}" if doc is not None else "no champion"
        return ChampionDecision(False, f"{what}: no candidate has a valid {gate_metric} ({others})", **common)
    if doc is None:
        rest = ", ".join(f"{n} {_fmt(v)}" for n, v in gate.items() if n != best)
        reason = f"no champion yet: promoted {best} ({gate_metric} {_fmt(best_score)}" + (f"; {rest})" if rest else ")")
        return ChampionDecision(True, reason, **common)
    how = "re-scored on this run's windows" if rescored else "stored score"
    if live and live.get("n_forecasts"):
        how += f"; live wql {_fmt(live.get('live_wql'))} over {live['n_forecasts']} scored forecast(s)"
    if degraded:
        how += ", DEGRADED in live use" + (": its stored score does not protect it" if not rescored else ": no margin")
    champ_txt = f"{champ_family} from run {champ_run} ({gate_metric} {_fmt(champ_score)}, {how})"
    if _beats(best_score, champ_score_for_rule, rule_margin):
        gain = "" if math.isnan(champ_score) or champ_score == 0 else f", {1 - best_score / champ_score:.1%} better"
        if degraded and best_score >= champ_score:
            gain = ""
        reason = f"replaced {champ_txt} with {best} ({_fmt(best_score)}{gain}; candidates: {others})"
        return ChampionDecision(True, reason, **common)
    reason = f"kept {champ_txt}: best candidate {best} {_fmt(best_score)} does not beat it {need} (candidates: {others})"
    return ChampionDecision(False, reason, **common)


def normalize(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A champion document in the current schema. Version 1 (Chronos only: ``model`` was
    ``"chronos"`` and ``family`` the Chronos pipeline family) is read as a Chronos champion."""
    out = dict(doc)
    version = int(out.get("schema_version") or 1)
    if version > SCHEMA_VERSION:
        raise BadInputError(
            f"champion.json has schema_version {version}, newer than this chronos-flows ({SCHEMA_VERSION}); upgrade it"
        )
    if version == 1:
        out["config"] = {"chronos_family": out.get("family")} if out.get("family") else {}
        out["family"] = out.get("model") or "chronos"
        out.setdefault("judged_on", {})
        out["schema_version_read"] = 1
    out.setdefault("config", {})
    out.setdefault("judged_on", {})
    return out


def read_champion(store: ObjectStore, env: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(champion, etag)`` from one read (never a half-written file: writes are atomic), or
    ``(None, None)`` when nothing has been promoted in ``env``. Version-1 files are normalised."""
    key = layout.champion_key(env)
    got = store.get(key)
    if got is None:
        return None, None
    return _parse_champion(got[0], store.uri(key)), got[1]


def _parse_champion(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(
            f"{where} is not valid JSON ({exc}); restore it from a run's model_metadata.json "
            f"or delete it to let the next run's best model become champion"
        ) from None
    if not isinstance(doc, dict):
        raise BadInputError(f"{where} must hold a JSON object, not {type(doc).__name__}")
    return normalize(doc)


def champion_document(entry: Mapping[str, Any], decision: ChampionDecision, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The champion.json content for ``entry`` (``run_id``, ``family``; ``model_uri`` for Chronos;
    ``config``, ``judged_on``, optional ``scores`` and extra fields)."""
    for required in ("run_id", "family"):
        if not entry.get(required):
            raise BadInputError(f"champion entry needs {required!r}; got keys {sorted(entry)}")
    if entry["family"] == "chronos" and not entry.get("model_uri"):
        raise BadInputError("a Chronos champion entry needs 'model_uri' (the registry copy of its model)")
    scores = dict(entry.get("scores") or decision.candidates.get(entry["family"]) or {})
    prev = None
    if previous is not None:
        prev = {
            "run_id": previous.get("run_id"),
            "family": previous.get("family"),
            "score": previous.get("score"),
            "gate_metric": previous.get("gate_metric"),
        }
    reserved = {"run_id", "family", "model", "model_uri", "scores", "previous", "config", "judged_on"}
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": entry["run_id"],
        "family": entry["family"],
        "model": entry["family"],
        "model_uri": entry.get("model_uri"),
        "config": dict(entry.get("config") or {}),
        "gate_metric": decision.gate_metric,
        "score": decision.best_score,
        "scores": scores,
        "judged_on": dict(entry.get("judged_on") or {}),
        "promoted_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        # a nonce: ETags are content MD5s, so content must never repeat (FACTS: stale CAS)
        "write_id": uuid.uuid4().hex,
        "previous": prev,
        **{k: v for k, v in entry.items() if k not in reserved},
    }


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    #: the decision that held at write time (the last one made, if not promoted)
    decision: ChampionDecision
    #: the champion document after the call (ours if promoted)
    champion: dict[str, Any] | None
    attempts: int


def promote_outcome(
    store: ObjectStore,
    env: str,
    entry: Mapping[str, Any],
    decision: ChampionDecision,
    expected_etag: str | None,
) -> PromotionOutcome:
    """Write ``entry`` (the decision's best candidate) as champion if ``decision`` says so.

    Each attempt reads the champion; if it is not the one the decision was made against
    (``expected_etag``), the decision is made again against its stored score. A rejected decision
    writes nothing. The write is conditional on the ETag just read, so a promotion racing in
    between makes it fail with ``PreconditionFailed`` and the loop starts over.
    """
    key = layout.champion_key(env)
    if decision.promoted and entry.get("family") != decision.best:
        raise BadInputError(f"champion entry is {entry.get('family')!r} but the decision promotes {decision.best!r}")
    state = {"decision": decision, "expected": expected_etag, "attempt": 0}

    def step(got):
        state["attempt"] += 1
        current, etag = (None, None) if got is None else (_parse_champion(got[0], store.uri(key)), got[1])
        if (
            current is not None
            and current.get("run_id") == entry.get("run_id")
            and current.get("family") == entry.get("family")
        ):
            # our own earlier write landed (e.g. the response of a retried request was lost)
            return Keep(PromotionOutcome(True, state["decision"], current, state["attempt"]))
        if etag != state["expected"]:
            state["decision"] = decide_champion(
                decision.candidates, current, gate_metric=decision.gate_metric, margin=decision.margin
            )
            state["expected"] = etag
        if not state["decision"].promoted:
            return Keep(PromotionOutcome(False, state["decision"], current, state["attempt"]))
        doc = champion_document(entry, state["decision"], current)
        return Write(json.dumps(doc, indent=2).encode("utf-8"), PromotionOutcome(True, state["decision"], doc, state["attempt"]))

    return compare_and_swap(
        store, key, step, attempts=MAX_CAS_ATTEMPTS,
        exhausted=lambda uri: PreconditionFailed(
            f"{uri} kept changing during {MAX_CAS_ATTEMPTS} promotion attempts; run the promotion again"),
    )[0]


def promote(
    store: ObjectStore,
    env: str,
    entry: Mapping[str, Any],
    decision: ChampionDecision,
    expected_etag: str | None,
) -> bool:
    """:func:`promote_outcome`, returning whether ``entry`` is now the champion."""
    return promote_outcome(store, env, entry, decision, expected_etag).promoted
