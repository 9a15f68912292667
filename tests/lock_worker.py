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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _open(url: str, cache: dict):
    from blocks.store import S3Store, make_s3_client
    from blocks.resolve import open_store

    if url not in cache:
        if url.startswith("s3://"):
            # one boto3 client per worker process (creating one costs ~0.3 s of CPU)
            if "client" not in cache:
                cache["client"] = make_s3_client()
            bucket, _, prefix = url[len("s3://"):].partition("/")
            cache[url] = S3Store(bucket, prefix, client=cache["client"])
        else:
            cache[url] = open_store(url, check=False)
    return cache[url]


def _sleep_until(at: float | None) -> None:
    if at:
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)


def handle(cmd: dict, cache: dict) -> dict | None:
    from chronos_flows.core.errors import LockedError, LostLockError, PreconditionFailed, RunKilledError
    from chronos_flows.runstate.lock import RunLock

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


def serve(inp, out, cache: dict) -> int:
    for line in inp:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            out.flush()
            os._exit(0)  # skip interpreter teardown: 20 workers exit at once
        try:
            result = handle(cmd, cache)
        except Exception as e:  # noqa: BLE001 — reported to the test, which fails on it
            result = {"exception": f"{type(e).__name__}: {e}"}
        if result is None:
            return 0
        out.write(json.dumps(result) + "\n")
        out.flush()
    return 0


def zygote(fds: list[int]) -> int:
    """Import everything and build the boto3 client once, then fork one worker per fd pair:
    20 workers without 20 cold imports/client builds (each ~0.5 s of CPU on 2 cores)."""
    import blocks.store  # noqa: F401
    import chronos_flows.runstate.lock

    cache: dict = {}
    if os.environ.get("AWS_ENDPOINT_URL"):
        cache["client"] = blocks.store.make_s3_client()  # no connection is opened before the fork
    pids = []
    for i in range(0, len(fds), 2):
        pid = os.fork()
        if pid == 0:
            for j, fd in enumerate(fds):
                if j not in (i, i + 1):
                    os.close(fd)
            inp = os.fdopen(fds[i], "r")
            out = os.fdopen(fds[i + 1], "w")
            serve(inp, out, cache)
            os._exit(0)
        pids.append(pid)
    for fd in fds:
        os.close(fd)
    for pid in pids:
        os.waitpid(pid, 0)
    return 0


def main() -> int:
    sys.path.insert(0, str(ROOT))
    if len(sys.argv) > 2 and sys.argv[1] == "--zygote":
        return zygote([int(x) for x in sys.argv[2].split(",")])
    return serve(sys.stdin, sys.stdout, {})


class _Worker:
    def __init__(self, stdin, stdout) -> None:
        self.stdin, self.stdout = stdin, stdout


class WorkerPool:
    """``n`` long-lived worker processes (forked from one warmed-up zygote, reused across rounds)."""

    def __init__(self, n: int, env: dict | None = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        child_fds, self.procs = [], []
        for _ in range(n):
            cmd_r, cmd_w = os.pipe()
            res_r, res_w = os.pipe()
            child_fds += [cmd_r, res_w]
            self.procs.append(_Worker(os.fdopen(cmd_w, "w"), os.fdopen(res_r, "r")))
        self.zygote = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--zygote", ",".join(map(str, child_fds))],
            pass_fds=child_fds, env=full_env, cwd=str(ROOT),
        )
        for fd in child_fds:
            os.close(fd)

    def run(self, cmds: list[dict]) -> list[dict]:
        """Send one command to each worker (in order), then collect the answers."""
        for p, c in zip(self.procs, cmds):
            p.stdin.write(json.dumps(c) + "\n")
            p.stdin.flush()
        out = []
        for p, _ in zip(self.procs, cmds):
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("a worker died (see stderr)")
            out.append(json.loads(line))
        return out

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.write(json.dumps({"op": "quit"}) + "\n")
                p.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        try:
            self.zygote.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.zygote.kill()
            self.zygote.wait()
        for p in self.procs:
            p.stdout.close()


def spawn_holder(env: dict | None = None) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=full_env, cwd=str(ROOT))


_SERIAL_MOTO = """
import sys
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
"""


class SerialMotoServer:
    """moto's S3 API served by ONE thread, so every request (and so every conditional check+write)
    runs to completion before the next: the atomicity real S3 guarantees. moto_server's threaded
    mode does not lock its check-then-write (FACTS.md), which under 20 contending processes on
    2 cores occasionally lets two conditional writes both pass (a moto artefact, not the lock's)."""

    def __init__(self) -> None:
        from tests.conftest import free_port, wait_for_port

        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-c", _SERIAL_MOTO, str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def new_bucket(self) -> str:
        import boto3

        name = f"race-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
