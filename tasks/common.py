"""What every task module shares: the transient-error retry rule, artifact helpers, loggers."""

from __future__ import annotations

import base64
import logging
import re
from datetime import timedelta
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from chronos_flows.core.errors import TransientStoreError

#: Delays between retries of a whole step (Prefect retries; botocore retries single requests first).
RETRY_DELAYS = [2, 10, 30]

#: How long a cached step's persisted result (Prefect's result storage: $PREFECT_HOME/storage unless
#: PREFECT_DEFAULT_RESULT_STORAGE_BLOCK names a shared one) may be reused: longer than the weekly
#: schedule, short enough that an old entry is not trusted for ever.
CACHE_EXPIRATION = timedelta(days=35)


def cache_mode(task: Any, cache: bool) -> Any:
    """``task`` as configured (``compute.cache`` true), else a copy that recomputes and overwrites its cache entry."""
    return task if cache else task.with_options(refresh_cache=True)

_TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "ConnectionResetError",
    "TimeoutError",
}


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx after botocore's own retries, dropped connections, time-outs."""
    if isinstance(exc, TransientStoreError):
        return True
    return type(exc).__name__ in _TRANSIENT_NAMES


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry a step only for transient errors, never for bad input or bugs."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classifying, not swallowing
        return is_transient(exc)
    return False



#: The one set of options for a step that touches the store or AWS: Prefect retries it (after
#: botocore's own retries of single requests) on transient errors only (RETRY_TRANSIENT), and
#: ON_TRANSIENT: never caches it either.
RETRY_TRANSIENT: dict[str, Any] = {
    "retries": len(RETRY_DELAYS),
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_condition_fn": retry_transient,
}
ON_TRANSIENT: dict[str, Any] = {**RETRY_TRANSIENT, "cache_policy": NONE}

def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("chronos_flows")


class DropRoutineTaskFinish(logging.Filter):
    """Drops exactly Prefect's routine finish lines of a task run — "Finished in state Completed()"
    (18 of 40 lines of a run) and "Finished in state Cached(type=COMPLETED)" (a cache hit, which the
    step's own log line counts); a failed, crashed or retried task (and every flow-run line) still logs."""

    ROUTINE = ("Finished in state Completed()", "Finished in state Cached(type=COMPLETED)")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage() in self.ROUTINE)


def quiet_routine_task_logs() -> None:
    """Install :class:`DropRoutineTaskFinish` on Prefect's task-run logger (once per process).
    A logger's filter runs before every handler, so the line reaches neither the console nor the API."""
    task_log = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, DropRoutineTaskFinish) for f in task_log.filters):
        task_log.addFilter(DropRoutineTaskFinish())


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def in_flow_context() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def markdown_artifact(key: str, markdown: str, description: str | None = None) -> None:
    if not in_flow_context():
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


def table_artifact(key: str, rows: list[dict[str, Any]], description: str | None = None) -> None:
    if not in_flow_context():
        return
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=artifact_key(key), table=rows, description=description)


def png_data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI: the Prefect UI cannot open ``file://`` links or store paths, but it
    renders an image whose source is a data URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_markdown(title: str, png: bytes, *, level: int = 3, note: str | None = None) -> str:
    """A markdown section with ``png`` embedded (visible on the artifact page in the Prefect UI)."""
    alt = re.sub(r"[\[\]]", "", title)
    parts = [f"{'#' * level} {title}", "", f"![{alt}]({png_data_uri(png)})", ""]
    if note:
        parts += [note, ""]
    return "\n".join(parts)


def embed_images(markdown: str, images: dict[str, bytes]) -> str:
    """Replace the image targets ``](relative/path.png)`` of ``markdown`` with data URIs."""
    for target, png in images.items():
        markdown = markdown.replace(f"]({target})", f"]({png_data_uri(png)})")
    return markdown


def image_artifact(key: str, title: str, png: bytes, description: str | None = None, note: str | None = None) -> None:
    """One picture as a markdown artifact with the PNG embedded."""
    markdown_artifact(key, image_markdown(title, png, level=2, note=note), description)


class Progress:
    """A Prefect progress artifact (0-100) that degrades to log lines outside a flow run."""

    def __init__(self, key: str, description: str) -> None:
        self.id = None
        self.key = artifact_key(key)
        if in_flow_context():
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(progress=0.0, key=self.key, description=description)

    def update(self, done: float, total: float) -> None:
        if self.id is None or total <= 0:
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.id, progress=round(100.0 * min(done, total) / total, 1))
