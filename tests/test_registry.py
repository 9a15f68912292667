"""Champion promotion: the rule, and the compare-and-swap on real stores (local directory, S3 API)."""

from __future__ import annotations

import json
import threading

import pytest

from blocks.store import LocalStore, open_store
from chronos_flows import layout
from chronos_flows.errors import BadInputError, ConfigError, PreconditionFailed
from chronos_flows.registry import decide_promotion, promote, promote_outcome, read_champion

ENV = "dev"


def entry(run_id: str, **extra) -> dict:
    return {"run_id": run_id, "model": "chronos", "model_uri": f"file:///models/{run_id}", **extra}


def champion_doc(run_id: str, wql: float) -> dict:
    return {"schema_version": 1, "run_id": run_id, "model": "chronos", "model_uri": "x", "gate_metric": "wql",
            "score": wql, "scores": {"wql": wql}}


# ------------------------------------------------------------------------------------------ the rule


def test_when_candidate_beats_champion_and_prophet_then_it_is_promoted():
    d = decide_promotion({"wql": 0.018}, champion_doc("old", 0.020), {"wql": 0.0225}, gate_metric="wql", margin=0.0)
    assert d.promoted
    assert d.candidate_score == 0.018 and d.champion_score == 0.020 and d.baseline_score == 0.0225
    assert "0.018" in d.reason and "0.02" in d.reason and "0.0225" in d.reason


def test_when_candidate_is_worse_than_the_champion_then_the_champion_is_kept():
    d = decide_promotion({"wql": 0.021}, champion_doc("old", 0.020), {"wql": 0.0225}, gate_metric="wql", margin=0.0)
    assert not d.promoted and "does not beat champion old" in d.reason


def test_when_candidate_equals_the_champion_then_the_champion_is_kept():
    d = decide_promotion({"wql": 0.020}, champion_doc("old", 0.020), {"wql": 0.0225}, gate_metric="wql", margin=0.0)
    assert not d.promoted


def test_when_candidate_loses_to_prophet_then_it_is_not_promoted_even_without_a_champion():
    d = decide_promotion({"wql": 0.03}, None, {"wql": 0.0225}, gate_metric="wql", margin=0.0)
    assert not d.promoted and "prophet" in d.reason
    assert decide_promotion({"wql": 0.02}, None, None, gate_metric="wql", margin=0.0).promoted


def test_when_a_margin_is_configured_then_a_smaller_improvement_is_not_enough():
    champ = champion_doc("old", 0.020)
    assert not decide_promotion({"wql": 0.0191}, champ, None, gate_metric="wql", margin=0.05).promoted
    assert decide_promotion({"wql": 0.0189}, champ, None, gate_metric="wql", margin=0.05).promoted


def test_when_gate_metric_is_mase_then_mase_scores_decide():
    cand = {"wql": 0.030, "mase": 0.7}
    champ = {**champion_doc("old", 0.020), "scores": {"wql": 0.020, "mase": 0.8}}
    assert decide_promotion(cand, champ, {"mase": 0.9, "wql": 0.02}, gate_metric="mase", margin=0.0).promoted
    assert not decide_promotion(cand, champ, {"mase": 0.9, "wql": 0.02}, gate_metric="wql", margin=0.0).promoted


def test_when_candidate_score_is_nan_or_missing_then_it_is_not_promoted_or_explained():
    assert not decide_promotion({"wql": float("nan")}, None, None, gate_metric="wql").promoted
    with pytest.raises(ConfigError, match="'rmse'"):
        decide_promotion({"wql": 0.01}, None, None, gate_metric="rmse")


# -------------------------------------------------------------------------------- the store protocol


def test_when_first_model_promoted_then_champion_json_is_created(tmp_path):
    store = LocalStore(tmp_path)
    champ, etag = read_champion(store, ENV)
    assert champ is None and etag is None
    d = decide_promotion({"wql": 0.02, "mase": 0.8}, champ, {"wql": 0.0225}, gate_metric="wql")
    assert promote(store, ENV, entry("r1"), d, etag)
    doc, _ = read_champion(store, ENV)
    assert doc["run_id"] == "r1" and doc["model_uri"] == "file:///models/r1" and doc["schema_version"] == 1
    assert doc["gate_metric"] == "wql" and doc["score"] == 0.02 and doc["scores"]["mase"] == 0.8
    assert doc["previous"] is None and doc["promoted_at"].endswith("Z")
    assert store.exists(layout.champion_key(ENV))


def test_when_a_better_model_is_promoted_then_previous_points_at_the_old_champion(tmp_path):
    store = LocalStore(tmp_path)
    promote(store, ENV, entry("r1"), decide_promotion({"wql": 0.02}, None, None), None)
    champ, etag = read_champion(store, ENV)
    d = decide_promotion({"wql": 0.015}, champ, {"wql": 0.0225})
    assert promote(store, ENV, entry("r2"), d, etag)
    doc, _ = read_champion(store, ENV)
    assert doc["run_id"] == "r2" and doc["previous"] == {"run_id": "r1", "score": 0.02, "gate_metric": "wql"}


