"""A run's champion decision turned into store writes: the champion entry of any family, the copy of
the Chronos model into the registry *before* ``champion.json`` points to it (deleted again when the
compare-and-swap loses a race), the promotion record with the data warnings, the cost estimate and
``model_metadata.json``.

The rule itself is :func:`chronos_flows.champion.registry.decide_champion`; the compare-and-swap is
:func:`chronos_flows.champion.registry.promote_outcome`. Pure: any :class:`~chronos_flows.core.store.ObjectStore`,
no Prefect, no boto3 (the task ``results-sync`` calls :func:`promote_run` and publishes the artifact).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError
from chronos_flows.runstate import runlog
from chronos_flows.data.cleaning import CleaningReport
from chronos_flows.config.params import TrainingParams
from chronos_flows.config.sections import RANDOM_INIT_NOTE
from chronos_flows.training.cost import run_cost
from chronos_flows.evaluation.backtest import BacktestResult
from chronos_flows.models.ensemble import champion_config
from chronos_flows.models.families import NEEDS_HISTORY, baseline_config
from chronos_flows.training.specs import (
    BaselineRecord,
    ChampionInRun,
    DataSync,
    Guard,
    RunSpec,
    TrainedChronos,
    no_guard,
)
from chronos_flows.champion.registry import ChampionDecision, decide_champion, promote_outcome, read_champion
from chronos_flows.core.store import ObjectStore


@dataclass(frozen=True)
class Promotion:
    """What ``results_sync`` decided and wrote: the leaderboard, the promotion record (the decision
    that held at write time, the family that serves, the reason — with any data warning), the cost."""

    leaderboard: list[dict[str, Any]]
    promotion: dict[str, Any]
    cost: dict[str, Any]
    promoted: bool
    #: the decision that held at write time (its candidate scores go into the decision artifact)
    decision: ChampionDecision

    def to_dict(self) -> dict[str, Any]:
        """The run summary's ``leaderboard``, ``promotion`` and ``cost_estimate`` (as ``cost``)."""
        return {"leaderboard": self.leaderboard, "promotion": self.promotion, "cost": self.cost}


def leaderboard_records(result: BacktestResult) -> list[dict[str, Any]]:
    """The leaderboard as JSON rows (floats rounded to 6 digits), best model first; when a model is
    not representative (a random-initialised Chronos) every row has a ``note`` and that row says why."""
    rows = result.leaderboard.reset_index().to_dict(orient="records")
    out = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
    notes = result.settings.get("not_representative") or {}
    if notes:
        for row in out:
            row["note"] = notes.get(row["model"], "")
    return out


def not_representative(chronos_info: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"chronos": "random initialisation: not representative"}`` when the run's Chronos started from
    random weights (no pretrained checkpoint reachable, or ``chronos.model`` empty), else ``{}``."""
    return {"chronos": RANDOM_INIT_NOTE} if (chronos_info or {}).get("random_init") else {}


def mark_not_representative(result: BacktestResult, notes: Mapping[str, str]) -> BacktestResult:
    """``result`` with ``settings["not_representative"]`` = ``notes`` (read by the leaderboard records,
    the evaluation report, the ensemble's candidates and the champion's)."""
    if not notes:
        return result
    return replace(result, settings={**result.settings, "not_representative": dict(notes)})


def competitors(params: TrainingParams, result: BacktestResult, names: list[str]) -> list[str]:
    """``names`` without the models ``result`` marks not representative, unless
    ``chronos.random_competes`` lets a random-initialised Chronos compete."""
    if params.chronos.random_competes:
        return list(names)
    notes = result.settings.get("not_representative") or {}
    return [n for n in names if n not in notes]


def candidates(params: TrainingParams, result: BacktestResult) -> dict[str, dict[str, float]]:
    """This run's champion candidates, in the order ties are broken: Chronos, the baselines, the
    ensemble — without a random-initialised Chronos unless ``chronos.random_competes``."""
    every = ["chronos", *params.evaluation.baselines, "ensemble"]
    out = {n: result.scores(n) for n in competitors(params, result, every) if n in result.leaderboard.index}
    # a run with no other candidate (e.g. evaluation.baselines empty) still decides: the marked model competes
    return out or {n: result.scores(n) for n in every if n in result.leaderboard.index}


def chronos_config(params: TrainingParams) -> dict[str, Any]:
    return {"chronos_family": params.chronos.family, **params.chronos.model_dump(mode="json")}


def judged_on(params: TrainingParams, data: DataSync, report: CleaningReport, result: BacktestResult) -> dict[str, Any]:
    """What the champion was judged on: the data (fingerprints, where it came from, how it was read
    and cleaned, the warnings), the windows and the quantiles."""
    ev = params.evaluation
    return {
        "data_fingerprint": data.cleaned_fingerprint,
        "raw_fingerprint": data.raw_fingerprint,
        "dataset_uri": data.dataset_uri,
        "source": data.source,
        "freq": report.freq,
        "season_length": report.season_length,
        "horizon": ev.horizon,
        "n_windows": ev.n_windows,
        "quantiles": list(ev.quantiles),
        "n_series": result.settings.get("n_series"),
        "data": params.data.model_dump(mode="json"),
        "cleaning": params.cleaning.model_dump(mode="json"),
        "data_warnings": list(report.warnings),
    }


def champion_entry(spec: RunSpec, winner: str | None, result: BacktestResult, report: CleaningReport,
                   data: DataSync, chronos_info: Mapping[str, Any]) -> dict[str, Any]:
    """The champion.json entry of ``winner`` (any family): what re-creates it and what it was judged
    on; a Chronos model (alone or in an ensemble) is loaded from the run's registry copy."""
    params = spec.params
    entry: dict[str, Any] = {"run_id": spec.run_id, "family": winner, "judged_on": judged_on(params, data, report, result)}
    registry_uri = spec.store.uri(layout.registry_model_prefix(spec.env, spec.run_id, "chronos"))
    if winner == "chronos":
        entry.update(model_uri=registry_uri, run_model_uri=chronos_info["uri"], config=chronos_config(params))
        if chronos_info.get("random_init"):  # it competed (asked, or the only candidate): the champion says so
            entry["not_representative"] = RANDOM_INIT_NOTE
    elif winner == "ensemble":
        fit = result.settings["ensemble"]
        configs = {m: baseline_config(params, m, report.season_length) for m in fit["members"] if m != "chronos"}
        configs["chronos"] = {**chronos_config(params), "model_uri": registry_uri}
        entry["config"] = champion_config(fit, configs)
        entry["weights"] = {m["family"]: m["weight"] for m in entry["config"]["members"]}
    elif winner is not None:
        entry["config"] = baseline_config(params, winner, report.season_length)
    if needs_history(entry):
        entry["needs_history"] = history_record(spec, data)
    return entry


