"""Lock latency and takeover delay on the local backend and on a local moto S3 server.

    python benchmarks/lock.py [--iterations 200] [--lease 2.0]

Prints, per backend, the median and p99 latency of acquire, update (a transition or heartbeat)
and release (transition to cleanup + conditional delete), then the delay between SIGKILL of a
holder (heartbeating every lease/8) and a polling contender's takeover, relative to the lease.
First: the time the losers of an 8-way simultaneous ``chronos-flows run`` launch take to exit.
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

from blocks.resolve import open_store  # noqa: E402
from blocks.store import S3Store  # noqa: E402
from chronos_flows.core.errors import LockedError  # noqa: E402
from chronos_flows.runstate.lock import RunLock  # noqa: E402
from chronos_flows.runstate.statefile import read_state  # noqa: E402
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


def simultaneous_launch(n: int, rounds: int) -> None:
    """``n`` × ``chronos-flows run`` started at the same instant on a fresh local store: how long the
    losers take to exit (code 3) — they are refused before any Prefect server starts."""
    import subprocess

    times: list[float] = []
    codes: list[int] = []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            args = [sys.executable, "-m", "app.cli", "run", "--store", f"{d}/store",
                    "--set", "evaluation.baselines=[seasonal_naive]", "--set", "chronos.max_steps=5"]
            t0 = time.monotonic()
            procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, "PREFECT_HOME": f"{d}/prefect-{i}"}) for i in range(n)]
            done: dict[int, float] = {}
            while len(done) < n - 1 and time.monotonic() - t0 < 120:
                for i, p in enumerate(procs):
                    if i not in done and p.poll() is not None:
                        done[i] = time.monotonic() - t0
                time.sleep(0.02)
            for i, p in enumerate(procs):
                if i in done:
                    codes.append(p.returncode)
                    times.append(done[i])
                else:
                    p.kill()
                    p.wait()
    print(f"{n}-way simultaneous `chronos-flows run`, {rounds} round(s): losers' exit codes {sorted(set(codes))}; "
          f"time to exit median {statistics.median(times):.2f} s, p95 {pct(times, 95):.2f} s, max {max(times):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--lease", type=float, default=2.0)
    ap.add_argument("--launches", type=int, default=8, help="simultaneous `chronos-flows run` launches")
    ap.add_argument("--launch-rounds", type=int, default=3)
    ap.add_argument("--only-launch", action="store_true", help="only the simultaneous-launch measurement")
    args = ap.parse_args()
    simultaneous_launch(args.launches, args.launch_rounds)
    if args.only_launch:
        return
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
