"""Benchmark the real-time endpoint (``chronos-flows serve``) against the bare pipeline (offline, CPU).

A random-initialised Chronos-2 (``--size``, no weights can be downloaded here) is promoted as the
champion of a throw-away local store; the real server process serves it on 127.0.0.1. Clients send
single-series JumpStart requests (``--context`` 256 points, horizon ``--horizon`` 13, quantiles
0.1/0.5/0.9) for ``--seconds`` at 1, 8 and 32 concurrent clients (threads, one HTTP connection
each). Printed per concurrency: requests/s, p50 and p99 latency, and the mean number of requests a
model call answered (from the server's /metrics).

The bare side, in this process on the same model and inputs: upstream ``predict_quantiles`` with
one call per request (requests/s, p50), and one batched call over all the distinct inputs
(series/s). Ratios measured in this one run:

* throughput at 32 clients / bare batched throughput (target >= 0.8)
* p50 at 1 client - bare single-call p50 (target <= 10 ms)

Usage::

    python benchmarks/serve.py [--size tiny] [--seconds 8] [--clients 1,8,32]

Run it on a quiet machine: client threads, the server and the bare model share the cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVELS = [0.1, 0.5, 0.9]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contexts(n: int, length: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    out = []
    for _ in range(n):
        y = rng.uniform(5, 50) + rng.uniform(0.5, 5) * np.sin(2 * np.pi * t / 52 + rng.uniform(0, 6)) + rng.normal(0, 1, length)
        out.append([float(v) for v in y])
    return out


def seed_store(store_dir: Path, model_dir: Path, context: int) -> None:
    """A store whose champion is the Chronos model in ``model_dir`` (the registry layout a run writes)."""
    from blocks.store import LocalStore
    from chronos_flows.core import layout
    from chronos_flows.champion.registry import decide_champion, promote

    store = LocalStore(store_dir)
    prefix = layout.registry_model_prefix("dev", "bench-run", "chronos")
    store.upload_dir(model_dir, prefix)
    entry = {"run_id": "bench-run", "family": "chronos", "model_uri": store.uri(prefix),
             "config": {"chronos_family": "chronos-2", "context_length": context, "batch_size": 32},
             "judged_on": {"freq": "W-MON", "horizon": 13, "quantiles": LEVELS, "season_length": 52}}
    if not promote(store, "dev", entry, decide_champion({"chronos": {"wql": 1.0}}, None), None):
        raise SystemExit("could not promote the benchmark champion")


def load(url: str, bodies: list[dict], clients: int, seconds: float) -> tuple[float, list[float], int]:
    import httpx

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            i = k
            while not stop.is_set():
                t0 = time.perf_counter()
                r = c.post("/invocations", json=bodies[i % len(bodies)])
                latencies[k].append(time.perf_counter() - t0)
                errors[k] += r.status_code != 200
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    flat = [x for lat in latencies for x in lat]
    return len(flat) / elapsed, flat, sum(errors)


def batch_stats(url: str) -> tuple[float, float]:
    """(model calls, requests answered) so far, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    calls = answered = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "chronos_serve_batch_requests_count":
                calls = s.value
            elif s.name == "chronos_serve_batch_requests_sum":
                answered = s.value
    return calls, answered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=["tiny", "mini", "small"])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--horizon", type=int, default=13)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--inputs", type=int, default=256, help="distinct single-series requests cycled through")
    args = ap.parse_args()

    import httpx
    import torch
    from chronos import BaseChronosPipeline

    from chronos_flows.models.chronos.configs import build_random_pipeline

    torch.set_num_threads(os.cpu_count() or 1)
    ctx = contexts(args.inputs, args.context)
    bodies = [{"inputs": [{"target": y}], "parameters": {"prediction_length": args.horizon, "quantile_levels": LEVELS}}
              for y in ctx]

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp = Path(tmp)
        build_random_pipeline("chronos-2", args.size, args.context, args.horizon, seed=0).save_pretrained(tmp / "model")
        seed_store(tmp / "store", tmp / "model", args.context)

        # bare pipeline, in this process (before the server starts: nothing else on the cores)
        pipe = BaseChronosPipeline.from_pretrained(str(tmp / "model"), device_map="cpu", dtype=torch.float32)
        tensors = [torch.tensor(y, dtype=torch.float32) for y in ctx]
        pipe.predict_quantiles(tensors[:8], prediction_length=args.horizon, quantile_levels=LEVELS)  # warm-up
        single = []
        t_end = time.perf_counter() + min(args.seconds, 5.0)
        i = 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            pipe.predict_quantiles([tensors[i % len(tensors)]], prediction_length=args.horizon, quantile_levels=LEVELS)
            single.append(time.perf_counter() - t0)
            i += 1
        bare_single_rps = len(single) / sum(single)
        bare_single_p50 = float(np.median(single))
        batched = []
        for _ in range(3):
            t0 = time.perf_counter()
            pipe.predict_quantiles(tensors, prediction_length=args.horizon, quantile_levels=LEVELS, batch_size=256)
            batched.append(time.perf_counter() - t0)
        bare_batched_sps = len(tensors) / min(batched)
        del pipe

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("CHRONOS_FLOWS_API_KEYS", None)
        log = open(tmp / "server.log", "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--store", str(tmp / "store"), "--device", "cpu"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"server did not become ready:\n{(tmp / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
            load(url, bodies, 4, 1.0)  # warm-up

            print(f"chronos-2 {args.size}, context {args.context}, horizon {args.horizon}, quantiles {LEVELS}, "
                  f"{os.cpu_count()} cores")
            print(f"bare upstream predict_quantiles: one call per request {bare_single_rps:.1f} req/s, "
                  f"p50 {bare_single_p50 * 1000:.2f} ms; one batched call {bare_batched_sps:.1f} series/s")
            print(f"{'clients':>7}  {'req/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'req/call':>8}  errors")
            results = {}
            for c in [int(x) for x in args.clients.split(",")]:
                calls0, answered0 = batch_stats(url)
                rps, lat, errors = load(url, bodies, c, args.seconds)
                calls1, answered1 = batch_stats(url)
                per_call = (answered1 - answered0) / max(calls1 - calls0, 1)
                p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
                results[c] = (rps, p50)
                print(f"{c:>7}  {rps:>8.1f}  {p50 * 1000:>8.2f}  {p99 * 1000:>8.2f}  {per_call:>8.1f}  {errors}")
            if max(results) >= 32 or len(results) > 1:
                top = max(results)
                print(f"throughput at {top} clients / bare batched: {results[top][0] / bare_batched_sps:.2f} (target >= 0.8)")
            if 1 in results:
                print(f"p50 at 1 client - bare single call: {(results[1][1] - bare_single_p50) * 1000:+.2f} ms (target <= +10 ms)")
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()


if __name__ == "__main__":
    main()
