"""The champion: the any-family rule, the schema, and the compare-and-swap on real stores
(local directory, S3 API), including separate processes promoting at once."""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest

from blocks.store import LocalStore
from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError, ConfigError, PreconditionFailed
from chronos_flows.champion.registry import decide_champion, promote, promote_outcome, read_champion

ENV = "dev"
FAMILIES = ("chronos", "autoets", "prophet", "seasonal_naive", "theta")


def entry(run_id: str, family: str = "chronos", **extra) -> dict:
    e = {"run_id": run_id, "family": family, "config": {"season_length": 52} if family != "chronos" else {}, **extra}
    if family == "chronos":
        e["model_uri"] = f"file:///models/{run_id}"
    return e


def cands(**wql: float) -> dict[str, dict[str, float]]:
    return {name: {"wql": v, "mase": v * 30} for name, v in wql.items()}


def champion_doc(run_id: str, wql: float, family: str = "autoets") -> dict:
    return {"schema_version": 2, "run_id": run_id, "family": family, "model": family, "model_uri": None,
            "config": {}, "gate_metric": "wql", "score": wql, "scores": {"wql": wql}}


def promote_best(store, run_id: str, candidates: dict, margin: float = 0.0) -> bool:
    champ, etag = read_champion(store, ENV)
    d = decide_champion(candidates, champ, gate_metric="wql", margin=margin)
    return d.best is not None and promote(store, ENV, entry(run_id, d.best), d, etag)


# ------------------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize("family", FAMILIES)
def test_when_a_family_scores_best_without_a_champion_then_it_is_promoted(family):
    scores = {f: 0.03 + 0.001 * i for i, f in enumerate(FAMILIES)}
    scores[family] = 0.02
    d = decide_champion(cands(**scores), None, gate_metric="wql")
    assert d.promoted and d.best == family and d.best_score == 0.02
    others = ", ".join(f"{f} {scores[f]:.4g}" for f in FAMILIES if f != family)
    assert d.reason == f"no champion yet: promoted {family} (wql 0.02; {others})"


@pytest.mark.parametrize("family", FAMILIES)
def test_when_a_family_champion_is_better_than_every_candidate_then_it_is_kept(family):
    champ = champion_doc("old", 0.015, family)
    d = decide_champion(cands(chronos=0.0368, autoets=0.0251, prophet=0.0331, seasonal_naive=0.0287),
                        champ, champion_scores={"wql": 0.015}, gate_metric="wql", margin=0.01)
    assert not d.promoted and d.best == "autoets" and d.champion_family == family
    assert d.reason.startswith(f"kept {family} from run old (wql 0.015, re-scored on this run's windows): "
                               "best candidate autoets 0.0251 does not beat it by 1.0%")


@pytest.mark.parametrize("family", FAMILIES)
def test_when_a_family_beats_the_champion_then_it_replaces_it(family):
    champ = champion_doc("old", 0.03, "seasonal_naive" if family != "seasonal_naive" else "chronos")
    scores = {f: 0.04 for f in FAMILIES}
    scores[family] = 0.024
    d = decide_champion(cands(**scores), champ, champion_scores={"wql": 0.03}, gate_metric="wql")
    assert d.promoted and d.best == family
    assert d.reason.startswith(f"replaced {champ['family']} from run old (wql 0.03, re-scored on this run's windows) "
                               f"with {family} (0.024, 20.0% better")


def test_when_the_best_candidate_equals_the_champion_then_the_champion_is_kept():
    d = decide_champion(cands(chronos=0.03, autoets=0.02), champion_doc("old", 0.02), champion_scores={"wql": 0.02})
    assert not d.promoted and "does not beat it" in d.reason


def test_when_equal_candidates_tie_then_the_first_listed_wins():
    assert decide_champion(cands(chronos=0.02, autoets=0.02), None).best == "chronos"
    assert decide_champion(cands(autoets=0.02, chronos=0.02), None).best == "autoets"


def test_when_a_margin_is_configured_then_a_smaller_improvement_is_not_enough():
    champ = champion_doc("old", 0.020)
    assert not decide_champion(cands(chronos=0.0191), champ, margin=0.05).promoted
    assert decide_champion(cands(chronos=0.0189), champ, margin=0.05).promoted


def test_when_the_champion_was_not_rescored_then_its_stored_score_decides_and_the_reason_says_so():
    d = decide_champion(cands(chronos=0.021), champion_doc("old", 0.020))
    assert not d.promoted and not d.champion_rescored and "(wql 0.02, stored score)" in d.reason


def test_when_gate_metric_is_mase_then_mase_scores_decide():
    c = {"chronos": {"wql": 0.030, "mase": 0.7}, "autoets": {"wql": 0.020, "mase": 0.9}}
    assert decide_champion(c, None, gate_metric="mase").best == "chronos"
    assert decide_champion(c, None, gate_metric="wql").best == "autoets"


