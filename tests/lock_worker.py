"""A long-lived worker process for the lock race / CAS / crash tests, plus a pool to drive many.

Run as ``python tests/lock_worker.py``: reads one JSON command per line on stdin, answers one JSON
line on stdout. Commands:

* ``{"op": "acquire", "url", "env", "run_id", "at", "lease"}`` — sleep until wall time ``at`` (a
  shared start instant), try to acquire; answer ``{"won": true, "generation": N}`` or
  ``{"won": false, "holder": run_id, "error": message}``.
* ``{"op": "incr", "url", "key", "k", "at"}`` — ``k`` compare-and-swap increments of a counter.
* ``{"op": "hold", "url", "env", "run_id", "lease", "interval"}`` — acquire, heartbeat in the
  background, answer ``{"acquired": true, "generation", "etag"}`` and then keep checking the
  lock; when the lock is lost print ``{"lost": message}`` and exit.
* ``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _open(url: str, cache: dict):
    from blocks.store import open_store

    if url not in cache:
        cache[url] = open_store(url, check=False)
    return cache[url]


def _sleep_until(at: float | None) -> None:
    if at:
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)


def handle(cmd: dict, cache: dict) -> dict | None:
    from chronos_flows.errors import LockedError, LostLockError, PreconditionFailed, RunKilledError
    from chronos_flows.lock import RunLock

    op = cmd["op"]
    if op == "acquire":
        store = _open(cmd["url"], cache)
        lock = RunLock(store, cmd["env"], lease_seconds=cmd.get("lease", 60.0))
        _sleep_until(cmd.get("at"))
        try:
            h = lock.acquire(cmd["run_id"], takeover_wait=0)
            return {"won": True, "generation": h.generation}
        except LockedError as e:
            return {"won": False, "holder": e.run_id, "error": str(e)}
    if op == "incr":
        store = _open(cmd["url"], cache)
        key = cmd["key"]
        _sleep_until(cmd.get("at"))
        attempts = 0
        for _ in range(cmd["k"]):
            while True:
                attempts += 1
                got = store.get(key)
                if got is None:
                    try:
                        store.put_if_absent(key, b"1")
                        break
                    except PreconditionFailed:
                        continue
                data, etag = got
                try:
                    store.put_if_match(key, str(int(data) + 1).encode(), etag)
                    break
                except PreconditionFailed:
                    continue
        return {"attempts": attempts}
    if op == "hold":
        store = _open(cmd["url"], cache)
        lock = RunLock(store, cmd["env"], lease_seconds=cmd["lease"])
        h = lock.acquire(cmd["run_id"])
        h.transition("data_sync")
        print(json.dumps({"acquired": True, "generation": h.generation, "etag": h.etag}), flush=True)
        with h.heartbeat_thread(cmd["interval"]):
            while True:
                time.sleep(cmd["interval"] / 2)
                try:
                    h.check(refresh=False)
                except (LostLockError, RunKilledError) as e:
                    print(json.dumps({"lost": str(e), "type": type(e).__name__}), flush=True)
                    return None
    raise ValueError(f"unknown op {op}")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    cache: dict = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            return 0
        try:
            out = handle(cmd, cache)
        except Exception as e:  # noqa: BLE001 — reported to the test, which fails on it
            out = {"exception": f"{type(e).__name__}: {e}"}
        if out is None:
            return 0
        print(json.dumps(out), flush=True)
    return 0


class WorkerPool:
    """``n`` long-lived worker processes (spawned once, reused across rounds)."""

    def __init__(self, n: int, env: dict | None = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=full_env, cwd=str(ROOT),
            )
            for _ in range(n)
        ]

    def run(self, cmds: list[dict]) -> list[dict]:
        """Send one command to each worker (in order), then collect the answers."""
        for p, c in zip(self.procs, cmds):
            p.stdin.write(json.dumps(c) + "\n")
            p.stdin.flush()
        out = []
        for p, _ in zip(self.procs, cmds):
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {p.pid} died (exit {p.poll()})")
            out.append(json.loads(line))
        return out

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.write(json.dumps({"op": "quit"}) + "\n")
                p.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def spawn_holder(env: dict | None = None) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=full_env, cwd=str(ROOT))


if __name__ == "__main__":
    sys.exit(main())
