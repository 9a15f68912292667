"""Package the champion for a SageMaker endpoint: ``model.tar.gz``, unpacked by SageMaker into
``/opt/ml/model``, from which the serving container loads it without store credentials.

The archive is a tiny read-only copy of the store holding just what the champion needs::

    package.json                                   the manifest: env, run_id, family, write_id, packaged_at
    {env}/registry/champion.json                   the champion document, as promoted
    {env}/registry/{run_id}/chronos/...            Chronos weights (Chronos champions and ensembles with
                                                   a Chronos member; local families store none)
    {env}/registry/{run_id}/history/cleaned.parquet the panel a global champion (lightgbm) is trained
                                                   on when loaded (champion.json ``needs_history``)

so the serving code reads it with the same keys it reads the store with
(:mod:`chronos_flows.champion.model_dir`). The package of one champion (run id + write id) is
written once to ``{env}/endpoint/{name}/packages/{run_id}-{write_id}/model.tar.gz`` and reused.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError, ChronosFlowsError
from chronos_flows.core.store import ObjectStore

MANIFEST = "package.json"
PACKAGE_SCHEMA_VERSION = 1


def model_prefixes(env: str, doc: dict[str, Any]) -> list[str]:
    """Store prefixes of the weights the champion ``doc`` loads (Chronos, or an ensemble's Chronos member)
    and of the panel history it is trained on when it needs one (``needs_history``)."""
    family = doc.get("family", "chronos")
    members = ((doc.get("config") or {}).get("members") or []) if family == "ensemble" else []
    out = []
    if family == "chronos" or any(m.get("family") == "chronos" for m in members):
        out.append(layout.registry_model_prefix(env, str(doc["run_id"]), "chronos"))
    history = (doc.get("needs_history") or {}).get("key")
    if history:  # a global family (lightgbm) is trained on the panel's history when it is loaded
        out.append(history.rsplit("/", 1)[0])
    return out


def package_tag(doc: dict[str, Any]) -> str:
    """The package's name: one per promoted champion (run id and the promotion's write id)."""
    write_id = str(doc.get("write_id") or "v1")[:12]
    return f"{doc['run_id']}-{write_id}"


def build_package(store: ObjectStore, env: str, doc: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the champion ``doc``'s ``model.tar.gz`` to the file ``out``; returns the manifest."""
    prefixes = model_prefixes(env, doc)
    manifest = {
        "schema_version": PACKAGE_SCHEMA_VERSION, "env": env, "run_id": str(doc["run_id"]),
        "family": doc.get("family", "chronos"), "write_id": doc.get("write_id"),
        "packaged_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "models": prefixes,
    }
    with tempfile.TemporaryDirectory(prefix="chronos-flows-package-") as tmp, \
            tarfile.open(out, "w:gz") as tar:
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
        _add_bytes(tar, layout.champion_key(env), json.dumps(doc, indent=2, default=str).encode())
        for prefix in prefixes:
            local = Path(tmp) / prefix
            if not store.download_dir(prefix, local):
                raise ChronosFlowsError(
                    f"the champion's model is missing: nothing under {store.uri(prefix)}; promote a new champion "
                    "with `chronos-flows run` before deploying")
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                tar.add(path, arcname=f"{prefix}/{path.relative_to(local).as_posix()}", recursive=False)
    return manifest


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(datetime.now(timezone.utc).timestamp())
    tar.addfile(info, io.BytesIO(data))


def package_champion(store: ObjectStore, env: str, endpoint: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    """The champion's package in the store, built and uploaded unless it is there already.

    Returns ``{"key", "uri", "tag", "run_id", "family", "write_id", "reused"}``; BadInputError
    when the environment has no champion."""
    if doc is None:
        raise BadInputError(f"env {env} has no champion to deploy ({layout.champion_key(env)} is missing); "
                            "run `chronos-flows run` first")
    tag = package_tag(doc)
    key = layout.endpoint_package_key(env, endpoint, tag)
    info = {"key": key, "uri": store.uri(key), "tag": tag, "run_id": str(doc["run_id"]),
            "family": doc.get("family", "chronos"), "write_id": doc.get("write_id")}
    if store.exists(key):
        return {**info, "reused": True}
    with tempfile.TemporaryDirectory(prefix="chronos-flows-package-") as tmp:
        folder = Path(tmp) / "out"
        folder.mkdir()
        build_package(store, env, doc, folder / "model.tar.gz")
        store.upload_dir(folder, key.rsplit("/", 1)[0])  # one object, written whole
    return {**info, "reused": False}


# --------------------------------------------------------------------------- the endpoint record


def read_record(store: ObjectStore, env: str, endpoint: str) -> dict[str, Any] | None:
    """``{env}/endpoint/{name}/endpoint.json``: what was last deployed (None before the first deploy)."""
    got = store.get(layout.endpoint_record_key(env, endpoint))
    if got is None:
        return None
    try:
        return json.loads(got[0].decode("utf-8"))
    except ValueError as exc:
        raise BadInputError(f"{store.uri(layout.endpoint_record_key(env, endpoint))} is not JSON ({exc}); "
                            "delete it and deploy again") from None


def write_record(store: ObjectStore, env: str, endpoint: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write the endpoint record whole (atomic put), stamped ``updated_at``."""
    record = {**record, "endpoint": endpoint, "env": env,
              "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")}
    store.put(layout.endpoint_record_key(env, endpoint), json.dumps(record, indent=2, default=str).encode())
    return record


def endpoint_names(store: ObjectStore, env: str) -> list[str]:
    """Endpoints of ``env`` with a record or a package in the store."""
    prefix = f"{env}/endpoint/"
    return sorted({k[len(prefix):].split("/", 1)[0] for k in store.list(prefix)})


def remove_endpoint_objects(store: ObjectStore, env: str, endpoint: str) -> list[str]:
    """Delete the endpoint's packages, then its record (last: it says what exists); idempotent."""
    keys = store.list(layout.endpoint_prefix(env, endpoint) + "/")
    record = layout.endpoint_record_key(env, endpoint)
    for key in sorted(k for k in keys if k != record) + ([record] if record in keys else []):
        store.delete(key)
    return keys
