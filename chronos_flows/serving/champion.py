"""The serving champion: loaded once, swapped whole when champion.json changes (hot swap)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from chronos_flows.core import layout
from chronos_flows.core.errors import BadInputError, TransientStoreError
from chronos_flows.core.retry import OutageLog
from chronos_flows.champion.registry import normalize
from chronos_flows.serving.schema import MIN_OBSERVATIONS

logger = logging.getLogger("chronos_flows.serving")


@dataclass
class LoadedChampion:
    """One loaded champion; never mutated after load (a swap replaces the whole object)."""

    run_id: str
    family: str
    doc: dict[str, Any]
    etag: Optional[str]
    model: Any
    min_history: int
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    workdir: Optional[Path] = None
    #: torch models run one call at a time (each call already uses every core)
    lock: Optional[threading.Lock] = None

    def headers(self) -> dict[str, str]:
        return {"X-Champion-Run-Id": str(self.run_id), "X-Champion-Family": str(self.family)}


def settle_heap() -> None:
    """After a champion is swapped in: collect what the old one left (its cycles), then freeze what
    is alive (the model's many objects) out of the collector's generations, so the request path's
    collections no longer walk the model again and again (``gc.freeze``; unfrozen first, so a
    replaced champion is not kept for ever)."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def load_champion(store: Any, env: str, doc: dict[str, Any], etag: Optional[str], workdir: Path, *,
                  device: str = "auto") -> LoadedChampion:
    """The champion ``doc`` as a :class:`LoadedChampion` (Chronos: downloaded into its own directory)."""
    from chronos_flows.forecasting.batch import champion_forecaster
    from chronos_flows.models.families import MIN_HISTORY, check_family

    family = check_family(doc.get("family", "chronos"))
    t0 = time.perf_counter()
    own = Path(workdir) / f"{doc.get('run_id')}-{str(doc.get('write_id') or uuid.uuid4().hex)[:12]}"
    model = champion_forecaster(store, env, doc, own, device=device, n_jobs=1)
    return LoadedChampion(
        run_id=str(doc.get("run_id")), family=family, doc=doc, etag=etag, model=model,
        min_history=max(MIN_HISTORY[family], MIN_OBSERVATIONS), load_seconds=time.perf_counter() - t0,
        workdir=own, lock=threading.Lock() if family in ("chronos", "ensemble", "lightgbm") else None,  # an ensemble may hold a Chronos member;
        # lightgbm copies the panel state it was trained on per call: one call at a time bounds the memory
    )


class ChampionHolder:
    """Holds the loaded champion of ``env`` and swaps in a new one when champion.json changes.

    ``current`` is None until the first champion is loaded. :meth:`check` reads champion.json; an
    unchanged ETag costs one small GET. A champion that fails to load is logged and retried after
    ``retry_seconds``; the previous one keeps serving meanwhile."""

    def __init__(self, store: Any, env: str, *, poll_seconds: float = 10.0, workdir: Optional[Path] = None,
                 device: str = "auto", retry_seconds: float = 30.0,
                 loader: Optional[Callable[..., LoadedChampion]] = None):
        self.store = store
        self.env = env
        self.poll_seconds = max(float(poll_seconds), 0.05)
        self.retry_seconds = retry_seconds
        self.device = device
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="chronos-flows-serve-"))
        self._loader = loader or load_champion
        self._current: Optional[LoadedChampion] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failed: dict[str, float] = {}  # etag -> when its load failed
        self.last_error: Optional[str] = None
        self.swaps = 0
        #: store outages the poll rode out (the loaded champion kept serving through each)
        self.outages = OutageLog()

    @property
    def current(self) -> Optional[LoadedChampion]:
        return self._current

    def check(self) -> bool:
        """Load champion.json's model if its ETag changed; True when a new champion was swapped in."""
        got = self.store.get(layout.champion_key(self.env))
        if got is None:
            return False  # nothing promoted (or deleted): keep serving what is loaded
        data, etag = got
        cur = self._current
        if cur is not None and cur.etag == etag:
            return False
        failed_at = self._failed.get(etag)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_seconds:
            return False
        try:
            doc = normalize(json.loads(data.decode("utf-8")))
        except (ValueError, BadInputError) as exc:
            self._remember_failure(etag, f"champion.json cannot be read: {exc}")
            return False
        if cur is not None and cur.run_id == str(doc.get("run_id")) and cur.doc.get("write_id") == doc.get("write_id"):
            return False
        logger.info("loading champion %s (%s)", doc.get("run_id"), doc.get("family"))
        try:
            loaded = self._loader(self.store, self.env, doc, etag, self.workdir, device=self.device)
        except Exception as exc:  # noqa: BLE001 - a bad champion must not take the server down
            logger.exception("champion %s could not be loaded; still serving %s", doc.get("run_id"),
                             cur.run_id if cur else "nothing")
            self._remember_failure(etag, f"{type(exc).__name__}: {exc}")
            return False
        self._current = loaded  # the atomic swap: requests hold their own reference
        self.swaps += 1
        self.last_error = None
        logger.info("champion %s (%s) serving; loaded in %.2fs%s", loaded.run_id, loaded.family, loaded.load_seconds,
                    f", replacing {cur.run_id}" if cur else "")
        self._cleanup(keep={loaded.workdir, cur.workdir if cur else None})
        del cur
        settle_heap()
        return True

    def _remember_failure(self, etag: str, message: str) -> None:
        self._failed[etag] = time.monotonic()
        self.last_error = message
        logger.error("champion not loaded: %s", message)

    def _cleanup(self, keep: set) -> None:
        """Remove model directories of champions older than the previous one (loaded models live in memory)."""
        if not self.workdir.is_dir():
            return
        for child in self.workdir.iterdir():
            if child not in keep and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
                self.outages.recovered()
            except TransientStoreError as exc:  # an outage: keep serving what is loaded, keep polling
                if not self.outages.active:
                    logger.warning("store unreachable (%s); still serving %s, polling every %.1fs", exc,
                                   self._current.run_id if self._current else "nothing", self.poll_seconds)
                self.outages.failed("champion poll", exc)
            except Exception:  # noqa: BLE001 - store hiccups: log, keep polling
                logger.exception("checking the champion failed; retrying in %.1fs", self.poll_seconds)
            self._stop.wait(self.poll_seconds)

    def start(self) -> "ChampionHolder":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="champion-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
