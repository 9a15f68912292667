"""Cost estimate per run (seed section 11): instance hours × price table + pro-rated gp3."""

from __future__ import annotations

import pytest

from chronos_flows.config.params import Ec2Config, TrainingParams
from chronos_flows.training.cost import estimate_cost, estimate_run_cost, hours_between
from chronos_flows.core.errors import BadInputError, ConfigError

PRICES = {"g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752}


def test_when_g4dn_2xlarge_runs_three_hours_then_cost_is_hours_times_price_plus_prorated_gp3():
    est = estimate_cost("g4dn.2xlarge", 3.0, PRICES, volume_gb=100)
    # 0.752 $/h × 3 h; 100 GB × 0.08 $/GB-month × 3 h / 730 h
    assert est["instance_usd"] == pytest.approx(2.256, abs=1e-4)
    assert est["ebs_usd"] == pytest.approx(0.0329, abs=1e-4)
    assert est["total_usd"] == pytest.approx(2.2889, abs=1e-4)
    assert est["hourly_price"] == 0.752 and est["hours"] == 3.0
    assert any("gp3" in a for a in est["assumptions"])


def test_when_run_takes_two_to_four_hours_then_estimate_matches_seed_range_of_2_to_4_dollars():
    low = estimate_cost("g4dn.2xlarge", 2.0, PRICES)["total_usd"]
    high = estimate_cost("g4dn.2xlarge", 4.0, PRICES)["total_usd"]
    assert 1.4 < low < 2.0 and 2.9 < high < 4.0  # seed: "~$2-4 / run" for 2-4 hours


def test_when_run_is_shorter_than_a_minute_then_one_minute_is_billed():
    est = estimate_cost("g4dn.xlarge", 10 / 3600, PRICES, volume_gb=0)
    assert est["billed_hours"] == pytest.approx(1 / 60, abs=1e-6)
    assert est["instance_usd"] == pytest.approx(0.526 / 60, abs=1e-4)
    assert estimate_cost("g4dn.xlarge", 0.0, PRICES)["total_usd"] == 0.0


def test_when_instance_type_is_unknown_then_config_error_names_it_and_lists_known_types():
    with pytest.raises(ConfigError) as err:
        estimate_cost("p5.48xlarge", 1.0, PRICES)
    msg = str(err.value)
    assert "p5.48xlarge" in msg and "g4dn.2xlarge" in msg and "g4dn.xlarge" in msg
    assert "hourly_prices" in msg


def test_when_hours_are_negative_then_bad_input_error():
    with pytest.raises(BadInputError, match="non-negative"):
        estimate_cost("g4dn.xlarge", -1.0, PRICES)


def test_when_spot_then_assumptions_say_on_demand_is_an_upper_bound():
    est = estimate_cost("g4dn.xlarge", 1.0, PRICES, spot=True)
    assert est["spot"] is True and any("upper bound" in a for a in est["assumptions"])
    assert est["instance_usd"] == pytest.approx(0.526)


def test_when_estimating_from_config_then_defaults_price_the_default_instance_and_local_is_free():
    params = TrainingParams()
    est = estimate_run_cost(params.compute.ec2, 2.5)
    assert est["instance_type"] == params.compute.ec2.instance_type
    assert est["instance_usd"] == pytest.approx(params.compute.ec2.hourly_prices[est["instance_type"]] * 2.5, abs=1e-4)
    assert estimate_run_cost(Ec2Config(), 2.5, backend="local")["total_usd"] == 0.0


def test_when_timestamps_are_given_then_hours_between_measures_them():
    assert hours_between("2026-01-01T00:00:00+00:00", "2026-01-01T01:30:00+00:00") == pytest.approx(1.5)
    with pytest.raises(BadInputError, match="before start"):
        hours_between("2026-01-01T02:00:00+00:00", "2026-01-01T01:00:00+00:00")
