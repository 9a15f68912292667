"""Serve a packaged champion from a directory (SageMaker's ``/opt/ml/model``) instead of the store.

``chronos-flows serve --model-dir DIR`` (or ``$CHRONOS_FLOWS_MODEL_DIR``, which the SageMaker model
sets) reads the champion that :mod:`chronos_flows.champion.package` packed: ``DIR/package.json``
names the environment, and ``DIR`` holds the store keys the champion needs. :class:`ModelDirStore`
answers the reads the serving code makes of a store (``get``, ``exists``, ``list``,
``download_dir``, ``uri``) from that directory and refuses every write: no store credentials and
no writable model directory are needed at serve time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError, StoreError

MANIFEST = "package.json"


class ModelDirStore:
    """A read-only store over an unpacked ``model.tar.gz`` (same keys as the store it came from)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"ModelDirStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise BadInputError(f"invalid key {key!r}")
        return self.root.joinpath(*parts)

    def get(self, key: str) -> tuple[bytes, str] | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return data, hashlib.md5(data).hexdigest()  # noqa: S324 - an ETag, not security

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                      if p.is_file() and p.relative_to(self.root).as_posix().startswith(prefix))

    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
        src = self._path(prefix)
        if not src.is_dir():
            return []
        out = []
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            dest = Path(local_dir) / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
            out.append(dest)
        return out

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def _read_only(self, *_: Any, **__: Any):
        raise StoreError(f"{self.root} is a packaged model directory (read-only); serving writes nothing there")

    put = put_if_absent = put_if_match = delete = delete_if_match = upload_dir = _read_only


def open_model_dir(path: Path | str) -> tuple[ModelDirStore, str, dict[str, Any]]:
    """``(store, env, manifest)`` of a packaged model directory; BadInputError naming what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise BadInputError(f"--model-dir {root}: not a directory; point it at an unpacked model.tar.gz "
                            "(`chronos-flows endpoint deploy` builds one)")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise BadInputError(f"--model-dir {root}: no {MANIFEST}; this is not a package of `chronos-flows endpoint "
                            "deploy` (model.tar.gz unpacked)") from None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"--model-dir {root}: {MANIFEST} cannot be read ({exc})") from None
    env = manifest.get("env") if isinstance(manifest, dict) else None
    if not isinstance(env, str) or not env:
        raise BadInputError(f"--model-dir {root}: {MANIFEST} names no env")
    store = ModelDirStore(root)
    if not store.exists(layout.champion_key(env)):
        raise BadInputError(f"--model-dir {root}: {layout.champion_key(env)} is missing from the package")
    return store, env, manifest
