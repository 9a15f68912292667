"""Benchmark the real-time endpoint (``chronos-flows serve``) against the web framework's floor
and the bare model, in one run (offline, CPU).

A random-initialised Chronos-2 (``--size`` tiny or small, no weights can be downloaded here) is
promoted as the champion of a throw-away local store. Three servers run side by side and take turns
under the same clients (threads of httpx, one keep-alive connection each) in slices of
``--slice-seconds`` (1 s), ``--seconds`` in all per server at 1, 8 and 32 clients, so a shared
machine that slows down mid-run slows each of them alike; single-series JumpStart requests (``--context`` 256 points, ``item_id``/``start``/``freq``,
horizon ``--horizon`` 13, quantiles 0.1/0.5/0.9):

* the floor: a FastAPI app under uvicorn (1 worker) with no model that parses the same body and
  answers a same-sized forecast (``--floor-server``, this file);
* ``chronos-flows serve`` (the real server process, capture off);
* ``chronos-flows serve --capture`` (data capture on; at the highest concurrency only).

Printed per server and concurrency: requests/s, p50 and p99 latency, the mean number of requests a
model call answered (from /metrics) and the server's memory; then the bare model in this process
(upstream ``predict_quantiles`` with the torch threads the server gives a model call,
``--model-threads``: one call per request, and one batched call over all the inputs), and the
ratios of this one run:

* ours / floor requests/s at each concurrency (target >= 0.8 at 32 clients, tiny)
* p50 at 1 client - bare single-call p50 (target <= +1 ms), and that minus the floor's p50 at 1
  client (the HTTP round trip with these clients): what our own code adds
* the bare call again, each one after a request to the floor by the same client (the caches as a
  serving loop leaves them), and our p50 at 1 client minus that and the floor's p50: our code's
  share against a model in the same cache state; and from the server's /metrics, the time a request
  spends inside the server minus its model call
* capture on / capture off requests/s at 32 clients (target >= 0.95)
* ours at 32 clients / bare batched series/s (the small model: the model should dominate)

Usage::

    python benchmarks/serve.py [--size tiny|small] [--seconds 8] [--clients 1,8,32]

Run it on a quiet machine: client threads, the servers and the bare model share the cores.
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
from fastapi import Request  # at module level: FastAPI resolves the handler's (string) annotation here

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


def batch_stats(url: str) -> tuple[float, float, float, float, float]:
    """(model calls, requests answered, seconds in model calls, /invocations requests, their seconds
    inside the server) so far, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    calls = answered = seconds = requests = request_seconds = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "chronos_serve_batch_requests_count":
                calls = s.value
            elif s.name == "chronos_serve_batch_requests_sum":
                answered = s.value
            elif s.name == "chronos_serve_batch_seconds_sum":
                seconds = s.value
            elif s.name == "chronos_serve_request_seconds_count" and s.labels.get("path") == "/invocations":
                requests = s.value
            elif s.name == "chronos_serve_request_seconds_sum" and s.labels.get("path") == "/invocations":
                request_seconds = s.value
    return calls, answered, seconds, requests, request_seconds


def bare_between_requests(url: str, pipe, tensors: list, bodies: list[dict], horizon: int, seconds: float) -> list[float]:
    """The bare single call as a serving loop meets it: each call after one request to the floor
    server by the same client (the HTTP work of client and server runs in between and leaves the
    caches as a server's model call finds them). Seconds per call."""
    import httpx

    took: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as c:
        t_end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < t_end:
            c.post("/invocations", json=bodies[i % len(bodies)])
            t0 = time.perf_counter()
            pipe.predict_quantiles([tensors[i % len(tensors)]], prediction_length=horizon, quantile_levels=LEVELS)
            took.append(time.perf_counter() - t0)
            i += 1
    return took