def test_when_a_candidate_score_is_nan_then_it_cannot_win_and_a_missing_metric_is_explained():
    d = decide_champion(cands(chronos=float("nan"), prophet=0.05), None)
    assert d.promoted and d.best == "prophet"
    none = decide_champion(cands(chronos=float("nan")), None)
    assert not none.promoted and none.best is None and "no candidate has a valid wql" in none.reason
    with pytest.raises(ConfigError, match="'rmse'"):
        decide_champion(cands(chronos=0.01), None, gate_metric="rmse")


def test_when_a_margin_is_out_of_range_then_it_is_refused():
    with pytest.raises(ConfigError, match="margin"):
        decide_champion(cands(chronos=0.01), None, margin=1.5)


# -------------------------------------------------------------------------------- the store protocol


def test_when_the_first_model_is_promoted_then_champion_json_records_family_config_scores(tmp_path):
    store = LocalStore(tmp_path)
    champ, etag = read_champion(store, ENV)
    assert champ is None and etag is None
    d = decide_champion(cands(chronos=0.03, autoets=0.02), champ)
    judged = {"data_fingerprint": "abc", "freq": "W-MON", "season_length": 52, "horizon": 13}
    assert promote(store, ENV, entry("r1", "autoets", judged_on=judged), d, etag)
    doc, _ = read_champion(store, ENV)
    assert doc["schema_version"] == 2 and doc["family"] == "autoets" and doc["run_id"] == "r1"
    assert doc["config"] == {"season_length": 52} and doc["model_uri"] is None
    assert doc["gate_metric"] == "wql" and doc["score"] == 0.02 and doc["scores"]["mase"] == pytest.approx(0.6)
    assert doc["judged_on"] == judged and doc["previous"] is None and doc["promoted_at"].endswith("Z")


def test_when_a_better_model_is_promoted_then_previous_points_at_the_old_champion(tmp_path):
    store = LocalStore(tmp_path)
    assert promote_best(store, "r1", cands(autoets=0.02))
    assert promote_best(store, "r2", cands(chronos=0.015))
    doc, _ = read_champion(store, ENV)
    assert doc["run_id"] == "r2" and doc["family"] == "chronos"
    assert doc["previous"] == {"run_id": "r1", "family": "autoets", "score": 0.02, "gate_metric": "wql"}


def test_when_a_model_is_rejected_then_the_champion_file_is_untouched(tmp_path):
    store = LocalStore(tmp_path)
    assert promote_best(store, "r1", cands(autoets=0.02))
    before = store.get(layout.champion_key(ENV))
    assert not promote_best(store, "r2", cands(chronos=0.025, prophet=0.03))
    assert store.get(layout.champion_key(ENV)) == before


def test_when_a_chronos_entry_has_no_model_uri_then_it_is_refused(tmp_path):
    d = decide_champion(cands(chronos=0.02), None)
    with pytest.raises(BadInputError, match="model_uri"):
        promote(LocalStore(tmp_path), ENV, {"run_id": "r", "family": "chronos"}, d, None)


def test_when_a_version_1_champion_file_is_read_then_it_is_a_chronos_champion(tmp_path):
    store = LocalStore(tmp_path)
    v1 = {"schema_version": 1, "run_id": "old", "model": "chronos", "model_uri": "file:///registry/old/chronos",
          "gate_metric": "wql", "score": 0.02, "scores": {"wql": 0.02}, "family": "chronos-2", "previous": None}
    store.put(layout.champion_key(ENV), json.dumps(v1).encode())
    doc, etag = read_champion(store, ENV)
    assert doc["family"] == "chronos" and doc["config"] == {"chronos_family": "chronos-2"}
    assert doc["model_uri"] == "file:///registry/old/chronos"
    d = decide_champion(cands(autoets=0.019), doc)
    assert d.promoted and "replaced chronos from run old (wql 0.02, stored score)" in d.reason
    assert promote(store, ENV, entry("new", "autoets"), d, etag)
    assert read_champion(store, ENV)[0]["previous"]["family"] == "chronos"


def test_when_a_champion_file_is_from_a_newer_schema_then_the_error_says_upgrade(tmp_path):
    store = LocalStore(tmp_path)
    store.put(layout.champion_key(ENV), json.dumps({"schema_version": 99, "run_id": "x"}).encode())
    with pytest.raises(BadInputError, match="upgrade"):
        read_champion(store, ENV)


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
            assert promote_best(self.inner, "rival", cands(prophet=self.rival_wql))

    def put_if_match(self, key, data, etag):
        self._rival()
        return self.inner.put_if_match(key, data, etag)

    def put_if_absent(self, key, data):
        self._rival()
        return self.inner.put_if_absent(key, data)