def needs_history(entry: Mapping[str, Any]) -> bool:
    """Whether forecasting with ``entry`` needs the panel's history (a global family — alone or as
    an ensemble member — is trained on it when the champion is loaded)."""
    family = entry.get("family")
    if family in NEEDS_HISTORY:
        return True
    members = (entry.get("config") or {}).get("members") or [] if family == "ensemble" else []
    return any(m.get("family") in NEEDS_HISTORY for m in members)


def history_record(spec: RunSpec, data: DataSync) -> dict[str, Any]:
    """champion.json ``needs_history``: where the cleaned panel the champion was judged on is kept
    (a registry copy, outside the run's expiring directory) and where it is copied from."""
    key = layout.registry_model_prefix(spec.env, spec.run_id, "history") + "/cleaned.parquet"
    return {
        "reason": "a global model: trained on the panel's history when the champion is loaded, then applied to each context",
        "key": key,
        "uri": spec.store.uri(key),
        "source_key": layout.run_data_prefix(spec.env, spec.run_id) + "/cleaned.parquet",
        "data_fingerprint": data.cleaned_fingerprint,
    }


def needs_chronos(entry: Mapping[str, Any]) -> bool:
    """Whether serving ``entry`` loads the run's Chronos model (Chronos itself, or an ensemble member)."""
    return entry.get("family") == "chronos" or (entry.get("family") == "ensemble" and "chronos" in entry.get("weights", {}))


def rescored_champion(result: BacktestResult, champion: ChampionInRun | None, current: dict | None) -> dict[str, float] | None:
    """The champion's scores measured on this run's windows, if the champion that is current now is
    the one this run re-scored (as ``champion``, or as the candidate it equals); else None."""
    seen = champion.doc if champion is not None else None
    if current is None or seen is None or current.get("write_id") != seen.get("write_id"):
        return None
    if "champion" in result.leaderboard.index:
        return result.scores("champion")
    if champion.same_as and champion.same_as in result.leaderboard.index:
        return result.scores(champion.same_as)
    return None


def promote_champion(store: ObjectStore, env: str, entry: Mapping[str, Any], decision: ChampionDecision,
                     etag: str | None, model_dir: Path) -> tuple[bool, ChampionDecision]:
    """Make ``entry`` the champion if ``decision`` (re-made against a newer champion) says so.

    Copy-then-swap: a Chronos model is copied from ``model_dir`` into the registry before
    ``champion.json`` is swapped to point to it, so the pointer never dangles; when the
    compare-and-swap loses the race (a better model was promoted meanwhile), the copied files are
    deleted and the champion is left as the other run wrote it. Returns (promoted, final decision)."""
    if entry.get("family") is None:
        return False, decision
    prefix = layout.registry_model_prefix(env, entry["run_id"], "chronos")
    copied = decision.promoted and needs_chronos(entry)
    if copied:
        store.upload_dir(model_dir, prefix)
    history = entry.get("needs_history") if decision.promoted else None
    if history:  # the panel a global champion is trained on, copied before the pointer swaps to it
        got = store.get(history["source_key"])
        if got is None:
            raise BadInputError(f"the run's cleaned data is missing at {store.uri(history['source_key'])}; "
                                f"a {entry.get('family')} champion needs it: re-run chronos-flows run")
        store.put(history["key"], got[0])
    outcome = promote_outcome(store, env, entry, decision, etag)
    if copied and not outcome.promoted:
        for key in store.list(prefix + "/"):
            store.delete(key)
    if history and not outcome.promoted:
        store.delete(history["key"])
    return outcome.promoted, outcome.decision