def test_when_a_model_is_rejected_then_the_champion_file_is_untouched(tmp_path):
    store = LocalStore(tmp_path)
    promote(store, ENV, entry("r1"), decide_promotion({"wql": 0.02}, None, None), None)
    before = store.get(layout.champion_key(ENV))
    champ, etag = read_champion(store, ENV)
    d = decide_promotion({"wql": 0.025}, champ, {"wql": 0.0225})
    assert not promote(store, ENV, entry("r2"), d, etag)
    assert store.get(layout.champion_key(ENV)) == before


class RacingStore:
    """A real LocalStore where another run promotes its model just before our first conditional write."""

    def __init__(self, inner: LocalStore, rival_wql: float):
        self.inner, self.rival_wql, self.raced = inner, rival_wql, False
        self.url = inner.url

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _rival(self) -> None:
        if not self.raced:
            self.raced = True
            champ, etag = read_champion(self.inner, ENV)
            d = decide_promotion({"wql": self.rival_wql}, champ, None)
            assert promote(self.inner, ENV, entry("rival"), d, etag)

    def put_if_match(self, key, data, etag):
        self._rival()
        return self.inner.put_if_match(key, data, etag)

    def put_if_absent(self, key, data):
        self._rival()
        return self.inner.put_if_absent(key, data)


def test_when_a_better_rival_promotes_meanwhile_then_the_candidate_is_re_decided_and_kept_out(tmp_path):
    store = RacingStore(LocalStore(tmp_path), rival_wql=0.010)
    champ, etag = read_champion(store, ENV)
    d = decide_promotion({"wql": 0.015}, champ, {"wql": 0.0225})
    assert d.promoted
    out = promote_outcome(store, ENV, entry("late"), d, etag)
    assert not out.promoted and out.attempts == 2
    assert "does not beat champion rival" in out.decision.reason
    assert read_champion(store, ENV)[0]["run_id"] == "rival"


def test_when_a_worse_rival_promotes_meanwhile_then_the_candidate_replaces_it_with_previous_set(tmp_path):
    inner = LocalStore(tmp_path)
    promote(inner, ENV, entry("r0"), decide_promotion({"wql": 0.05}, None, None), None)
    store = RacingStore(inner, rival_wql=0.03)
    champ, etag = read_champion(store, ENV)
    out = promote_outcome(store, ENV, entry("late"), decide_promotion({"wql": 0.015}, champ, None), etag)
    assert out.promoted and out.attempts == 2
    doc, _ = read_champion(inner, ENV)
    assert doc["run_id"] == "late" and doc["previous"]["run_id"] == "rival"


def test_when_many_runs_promote_concurrently_then_the_best_score_ends_as_champion(tmp_path):
    store = LocalStore(tmp_path)
    scores = {f"r{i}": 0.02 + 0.001 * ((i * 7) % 11) for i in range(11)}
    barrier = threading.Barrier(len(scores))
    errors: list[BaseException] = []

    def run(run_id: str, wql: float) -> None:
        try:
            champ, etag = read_champion(store, ENV)
            d = decide_promotion({"wql": wql}, champ, None)
            barrier.wait()
            promote(store, ENV, entry(run_id), d, etag)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in scores.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    doc, _ = read_champion(store, ENV)
    assert doc["run_id"] == min(scores, key=scores.get)
    # the chain of previous champions only ever improves
    if doc["previous"] is not None:
        assert doc["previous"]["score"] > doc["score"]


def test_when_champion_json_is_corrupt_then_the_error_names_the_file(tmp_path):
    store = LocalStore(tmp_path)
    store.put(layout.champion_key(ENV), b"{not json")
    with pytest.raises(BadInputError, match="champion.json"):
        read_champion(store, ENV)


def test_when_the_store_is_s3_then_promotion_is_the_same_cas(s3_store_url):
    store = open_store(s3_store_url)
    champ, etag = read_champion(store, ENV)
    assert promote(store, ENV, entry("s3-1"), decide_promotion({"wql": 0.02}, champ, None), etag)
    champ, etag = read_champion(store, ENV)
    # a stale ETag cannot overwrite: the write is refused and the decision re-made
    with pytest.raises(PreconditionFailed):
        store.put_if_match(layout.champion_key(ENV), b"{}", "0" * 32)
    assert not promote(store, ENV, entry("s3-2"), decide_promotion({"wql": 0.03}, champ, None), etag)
    assert promote(store, ENV, entry("s3-3"), decide_promotion({"wql": 0.01}, champ, None), etag)
    doc = json.loads(store.get(layout.champion_key(ENV))[0])
    assert doc["run_id"] == "s3-3" and doc["previous"]["run_id"] == "s3-1"
