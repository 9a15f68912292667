"""Promotion with live evidence (issue 22): a champion degraded in live use does not keep its place on
its old backtest; live scores are reported next to the backtest scores."""

from __future__ import annotations


from chronos_flows.champion.registry import decide_champion

CHAMPION = {"schema_version": 2, "run_id": "old", "family": "autoets", "gate_metric": "wql", "score": 0.02,
            "scores": {"wql": 0.02}}


def live(degraded: bool, run_id: str = "old") -> dict:
    return {"champion_run_id": run_id, "degraded": degraded, "live_wql": 0.09, "n_forecasts": 3, "reason": "live WQL above"}


def test_when_the_champion_is_degraded_and_not_rescored_then_a_worse_backtest_candidate_replaces_it():
    kept = decide_champion({"chronos": {"wql": 0.03}}, CHAMPION)
    assert not kept.promoted
    d = decide_champion({"chronos": {"wql": 0.03}}, CHAMPION, champion_live=live(True))
    assert d.promoted and d.best == "chronos"
    assert "DEGRADED in live use" in d.reason and "live wql 0.09 over 3 scored forecast(s)" in d.reason
    assert d.to_dict()["champion_live"]["degraded"] is True


def test_when_the_champion_is_live_but_healthy_then_the_backtest_rule_holds_and_live_scores_are_reported():
    d = decide_champion({"chronos": {"wql": 0.03}}, CHAMPION, champion_live=live(False))
    assert not d.promoted and "live wql 0.09 over 3" in d.reason and "DEGRADED" not in d.reason


def test_when_a_degraded_champion_is_rescored_then_it_is_compared_on_fresh_windows_without_the_margin():
    # re-scored better than the candidate: it stays (fresh evidence, not its old backtest)
    d = decide_champion({"chronos": {"wql": 0.03}}, CHAMPION, champion_scores={"wql": 0.025}, champion_live=live(True), margin=0.2)
    assert not d.promoted and "no margin" in d.reason
    # a candidate better by less than the margin replaces a degraded champion (a healthy one would stay)
    healthy = decide_champion({"chronos": {"wql": 0.024}}, CHAMPION, champion_scores={"wql": 0.025}, margin=0.2)
    degraded = decide_champion({"chronos": {"wql": 0.024}}, CHAMPION, champion_scores={"wql": 0.025}, margin=0.2,
                               champion_live=live(True))
    assert not healthy.promoted and degraded.promoted


def test_when_the_live_evidence_is_about_another_run_then_it_is_ignored():
    d = decide_champion({"chronos": {"wql": 0.03}}, CHAMPION, champion_live=live(True, run_id="someone-else"))
    assert not d.promoted and d.champion_live is None


def test_when_there_is_no_champion_then_live_evidence_changes_nothing():
    d = decide_champion({"chronos": {"wql": 0.03}}, None, champion_live=live(True))
    assert d.promoted and d.reason.startswith("no champion yet")