def promotion_record(final: ChampionDecision, promoted: bool, winner: str | None, warnings: list[str]) -> dict[str, Any]:
    """The decision that held, whether ``winner`` now serves, and the reason — which names every data
    warning: a champion judged on heavily repaired data is never promoted silently."""
    record = {**final.to_dict(), "promoted": promoted, "family": winner if promoted else final.champion_family}
    if warnings:
        record["reason"] = final.reason + " — DATA WARNING: " + "; ".join(warnings)
        record["data_warnings"] = list(warnings)
    return record


def model_metadata(spec: RunSpec, result: BacktestResult, report: CleaningReport, data: DataSync,
                   chronos_info: Mapping[str, Any], baselines: Mapping[str, BaselineRecord],
                   board: list[dict[str, Any]], promotion: dict[str, Any], cost: dict[str, Any]) -> runlog.ModelMetadata:
    """The run's ``model_metadata.json``: settings, data, every model's record, leaderboard, promotion, cost."""
    models: dict[str, dict[str, Any]] = {"chronos": dict(chronos_info)}
    models.update({b: baselines[b].info() for b in ("autoets", "theta", "prophet", "lightgbm") if b in baselines})
    models["seasonal_naive"] = {"config": {"season_length": report.season_length}}
    if result.settings.get("ensemble"):
        models["ensemble"] = result.settings["ensemble"]
    return runlog.ModelMetadata(
        run_id=spec.run_id,
        env=spec.env,
        params=spec.params.model_dump(mode="json"),
        data_fingerprint=data.cleaned_fingerprint,
        models=models,
        leaderboard=board,
        promotion=promotion,
        extra={
            "dataset": data.to_dict(),
            "cleaning": report.to_dict(),
            "backtest": result.settings,
            "timings": result.timings,
            "failures": result.failures,
            "cost_estimate": cost,
        },
    )


def champion_live_evidence(store: ObjectStore, env: str, current: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The monitor's live evidence about the current champion (README "Monitoring"), or None when its
    published forecasts were never scored and it was never found degraded."""
    if current is None or not current.get("run_id"):
        return None
    from chronos_flows.monitoring.rule import live_status

    status = live_status(store, env, str(current["run_id"]))
    return status if status["n_forecasts"] or status["degraded"] else None


def promote_run(spec: RunSpec, result: BacktestResult, report: CleaningReport, data: DataSync, chronos: TrainedChronos,
                baselines: Mapping[str, BaselineRecord], champion: ChampionInRun | None = None,
                guard: Guard = no_guard) -> Promotion:
    """``results_sync``: the champion decision over every family (compare-and-swap, copy-then-swap of
    a Chronos model), the cost estimate and ``model_metadata.json``. ``guard`` is called before the
    first registry write (a killed run or a lost lock promotes nothing)."""
    ev = spec.params.evaluation
    current, etag = read_champion(spec.store, spec.env)
    decision = decide_champion(candidates(spec.params, result), current, champion_scores=rescored_champion(result, champion, current),
                               gate_metric=ev.gate_metric, margin=ev.promotion_margin,
                               champion_live=champion_live_evidence(spec.store, spec.env, current))
    entry = champion_entry(spec, decision.best, result, report, data, chronos.info)
    guard()
    promoted, final = promote_champion(spec.store, spec.env, entry, decision, etag, spec.workdir / "models" / "chronos")
    promotion = promotion_record(final, promoted, decision.best, list(report.warnings))
    notes = result.settings.get("not_representative") or {}
    if notes:
        competing = candidates(spec.params, result)
        promotion["not_representative"] = dict(notes)
        promotion["reason"] += "".join(
            f" — {m}: {why}" + (" (competes: " + ("chronos.random_competes is on)" if spec.params.chronos.random_competes
                                                 else "the only candidate)") if m in competing else
                                " (kept out of the ensemble and the champion race; chronos.random_competes lets it in)")
            for m, why in notes.items())
    cost = run_cost(spec.params.compute, chronos.instance_seconds)
    board = leaderboard_records(result)
    runlog.save_model_metadata(spec.store, model_metadata(spec, result, report, data, chronos.info, baselines, board, promotion, cost))
    return Promotion(leaderboard=board, promotion=promotion, cost=cost, promoted=promoted, decision=final)
