"""Object-store backends: a local directory and S3 (boto3), both implementing
:class:`chronos_flows.core.store.ObjectStore` with the same atomic/conditional semantics.

* :class:`LocalStore` — ``put`` writes a temporary file, fsyncs it and ``os.replace``-s it over the
  key (readers see the old or the new file, never a partial one); ``put_if_absent`` hard-links the
  finished temporary file into place (``link`` fails if the key exists); compare-and-swap holds an
  ``fcntl.flock`` on the key's lock file while it compares the MD5 ETag and replaces the file, so it
  is safe across processes on one machine. Keys share a fixed set of :data:`LOCK_STRIPES` lock files
  (chosen by a hash of the key), so the lock files never pile up. Temporary and lock files live
  under ``.chronos-store/`` and are never listed as keys.
* :class:`S3Store` — ``PutObject(IfNoneMatch="*")``, ``PutObject(IfMatch=etag)``,
  ``DeleteObject(IfMatch=etag)``. 412/409/404 on a condition → :class:`PreconditionFailed`, except
  when botocore retried the call and the object now holds exactly what we wrote (the first attempt
  landed). Throttling/5xx/connection errors are retried by botocore (standard mode) and then raise
  :class:`TransientStoreError`; permanent errors raise :class:`StoreError` naming bucket, key and fix.

``open_store(url)`` opens ``s3://bucket/prefix``, ``file:///abs/path``, a plain path, or
``block:chronos-store/NAME`` (a saved :class:`blocks.prefect_blocks.ChronosStore` Prefect block,
loaded only then: this module never imports Prefect). The adapters take a boto3 session / client
(``session=``, ``client=``), so the Prefect blocks hand them prefect-aws ``AwsCredentials``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from chronos_flows.core.errors import BadInputError, PreconditionFailed, StoreError, TransientStoreError
from chronos_flows.core import atomic

INTERNAL_DIR = ".chronos-store"

__all__ = [
    "LocalStore",
    "S3Store",
    "open_url",
    "check_store",
    "read_uri",
    "download_prefix",
]


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == INTERNAL_DIR:
        raise StoreError(
            f"invalid store key {key!r}: keys are relative '/'-separated paths without '.', '..' or "
            f"empty parts (and not under {INTERNAL_DIR}/)"
        )
    return key


def _join(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    key = key.strip("/")
    if prefix and key:
        return f"{prefix}/{key}"
    return prefix or key


# --------------------------------------------------------------------------------------------------
# Local directory
# --------------------------------------------------------------------------------------------------


#: Lock files of a local store (``.chronos-store/locks/stripe-NN.lock``): a key locks one of them.
LOCK_STRIPES = 16


class _Folders:
    """Folder transfer written once for both stores, over each store's one-file primitives
    ``_upload(key, src)`` (atomic: the object appears only when complete) and ``_fetch(key, dest)``."""

    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]:
        """Every file under ``local_dir`` to ``prefix/<relative path>``; returns the keys written."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise BadInputError(f"cannot upload {local_dir}: not a directory")
        written = []
        for src in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = _join(prefix, src.relative_to(local_dir).as_posix())
            self._upload(key, src)
            written.append(key)
        return written

    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
        """Every object under ``prefix`` into ``local_dir`` (each file written whole, then renamed)."""
        local_dir = Path(local_dir)
        base = prefix.strip("/")
        out = []
        for key in self.list(base + "/" if base else ""):
            rel = key[len(base) + 1 :] if base else key
            if not rel or rel.endswith("/"):
                continue
            dest = local_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_with(dest, lambda tmp, key=key: self._fetch(key, tmp), suffix=".part")
            out.append(dest)
        return out