def test_when_a_better_rival_promotes_meanwhile_then_the_candidate_is_re_decided_and_kept_out(tmp_path):
    store = RacingStore(LocalStore(tmp_path), rival_wql=0.010)
    champ, etag = read_champion(store, ENV)
    d = decide_champion(cands(autoets=0.015), champ)
    assert d.promoted
    out = promote_outcome(store, ENV, entry("late", "autoets"), d, etag)
    assert not out.promoted and out.attempts == 2
    assert "kept prophet from run rival" in out.decision.reason
    assert read_champion(store, ENV)[0]["run_id"] == "rival"


def test_when_a_worse_rival_promotes_meanwhile_then_the_candidate_replaces_it_with_previous_set(tmp_path):
    inner = LocalStore(tmp_path)
    assert promote_best(inner, "r0", cands(chronos=0.05))
    store = RacingStore(inner, rival_wql=0.03)
    champ, etag = read_champion(store, ENV)
    out = promote_outcome(store, ENV, entry("late"), decide_champion(cands(chronos=0.015), champ), etag)
    assert out.promoted and out.attempts == 2
    doc, _ = read_champion(inner, ENV)
    assert doc["run_id"] == "late" and doc["previous"]["run_id"] == "rival"


def test_when_many_threads_promote_concurrently_then_the_best_score_ends_as_champion(tmp_path):
    store = LocalStore(tmp_path)
    scores = {f"r{i}": 0.02 + 0.001 * ((i * 7) % 11) for i in range(11)}
    barrier = threading.Barrier(len(scores))
    errors: list[BaseException] = []

    def run(run_id: str, wql: float) -> None:
        try:
            champ, etag = read_champion(store, ENV)
            d = decide_champion(cands(autoets=wql), champ)
            barrier.wait()
            promote(store, ENV, entry(run_id, "autoets"), d, etag)
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
    if doc["previous"] is not None:  # the chain of previous champions only ever improves
        assert doc["previous"]["score"] > doc["score"]


def _promote_in_process(url: str, run_id: str, family: str, wql: float, barrier) -> None:
    store = open_store(url)
    champ, etag = read_champion(store, ENV)
    d = decide_champion(cands(**{family: wql}), champ)
    barrier.wait()
    promote(store, ENV, entry(run_id, family), d, etag)


def _race_processes(url: str) -> dict:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_promote_in_process, args=(url, "p-chronos", "chronos", 0.021, barrier)),
        ctx.Process(target=_promote_in_process, args=(url, "p-autoets", "autoets", 0.020, barrier)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    doc, _ = read_champion(open_store(url), ENV)
    return doc


def test_when_two_processes_promote_at_once_on_a_local_store_then_one_consistent_champion_remains(tmp_path):
    doc = _race_processes((tmp_path / "store").as_uri())
    # whoever wrote first, the better one ends as champion, whole and parseable
    assert doc["run_id"] == "p-autoets" and doc["family"] == "autoets" and doc["score"] == 0.020
    assert doc["previous"] is None or doc["previous"]["run_id"] == "p-chronos"


def test_when_two_processes_promote_at_once_on_s3_then_one_consistent_champion_remains(s3_store_url):
    doc = _race_processes(s3_store_url)
    assert doc["run_id"] == "p-autoets" and doc["family"] == "autoets" and doc["score"] == 0.020


def test_when_champion_json_is_corrupt_then_the_error_names_the_file(tmp_path):
    store = LocalStore(tmp_path)
    store.put(layout.champion_key(ENV), b"{not json")
    with pytest.raises(BadInputError, match="champion.json"):
        read_champion(store, ENV)


def test_when_the_store_is_s3_then_promotion_is_the_same_cas(s3_store_url):
    store = open_store(s3_store_url)
    champ, etag = read_champion(store, ENV)
    assert promote(store, ENV, entry("s3-1"), decide_champion(cands(chronos=0.02), champ), etag)
    champ, etag = read_champion(store, ENV)
    with pytest.raises(PreconditionFailed):  # a stale ETag cannot overwrite
        store.put_if_match(layout.champion_key(ENV), b"{}", "0" * 32)
    assert not promote(store, ENV, entry("s3-2"), decide_champion(cands(chronos=0.03), champ), etag)
    assert promote(store, ENV, entry("s3-3", "prophet"), decide_champion(cands(prophet=0.01), champ), etag)
    doc = json.loads(store.get(layout.champion_key(ENV))[0])
    assert doc["run_id"] == "s3-3" and doc["family"] == "prophet" and doc["previous"]["run_id"] == "s3-1"
