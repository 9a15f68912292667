"""The run-state lock against the real moto S3 server: races, CAS, crash/takeover, faults.

Note (FACTS.md): moto's own check-then-write is not locked, so these tests exercise the lock's
logic over S3's conditional-write API; real S3 makes the condition check atomic.
"""

from __future__ import annotations

import json

import pytest

from blocks.store import S3Store
from blocks.resolve import open_store
from chronos_flows.core import layout
from chronos_flows.runstate.lock import RunLock
from chronos_flows.runstate.statefile import read_state
from tests.faultproxy import FaultProxy
from tests.lock_worker import SerialMotoServer, WorkerPool
from tests.test_lock import cas_scenario, crash_scenario, race_scenario, revive_scenario

ENV = "dev"


@pytest.fixture(scope="module")
def serial_s3():
    server = SerialMotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_pool(serial_s3):
    p = WorkerPool(20, env=serial_s3.env())
    yield p
    p.close()


@pytest.fixture
def race_store(serial_s3, monkeypatch):
    for k, v in serial_s3.env().items():
        monkeypatch.setenv(k, v)
    return S3Store(serial_s3.new_bucket(), "chronos", endpoint_url=serial_s3.endpoint_url)


@pytest.fixture
def s3_store(s3_store_url):
    return open_store(s3_store_url)


# Races and CAS run against moto served by one thread (SerialMotoServer): S3 makes each
# conditional write atomic, threaded moto does not (see FACTS.md); the lock's logic is under test.


def test_when_20_processes_race_for_the_s3_lock_then_exactly_one_wins_each_round(s3_pool, race_store):
    race_scenario(s3_pool, race_store, ENV, rounds=6)


@pytest.mark.slow
def test_when_20_processes_race_for_the_s3_lock_for_20_rounds_then_exactly_one_wins_each(s3_pool, race_store):
    race_scenario(s3_pool, race_store, ENV, rounds=20)


def test_when_20_processes_cas_increment_an_s3_counter_then_no_update_is_lost(s3_pool, race_store):
    cas_scenario(s3_pool, race_store, "counters/c", k=2)


def test_when_s3_holder_crashes_then_takeover_only_after_the_lease(s3_store, aws_server):
    delay = crash_scenario(s3_store, ENV, extra_env=aws_server.env(), lease=2.0)
    assert delay < 5.0


def test_when_s3_holder_is_paused_past_its_lease_then_it_loses_the_lock_on_resume(s3_store, aws_server):
    revive_scenario(s3_store, ENV, extra_env=aws_server.env())


def test_when_s3_faults_hit_every_lock_write_then_the_run_completes_and_nothing_is_written_twice(aws_env):
    bucket = aws_env.new_bucket()
    direct = S3Store(bucket, "chronos")
    with FaultProxy(aws_env.endpoint_url) as proxy:
        store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url)
        state_path = f"/{bucket}/chronos/{layout.state_key(ENV)}"
        proxy.match = lambda m, p: m in ("PUT", "DELETE") and p.split("?")[0] == state_path
        # first attempt of each state-file write is faulted, its retry goes through
        proxy.faults = ["forward500", None, "503", None, "forward_drop", None, "drop", None,
                        "forward500", None, "503", None, "forward500", None]
        lock = RunLock(store, ENV, lease_seconds=30)
        h = lock.acquire("run-1")
        for s in ("data_sync", "training", "results_sync"):
            h.transition(s)
        h.heartbeat()
        h.transition("cleanup")
        final = read_state(direct, ENV)
        h.release()
        assert proxy.faults == []
    hist = [x["status"] for x in final.state["history"]]
    assert hist == ["initialization", "data_sync", "training", "results_sync", "cleanup"]
    assert final.state["seq"] == 6 and final.state["generation"] == 1
    assert read_state(direct, ENV) is None
    puts = [s for m, p, _, s in proxy.log if m == "PUT" and p.split("?")[0] == state_path and s is not None]
    # 6 writes landed once each (200); the retries of the 3 writes whose reply was lost got 412
    assert puts.count(200) == 6 and puts.count(412) == 3 and len(puts) == 9
    dels = [s for m, p, _, s in proxy.log if m == "DELETE" and s is not None]
    assert dels == [204, 404]
    assert json.loads(direct.get(f"{ENV}/lock-generation.json")[0])["generation"] == 1


def test_when_reads_fail_transiently_then_acquire_and_check_still_work(aws_env):
    bucket = aws_env.new_bucket()
    with FaultProxy(aws_env.endpoint_url) as proxy:
        store = S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url)
        proxy.match = lambda m, p: m == "GET"
        proxy.faults = ["503", None, "drop", None, "forward500", None]
        h = RunLock(store, ENV).acquire("run-1")
        h.check()
        h.check()
        assert proxy.faults == []
        assert h.generation == 1 and read_state(store, ENV).run_id == "run-1"