class LocalStore(_Folders):
    """A directory standing in for the bucket (same keys, same atomic/conditional protocol)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()
        self._internal = self.root / INTERNAL_DIR
        self._tmp_dir = self._internal / "tmp"
        self._lock_dir = self._internal / "locks"
        try:
            self._tmp_dir.mkdir(parents=True, exist_ok=True)
            self._lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the local store directory {self.root}: {e.strerror or e}; "
                f"choose a writable path (--store / CHRONOS_FLOWS_STORE) or fix its permissions"
            ) from e

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- helpers ---------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        # A lock file per key would be left behind for every key ever written (removing it is not
        # safe: a waiter could lock the unlinked file while a newcomer locks a new one). A fixed
        # set of stripes bounds them; keys that share a stripe only wait for each other's rename.
        stripe = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % LOCK_STRIPES
        name = f"stripe-{stripe:02d}.lock"
        fd = os.open(self._lock_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _write_tmp(self, data: bytes | None = None, src: Path | None = None) -> Path:
        fd, name = tempfile.mkstemp(dir=self._tmp_dir, prefix="w-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                if src is not None:
                    with open(src, "rb") as s:
                        shutil.copyfileobj(s, f, 1 << 20)
                else:
                    f.write(data or b"")
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _replace(self, tmp: Path, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
        atomic.fsync_dir(path.parent)

    def _current_etag(self, path: Path) -> str | None:
        try:
            return _md5_file(path)
        except FileNotFoundError:
            return None

    def _wrap_os(self, key: str, e: OSError) -> StoreError:
        return StoreError(
            f"local store {self.root}: cannot write {key!r}: {e.strerror or e}; check that the "
            f"directory is writable and the disk is not full"
        )

    # -- protocol --------------------------------------------------------------------------------
    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return data, _md5(data)

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        try:
            tmp = self._write_tmp(data)
            with self._key_lock(key):
                self._replace(tmp, path)
        except OSError as e:
            raise self._wrap_os(key, e) from e
        return _md5(data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        path = self._path(key)
        try:
            tmp = self._write_tmp(data)
            try:
                with self._key_lock(key):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(tmp, path)  # atomic exclusive create of a complete file
                    except FileExistsError:
                        raise PreconditionFailed(f"{self.uri(key)} already exists") from None
                    atomic.fsync_dir(path.parent)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise self._wrap_os(key, e) from e
        return _md5(data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        path = self._path(key)
        try:
            tmp = self._write_tmp(data)
            try:
                with self._key_lock(key):
                    self._require_etag(key, path, etag)
                    self._replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise self._wrap_os(key, e) from e
        return _md5(data)

    def _require_etag(self, key: str, path: Path, etag: str) -> None:
        """Under the key's lock: the file exists with ETag ``etag``, else :class:`PreconditionFailed`."""
        current = self._current_etag(path)
        if current is None:
            raise PreconditionFailed(f"{self.uri(key)} does not exist (expected ETag {etag})")
        if current != etag:
            raise PreconditionFailed(f"{self.uri(key)} changed (ETag {current}, expected {etag})")

    def delete(self, key: str) -> bool:
        path = self._path(key)
        with self._key_lock(key):
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            atomic.fsync_dir(path.parent)
        return True

    def delete_if_match(self, key: str, etag: str) -> None:
        path = self._path(key)
        with self._key_lock(key):
            self._require_etag(key, path, etag)
            path.unlink()
            atomic.fsync_dir(path.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        prefix = prefix.lstrip("/")
        # Walk only the deepest directory the prefix names, then filter by string prefix (S3 semantics).
        base_parts = prefix.split("/")[:-1] if prefix else []
        base = self.root.joinpath(*base_parts) if base_parts else self.root
        if not base.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root and INTERNAL_DIR in dirnames:
                dirnames.remove(INTERNAL_DIR)
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for fn in filenames:
                key = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def _upload(self, key: str, src: Path, *, etag: bool = False) -> str | None:
        """Copy ``src`` into a temporary file, rename it over the key; its MD5 ETag if asked."""
        path = self._path(key)
        tmp: Path | None = None
        md5 = None
        try:
            tmp = self._write_tmp(src=Path(src))
            md5 = _md5_file(tmp) if etag else None
            with self._key_lock(key):
                self._replace(tmp, path)
        except OSError as e:
            raise self._wrap_os(key, e) from e
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return md5

    def _fetch(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._path(key), dest)

    def put_file(self, key: str, src: Path) -> str:
        """Atomically write the local file ``src`` to ``key``, streamed (never whole in memory): a
        copy into a temporary file, then a rename over the key. Returns the content MD5 ETag."""
        return self._upload(key, src, etag=True)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()


# --------------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------------

_CONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"}
_TRANSIENT_CODES = {
    "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
    "Throttling", "ThrottlingException", "RequestThrottled", "RequestLimitExceeded",
    "PriorRequestNotComplete", "500", "502", "503", "504",
}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}


