"""The low-level moves every shared record uses: compare-and-swap on one store object, atomic
local-file writes, the one clock format."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from blocks.store import LocalStore
from chronos_flows.core import atomic
from chronos_flows.core.cas import Keep, Write, compare_and_swap
from chronos_flows.core.clock import iso, parse_iso
from chronos_flows.core.errors import PreconditionFailed, TransientStoreError


def test_when_the_object_is_absent_then_compare_and_swap_creates_it(tmp_path):
    store = LocalStore(tmp_path)
    value, etag = compare_and_swap(store, "k", lambda cur: Write(b"one", "created" if cur is None else "updated"))
    assert value == "created" and store.get("k") == (b"one", etag)


def test_when_a_concurrent_writer_wins_then_compare_and_swap_rereads_and_decides_again(tmp_path):
    store = LocalStore(tmp_path)
    store.put("n", b"1")
    seen = []

    def step(cur):
        seen.append(cur[0])
        if len(seen) == 1:
            store.put("n", b"5")  # another writer lands between our read and our write
        return Write(str(int(cur[0]) + 1).encode(), int(cur[0]) + 1)

    value, _ = compare_and_swap(store, "n", step)
    assert seen == [b"1", b"5"] and value == 6 and store.get("n")[0] == b"6"


def test_when_step_keeps_the_object_then_nothing_is_written(tmp_path):
    store = LocalStore(tmp_path)
    etag = store.put("k", b"same")
    value, got = compare_and_swap(store, "k", lambda cur: Keep("kept"))
    assert (value, got) == ("kept", etag) and store.get("k") == (b"same", etag)


def test_when_every_attempt_loses_then_the_error_names_the_object(tmp_path):
    store = LocalStore(tmp_path)
    store.put("hot", b"0")
    n = [0]

    def step(cur):
        n[0] += 1
        store.put("hot", str(n[0]).encode())  # always changed under us
        return Write(b"mine", None)

    with pytest.raises(TransientStoreError, match="hot keeps changing"):
        compare_and_swap(store, "hot", step, attempts=3)
    assert n[0] == 3
    with pytest.raises(PreconditionFailed, match="gave up"):
        compare_and_swap(store, "hot", step, attempts=2, exhausted=lambda uri: PreconditionFailed(f"{uri}: gave up"))


def test_when_an_atomic_write_fails_midway_then_the_old_file_stays_and_no_temporary_is_left(tmp_path):
    target = tmp_path / "doc.json"
    atomic.write_json(target, {"v": 1})

    def broken(tmp):
        tmp.write_bytes(b'{"v": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_with(target, broken)
    assert target.read_text() == '{"v": 1}'
    assert sorted(os.listdir(tmp_path)) == ["doc.json"]
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["doc.json"]


def test_when_times_are_formatted_then_they_are_utc_milliseconds_and_round_trip():
    at = datetime(2026, 12, 4, 3, 0, 1, 234567, tzinfo=timezone.utc)
    assert iso(at) == "2026-12-04T03:00:01.234Z"
    assert parse_iso(iso(at)) == at.replace(microsecond=234000)
    assert iso("already") == "already"
