"""Cost estimate of one training run: instance hours × the configured price table, plus EBS.

Follows the seed's cost model (section 11): the GPU instance dominates (g4dn.2xlarge, 2-4 h →
~$2-4), the 100 GB gp3 volume adds cents, S3 traffic through the gateway endpoint is free and
persistent infrastructure costs nothing while idle. Figures are estimates, not a bill.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chronos_flows.core.errors import BadInputError, ConfigError

#: gp3 storage, USD per GB-month (us-east-1); 3,000 IOPS / 125 MB/s baseline are included.
EBS_GP3_USD_PER_GB_MONTH = 0.08
HOURS_PER_MONTH = 730.0  # AWS's billing convention for pro-rating monthly prices
MIN_BILLED_SECONDS = 60  # Linux instances are billed per second with a one-minute minimum


def estimate_cost(
    instance_type: str,
    hours: float,
    prices: dict[str, float],
    volume_gb: int = 100,
    spot: bool = False,
) -> dict[str, Any]:
    """Estimate one run's compute cost.

    Returns ``{instance_type, hours, billed_hours, hourly_price, instance_usd, ebs_usd, total_usd,
    spot, assumptions}`` (USD, rounded to 4 decimals). ``prices`` maps instance type → on-demand USD
    per hour (``compute.ec2.hourly_prices``); an unknown type raises ConfigError listing the known ones.
    """
    if instance_type not in prices:
        known = ", ".join(sorted(prices)) or "none"
        raise ConfigError(
            f"no hourly price for instance type {instance_type!r} in compute.ec2.hourly_prices "
            f"(known: {known}); add it, e.g. --set 'compute.ec2.hourly_prices={{\"{instance_type}\": 1.0}}'"
        )
    if hours is None or hours < 0 or hours != hours:  # NaN check
        raise BadInputError(f"run duration must be a non-negative number of hours, got {hours!r}")
    if volume_gb < 0:
        raise BadInputError(f"volume size must be non-negative, got {volume_gb} GB")
    hourly = float(prices[instance_type])
    if hourly < 0:
        raise ConfigError(f"compute.ec2.hourly_prices[{instance_type!r}] is negative ({hourly})")
    billed = max(float(hours), MIN_BILLED_SECONDS / 3600.0) if hours > 0 else 0.0
    instance_usd = hourly * billed
    ebs_usd = EBS_GP3_USD_PER_GB_MONTH * volume_gb * billed / HOURS_PER_MONTH
    assumptions = [
        f"{instance_type} at ${hourly:.4f}/h from compute.ec2.hourly_prices, billed per second (1 min minimum)",
        f"{volume_gb} GB gp3 at ${EBS_GP3_USD_PER_GB_MONTH}/GB-month pro-rated over {HOURS_PER_MONTH:.0f} h/month",
        "S3 traffic via the gateway endpoint is free; internet egress (~$0.04, package installs) and "
        "S3 storage are not included",
    ]
    if spot:
        assumptions.append("spot: the on-demand price is used as an upper bound (spot prices vary)")
    return {
        "instance_type": instance_type,
        "hours": round(float(hours), 6),
        "billed_hours": round(billed, 6),
        "hourly_price": hourly,
        "instance_usd": round(instance_usd, 4),
        "ebs_usd": round(ebs_usd, 4),
        "total_usd": round(instance_usd + ebs_usd, 4),
        "spot": spot,
        "assumptions": assumptions,
    }


def hours_between(start: datetime | str, end: datetime | str) -> float:
    """Hours between two timestamps (datetimes or ISO strings, both aware or both naive)."""
    s = datetime.fromisoformat(start) if isinstance(start, str) else start
    e = datetime.fromisoformat(end) if isinstance(end, str) else end
    seconds = (e - s).total_seconds()
    if seconds < 0:
        raise BadInputError(f"end {e.isoformat()} is before start {s.isoformat()}")
    return seconds / 3600.0


def estimate_run_cost(ec2_cfg: Any, hours: float, backend: str = "ec2") -> dict[str, Any]:
    """The estimate for a run with ``compute.ec2`` settings ``ec2_cfg``; the local backend costs $0."""
    if backend != "ec2":
        return {
            "instance_type": None,
            "hours": round(float(hours), 6),
            "billed_hours": 0.0,
            "hourly_price": 0.0,
            "instance_usd": 0.0,
            "ebs_usd": 0.0,
            "total_usd": 0.0,
            "spot": False,
            "assumptions": [f"backend {backend!r}: no cloud compute billed"],
        }
    return estimate_cost(
        ec2_cfg.instance_type, hours, dict(ec2_cfg.hourly_prices), volume_gb=ec2_cfg.volume_size_gb, spot=ec2_cfg.spot
    )


def run_cost(compute: Any, instance_seconds: float | None) -> dict[str, Any]:
    """The estimate for a run with ``compute`` settings whose instance ran ``instance_seconds``
    (None or 0: none ran, e.g. the local backend)."""
    return estimate_run_cost(compute.ec2, float(instance_seconds or 0.0) / 3600.0, compute.backend)


# --------------------------------------------------------------------------- serving endpoints

#: us-east-1 list prices used by the endpoint estimate (inputs, not measurements; pass ``prices`` to override)
ENDPOINT_PRICES: dict[str, Any] = {
    "serverless_usd_per_gb_second": 0.00002,  # SageMaker serverless inference compute, per GB of memory-second
    "realtime_hourly": {"ml.t2.medium": 0.056, "ml.c5.large": 0.102, "ml.m5.large": 0.115, "ml.c5.xlarge": 0.204,
                        "ml.m5.xlarge": 0.23, "ml.g4dn.xlarge": 0.736},
    "api_gateway_usd_per_million": 3.50,  # REST API requests
}


def estimate_endpoint_cost(mode: str | None, *, memory_mb: int = 2048, instance_type: str = "ml.m5.large",
                           instance_count: int = 1, requests_per_month: float = 0.0, seconds_per_request: float = 0.1,
                           api: bool = True, prices: dict[str, Any] | None = None) -> dict[str, Any]:
    """Monthly cost of an endpoint: ``idle_usd_per_month`` (what it costs with no traffic) and the
    usage at ``requests_per_month``. ``mode`` None: no endpoint deployed, $0.

    Serverless bills memory × compute seconds per request (idle: $0); real-time bills its instances
    every hour they exist (idle: hourly price × count × 730 h). The REST API bills per request."""
    p = {**ENDPOINT_PRICES, **(prices or {})}
    if requests_per_month < 0 or seconds_per_request < 0:
        raise BadInputError("requests_per_month and seconds_per_request must be non-negative")
    api_usd = requests_per_month / 1e6 * float(p["api_gateway_usd_per_million"]) if api else 0.0
    if mode is None:
        return {"mode": None, "idle_usd_per_month": 0.0, "usage_usd_per_month": 0.0, "total_usd_per_month": 0.0,
                "assumptions": ["no endpoint deployed: nothing billed"]}
    if mode == "serverless":
        gb_seconds = memory_mb / 1024.0 * seconds_per_request * requests_per_month
        idle, usage = 0.0, gb_seconds * float(p["serverless_usd_per_gb_second"]) + api_usd
        assumptions = [f"serverless {memory_mb} MB at ${p['serverless_usd_per_gb_second']}/GB-second, "
                       f"{seconds_per_request}s per request; $0 while idle"]
    elif mode == "realtime":
        hourly = p["realtime_hourly"]
        if instance_type not in hourly:
            raise ConfigError(f"no hourly price for {instance_type!r} (known: {', '.join(sorted(hourly))}); pass "
                              f"prices={{'realtime_hourly': {{'{instance_type}': 0.1}}}}")
        idle = float(hourly[instance_type]) * instance_count * HOURS_PER_MONTH
        usage = api_usd
        assumptions = [f"real-time {instance_count} × {instance_type} at ${hourly[instance_type]}/h, billed every hour "
                       f"the endpoint exists ({HOURS_PER_MONTH:.0f} h/month), traffic or not; delete it to stop"]
    else:
        raise BadInputError(f"endpoint mode {mode!r}: expected serverless or realtime")
    if api:
        assumptions.append(f"API Gateway REST at ${p['api_gateway_usd_per_million']}/million requests; $0 while idle")
    assumptions.append("S3 storage of the package, CloudWatch logs and data transfer are not included")
    return {"mode": mode, "idle_usd_per_month": round(idle, 4), "usage_usd_per_month": round(usage, 4),
            "total_usd_per_month": round(idle + usage, 4), "assumptions": assumptions}