def _client_config(max_attempts: int = 5, connect_timeout: float = 5.0, read_timeout: float = 30.0):
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


def make_s3_client(endpoint_url: str | None = None, region: str | None = None, profile: str | None = None,
                   max_attempts: int = 5, *, session=None, client_kwargs: dict[str, Any] | None = None):
    """A boto3 S3 client. boto3 itself honours AWS_PROFILE, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL and
    AWS_ENDPOINT_URL_S3 when the arguments are None.

    ``session`` (a ``boto3.Session``, e.g. from prefect-aws ``AwsCredentials.get_boto3_session()``)
    replaces the profile/region lookup; ``client_kwargs`` are extra ``session.client`` arguments
    (e.g. ``AwsClientParameters.get_params_override()``): their ``config`` is merged over the
    store's retry/timeout config."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    if session is None:
        try:
            session = boto3.Session(profile_name=profile, region_name=region)
        except ProfileNotFound as e:
            raise StoreError(f"AWS profile not found: {e}; fix AWS_PROFILE / --profile or ~/.aws/config") from e
    extra = dict(client_kwargs or {})
    config = _client_config(max_attempts)
    if extra.get("config") is not None:
        config = config.merge(extra["config"])
    extra.pop("config", None)
    kwargs: dict[str, Any] = {"config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if region:
        kwargs["region_name"] = region
    elif session.region_name is None:
        kwargs["region_name"] = "us-east-1"
    kwargs.update({k: v for k, v in extra.items() if v is not None})
    return session.client("s3", **kwargs)


def _tagging(key: str) -> dict[str, str]:
    """Object tags the bucket's lifecycle rules match on (model artifacts and checkpoints)."""
    from blocks.cloudformation import lifecycle_tagging

    tag = lifecycle_tagging(key)
    return {"Tagging": tag} if tag else {}


