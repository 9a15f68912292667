"""Store backends: local directory and S3 (against the real moto server), faults through a proxy."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from blocks.store import LocalStore, S3Store, check_store, download_prefix, read_uri
from blocks.resolve import open_store
from chronos_flows.core.errors import BadInputError, PreconditionFailed, StoreError, TransientStoreError
from chronos_flows.core.store import ObjectStore
from tests.faultproxy import FaultProxy


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    url = request.getfixturevalue("s3_store_url")
    return open_store(url)


def test_when_store_opened_then_it_implements_the_protocol(store):
    assert isinstance(store, ObjectStore)
    assert store.url.startswith(("file://", "s3://"))


def test_when_put_then_get_returns_the_data_and_a_content_etag(store):
    etag = store.put("dev/a/b.json", b"hello")
    data, etag2 = store.get("dev/a/b.json")
    assert data == b"hello" and etag2 == etag
    assert hashlib.md5(b"hello").hexdigest() in etag
    assert store.get("dev/missing.json") is None
    assert store.exists("dev/a/b.json") and not store.exists("dev/a/c.json")


def test_when_key_exists_then_put_if_absent_fails_and_keeps_the_first(store):
    store.put_if_absent("k/x", b"first")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("k/x", b"second")
    assert store.get("k/x")[0] == b"first"


def test_when_etag_is_stale_then_put_if_match_and_delete_if_match_fail(store):
    e1 = store.put("k/x", b"v1")
    e2 = store.put_if_match("k/x", b"v2", e1)
    with pytest.raises(PreconditionFailed):
        store.put_if_match("k/x", b"v3", e1)
    with pytest.raises(PreconditionFailed):
        store.delete_if_match("k/x", e1)
    assert store.get("k/x") == (b"v2", e2)
    with pytest.raises(PreconditionFailed):
        store.put_if_match("k/missing", b"v", e2)
    store.delete_if_match("k/x", e2)
    assert store.get("k/x") is None
    with pytest.raises(PreconditionFailed):
        store.delete_if_match("k/x", e2)


def test_when_deleting_then_it_is_idempotent(store):
    store.put("k/x", b"v")
    assert store.delete("k/x") is True
    assert store.delete("k/x") is False


def test_when_listing_then_all_keys_under_prefix_sorted_and_nothing_internal(store):
    for k in ["dev/logs/r1/training.json", "dev/logs/r2/training.json", "dev/system-state.json", "prod/x"]:
        store.put(k, b"1")
    store.put_if_absent("dev/logs/r3/a", b"1")
    assert store.list("dev/logs/") == ["dev/logs/r1/training.json", "dev/logs/r2/training.json", "dev/logs/r3/a"]
    assert store.list("dev/sys") == ["dev/system-state.json"]
    assert store.list("") == sorted(store.list(""))
    assert all(not k.startswith(".") for k in store.list(""))
    assert len(store.list("")) == 5


def test_when_dir_uploaded_then_download_gives_the_same_tree(store, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 100)
    keys = store.upload_dir(src, "dev/r1/models/bolt")
    assert keys == ["dev/r1/models/bolt/config.json", "dev/r1/models/bolt/sub/weights.bin"]
    out = store.download_dir("dev/r1/models/bolt", tmp_path / "dst")
    assert sorted(p.relative_to(tmp_path / "dst").as_posix() for p in out) == ["config.json", "sub/weights.bin"]
    assert (tmp_path / "dst" / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()


def test_when_a_file_is_put_then_get_returns_its_bytes_and_etag_and_no_temporary_file_stays(store, tmp_path):
    import os

    src = tmp_path / "forecasts.parquet"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    etag = store.put_file("dev/forecasts/fc-1/forecasts.parquet", src)
    assert store.get("dev/forecasts/fc-1/forecasts.parquet") == (data, etag)
    assert hashlib.md5(data).hexdigest() in etag
    src.write_bytes(b"second")
    etag2 = store.put_file("dev/forecasts/fc-1/forecasts.parquet", src)
    assert store.get("dev/forecasts/fc-1/forecasts.parquet") == (b"second", etag2)
    assert store.list("dev/forecasts/") == ["dev/forecasts/fc-1/forecasts.parquet"]
    if isinstance(store, LocalStore):
        assert not list((store.root / ".chronos-store" / "tmp").iterdir())
    with pytest.raises((StoreError, OSError)):
        store.put_file("dev/forecasts/fc-2/forecasts.parquet", tmp_path / "missing.parquet")
    assert not store.exists("dev/forecasts/fc-2/forecasts.parquet")


def test_when_key_is_unsafe_then_store_error(store):
    for bad in ["../x", "/abs", "a//b", "", ".chronos-store/tmp/x"]:
        with pytest.raises(StoreError):
            store.put(bad, b"x")


# ---------------------------------------------------------------------------------------------
# Local specifics
# ---------------------------------------------------------------------------------------------


def test_when_local_key_overwritten_repeatedly_then_readers_never_see_partial_files(tmp_path):
    st = LocalStore(tmp_path / "s")
    versions = [bytes([i]) * 2_000_000 for i in range(3)]
    st.put("big", versions[0])
    stop = threading.Event()
    seen: list[bool] = []

    def reader() -> None:
        while not stop.is_set():
            data, _ = st.get("big")
            seen.append(data in versions)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        st.put("big", versions[i % 3])
    stop.set()
    t.join()
    assert seen and all(seen)
    assert list((tmp_path / "s" / ".chronos-store" / "tmp").iterdir()) == []


def test_when_many_keys_are_written_then_the_local_lock_files_stay_bounded(tmp_path):
    from blocks.store import LOCK_STRIPES

    st = LocalStore(tmp_path / "s")
    src = tmp_path / "dir"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / "sub" / f"f{i}.bin").write_bytes(b"x" * i)
    for i in range(200):
        st.put(f"run/{i}/a.json", b"1")
        etag = st.put_if_absent(f"run/{i}/state.json", b"2")
        st.put_if_match(f"run/{i}/state.json", b"3", etag)
        st.delete(f"run/{i}/a.json")
    st.upload_dir(src, "up")
    locks = list((tmp_path / "s" / ".chronos-store" / "locks").iterdir())
    assert 0 < len(locks) <= LOCK_STRIPES <= 16, sorted(p.name for p in locks)
    assert st.get("run/199/state.json")[0] == b"3" and len(st.list("up/")) == 20
    assert list((tmp_path / "s" / ".chronos-store" / "tmp").iterdir()) == []


def test_when_store_url_is_file_url_or_path_then_local_store_is_created(tmp_path):
    a = open_store((tmp_path / "a").as_uri())
    b = open_store(str(tmp_path / "b"))
    assert isinstance(a, LocalStore) and isinstance(b, LocalStore)
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()


def test_when_store_url_scheme_is_unknown_then_store_error_names_it():
    with pytest.raises(StoreError, match="gs://bucket/x"):
        open_store("gs://bucket/x")


def test_when_local_store_dir_cannot_be_created_then_store_error_names_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(StoreError, match=str(blocker / "store")):
        open_store(str(blocker / "store"))


def test_when_read_uri_on_local_path_then_bytes_or_bad_input_naming_it(tmp_path):
    f = tmp_path / "data.csv"
    f.write_bytes(b"a,b\n1,2\n")
    assert read_uri(str(f)) == b"a,b\n1,2\n"
    assert read_uri(f.as_uri()) == b"a,b\n1,2\n"
    with pytest.raises(BadInputError, match="nope.csv"):
        read_uri(str(tmp_path / "nope.csv"))


# ---------------------------------------------------------------------------------------------
# S3 specifics (moto server)
# ---------------------------------------------------------------------------------------------


def test_when_read_uri_on_s3_then_bytes_or_bad_input_naming_it(aws_env):
    bucket = aws_env.new_bucket()
    aws_env.client().put_object(Bucket=bucket, Key="in/data.csv", Body=b"x,y\n")
    assert read_uri(f"s3://{bucket}/in/data.csv") == b"x,y\n"
    with pytest.raises(BadInputError, match=f"s3://{bucket}/in/other.csv"):
        read_uri(f"s3://{bucket}/in/other.csv")
    with pytest.raises(BadInputError, match="no-such-bucket-zz"):
        read_uri("s3://no-such-bucket-zz/in/data.csv")


def test_when_download_prefix_from_s3_then_tree_is_fetched(aws_env, tmp_path):
    bucket = aws_env.new_bucket()
    c = aws_env.client()
    c.put_object(Bucket=bucket, Key="models/tiny/config.json", Body=b"{}")
    c.put_object(Bucket=bucket, Key="models/tiny/model.safetensors", Body=b"\0" * 10)
    out = download_prefix(f"s3://{bucket}/models/tiny/", tmp_path / "m")
    assert (out / "config.json").read_bytes() == b"{}"
    assert (out / "model.safetensors").stat().st_size == 10
    with pytest.raises(BadInputError, match="models/none"):
        download_prefix(f"s3://{bucket}/models/none/", tmp_path / "n")


def test_when_bucket_is_missing_then_store_error_names_it_without_retry_storm(aws_env):
    with FaultProxy(aws_env.endpoint_url) as proxy:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="ghost-bucket-1") as ei:
            open_store("s3://ghost-bucket-1/chronos", endpoint_url=proxy.endpoint_url)
        assert "create it" in str(ei.value)
        st = S3Store("ghost-bucket-1", "chronos", endpoint_url=proxy.endpoint_url)
        for op in (lambda: st.get("k"), lambda: st.put("k", b"x"), lambda: st.put_if_absent("k", b"x")):
            with pytest.raises(StoreError, match="ghost-bucket-1"):
                op()
        elapsed = time.monotonic() - t0
        assert elapsed < 3.0
        assert len(proxy.log) == 4  # one request per operation: a permanent error is not retried


def test_when_endpoint_is_unreachable_then_open_store_says_so(aws_env):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreError, match="unreachable"):
        open_store("s3://any-bucket/x", endpoint_url=url)


def test_when_aws_env_vars_are_set_then_boto3_honours_them(aws_env, monkeypatch, tmp_path):
    bucket = aws_env.new_bucket()
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_env.endpoint_url)
    st = open_store(f"s3://{bucket}/p")
    st.put("a", b"1")
    assert st.client.meta.endpoint_url == aws_env.endpoint_url
    # AWS_PROFILE selects region/credentials from the config files.
    cfg = tmp_path / "config"
    cfg.write_text("[profile chronos]\nregion = eu-west-3\naws_access_key_id = k\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("AWS_PROFILE", "chronos")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    st2 = open_store(f"s3://{bucket}/p")
    assert st2.client.meta.region_name == "eu-west-3"
    assert st2.get("a")[0] == b"1"
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert S3Store(bucket, "p").client.meta.region_name == "ap-south-1"
    with pytest.raises(StoreError, match="profile"):
        S3Store(bucket, "p", profile="does-not-exist")


def _proxied(aws_env, proxy, max_attempts=5):
    bucket = aws_env.new_bucket()
    return S3Store(bucket, "chronos", endpoint_url=proxy.endpoint_url, max_attempts=max_attempts)


def test_when_s3_throttles_then_the_write_is_retried_and_lands_once(aws_env):
    with FaultProxy(aws_env.endpoint_url) as proxy:
        st = _proxied(aws_env, proxy)
        proxy.faults = ["503", "drop"]
        etag = st.put("k", b"v1")
        puts = proxy.requests("PUT", "/chronos/k")
        assert [p[2] for p in puts] == ["503", "drop", None]
        assert len(proxy.requests("PUT", "/chronos/k", forwarded=True)) == 1
        assert st.get("k") == (b"v1", etag)


def test_when_a_conditional_write_landed_but_the_reply_was_lost_then_it_counts_as_success(aws_env):
    with FaultProxy(aws_env.endpoint_url) as proxy:
        st = _proxied(aws_env, proxy)
        proxy.match = lambda m, p: m in ("PUT", "DELETE")
        proxy.faults = ["forward500"]
        e1 = st.put_if_absent("k", b"v1")  # landed, 500, retry -> 412, re-read: ours
        assert st.get("k") == (b"v1", e1)
        proxy.faults = ["forward_drop"]
        e2 = st.put_if_match("k", b"v2", e1)
        assert st.get("k") == (b"v2", e2)
        proxy.faults = ["forward500"]
        st.delete_if_match("k", e2)
        assert st.get("k") is None
        statuses = [(m, s) for m, _, _, s in proxy.requests(forwarded=True) if m in ("PUT", "DELETE")]
        assert statuses == [("PUT", 200), ("PUT", 412), ("PUT", 200), ("PUT", 412), ("DELETE", 204), ("DELETE", 404)]


def test_when_a_conditional_write_really_lost_after_a_retry_then_precondition_failed(aws_env):
    with FaultProxy(aws_env.endpoint_url) as proxy:
        st = _proxied(aws_env, proxy)
        st.put("k", b"theirs")
        proxy.faults = ["503"]
        with pytest.raises(PreconditionFailed):
            st.put_if_absent("k", b"mine")
        assert st.get("k")[0] == b"theirs"


def test_when_s3_keeps_failing_then_transient_store_error_after_bounded_attempts(aws_env):
    with FaultProxy(aws_env.endpoint_url) as proxy:
        st = _proxied(aws_env, proxy, max_attempts=3)
        proxy.faults = ["503"] * 10
        with pytest.raises(TransientStoreError, match="retry later"):
            st.put("k", b"v")
        assert len(proxy.requests("PUT")) == 3


def test_when_store_is_checked_then_reachable_stores_pass(s3_store_url, tmp_path):
    check_store(open_store(s3_store_url, check=False))
    check_store(open_store(str(tmp_path / "x"), check=False))

