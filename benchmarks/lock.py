"""Lock latency and takeover delay on the local backend and on a local moto S3 server.

    python benchmarks/lock.py [--iterations 200] [--lease 2.0]

Prints, per backend, the median and p99 latency of acquire, update (a transition or heartbeat)
and release (transition to cleanup + conditional delete), then the delay between SIGKILL of a
holder (heartbeating every lease/8) and a polling contender's takeover, relative to the lease.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blocks.store import S3Store, open_store  # noqa: E402
from chronos_flows.errors import LockedError  # noqa: E402
from chronos_flows.lock import RunLock, read_state  # noqa: E402
from tests.conftest import AwsServer  # noqa: E402
from tests.lock_worker import spawn_holder  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def latencies(store, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"acquire": [], "update": [], "release": []}
    lock = RunLock(store, "bench", lease_seconds=60)
    for i in range(n):
        t0 = time.perf_counter()
        h = lock.acquire(f"run-{i}")
        t1 = time.perf_counter()
        h.transition("data_sync")
        t2 = time.perf_counter()
        h.heartbeat()
        t3 = time.perf_counter()
        h.transition("failed")
        h.transition("cleanup")
        t4 = time.perf_counter()
        h.release()
        t5 = time.perf_counter()
        out["acquire"].append(t1 - t0)
        out["update"].extend([t2 - t1, t3 - t2])
        out["release"].append(t5 - t4 + (t4 - t3) / 2)  # the cleanup transition + conditional delete
    return out


def takeover_delay(store, lease: float, extra_env: dict | None) -> tuple[float, float]:
    proc = spawn_holder(extra_env)
    proc.stdin.write(json.dumps({"op": "hold", "url": store.url, "env": "crash", "run_id": "victim",
                                 "lease": lease, "interval": lease / 8}) + "\n")
    proc.stdin.flush()
    json.loads(proc.stdout.readline())
    contender = RunLock(store, "crash", lease_seconds=lease)
    time.sleep(lease / 3)
    try:
        contender.acquire("taker", takeover_wait=0)
    except LockedError:
        pass
    os.kill(proc.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    proc.wait()
    last = read_state(store, "crash")
    while True:
        try:
            h = contender.acquire("taker", takeover_wait=0.05)
            break
        except LockedError:
            time.sleep(0.05)
    delay = time.monotonic() - t_kill
    since_hb = (time.time() - last.heartbeat_at.timestamp())
    h.transition("failed")
    h.transition("cleanup")
    h.release()
    return delay, since_hb


def report(name: str, store, n: int, lease: float, extra_env: dict | None) -> None:
    lat = latencies(store, n)
    print(f"\n== {name} ({store.url}) — {n} iterations")
    for k, xs in lat.items():
        print(f"  {k:8s} median {statistics.median(xs) * 1000:7.2f} ms   p99 {pct(xs, 99) * 1000:7.2f} ms")
    delays = [takeover_delay(store, lease, extra_env) for _ in range(3)]
    for d, hb in delays:
        print(f"  takeover after SIGKILL: {d:5.2f} s = {d / lease:4.2f}x lease ({lease} s); "
              f"{hb:5.2f} s after the last heartbeat = {hb / lease:4.2f}x lease")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--lease", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        report("local", open_store(d), args.iterations, args.lease, None)
    server = AwsServer()
    try:
        env = server.env()
        os.environ.update(env)
        bucket = server.new_bucket()
        report("moto S3", S3Store(bucket, "chronos", endpoint_url=server.endpoint_url),
               args.iterations, args.lease, env)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