class S3Store(_Folders):
    """``s3://bucket/prefix`` with conditional writes (S3 ``IfNoneMatch`` / ``IfMatch``)."""

    def __init__(self, bucket: str, prefix: str = "", client=None, endpoint_url: str | None = None,
                 region: str | None = None, profile: str | None = None, max_attempts: int = 5, *,
                 session=None, client_kwargs: dict[str, Any] | None = None) -> None:
        if not bucket:
            raise StoreError("S3 store needs a bucket name: use s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url, "region": region, "profile": profile,
            "session": session, "client_kwargs": client_kwargs,
        }
        self._own_client = client is None
        self.client = client or make_s3_client(max_attempts=max_attempts, **self._client_args)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._single: dict[float | None, S3Store] = {}

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.client.meta.endpoint_url!r})"

    def single_attempt(self, timeout: float | None = None) -> "S3Store":
        """This store with a client that makes one attempt per request (botocore's retries off),
        for a caller that retries itself against a time budget — the lock's lease
        (:class:`~chronos_flows.runstate.lock.LockHandle`): its retries stop when the lease does,
        and no SDK retry of a state-file write is sent after that. A store built on a client passed
        in keeps it (its configuration is the caller's). ``timeout`` (seconds) bounds connecting and
        each read, so a request that hangs cannot land long after the caller gave up on it."""
        if not self._own_client:
            return self
        if timeout not in self._single:
            args = dict(self._client_args)
            if timeout is not None:
                from botocore.config import Config

                t = max(float(timeout), 0.5)
                extra = dict(args.get("client_kwargs") or {})
                bounded = Config(connect_timeout=min(t, 5.0), read_timeout=t)
                extra["config"] = extra["config"].merge(bounded) if extra.get("config") is not None else bounded
                args["client_kwargs"] = extra
            self._single[timeout] = S3Store(self.bucket, self.prefix, client=make_s3_client(max_attempts=1, **args))
        return self._single[timeout]

    def _k(self, key: str) -> str:
        return _join(self.prefix, _check_key(key))

    # -- error mapping ---------------------------------------------------------------------------
    def _error(self, e: Exception, op: str, key: str | None) -> Exception:
        from botocore.exceptions import (
            BotoCoreError, ClientError, ConnectionError as BcConnectionError, HTTPClientError,
            NoCredentialsError, PartialCredentialsError,
        )

        where = f"s3://{self.bucket}/{self._k(key)}" if key else f"s3://{self.bucket}"
        endpoint = self.client.meta.endpoint_url
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            msg = err.get("Message", "")
            if code in ("NoSuchBucket",) or (op == "HeadBucket" and status == 404):
                return StoreError(
                    f"S3 bucket {self.bucket!r} does not exist (endpoint {endpoint}); create it "
                    f"(`aws s3 mb s3://{self.bucket}`) or fix the store URL"
                )
            if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
                return StoreError(
                    f"access denied: {op} on {where} (endpoint {endpoint}); check the AWS credentials "
                    f"(AWS_PROFILE / AWS_ACCESS_KEY_ID) and that the bucket policy allows s3:{op}"
                )
            if code in _CREDENTIAL_CODES:
                return StoreError(
                    f"AWS credentials rejected ({code}) for {op} on {where}; refresh or fix the credentials "
                    f"(AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, SSO login)"
                )
            if code in _TRANSIENT_CODES or status >= 500:
                return TransientStoreError(
                    f"S3 {op} on {where} kept failing after retries ({code or status}: {msg}); "
                    f"S3 is throttling or unavailable — retry later"
                )
            return StoreError(f"S3 {op} on {where} failed: {code or status}: {msg}")
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"no usable AWS credentials for {where}: set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                f"AWS_SECRET_ACCESS_KEY (or use a local store path)"
            )
        if isinstance(e, (BcConnectionError, HTTPClientError)):
            return TransientStoreError(
                f"cannot reach S3 endpoint {endpoint} for {op} on {where} after retries ({e}); check "
                f"the network / AWS_ENDPOINT_URL, then retry"
            )
        if isinstance(e, BotoCoreError):
            return StoreError(f"S3 {op} on {where} failed: {e}")
        return e

    def _call(self, op: str, key: str | None, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, op, key) from e

    @staticmethod
    def _is_condition_failure(e) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(e, ClientError):
            return False
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _CONDITION_CODES or (status in (409, 412) and code != "NoSuchBucket")

    @staticmethod
    def _retried(e) -> bool:
        return e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0

    def _conditional(self, op: str, key: str, fn, data: bytes | None, **kwargs) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as e:
            if not self._is_condition_failure(e):
                raise self._error(e, op, key) from e
            if self._retried(e):
                # Our first attempt may have landed before botocore retried: check whether the
                # object is now exactly what we meant to leave behind.
                current = self.get(key)
                if data is None and current is None:
                    return {"ETag": None}
                if data is not None and current is not None and current[0] == data:
                    return {"ETag": current[1]}
            raise PreconditionFailed(
                f"{op} condition failed on s3://{self.bucket}/{self._k(key)} "
                f"({e.response.get('Error', {}).get('Code')})"
            ) from e
        except BotoCoreError as e:
            raise self._error(e, op, key) from e

    # -- protocol --------------------------------------------------------------------------------
    def get(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            return r["Body"].read(), r["ETag"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise self._error(e, "GetObject", key) from e
        except BotoCoreError as e:
            raise self._error(e, "GetObject", key) from e

    def put(self, key: str, data: bytes) -> str:
        r = self._call("PutObject", key, self.client.put_object, Bucket=self.bucket, Key=self._k(key), Body=data,
                       **_tagging(key))
        return r["ETag"]

    def put_if_absent(self, key: str, data: bytes) -> str:
        r = self._conditional("PutObject", key, self.client.put_object, data,
                              Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
        return r["ETag"]

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        r = self._conditional("PutObject", key, self.client.put_object, data,
                              Bucket=self.bucket, Key=self._k(key), Body=data, IfMatch=etag)
        return r["ETag"]

    def delete(self, key: str) -> bool:
        existed = self.exists(key)
        self._call("DeleteObject", key, self.client.delete_object, Bucket=self.bucket, Key=self._k(key))
        return existed

    def delete_if_match(self, key: str, etag: str) -> None:
        self._conditional("DeleteObject", key, self.client.delete_object, None,
                          Bucket=self.bucket, Key=self._k(key), IfMatch=etag)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                code = e.response.get("Error", {}).get("Code")
                if code == "NoSuchBucket":
                    raise self._error(e, "HeadObject", key) from e
                return False
            raise self._error(e, "HeadObject", key) from e
        except BotoCoreError as e:
            raise self._error(e, "HeadObject", key) from e

    def list(self, prefix: str) -> list[str]:
        full = _join(self.prefix, prefix.lstrip("/"))
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        if self.prefix and not prefix:
            full = self.prefix + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(o["Key"][strip:] for o in page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, "ListObjectsV2", None) from e
        return sorted(keys)

    def _upload(self, key: str, src: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        from boto3.exceptions import S3UploadFailedError

        try:
            self.client.upload_file(str(src), self.bucket, self._k(key), ExtraArgs=_tagging(key) or None)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, "PutObject", key) from e
        except S3UploadFailedError as e:
            cause = e.__cause__ or e.__context__  # boto3 wraps the ClientError: throttling stays transient
            if isinstance(cause, (ClientError, BotoCoreError)):
                raise self._error(cause, "PutObject", key) from e
            raise StoreError(f"upload of {src} to s3://{self.bucket}/{self._k(key)} failed: {e}") from e

    def _fetch(self, key: str, dest: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.download_file(self.bucket, self._k(key), str(dest))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, "GetObject", key) from e

    def put_file(self, key: str, src: Path) -> str:
        """Write the local file ``src`` to ``key``, streamed by boto3's ``upload_file`` (multipart
        for large files; the object appears only when complete). Returns the new ETag."""
        self._upload(key, src)
        r = self._call("HeadObject", key, self.client.head_object, Bucket=self.bucket, Key=self._k(key))
        return r["ETag"]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._k(key)}"


# --------------------------------------------------------------------------------------------------
# Opening stores
# --------------------------------------------------------------------------------------------------


def _parse_s3(url: str) -> tuple[str, str]:
    p = urlparse(url)
    if not p.netloc:
        raise StoreError(f"bad S3 URL {url!r}: expected s3://BUCKET/PREFIX")
    return p.netloc, p.path.strip("/")


def _local_path(url: str) -> Path:
    if url.startswith("file://"):
        p = urlparse(url)
        if p.netloc not in ("", "localhost"):
            raise StoreError(f"bad file URL {url!r}: use file:///absolute/path")
        return Path(unquote(p.path))
    return Path(url).expanduser()


#: Store URLs naming a saved ChronosStore Prefect block: ``block:chronos-store/NAME`` (or ``block:NAME``).
BLOCK_SCHEME = "block:"


def store_block_name(url: str) -> str | None:
    """The block document name of ``block:chronos-store/NAME`` / ``block:NAME``, else None."""
    if not url.startswith(BLOCK_SCHEME):
        return None
    ref = url[len(BLOCK_SCHEME):].strip()
    slug, sep, name = ref.rpartition("/")
    if sep and slug != "chronos-store":
        raise StoreError(f"store {url!r} names a {slug!r} block; use block:chronos-store/NAME")
    if not name:
        raise StoreError(f"store {url!r} names no block: use block:chronos-store/NAME")
    return name


def open_url(url: str | os.PathLike, *, endpoint_url: str | None = None, region: str | None = None,
               profile: str | None = None, check: bool = True, session=None,
               client_kwargs: dict[str, Any] | None = None):
    """Open ``s3://bucket/prefix`` (S3Store), ``file:///abs/path`` or a plain path (LocalStore).
    ``block:chronos-store/NAME`` URLs are opened by :func:`blocks.resolve.open_store`, which loads the
    saved Prefect block (this module imports neither Prefect nor the block classes).

    With ``check`` (default) the store is verified reachable (bucket exists / directory writable)
    and a :class:`StoreError` naming it and the fix is raised otherwise."""
    url = os.fspath(url)
    if not url:
        raise StoreError("no store given: pass --store s3://BUCKET/PREFIX or a local directory path")
    if store_block_name(url) is not None:
        raise StoreError(f"store {url!r} names a Prefect block: open it with blocks.resolve.open_store")
    scheme = urlparse(url).scheme
    if scheme == "s3":
        bucket, prefix = _parse_s3(url)
        store: Any = S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region, profile=profile,
                             session=session, client_kwargs=client_kwargs)
    elif scheme == "file" or scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        store = LocalStore(_local_path(url))
    else:
        raise StoreError(f"unsupported store URL {url!r}: use s3://BUCKET/PREFIX, file:///abs/path or a local path")
    if check:
        check_store(store)
    return store


def check_store(store) -> None:
    """Raise :class:`StoreError` unless ``store`` is reachable and writable (S3: bucket exists and
    is accessible; local: the directory accepts writes)."""
    if isinstance(store, S3Store):
        from botocore.exceptions import BotoCoreError, ClientError

        # A quick probe: few attempts, so an unreachable endpoint is reported in seconds.
        client = make_s3_client(max_attempts=2, **store._client_args) if store._own_client else store.client
        try:
            client.head_bucket(Bucket=store.bucket)
        except (ClientError, BotoCoreError) as e:
            err = store._error(e, "HeadBucket", None)
            if isinstance(err, TransientStoreError):
                raise StoreError(f"store {store.url} is unreachable: {err}") from e
            raise err from e
    elif isinstance(store, LocalStore):
        try:
            tmp = store._write_tmp(b"probe")
            tmp.unlink()
        except OSError as e:
            raise StoreError(
                f"local store {store.root} is not writable ({e.strerror or e}); choose a writable "
                f"directory or fix its permissions"
            ) from e
    else:
        store.list("")


def read_uri(uri: str | os.PathLike) -> bytes:
    """Read one object from ``s3://bucket/key``, ``file:///path`` or a local path."""
    uri = os.fspath(uri)
    if urlparse(uri).scheme == "s3":
        bucket, key = _parse_s3(uri)
        if not key:
            raise BadInputError(f"{uri} names a bucket, not an object: use s3://BUCKET/KEY")
        store = S3Store(bucket, "")
        try:
            got = store.get(key)
        except StoreError as e:
            raise BadInputError(f"cannot read {uri}: {e}") from e
        if got is None:
            raise BadInputError(f"{uri} does not exist: check the bucket and key")
        return got[0]
    path = _local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{uri} does not exist: check the path") from None
    except IsADirectoryError:
        raise BadInputError(f"{uri} is a directory, expected a file") from None
    except OSError as e:
        raise BadInputError(f"cannot read {uri}: {e.strerror or e}") from e


def download_prefix(uri: str | os.PathLike, local_dir: Path) -> Path:
    """Download every object under ``s3://bucket/prefix/`` (or copy a local directory tree) into
    ``local_dir``; return ``local_dir``."""
    uri = os.fspath(uri)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    if urlparse(uri).scheme == "s3":
        bucket, prefix = _parse_s3(uri)
        files = S3Store(bucket, "").download_dir(prefix, local_dir)
        if not files:
            raise BadInputError(f"no objects under {uri}: check the bucket and prefix")
        return local_dir
    src = _local_path(uri)
    if not src.is_dir():
        raise BadInputError(f"{uri} is not a directory: check the path")
    shutil.copytree(src, local_dir, dirs_exist_ok=True)
    return local_dir