def floor_app():
    """The framework's floor: FastAPI, the same body parsed, a same-sized answer, no model."""
    from fastapi import FastAPI

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ping")
    async def ping():
        return {"status": "ok"}

    @app.post("/invocations")
    async def invocations(request: Request):
        body = await request.json()
        params = body.get("parameters", {})
        horizon = int(params.get("prediction_length", 1))
        levels = params.get("quantile_levels", LEVELS)
        preds = []
        for s in body["inputs"]:
            last = float(s["target"][-1])
            entry = {"mean": [last] * horizon, **{str(q): [last] * horizon for q in levels}}
            for key in ("item_id", "start"):
                if key in s:
                    entry[key] = s[key]
            preds.append(entry)
        return {"predictions": preds}

    return app


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (MB), from /proc."""
    total = 0.0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


class Served:
    """A server process on a free port, ready when /ping answers 200."""

    def __init__(self, argv: list[str], log_path: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("CHRONOS_FLOWS_API_KEYS", None)
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, *argv, "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"server {argv} did not become ready:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run_loads(servers: dict[str, tuple[Served, bool]], bodies: list[dict], clients: list[int], seconds: float,
              slice_seconds: float, only_top: tuple[str, ...] = ()) -> dict[str, dict[int, tuple[float, ...]]]:
    """Load every server (name -> (server, has a model)) at each concurrency for ``seconds`` in all,
    in turns of ``slice_seconds`` (floor, ours, floor, ours...), so a machine that slows down mid-run
    slows them alike and the ratios compare the same minutes; ``only_top``: servers loaded at the
    highest concurrency only. Per server and concurrency: (requests/s, p50, mean model-call seconds
    from /metrics or nan, mean seconds a request spent inside the server from /metrics or nan)."""
    for served, _ in servers.values():
        load(served.url, bodies, 4, 1.0)  # warm-up
    top = max(clients)
    turns = max(1, round(seconds / slice_seconds))
    results: dict[str, dict[int, tuple[float, ...]]] = {name: {} for name in servers}
    for c in clients:
        names = [n for n in servers if c == top or n not in only_top]
        done = {n: 0 for n in names}
        lat: dict[str, list[float]] = {n: [] for n in names}
        errors = {n: 0 for n in names}
        elapsed = {n: 0.0 for n in names}
        stats0 = {n: batch_stats(servers[n][0].url) for n in names if servers[n][1]}
        for _ in range(turns):
            for n in names:
                t0 = time.perf_counter()
                _, got, bad = load(servers[n][0].url, bodies, c, seconds / turns)
                elapsed[n] += time.perf_counter() - t0
                done[n] += len(got)
                lat[n] += got
                errors[n] += bad
        for n in names:
            served, model = servers[n]
            per_call, call_seconds, inside = "-", float("nan"), float("nan")
            if model:
                calls1, answered1, seconds1, requests1, request_seconds1 = batch_stats(served.url)
                calls = max(calls1 - stats0[n][0], 1)
                per_call = f"{(answered1 - stats0[n][1]) / calls:.1f}"
                call_seconds = (seconds1 - stats0[n][2]) / calls
                inside = (request_seconds1 - stats0[n][4]) / max(requests1 - stats0[n][3], 1)
            rps = done[n] / elapsed[n]
            p50, p99 = float(np.percentile(lat[n], 50)), float(np.percentile(lat[n], 99))
            results[n][c] = (rps, p50, call_seconds, inside)
            print(f"{n:<26} {c:>7}  {rps:>8.1f}  {p50 * 1000:>8.2f}  {p99 * 1000:>8.2f}  {per_call:>8}  "
                  f"{rss_mb(served.proc.pid):>7.0f}  {errors[n]}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=["tiny", "mini", "small"])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--horizon", type=int, default=13)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--inputs", type=int, default=256, help="distinct single-series requests cycled through")
    ap.add_argument("--no-capture", action="store_true", help="skip the capture-on run")
    ap.add_argument("--slice-seconds", type=float, default=1.0,
                    help="the servers take turns under load in slices this long (default 1 s)")
    ap.add_argument("--model-threads", type=int, default=None,
                    help="passed to chronos-flows serve (default: serve's own default, 1; 0: every core)")
    ap.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.floor_server:
        import uvicorn

        uvicorn.run(floor_app(), host=args.host, port=args.port, log_level="warning")
        return

    import pandas as pd
    import torch
    from chronos import BaseChronosPipeline

    from chronos_flows.models.chronos.configs import build_random_pipeline

    # the bare model runs with the threads the server gives a model call (serve's default: 1)
    bare_threads = (args.model_threads if args.model_threads is not None else 1) or os.cpu_count() or 1
    torch.set_num_threads(bare_threads)
    clients = [int(x) for x in args.clients.split(",")]
    ctx = contexts(args.inputs, args.context)
    start = "2020-01-06T00:00:00"  # a Monday: on W-MON
    bodies = [{"inputs": [{"target": y, "item_id": f"item-{i:04d}", "start": start}],
               "parameters": {"prediction_length": args.horizon, "quantile_levels": LEVELS, "freq": "W-MON"}}
              for i, y in enumerate(ctx)]

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp = Path(tmp)
        build_random_pipeline("chronos-2", args.size, args.context, args.horizon, seed=0).save_pretrained(tmp / "model")
        seed_store(tmp / "store", tmp / "model", args.context)

        # bare pipeline, in this process (before the servers start: nothing else on the cores)
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

        print(f"chronos-2 {args.size}, context {args.context}, horizon {args.horizon}, quantiles {LEVELS}, "
              f"{os.cpu_count()} cores, {args.seconds:g} s per load, serve --model-threads "
              f"{args.model_threads if args.model_threads is not None else '1 (default)'}")
        print(f"{'server':<26} {'clients':>7}  {'req/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'req/call':>8}  "
              f"{'RSS MB':>7}  errors", flush=True)
        serve = ["-m", "app.cli", "serve", "--store", str(tmp / "store"), "--device", "cpu"]
        if args.model_threads is not None:
            serve += ["--model-threads", str(args.model_threads)]
        top = max(clients)
        servers: dict[str, tuple[Served, bool]] = {}
        captured = None
        try:
            servers["floor (FastAPI, no model)"] = (Served([str(Path(__file__).resolve()), "--floor-server"],
                                                           tmp / "floor.log"), False)
            servers["chronos-flows serve"] = (Served(serve, tmp / "serve.log"), True)
            if not args.no_capture:
                servers["serve --capture"] = (Served([*serve, "--capture", "--capture-max-requests", "1000",
                                                      "--capture-max-seconds", "5"], tmp / "capture.log"), True)
            paced = bare_between_requests(servers["floor (FastAPI, no model)"][0].url, pipe, tensors, bodies,
                                          args.horizon, min(args.seconds, 5.0))
            del pipe
            by_name = run_loads(servers, bodies, clients, args.seconds, args.slice_seconds, only_top=("serve --capture",))
        finally:
            for served, _ in servers.values():
                served.stop()
        runs = {"floor": by_name["floor (FastAPI, no model)"], "ours": by_name["chronos-flows serve"]}
        if not args.no_capture:
            runs["capture"] = by_name["serve --capture"]
            files = sorted((tmp / "store" / "dev" / "capture").rglob("*.parquet"))
            rows = sum(len(pd.read_parquet(f)) for f in files)
            captured = (len(files), rows)

        print(f"bare upstream predict_quantiles ({bare_threads} torch thread(s)): one call per request {bare_single_rps:.1f} req/s, "
              f"p50 {bare_single_p50 * 1000:.2f} ms; one batched call {bare_batched_sps:.1f} series/s")
        for c in clients:
            print(f"ours / floor at {c:>2} clients: {runs['ours'][c][0] / runs['floor'][c][0]:.2f}"
                  + ("  (target >= 0.8)" if c == top else ""))
        if 1 in clients:
            print(f"p50 at 1 client - bare single call: {(runs['ours'][1][1] - bare_single_p50) * 1000:+.2f} ms "
                  "(target <= +1 ms)")
            print(f"p50 at 1 client - bare single call - floor p50: "
                  f"{(runs['ours'][1][1] - bare_single_p50 - runs['floor'][1][1]) * 1000:+.2f} ms "
                  "(our code's share: what neither the HTTP round trip nor the model explains)")
            print(f"the server's own model call at 1 client (mean, /metrics): {runs['ours'][1][2] * 1000:.2f} ms, "
                  f"bare single call mean {1000 / bare_single_rps:.2f} ms back to back, "
                  f"{float(np.mean(paced)) * 1000:.2f} ms between floor requests (p50 {float(np.median(paced)) * 1000:.2f}): "
                  "a model called between requests finds colder caches than one called back to back")
            print(f"p50 at 1 client - (bare call between floor requests p50 + floor p50): "
                  f"{(runs['ours'][1][1] - float(np.median(paced)) - runs['floor'][1][1]) * 1000:+.2f} ms "
                  "(our code's share against a model in the same cache state)")
            print(f"inside the server at 1 client (mean, /metrics): {runs['ours'][1][3] * 1000:.2f} ms = model call "
                  f"+ {(runs['ours'][1][3] - runs['ours'][1][2]) * 1000:.2f} ms of our code (envelope, parsing, answer)")
        if captured is not None:
            print(f"capture on / off at {top} clients: {runs['capture'][top][0] / runs['ours'][top][0]:.2f} "
                  f"(target >= 0.95); {captured[1]} rows captured in {captured[0]} Parquet files")
        print(f"ours at {top} clients / bare batched: {runs['ours'][top][0] / bare_batched_sps:.2f} "
              "(the model's share: near 1 when the model dominates)")


if __name__ == "__main__":
    main()
