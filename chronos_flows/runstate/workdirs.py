"""Local work directories of runs: where they live, which are left behind, removing them.

A run works in ``{root}/chronos-flows-{run_id}-XXXX`` (``root``: ``$CHRONOS_FLOWS_WORKDIR`` or the
system temporary directory) and removes it in its cleanup. A run whose process died (SIGKILL, power
loss) leaves it: :func:`leftover` finds those of runs that no longer hold the lock, and
:func:`remove_for` is the cleanup step that removes a dead run's directories. Pure: no Prefect, no boto3.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "chronos-flows-"


def root() -> Path:
    return Path(os.environ.get("CHRONOS_FLOWS_WORKDIR") or tempfile.gettempdir())


def new(run_id: str) -> Path:
    base = root()
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{run_id}-", dir=base))


def of_run(run_id: str) -> list[Path]:
    """The work directories of ``run_id`` on this machine (its id then 8 random characters)."""
    base = root()
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob(f"{PREFIX}{run_id}-*") if p.is_dir() and len(p.name) == len(f"{PREFIX}{run_id}-") + 8)


def leftover(active_run_id: str | None, known_runs: list[str]) -> list[tuple[str, Path]]:
    """``(run_id, directory)`` of every known run's work directory except the active run's."""
    found = []
    for run_id in known_runs:
        if run_id == active_run_id:
            continue
        found.extend((run_id, p) for p in of_run(run_id))
    return found


def remove_for(run_id: str) -> str:
    """Cleanup step: remove ``run_id``'s work directories on this machine (idempotent)."""
    dirs = of_run(run_id)
    for p in dirs:
        shutil.rmtree(p, ignore_errors=True)
    left = [str(p) for p in dirs if p.exists()]
    if left:
        raise OSError(f"could not remove {', '.join(left)}")
    return f"removed {len(dirs)} local work director{'y' if len(dirs) == 1 else 'ies'}" if dirs else "no local work directory here"
