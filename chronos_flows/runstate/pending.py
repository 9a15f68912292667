"""Failure records kept on this machine while the store cannot be reached.

When a run fails because its store became unreachable (and stayed so past the retries), its cause
would be lost: training.json cannot be written. :func:`keep` saves the record locally
(``{workdir root}/chronos-flows-pending/{store hash}/{env}/{run_id}.json``, atomically) and
:func:`flush` — called by every ``chronos-flows`` command that opens that store — writes it into
the run's training.json once the store answers again, then deletes the local copy. Pure: no
Prefect, no boto3 (the store is passed in).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chronos_flows.runstate import runlog, workdirs
from chronos_flows.core import atomic


def _dir(store_url: str) -> Path:
    return workdirs.root() / "chronos-flows-pending" / hashlib.sha256(store_url.encode()).hexdigest()[:16]


def keep(store_url: str, env: str, run_id: str, error: str) -> Path:
    """Save the failure of ``run_id`` locally until its store can be written."""
    folder = _dir(store_url) / env
    folder.mkdir(parents=True, exist_ok=True)
    record = {"store": store_url, "env": env, "run_id": run_id, "error": error,
              "at": datetime.now(timezone.utc).isoformat()}
    return atomic.write_json(folder / f"{run_id}.json", record)


def flush(store: Any) -> list[dict[str, Any]]:
    """Write every failure record kept for ``store`` into its run's training.json; returns them."""
    base = _dir(store.url)
    if not base.is_dir():
        return []
    done = []
    for path in sorted(base.glob("*/*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        runlog.mark_failed(store, record["env"], record["run_id"],
                           f"{record['error']} (recorded locally at {record['at']} while the store was unreachable)",
                           at=record["at"])
        path.unlink(missing_ok=True)
        done.append(record)
    return done
